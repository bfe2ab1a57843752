"""Link emulation over real sockets: the framing protocol, the echo server's defences, the paced loopback link,
and (where root, ``ip`` and ``tc`` exist) the netns + veth + tbf link, its rate, its cleanup and its CLI.

Every server these tests start listens on 127.0.0.1 or inside a namespace of their own, and is shut down; the
autouse fixture fails any test that leaves a link of this process behind.
"""

import array
import math
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import linkemu
from conftest import BENCH
from linkemu import (
    HEADER,
    MAX_FRAME,
    ChainedLinks,
    EchoClient,
    EchoServer,
    LinkEmulationError,
    PacedSocketLink,
    ProtocolError,
    RateLimitedLink,
    link_emulation_unavailable,
    measure_transfer,
    nominal_seconds,
    open_link,
    remove_stale_links,
    serve_command,
)

IO_TIMEOUT = 10.0
INVALID_RATES = [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf]
MY_PREFIX = f"es{os.getpid()}x"


# --- helpers -------------------------------------------------------------------------------------------


def netns_names() -> list[str]:
    ip = linkemu._tool("ip")
    if ip is None:
        return []
    out = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, timeout=15).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def link_exists(dev: str, netns: str | None = None) -> bool:
    ip = linkemu._tool("ip") or "ip"
    args = [ip, *(["-n", netns] if netns else []), "link", "show", "dev", dev]
    return subprocess.run(args, capture_output=True, timeout=15).returncode == 0


def host_links_named(prefix: str) -> list[str]:
    ip = linkemu._tool("ip") or "ip"
    out = subprocess.run([ip, "-o", "link", "show"], capture_output=True, text=True, timeout=15).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.count(":") >= 2]
    return [name for name in names if name.startswith(prefix)]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        got = sock.recv(n - len(data))
        if not got:
            raise EOFError(f"closed after {len(data)} of {n} bytes")
        data += got
    return bytes(data)


def recv_to_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while got := sock.recv(1 << 16):
        data += got
    return bytes(data)


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the peer closed without sending anything (EOF or reset); False if it sent data."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def request_frame(body: bytes, response_bytes: int) -> bytes:
    return HEADER.pack(HEADER.size + len(body)) + HEADER.pack(response_bytes) + body


def median_ratio(times: list[float], nominal: float) -> float:
    """nominal / measured: 1.0 for a link that delivers exactly its rate in payload, lower when slower."""
    return nominal / statistics.median(times)


class FakeServer:
    """Accepts one connection, reads one request frame, and answers with ``reply`` raw bytes.

    ``received`` holds the bytes of the frame it read, ``error`` what stopped it early (EOF before a frame).
    """

    def __init__(self, reply: bytes) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(IO_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, args=(reply,), daemon=True)
        self.thread.start()

    def _serve(self, reply: bytes) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(IO_TIMEOUT)
                head = recv_exact(conn, HEADER.size)
                (length,) = HEADER.unpack(head)
                self.received = head + recv_exact(conn, length)
                conn.sendall(reply)
        except (OSError, EOFError) as e:
            self.error = e

    def close(self) -> None:
        """Wait for the one connection to end (every test connects), then stop listening."""
        self.thread.join(IO_TIMEOUT)
        self.listener.close()
        assert not self.thread.is_alive()


@pytest.fixture(autouse=True)
def _no_links_left_behind() -> Iterator[None]:
    yield
    assert not linkemu._live, f"links left open: {linkemu._live}"
    if linkemu._missing_privilege() is None:
        left = [name for name in netns_names() if name.startswith(MY_PREFIX)]
        assert not left, f"network namespaces of this process left behind: {left}"
        assert not host_links_named(MY_PREFIX), "veth devices of this process left behind"


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    """An unpaced echo server on 127.0.0.1 with max_frame 1000, failing the test if a handler raised."""
    server = EchoServer("127.0.0.1", 0, max_frame=1000)
    errors: list[BaseException | None] = []
    server.handle_error = lambda request, address: errors.append(sys.exc_info()[1])  # type: ignore[method-assign]
    server.start_thread()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
    assert errors == [], f"a handler raised instead of closing quietly: {errors}"


@pytest.fixture
def big_server() -> Iterator[EchoServer]:
    """An unpaced echo server on 127.0.0.1 with the default MAX_FRAME."""
    server = EchoServer("127.0.0.1", 0)
    server.start_thread()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def netns() -> None:
    """Skips, saying why, where netns + veth + tbf links cannot be made here (no root, no ip/tc, not Linux)."""
    if reason := link_emulation_unavailable():
        pytest.skip(f"netns link emulation unavailable: {reason}")


def raw_connect(server: EchoServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT)
    return sock


def assert_still_serves(server: EchoServer) -> None:
    with EchoClient("127.0.0.1", server.port, timeout=IO_TIMEOUT) as client:
        assert client.request(b"abc", 10) >= 0
        assert client.request(bytes(server.max_frame - HEADER.size), server.max_frame) >= 0


# --- framing and the echo server -----------------------------------------------------------------------


@pytest.mark.parametrize("payload_bytes", [0, 1, 100_000])
@pytest.mark.parametrize("response_bytes", [0, 1, 100_000])
def test_round_trip_over_loopback(big_server, payload_bytes, response_bytes):
    with EchoClient("127.0.0.1", big_server.port, timeout=IO_TIMEOUT) as client:
        for _ in range(2):  # the connection stays in step across requests
            seconds = client.request(bytes(payload_bytes), response_bytes)
            assert 0 < seconds < IO_TIMEOUT


def test_one_connection_carries_requests_of_changing_sizes(big_server):
    sizes = [(0, 0), (100_000, 1), (1, 1_000_000), (300_000, 0), (0, 300_001), (5, 5)]
    with EchoClient("127.0.0.1", big_server.port, timeout=IO_TIMEOUT) as client:
        for payload_bytes, response_bytes in sizes:
            assert client.request(bytes(payload_bytes), response_bytes) > 0


@pytest.mark.parametrize("response_bytes", [0, 1, 7, 100_000, 300_001])
def test_server_answers_exactly_the_requested_bytes(big_server, response_bytes):
    with raw_connect(big_server) as sock:
        sock.sendall(request_frame(b"xyz", response_bytes))
        sock.shutdown(socket.SHUT_WR)  # the server answers, then sees EOF and closes
        data = recv_to_eof(sock)
    assert data[:HEADER.size] == HEADER.pack(response_bytes)
    assert len(data) == HEADER.size + response_bytes
    assert data[HEADER.size:] == bytes(response_bytes)


@pytest.mark.parametrize("payload", [b"", b"abc", bytearray(b"\x01" * 20_000),
                                     memoryview(array.array("d", [1.5, -2.0, 3.25]))])
def test_client_wire_format(payload):
    expected_body = bytes(memoryview(payload).cast("B"))
    server = FakeServer(HEADER.pack(5) + bytes(5))
    try:
        with EchoClient("127.0.0.1", server.port, timeout=IO_TIMEOUT) as client:
            assert client.request(payload, 5) >= 0
    finally:
        server.close()
    assert server.received == request_frame(expected_body, 5)


@pytest.mark.parametrize("reply", [
    HEADER.pack(99) + bytes(99),  # announces fewer bytes than asked for
    HEADER.pack(101) + bytes(101),  # announces more
    HEADER.pack(2**63),  # announces an absurd size
])
def test_client_raises_protocol_error_on_wrong_announced_size(reply):
    server = FakeServer(reply)
    try:
        with EchoClient("127.0.0.1", server.port, timeout=IO_TIMEOUT) as client:
            with pytest.raises(ProtocolError, match="asked for 100 bytes"):
                client.request(b"hello", 100)
    finally:
        server.close()


@pytest.mark.parametrize("reply", [b"", HEADER.pack(100)[:5], HEADER.pack(100) + bytes(40)])
def test_client_raises_protocol_error_when_server_closes_mid_frame(reply):
    server = FakeServer(reply)
    try:
        with EchoClient("127.0.0.1", server.port, timeout=IO_TIMEOUT) as client:
            with pytest.raises(ProtocolError, match="closed"):
                client.request(b"hello", 100)
    finally:
        server.close()


def test_protocol_error_is_a_connection_error():
    assert issubclass(ProtocolError, ConnectionError)


@pytest.mark.parametrize("length", [1001, 2**40, 2**64 - 1, 0, HEADER.size - 1])
def test_server_refuses_bad_frame_length_by_closing_unread(echo_server, length):
    with raw_connect(echo_server) as sock:
        # Only the header: a server that tried to read (or allocate) the body would leave us waiting.
        sock.sendall(HEADER.pack(length))
        assert closed_by_peer(sock)
    assert_still_serves(echo_server)


def test_server_refuses_oversized_response_request(echo_server):
    with raw_connect(echo_server) as sock:
        sock.sendall(request_frame(b"", 1001))
        assert closed_by_peer(sock)
    with EchoClient("127.0.0.1", echo_server.port, timeout=IO_TIMEOUT) as client:
        with pytest.raises(ProtocolError):
            client.request(b"", 1001)
    assert_still_serves(echo_server)


def test_server_accepts_frames_of_exactly_max_frame(echo_server):
    with raw_connect(echo_server) as sock:
        sock.sendall(request_frame(bytes(1000 - HEADER.size), 1000))
        assert recv_exact(sock, HEADER.size + 1000) == HEADER.pack(1000) + bytes(1000)


def test_default_server_refuses_frames_over_max_frame(big_server):
    with raw_connect(big_server) as sock:
        sock.sendall(HEADER.pack(MAX_FRAME + 1))
        assert closed_by_peer(sock)
    with raw_connect(big_server) as sock:
        sock.sendall(request_frame(b"", MAX_FRAME + 1))
        assert closed_by_peer(sock)


@pytest.mark.parametrize("sent", [
    HEADER.pack(500)[:3],  # mid-header
    HEADER.pack(500),  # header, no reply size
    HEADER.pack(500) + HEADER.pack(10) + bytes(100),  # mid-body
])
def test_client_disconnecting_mid_frame_does_not_kill_server(echo_server, sent):
    with raw_connect(echo_server) as sock:
        sock.sendall(sent)
    time.sleep(0.05)
    assert_still_serves(echo_server)


def test_client_disconnecting_mid_response_does_not_kill_server(big_server):
    with raw_connect(big_server) as sock:
        sock.sendall(request_frame(b"", 32 * 2**20))
        recv_exact(sock, 1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
    time.sleep(0.05)
    with EchoClient("127.0.0.1", big_server.port, timeout=IO_TIMEOUT) as client:
        assert client.request(b"again", 1000) >= 0


def test_many_clients_at_once(big_server):
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with EchoClient("127.0.0.1", big_server.port, timeout=IO_TIMEOUT) as client:
                for _ in range(5):
                    client.request(bytes(20_000), 50_000)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(IO_TIMEOUT)
    assert errors == []


@pytest.mark.parametrize("payload_bytes, response_bytes", [(0, -1), (0, MAX_FRAME + 1),
                                                            (MAX_FRAME - HEADER.size + 1, 0)])
def test_client_rejects_oversized_requests_before_sending(payload_bytes, response_bytes):
    server = FakeServer(b"")
    try:
        with EchoClient("127.0.0.1", server.port, timeout=IO_TIMEOUT) as client:
            with pytest.raises(ValueError, match="fit in"):
                client.request(bytes(payload_bytes), response_bytes)
    finally:
        server.close()
    assert server.received == b"" and isinstance(server.error, EOFError)  # EOF before a header: nothing sent


def test_nominal_seconds_counts_payload_and_frame_headers():
    assert nominal_seconds(0, 0, 1.0) == pytest.approx(24 * 8 / 1e6)
    assert nominal_seconds(1_000_000, 0, 8.0) == pytest.approx((1_000_000 + 24) / 1e6)
    assert nominal_seconds(0, 1_000_000, 8.0) == nominal_seconds(1_000_000, 0, 8.0)


# --- paced loopback link -------------------------------------------------------------------------------


def _check_rejects(make, rate) -> None:
    threads = threading.active_count()
    with pytest.raises(ValueError, match="positive number of Mbit/s"):
        make(rate)
    assert threading.active_count() == threads  # no server thread was left running


@pytest.mark.parametrize("rate", [*INVALID_RATES, "10", None])
@pytest.mark.parametrize("make", [PacedSocketLink, RateLimitedLink], ids=["paced", "netns"])
def test_invalid_link_rates_raise_value_error(make, rate):
    _check_rejects(make, rate)  # before any privilege check, socket or namespace


@pytest.mark.parametrize("rate", [*INVALID_RATES, "10"])  # None is valid here: it means unpaced
@pytest.mark.parametrize("make", [lambda rate: EchoServer(pace_mbit=rate),
                                  lambda rate: EchoClient("127.0.0.1", 9, pace_mbit=rate)], ids=["server", "client"])
def test_invalid_pace_rates_raise_value_error(make, rate):
    _check_rejects(make, rate)


def test_paced_link_transfers_at_nominal_rate():
    rate, size = 8.0, 200_000
    with PacedSocketLink(rate) as link:
        assert link.kind == "paced-loopback" and link.rate_mbit == rate
        up = measure_transfer(link, size, 0, 3)
        down = measure_transfer(link, 0, size, 3)
        both = measure_transfer(link, size // 2, size // 2, 3)
    for times, (payload, response) in [(up, (size, 0)), (down, (0, size)), (both, (size // 2, size // 2))]:
        assert 0.85 <= median_ratio(times, nominal_seconds(payload, response, rate)) <= 1.15, times


def test_paced_link_is_much_slower_than_unpaced(big_server):
    size = 200_000
    with EchoClient("127.0.0.1", big_server.port, timeout=IO_TIMEOUT) as client:
        client.request(b"", 0)
        unpaced = statistics.median(client.request(bytes(size), 0) for _ in range(3))
    with PacedSocketLink(8.0) as link:
        paced = statistics.median(measure_transfer(link, size, 0, 3))
    assert paced > 5 * unpaced, (paced, unpaced)


def test_paced_link_rate_scales_time():
    size = 100_000
    with PacedSocketLink(4.0) as slow, PacedSocketLink(16.0) as fast:
        slow_s = statistics.median(measure_transfer(slow, size, 0, 2))
        fast_s = statistics.median(measure_transfer(fast, size, 0, 2))
    assert 3.0 <= slow_s / fast_s <= 5.0, (slow_s, fast_s)


def test_paced_link_close_stops_its_server():
    link = PacedSocketLink(100.0)
    port = link.server.port
    link.client.request(b"x", 1)
    link.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_measure_transfer_returns_one_time_per_repeat():
    with PacedSocketLink(1000.0) as link:
        times = measure_transfer(link, 1000, 2000, 4)
    assert len(times) == 4 and all(0 < t < IO_TIMEOUT for t in times)


@pytest.mark.parametrize("payload_bytes, response_bytes, repeats", [(-1, 0, 1), (0, -1, 1), (0, 0, 0), (0, 0, -3)])
def test_measure_transfer_rejects_bad_arguments(payload_bytes, response_bytes, repeats):
    with PacedSocketLink(1000.0) as link:
        with pytest.raises(ValueError):
            measure_transfer(link, payload_bytes, response_bytes, repeats)


def test_open_link_falls_back_to_paced_loopback(monkeypatch):
    monkeypatch.setattr(linkemu, "link_emulation_unavailable", lambda: "no privileges in this test")
    link = open_link(50.0)
    try:
        assert isinstance(link, PacedSocketLink) and link.kind == "paced-loopback" and link.rate_mbit == 50.0
        assert link.client.request(b"abc", 100) > 0
    finally:
        link.close()


def test_serve_command_runs_a_loopback_echo_server():
    proc = subprocess.Popen(serve_command("127.0.0.1", 0), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = read_ready_port(proc, timeout=30)
        with EchoClient("127.0.0.1", port, timeout=IO_TIMEOUT) as client:
            assert client.request(bytes(10_000), 20_000) > 0
    finally:
        proc.terminate()
        assert proc.wait(10) == 0, proc.stderr.read().decode() if proc.stderr else ""
        proc.stdout.close()
        proc.stderr.close()


def read_ready_port(proc: subprocess.Popen, timeout: float) -> int:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    line = proc.stdout.readline().decode()
    assert line.startswith("ready ") and line.endswith("\n"), line
    port = int(line.split()[1])
    assert 0 < port < 65536
    return port


@pytest.mark.slow
def test_module_cli_serve_prints_ready_and_serves():
    """`python bench/linkemu.py serve --port 0`: the command line a benchmark host runs."""
    proc = subprocess.Popen([sys.executable, str(BENCH / "linkemu.py"), "serve", "--port", "0", "--max-frame", "4096"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = read_ready_port(proc, timeout=120)
        with EchoClient("127.0.0.1", port, timeout=IO_TIMEOUT) as client:
            assert client.request(bytes(1000), 4096) > 0
            with pytest.raises(ProtocolError):  # --max-frame took effect: refused by closing
                client.request(b"", 4097)
        with EchoClient("127.0.0.1", port, timeout=IO_TIMEOUT) as client:
            assert client.request(b"still up", 10) > 0
        assert proc.poll() is None
    finally:
        proc.terminate()
        code = proc.wait(10)
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert code == 0, err


# --- privileges ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the root check applies on Linux only")
def test_unavailable_without_root_says_why(monkeypatch):
    monkeypatch.setattr(linkemu.os, "geteuid", lambda: 1000)
    reason = link_emulation_unavailable.__wrapped__()
    assert isinstance(reason, str) and "root" in reason
    assert remove_stale_links() == []
    with pytest.raises(LinkEmulationError, match="root"):
        RateLimitedLink(10.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tool check applies on Linux only")
def test_unavailable_without_tc_says_why(monkeypatch):
    monkeypatch.setattr(linkemu.os, "geteuid", lambda: 0)
    monkeypatch.setattr(linkemu, "_tool", lambda name: None if name == "tc" else "/usr/sbin/ip")
    reason = link_emulation_unavailable.__wrapped__()
    assert isinstance(reason, str) and "`tc`" in reason


def test_unavailable_is_none_or_one_line():
    reason = link_emulation_unavailable()
    assert reason is None or (isinstance(reason, str) and reason and "\n" not in reason)


# --- netns + veth + tbf link ---------------------------------------------------------------------------


def test_tbf_args_hold_a_frame_and_a_queue():
    args = dict(zip(*[iter(linkemu._tbf_args(10.0))] * 2))
    assert args["rate"] == "10000000bit"
    assert int(args["burst"]) >= 1514
    assert int(args["limit"]) >= 4 * 2**20 + int(args["burst"])  # a few MB queue, whatever the rate
    fast = dict(zip(*[iter(linkemu._tbf_args(1000.0))] * 2))
    assert int(fast["burst"]) == math.ceil(1e9 / 8 * 0.0005)
    assert int(fast["limit"]) >= 1e9 / 8 * 0.2


def test_filler_frames_take_half_a_millisecond_below_24_mbit():
    assert linkemu.fills_idle(1.0) and linkemu.fills_idle(20.0) and not linkemu.fills_idle(25.0)
    assert [linkemu.fill_frame_bytes(r) for r in (0.1, 1.0, 10.0, 20.0, 100.0)] == [60, 62, 625, 1250, 1514]
    assert linkemu.free_bytes(10.0) == 0 and linkemu.free_bytes(100.0) == 6250
    for frame_bytes in (59, 1515):
        with pytest.raises(ValueError, match="filler frame"):
            linkemu.fill_idle("lo", frame_bytes)


def ns_retransmits(netns: str) -> int:
    """TCP segments retransmitted so far in ``netns`` (its own counters: only this test's server runs there)."""
    out = subprocess.run([linkemu._tool("ip"), "netns", "exec", netns, "nstat", "-az", "TcpRetransSegs"],
                         capture_output=True, text=True, timeout=15, check=True).stdout
    return int(out.split("TcpRetransSegs")[1].split()[0])


def client_retransmits(client: EchoClient) -> int:
    info = client._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 100)[0]  # tcpi_total_retrans


def test_netns_link_queues_65kb_at_1mbit_instead_of_dropping(netns):
    """Fault 1: a 64 KB + one frame tbf queue dropped the tail of a 65 KB response at 1 Mbit/s (1.47 s, not 0.53)."""
    if shutil.which("nstat") is None:
        pytest.skip("needs `nstat` (iproute2) to read the namespace's TCP retransmissions")
    with RateLimitedLink(1.0, echo_server=True) as link:
        link.client.request(b"", 0)
        before = client_retransmits(link.client), ns_retransmits(link.netns)
        up = link.client.request(bytes(65536), 0)
        down = link.client.request(b"", 65536)
        drops = link.drops()
        after = client_retransmits(link.client), ns_retransmits(link.netns)
    assert drops == {"up": 0, "down": 0}
    assert after == before  # no segment resent: none was lost
    nominal = nominal_seconds(65536, 0, 1.0)  # 0.52 s; headers (4.6% at full frames) and ACKs add the rest
    assert 0.98 * nominal <= up <= 1.12 * nominal and 0.98 * nominal <= down <= 1.12 * nominal, (up, down, nominal)


@pytest.mark.parametrize("size", [2000, 5000])
def test_netns_link_makes_small_transfers_wait_their_time(netns, size):
    """Fault 2: tbf's one-frame bucket let a 2 KB request at 1 Mbit/s through in 5 ms instead of 17 ms."""
    with RateLimitedLink(1.0, echo_server=True) as link:
        assert link.free_bytes == 0
        link.client.request(b"", 0)
        times = {}
        for payload, response in ((size, 0), (0, size)):
            samples = []
            for _ in range(3):
                time.sleep(0.05)  # idle: a bucket that refilled would let the transfer through at once
                samples.append(link.client.request(bytes(payload), response))
            times[payload, response] = statistics.median(samples)
    for (payload, response), seconds in times.items():
        nominal = nominal_seconds(payload, response, 1.0)
        # One frame of free credit would give <= (size + 24 - 1514) / size of nominal: 0.25 at 2 KB, 0.70 at 5 KB.
        assert 0.95 * nominal <= seconds <= 1.25 * nominal, (payload, response, seconds, nominal)


def test_netns_link_is_rate_limited_both_ways(netns):
    rate, size = 10.0, 250_000
    with RateLimitedLink(rate, echo_server=True) as link:
        assert link.kind == "netns-tbf" and link.rate_mbit == rate
        assert link.netns in netns_names()
        for cmd in ([link._tc, "qdisc", "show", "dev", link.host_dev],
                    [link._tc, "-n", link.netns, "qdisc", "show", "dev", link.netns_dev]):
            shown = subprocess.run(cmd, capture_output=True, text=True, timeout=15).stdout
            assert "tbf" in shown and "rate 10Mbit" in shown, shown
        up = measure_transfer(link, size, 0, 3)  # uplink: the host veth's tbf
        down = measure_transfer(link, 64, size, 3)  # downlink: the namespace veth's tbf (large response)
    for times, (payload, response) in [(up, (size, 0)), (down, (64, size))]:
        ratio = median_ratio(times, nominal_seconds(payload, response, rate))
        # TCP over Ethernet frames delivers ~94% of the rate as payload. Noise only slows the link; 0.7 still
        # fails a link limited to half the rate, and 1.05 one not limited at all or limited to twice the rate.
        assert 0.7 <= ratio <= 1.05, (payload, response, times)


def test_netns_link_cleans_up_after_exception(netns):
    with pytest.raises(RuntimeError, match="inside the with"):
        with RateLimitedLink(10.0, echo_server=True) as link:
            ns, host_dev, netns_dev = link.netns, link.host_dev, link.netns_dev
            server = link._procs[-1]  # after the idle fillers
            assert server.args[-4:] == serve_command(link.server_ip, 0)[-4:]
            assert ns in netns_names() and link_exists(host_dev) and link_exists(netns_dev, ns)
            assert link.client.request(b"x", 10) > 0
            raise RuntimeError("inside the with")
    assert ns not in netns_names()
    assert not link_exists(host_dev)
    assert server.poll() is not None  # the echo server in the namespace was stopped
    assert link not in linkemu._live
    link.close()  # idempotent


def test_netns_link_cleans_up_after_failed_setup(netns, monkeypatch):
    monkeypatch.setattr(linkemu, "_tbf_args", lambda rate: ["rate", "not-a-rate"])
    with pytest.raises(LinkEmulationError, match="tc"):
        RateLimitedLink(10.0)
    # The autouse fixture checks that neither the namespace nor the veth pair is left.


def test_netns_link_does_not_delete_a_namespace_it_did_not_create(netns):
    name = f"esT{os.getpid()}"
    subprocess.run([linkemu._tool("ip"), "netns", "add", name], check=True, timeout=15)
    try:
        with pytest.raises(LinkEmulationError):
            RateLimitedLink(10.0, name=name)
        assert name in netns_names()
    finally:
        subprocess.run([linkemu._tool("ip"), "netns", "del", name], timeout=15)
    assert name not in netns_names()


def test_netns_link_client_needs_an_echo_server(netns):
    with RateLimitedLink(10.0) as link:
        with pytest.raises(LinkEmulationError, match="no echo server"):
            link.client  # noqa: B018
        link.start_echo_server()
        assert link.client.request(b"abc", 3) > 0
        with pytest.raises(LinkEmulationError, match="already has"):
            link.start_echo_server()


@pytest.mark.parametrize("name", ["has space", "x" * 15, "a/b", "-h", "-all", ".", "..", "_x"])
def test_link_rejects_bad_names_before_creating_anything(monkeypatch, name):
    monkeypatch.setattr(linkemu, "_missing_privilege", lambda: None)  # so that the name check is reached anywhere
    monkeypatch.setattr(linkemu, "_run", lambda *a, **k: pytest.fail(f"ran {a} for a bad name"))
    with pytest.raises(ValueError, match="link name"):
        RateLimitedLink(10.0, name=name)


def test_open_link_prefers_netns(netns):
    link = open_link(20.0)
    try:
        assert isinstance(link, RateLimitedLink) and link.kind == "netns-tbf" and link.rate_mbit == 20.0
        assert link.client.request(bytes(1000), 1000) > 0
    finally:
        link.close()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not linkemu._pid_alive(proc.pid)
    return proc.pid


def test_remove_stale_links_removes_dead_process_links_only(netns):
    ip = linkemu._tool("ip")
    stale = f"es{dead_pid()}x0"
    subprocess.run([ip, "netns", "add", stale], check=True, timeout=15)
    try:
        subprocess.run([ip, "link", "add", f"{stale}h", "type", "veth", "peer", "name", f"{stale}n", "netns", stale],
                       check=True, timeout=15)
        with RateLimitedLink(10.0, echo_server=True) as live:
            removed = remove_stale_links()
            assert stale in removed
            assert live.netns not in removed and live.netns in netns_names()
            assert live.client.request(b"still here", 10) > 0
        assert stale not in netns_names()
        deadline = time.monotonic() + 5  # the veth goes with its namespace, which the kernel frees asynchronously
        while link_exists(f"{stale}h") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not link_exists(f"{stale}h")
    finally:
        subprocess.run([ip, "link", "del", f"{stale}h"], capture_output=True, timeout=15)
        subprocess.run([ip, "netns", "del", stale], capture_output=True, timeout=15)


def test_no_namespaces_of_this_process_remain(netns):
    """After the links above, `ip netns list` shows none named after this process."""
    assert not [name for name in netns_names() if name.startswith(MY_PREFIX)]
    assert not linkemu._live


# --- chained links ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rates", [[], [1.0] * 9, [0.0], [(1.0, -1.0)], [(1.0, 2.0, 3.0)], [math.nan]])
def test_chain_rejects_bad_rates_before_creating_anything(monkeypatch, rates):
    monkeypatch.setattr(linkemu, "_run", lambda *a, **k: pytest.fail(f"ran {a} for bad rates"))
    with pytest.raises(ValueError):
        ChainedLinks(rates)


@pytest.mark.parametrize("rtt_ms", [[10.0], [10.0, -1.0], [10.0, math.nan], [10.0, 20_000.0]])
def test_chain_rejects_bad_round_trips_before_creating_anything(monkeypatch, rtt_ms):
    monkeypatch.setattr(linkemu, "_run", lambda *a, **k: pytest.fail(f"ran {a} for bad round trips"))
    with pytest.raises(ValueError, match="rtt_ms"):
        ChainedLinks([10.0, 10.0], rtt_ms=rtt_ms)


def test_chain_without_root_says_why(monkeypatch):
    monkeypatch.setattr(linkemu, "_missing_privilege", lambda: "link emulation needs root (test)")
    with pytest.raises(LinkEmulationError, match="root"):
        ChainedLinks([10.0, 10.0])


def test_chain_hops_each_run_at_their_own_rate(netns):
    """device (host) - 8 Mbit/s - gateway (tier 1) - 2 up / 4 down - cloud (tier 2), each hop measured alone."""
    with ChainedLinks([8.0, (2.0, 4.0)]) as chain:
        assert chain.tiers == 3 and chain.netns(0) is None
        tiers = [chain.netns(1), chain.netns(2)]
        assert set(tiers) <= set(netns_names())
        with pytest.raises(ValueError, match="tier"):
            chain.address(3)
        cases = [(1, 100_000, 0, 8.0), (1, 0, 100_000, 8.0), (2, 50_000, 0, 2.0), (2, 0, 50_000, 4.0)]
        ratios = [statistics.median(chain.measure_hop(hop, up, down, 2)) / nominal_seconds(up, down, rate)
                  for hop, up, down, rate in cases]
        # The cloud through the gateway, from the host: routed, at the slower hop's rate.
        port = chain.start_echo_server(2)
        with EchoClient(chain.address(2), port, timeout=IO_TIMEOUT) as client:
            client.request(b"", 0)
            routed = client.request(bytes(50_000), 0) / nominal_seconds(50_000, 0, 2.0)
        drops = chain.drops()
        procs = list(chain._procs)
    # Headers make a hop ~5% slower than its rate in payload; a hop at another hop's rate would be 2x to 4x off.
    assert all(0.97 <= ratio <= 1.25 for ratio in ratios + [routed]), (ratios, routed)
    assert drops == [{"up": 0, "down": 0}] * 2
    assert all(proc.poll() is not None for proc in procs)  # servers and fillers stopped
    assert not set(tiers) & set(netns_names())


def test_chain_set_rate_changes_a_hop_in_place(netns):
    """set_rate reshapes a live hop (tc qdisc change): same namespaces and servers, the new rate, fillers to match."""
    with ChainedLinks([40.0]) as chain:
        tiers = chain.netns(1)
        assert not chain._fillers  # 40 Mbit/s: no idle filler
        chain.set_rate(1, (4.0, 2.0))
        assert chain.rates == [(4.0, 2.0)] and set(chain._fillers) == {(1, False), (1, True)}
        ratios = [statistics.median(chain.measure_hop(1, up, down, 2)) / nominal_seconds(up, down, rate)
                  for up, down, rate in [(40_000, 0, 4.0), (0, 20_000, 2.0)]]
        fillers = list(chain._fillers.values())
        chain.set_rate(1, 40.0)
        assert not chain._fillers and all(proc.poll() is not None for proc in fillers)
        fast = statistics.median(chain.measure_hop(1, 400_000, 0, 2)) / nominal_seconds(400_000, 0, 40.0)
        assert chain.netns(1) == tiers and chain.drops() == [{"up": 0, "down": 0}]
        with pytest.raises(ValueError):
            chain.set_rate(2, 10.0)
    assert all(0.97 <= ratio <= 1.25 for ratio in ratios + [fast]), (ratios, fast)


def test_chain_hop_delay_adds_its_round_trip(netns):
    """A hop with rtt_ms runs through a TAP delay line: an empty request takes the round trip, a transfer its
    serialization time on top."""
    with ChainedLinks([8.0], rtt_ms=[30.0]) as chain:
        line = chain._procs[0]
        port = chain.start_echo_server(1)
        with EchoClient(chain.address(1), port, timeout=IO_TIMEOUT) as client:
            client.request(b"", 0)
            empty = statistics.median(client.request(b"", 0) for _ in range(5))
            transfer = statistics.median(client.request(bytes(50_000), 0) for _ in range(2))
        drops = chain.drops()
    assert 0.030 <= empty <= 0.036, empty  # two 82-byte frames at 8 Mbit/s and two filler frames add < 1 ms
    expected = 0.030 + nominal_seconds(50_000, 0, 8.0)
    # TCP's slow start over 30 ms costs a round trip or two more; a line without delay or rate would be far under.
    assert 0.97 * expected <= transfer <= expected + 0.075, (transfer, expected)
    assert drops == [{"up": 0, "down": 0}]
    assert line.poll() is not None


def test_chain_cleans_up_after_failed_setup(netns, monkeypatch):
    real = linkemu._tbf_args
    monkeypatch.setattr(linkemu, "_tbf_args", lambda rate: real(rate) if rate != 3.0 else ["rate", "not-a-rate"])
    with pytest.raises(LinkEmulationError, match="tc"):
        ChainedLinks([10.0, 3.0])  # fails on the second hop, after the first is up
    # The autouse fixture checks that no namespace, veth or link object of this process is left.
