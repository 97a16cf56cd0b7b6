"""kernels/loss_mean.py (the last launch of both fused losses) against fp64 sums of the same inputs.

Runs the Triton kernel in the interpreter on the CPU (TRITON_INTERPRET=1, set before triton is imported)
or on CUDA when a GPU is present and TRITON_INTERPRET=0. Fresh random inputs each run (tests/conftest.py
reports the seed). Sizes around the kernel's 1024-element block: empty, one, odd, several blocks.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from electra_fast.kernels.dispatch import interpreting  # noqa: E402
from electra_fast.kernels.loss_mean import BLOCK, loss_mean  # noqa: E402

DEVICE = "cpu" if interpreting() or not torch.cuda.is_available() else "cuda"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and not interpreting(), reason="needs TRITON_INTERPRET=1 or a GPU")
IGNORE = -100


def _den(n: float, eps: float) -> float:
    return n + eps if eps else max(n, 1.0)


@pytest.mark.parametrize("eps", [0.0, 1e-6, 2.5])
@pytest.mark.parametrize("N", [0, 1, 37, BLOCK, 2 * BLOCK + 333])
def test_rows_and_targets_against_fp64(N, eps):
    values = torch.rand(N, dtype=torch.float64) * 10
    targets = torch.randint(0, 50, (N,))
    targets[torch.rand(N) < 0.3] = IGNORE
    values[targets == IGNORE] = 0.0  # as the head leaves them: 0 at ignored rows
    loss, den, extra = loss_mean("test", values.float().to(DEVICE), eps, targets.to(DEVICE), IGNORE)
    n = float((targets != IGNORE).sum())
    assert extra is None and loss.dtype == den.dtype == torch.float32 and loss.dim() == den.dim() == 0
    assert float(den) == pytest.approx(_den(n, eps), rel=1e-7)
    assert float(loss) == pytest.approx(float(values.sum()) / _den(n, eps), rel=2e-6, abs=1e-7)


@pytest.mark.parametrize("rows", [2, 3])
@pytest.mark.parametrize("eps", [0.0, 0.75])
@pytest.mark.parametrize("N", [1, 29, 3 * BLOCK + 1])
def test_partial_sums_against_fp64(rows, N, eps):
    sums = torch.rand(3, N, dtype=torch.float64) * 5 - 1  # losses, counts, signed dlogit sums
    sums[1] = torch.randint(0, 20, (N,)).double()
    loss, den, extra = loss_mean("test", sums[:rows].float().contiguous().to(DEVICE), eps)
    n = float(sums[1].sum())
    assert float(den) == pytest.approx(_den(n, eps), rel=1e-6)
    assert float(loss) == pytest.approx(float(sums[0].sum()) / _den(n, eps), rel=2e-6, abs=1e-7)
    if rows == 3:
        assert float(extra) == pytest.approx(float(sums[2].sum()), rel=1e-5, abs=1e-4)
    else:
        assert extra is None


def test_empty_counts_give_zero_not_nan():
    for eps in (0.0, 1e-6):
        loss, den, _ = loss_mean("test", torch.zeros(2, 5, device=DEVICE), eps)
        assert float(loss) == 0.0 and float(den) == pytest.approx(eps or 1.0, rel=1e-6)


def test_bad_shapes_name_the_problem():
    x = torch.zeros(3, 4, device=DEVICE)
    with pytest.raises(ValueError, match="loss_mean takes"):
        loss_mean("test", x, 0.0, torch.zeros(4, dtype=torch.int64, device=DEVICE))  # sums and targets
    with pytest.raises(ValueError, match="loss_mean takes"):
        loss_mean("test", x[0], 0.0)  # values without targets
    with pytest.raises(ValueError, match="loss_mean takes"):
        loss_mean("test", torch.zeros(4, 4, device=DEVICE), 0.0)
