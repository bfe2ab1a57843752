"""The client over TLS: a self-signed certificate made here, a real server on 127.0.0.1 speaking HTTPS and WSS, a
client that trusts it (--ca-file) gets the model's answers, one that does not refuses with one clear line."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
import torch
from runtime_plans import make_plan, save_plan
from test_cli import assert_user_error, edgesplit, edgesplit_in_process

from edgesplit.plan.schema import load_plan
from edgesplit.runtime.client import Client
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.engine import Engine
from edgesplit.runtime.errors import ClientError, ServerUntrustedError
from edgesplit.runtime.server import ServerThread

TOKEN = "tls-test-token-0123456789"
ROUTES = [(0.01, 1, {"kind": "all-device"}), (1, 20, {"cut_index": 7}), (20, 1e4, {"cut_index": 3})]


def _certificate(folder, name: str) -> tuple:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    pytest.importorskip("cryptography", reason="the tests make their certificate with the cryptography package")
    folder = tmp_path_factory.mktemp("tls")
    plan = save_plan(make_plan(folder, "small_cnn", routes=ROUTES, shape=(1, 1, 8, 8)), folder / "plan.json")
    cert, key = _certificate(folder, "server")
    other, _ = _certificate(folder, "someone-else")
    with ServerThread(Engine([load_deployment(load_plan(plan), plan_dir=folder)]), token=TOKEN, tls_cert=cert, tls_key=key) as server:
        yield {"plan": plan, "cert": cert, "other": other, "url": server.url, "folder": folder}


@pytest.mark.parametrize("stream", [False, True], ids=["https", "wss"])
def test_a_client_that_trusts_the_certificate_gets_the_answers(tls, stream):
    assert tls["url"].startswith("https://")
    deployment = load_deployment(load_plan(tls["plan"]), plan_dir=tls["folder"])
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with Client(tls["plan"], tls["url"], TOKEN, ca_file=tls["cert"], fallback=False, stream=stream) as client:
        for image in images:
            result = client.infer(image)
            assert result.where == "server"
            expected = deployment.model(image[None])
            torch.testing.assert_close(result.logits, expected, atol=1e-5, rtol=1e-5)
        assert client.stats.server_results == 4 and client.stats.fallbacks == 0
        if stream:
            assert client._socket is not None  # the frames went over wss://


@pytest.mark.parametrize("stream", [False, True], ids=["https", "wss"])
@pytest.mark.parametrize("trust", ["system roots", "another certificate"])
def test_a_client_that_does_not_trust_it_refuses_clearly_and_does_not_fall_back(tls, stream, trust):
    ca_file = None if trust == "system roots" else tls["other"]
    with Client(tls["plan"], tls["url"], TOKEN, ca_file=ca_file, fallback=True, stream=stream) as client:
        with pytest.raises(ServerUntrustedError, match="certificate is not trusted .*; pass --ca-file") as caught:
            client.infer(torch.rand(1, 1, 8, 8))
        assert "\n" not in str(caught.value) and client.stats.fallbacks == 0 and client.server_up


def test_ca_file_mistakes_are_one_line_errors(tls):
    with pytest.raises(ClientError, match="does not exist"):
        Client(tls["plan"], tls["url"], TOKEN, ca_file=tls["folder"] / "missing.pem")
    (tls["folder"] / "garbage.pem").write_text("not a certificate\n")
    with pytest.raises(ClientError, match="is not a PEM certificate"):
        Client(tls["plan"], tls["url"], TOKEN, ca_file=tls["folder"] / "garbage.pem")
    with pytest.raises(ClientError, match="is for https:// servers"):
        Client(tls["plan"], "http://127.0.0.1:9", TOKEN, ca_file=tls["cert"])


@pytest.mark.slow
def test_infer_cli_over_https(tls, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    common = ("infer", str(tls["plan"]), "--server", tls["url"], "--token-file", str(token_file), "--limit", "5",
              "-q")
    result = edgesplit(*common, "--ca-file", str(tls["cert"]), "--no-fallback")
    assert result.returncode == 0, result.stderr
    assert "5 / 5" in result.stdout and "0 result(s) on the device" in result.stdout
    assert_user_error(edgesplit_in_process(*common), "certificate is not trusted", "--ca-file")
