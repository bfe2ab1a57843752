"""dFIL, the bound beside the attacks: its value on heads with a closed form, that it bounds a real attack where
the bound is tight, and that it reaches the audit's JSON, its leakage table and `plan --max-dfil`."""

import json
import math

import pytest
import torch
from torch import nn

from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import trace
from edgesplit.model.zoo import small_cnn
from edgesplit.plan.leakage import load_leakage
from edgesplit.privacy.audit import AuditSettings, resolve_cuts, run_audit
from edgesplit.privacy.defenses import GaussianNoise, parse_defenses
from edgesplit.privacy.fisher import dfil, psnr_bound
from edgesplit.privacy.inversion import optimization_inversion
from edgesplit.privacy.schema import load_audit
from test_cli import assert_user_error, edgesplit_in_process

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 8, 8)  # d = 64 input values


class Linear(nn.Module):
    """f(x) = A x on the flattened image, one crossing tensor per matrix."""

    def __init__(self, *matrices: torch.Tensor) -> None:
        super().__init__()
        self.matrices = nn.ParameterList([nn.Parameter(a, requires_grad=False) for a in matrices])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(x.flatten(1) @ a.T for a in self.matrices)


def isotropic(rows: int, scale: float, seed: int) -> torch.Tensor:
    """scale × a matrix with orthonormal columns (rows × 64): AᵀA = scale² I, where the bound is attained."""
    q, _ = torch.linalg.qr(torch.randn(rows, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (scale * q).float()


def test_dfil_of_a_linear_head_is_the_closed_form_exactly_and_by_hutchinson():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 64, generator=generator), torch.randn(12, 64, generator=generator)
    sigmas = (0.5, 2.0)
    closed = float((a.square().sum() / sigmas[0] ** 2 + b.square().sum() / sigmas[1] ** 2) / 64)
    images = torch.rand(32, *SHAPE, generator=generator)
    exact = dfil(Linear(a, b), images, sigmas)
    assert exact.estimator == "exact" and exact.samples == 64
    assert torch.allclose(exact.per_victim, torch.full((32,), closed, dtype=torch.float64), rtol=1e-5)
    estimate = dfil(Linear(a, b), images, sigmas, exact_max=0, samples=64)
    assert estimate.estimator == "hutchinson" and estimate.samples == 64
    assert estimate.mean == pytest.approx(closed, rel=0.03)  # 2048 probes: ~0.5% standard error
    assert float(estimate.per_victim.std()) > 0  # each victim has its own random vectors
    assert psnr_bound(closed) == pytest.approx(10 * math.log10(closed))
    with pytest.raises(EdgesplitError, match="noise std"):
        dfil(Linear(a, b), images, (0.5, 0.0))


def test_the_bound_holds_and_is_tight_for_a_linear_head_under_noise():
    sigma, count = 0.05, 64
    head = Linear(isotropic(96, 1.0, seed=1))
    images = 0.25 + 0.5 * torch.rand(count, *SHAPE, generator=torch.Generator().manual_seed(2))
    bound = 1 / dfil(head, images, [sigma]).mean  # MSE per value of any unbiased estimator: here σ²
    assert bound == pytest.approx(sigma**2, rel=1e-4)
    with torch.no_grad():
        clean = head(images)
    noisy = GaussianNoise([sigma], seed=3)(list(clean))  # the audit's noise defense
    # The optimal unbiased estimator (least squares) attains the Cramér–Rao bound: AᵀA ∝ I.
    least_squares = noisy[0] @ torch.linalg.pinv(head.matrices[0]).T
    mse = float((least_squares - images.flatten(1)).square().mean())
    assert bound * 0.9 <= mse <= bound * 1.1
    # The white-box attack without its TV prior is maximum likelihood; images inside [0, 1] leave its box
    # projection idle, so it is unbiased here, and cannot beat the bound.
    attack = optimization_inversion(head, victim_features=noisy, input_shape=SHAPE, steps=300, tv_weight=0.0)
    attacked = float((attack.reconstructions - images).square().mean())
    assert bound * 0.9 <= attacked <= bound * 1.15


def test_audit_reports_dfil_per_cut_and_plan_refuses_cuts_above_max_dfil(digits, tmp_path):
    torch.manual_seed(0)
    model = small_cnn().eval()
    traced = trace(model, digits.train_images[:1])
    settings = AuditSettings(attacks=("probe",), probe_kinds=("linear",), victims=16, aux_limit=64,
                             dfil_victims=8, dfil_samples=8)
    report = run_audit(traced, model, digits, digits, cuts=resolve_cuts(traced, "0,conv1_0,flatten"),
                       defenses=parse_defenses(["noise:0.5", "quant:2"]), settings=settings, name="small_cnn",
                       model_ref={}, data_spec="digits", aux_spec="digits", progress=False)
    none0, noise0, quant0 = (report.row(0, d) for d in ("none", "noise:0.5", "quant:2"))
    assert none0.fisher.sigma == 0.5 and noise0.fisher.sigma == 0.5  # the audit's noise σ, when none is given
    assert quant0.fisher is None  # quantization is not Gaussian noise: no bound claimed
    # Position 0 sends the input itself: J = I, dFIL = 1 / σ², σ = 0.5 × the pixels' std.
    assert none0.fisher.estimator == "exact"
    assert none0.fisher.dfil.mean == pytest.approx(1 / none0.fisher.noise_std[0] ** 2, rel=1e-5)
    assert none0.fisher.psnr_bound == pytest.approx(10 * math.log10(none0.fisher.dfil.mean))
    path = tmp_path / "audit.json"
    path.write_text(report.model_dump_json())
    leakage = load_leakage(path, traced.fingerprint)
    assert leakage.dfil_sigma == 0.5
    dfils = {c.position: c.dfil for c in leakage.cuts}
    assert load_audit(path).row(13).fisher.dfil.mean == dfils[13] != dfils[0]

    high, low = sorted((1, 13), key=dfils.get, reverse=True)  # two cuts that split the model
    plan = tmp_path / "plan.json"
    args = ("plan", "small_cnn", "--input-shape", "1,1,8,8", "--leakage", str(path), "--runs", "1", "-q")
    result = edgesplit_in_process(*args, "--max-dfil", f"{(dfils[high] + dfils[low]) / 2:.6g}", "--json", str(plan))
    assert result.returncode == 0, result.stderr
    ranked = json.loads(plan.read_text())["ranked"]
    refused = [p for p in ranked if p["position"] == high and p["kind"] == "split"]
    assert refused and all(not p["feasible"] and any("dFIL" in v for v in p["violations"]) for p in refused)
    assert any(p["feasible"] and p["position"] == low and p["kind"] == "split" for p in ranked)
    # Nothing fits when the device cannot hold the model and every cut leaks more than allowed.
    assert_user_error(edgesplit_in_process(*args, "--max-dfil", "1e-12", "--device-memory", "1KB"), "no plan")
    assert_user_error(edgesplit_in_process("plan", "small_cnn", "--max-dfil", "1"), "--leakage")
