"""The README's runnable example of the fused ops in a user's own trainer, on both op paths."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fused_ops_step.py"


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_fused_ops_example_runs(backend):
    env = dict(os.environ)
    if backend == "triton" and "TRITON_INTERPRET" not in os.environ:
        env["TRITON_INTERPRET"] = "1"
    res = subprocess.run([sys.executable, str(EXAMPLE), backend], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    m = re.fullmatch(r"mlm_loss=(\S+) disc_loss=(\S+) replaced=(\S+)\n", res.stdout)
    assert m, res.stdout
    mlm, disc, replaced = map(float, m.groups())
    assert abs(mlm - math.log(1000)) < 1.0  # near-uniform generator at init: CE ~ log V
    assert 0.5 < disc < 0.9  # untrained discriminator: BCE ~ log 2
    assert 0.0 < replaced <= 5 / 32
