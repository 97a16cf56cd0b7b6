"""The backend is chosen once, explicitly (docs/ARCHITECTURE.md, section 4): the model resolves it at
construction (``backend=``, with ELECTRA_FAST_BACKEND only as the default read there), shows it in
its repr, passes it to every op call, and ``train`` writes the one its device takes into config.json."""

import json

import pytest
import torch
from electra_fast.kernels.launches import record_launches
from train_helpers import SMALL, _corpus

from electra_fast import ElectraConfig
from electra_fast.model import Electra
from electra_fast.train import main


def _cfg():
    return ElectraConfig.preset("tiny", vocab_size=40, num_layers=1, generator_num_layers=1, dropout=0.0,
                                attention_dropout=0.0)


def _batch(B=2, T=12, P=3):
    ids = torch.randint(5, 40, (B, T))
    pos = torch.stack([torch.randperm(T - 1)[:P].sort().values + 1 for _ in range(B)])
    return dict(input_ids=ids.scatter(1, pos, 4), masked_positions=pos, masked_ids=torch.gather(ids, 1, pos),
                masked_weights=torch.ones(B, P), original_ids=ids)


def test_explicit_backend_is_kept_and_shown_in_the_repr(monkeypatch):
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "triton")
    model = Electra(_cfg(), backend="reference")
    assert model.backend == "reference"
    assert "backend='reference'" in repr(model).splitlines()[1]
    assert Electra(_cfg(), backend="auto").backend == "auto"


def test_environment_is_the_default_read_at_construction_only(monkeypatch):
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "reference")
    model = Electra(_cfg())
    assert model.backend == "reference"
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "no-such-backend")  # read at no call
    with record_launches() as launches:
        model(**_batch(), seed=3)
    assert {launch.kernel for launch in launches} == {"reference"}
    assert {launch.op for launch in launches} == {"generator_head", "replace_tokens", "rtd_loss"}
    monkeypatch.delenv("ELECTRA_FAST_BACKEND")
    assert Electra(_cfg()).backend == "auto"


def test_unknown_backend_is_refused_at_construction_naming_its_source(monkeypatch):
    with pytest.raises(ValueError, match="backend must be 'auto', 'triton' or 'reference'; got 'cuda'"):
        Electra(_cfg(), backend="cuda")
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="ELECTRA_FAST_BACKEND must be .*'fastest'"):
        Electra(_cfg())


def test_train_writes_the_backend_its_device_takes_into_config_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "reference")
    run = tmp_path / "run"
    argv = ["--data", str(_corpus(tmp_path / "corpus", seed=1)), "--out", str(run), *SMALL, "--steps", "1",
            "--device", "cpu", "--no-compile"]
    assert main(argv) == 0
    info = json.loads((run / "config.json").read_text())
    assert info["backend"] == "reference" and info["train_steps"] == 1
    assert " ops=reference " in capsys.readouterr().err
