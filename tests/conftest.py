"""Test-session setup shared by every test module.

The Triton kernels are tested on the CPU through Triton's interpreter, which must be switched on
before triton is first imported (any test module importing the model imports triton). On a
machine with a CUDA GPU the interpreter stays off, so the same tests run the compiled kernels.

Random inputs: every test starts from a fresh seed, drawn per test and per run, that seeds torch
(CPU and CUDA), numpy's and Python's global generators before the test runs. The ``seed`` fixture
gives the same number to a test that builds its own generator (``np.random.default_rng(seed)``,
``torch.Generator().manual_seed(seed)``). A failing test's report ends with the seed, and
``ELECTRA_TEST_SEED=<seed> pytest <test id>`` replays it; the seed is also in the test's
``user_properties`` (``--junitxml`` files carry it).
"""

import os
import random
import secrets

import numpy as np
import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

SEED_ENV = "ELECTRA_TEST_SEED"


@pytest.fixture(autouse=True)
def _seeded_rngs(request) -> int:
    seed = int(os.environ.get(SEED_ENV) or secrets.randbits(31))
    request.node.user_properties.append(("seed", seed))
    torch.manual_seed(seed)  # every device's default generator
    np.random.seed(seed)
    random.seed(seed)
    return seed


@pytest.fixture
def seed(_seeded_rngs) -> int:
    """This test's seed (see the module docstring), for generators a test builds itself."""
    return _seeded_rngs


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seeds = [value for name, value in item.user_properties if name == "seed"]
    if report.failed and seeds:
        report.sections.append(("random seed", f"{SEED_ENV}={seeds[0]} replays this test's random inputs"))
