"""Faults a long pre-training run meets: corrupted or malicious checkpoints, an output folder that
turns read-only or a disk that fills up at save time, NaN losses. Each case is listed, with what
happens, in docs/RELIABILITY.md."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import RESUME, SMALL, SMALL_VOCAB, _corpus, _vocab

from electra_fast import checkpoint as ckpt
from electra_fast.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from electra_fast.model import Electra
from electra_fast.train import main

pytestmark = pytest.mark.slow


def _run(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.fixture
def corpus(tmp_path):
    data = _corpus(tmp_path / "corpus", seed=5)
    return ["--data", str(data), "--vocab", str(_vocab(data, tmp_path / "vocab"))]


def test_truncated_latest_checkpoint_falls_back_to_the_newest_good_one(tmp_path, capsys, corpus):
    run = tmp_path / "run"
    code, err = _run(capsys, [*corpus, "--steps", "10", "--save-every", "5", "--out", str(run), *SMALL_VOCAB])
    assert code == 0, err
    last = ckpt.checkpoint_path(run, 10)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a crash mid-copy, a bad disk
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(last)
    code, err = _run(capsys, ["--resume", str(run), "--steps", "12", *RESUME])
    assert code == 0, err
    assert "ckpt-00000010.pt: unreadable checkpoint" in err and "falling back" in err
    assert "resuming from" in err and "ckpt-00000005.pt (step 5)" in err
    assert load_checkpoint(ckpt.checkpoint_path(run, 12))["step"] == 12


class _RunsCode:
    """Unpickling this would create a marker file: a checkpoint must never be able to do that."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_with_a_pickled_object_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    model = Electra(_tiny_cfg())
    good = save_checkpoint({"model": model.state_dict(), "step": 1}, tmp_path / "run", 1)
    evil = ckpt.checkpoint_path(tmp_path / "run", 2)
    torch.save({"model": model.state_dict(), "step": 2, "payload": _RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(evil)
    state, path = load_latest(tmp_path / "run", log=lambda m: None)
    assert path == good and state["step"] == 1
    assert not marker.exists()


def _tiny_cfg():
    from electra_fast import ElectraConfig

    return ElectraConfig.preset("tiny", vocab_size=50, num_layers=1, generator_num_layers=1)


def test_full_disk_at_save_time_keeps_the_previous_checkpoint_and_stops_cleanly(tmp_path, capsys, corpus,
                                                                                 monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint hits a full disk half way through
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", flaky_save)
    code, err = _run(capsys, [*corpus, "--steps", "20", "--save-every", "4", "--out", str(run), *SMALL_VOCAB])
    assert code != 0
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: could not write checkpoint") and "No space left on device" in line
    assert "previous checkpoint is intact" in line and "Traceback" not in err
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000004.pt"]
    assert load_checkpoint(list_checkpoints(run)[0])["step"] == 4
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def _without_root_override() -> list[str]:
    """Root ignores permission bits; drop CAP_DAC_OVERRIDE so a read-only folder binds."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be enforced")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_output_folder_turning_read_only_at_save_time(tmp_path, corpus):
    run = tmp_path / "run"
    cmd = [*_without_root_override(), sys.executable, "-m", "electra_fast.train", *corpus, "--steps", "2000",
           "--save-every", "3", "--out", str(run), *SMALL_VOCAB]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list_checkpoints(run):
            time.sleep(0.01)
        run.chmod(0o555)
        _, err = proc.communicate(timeout=300)
    finally:
        run.chmod(0o755)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    assert proc.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: could not write checkpoint") and "Permission denied" in last, err[-2000:]
    kept = list_checkpoints(run)
    assert kept and all(load_checkpoint(p)["step"] % 3 == 0 for p in kept)


def test_read_only_output_folder_at_start_is_one_clear_error(tmp_path, corpus):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        res = subprocess.run([*_without_root_override(), sys.executable, "-m", "electra_fast.train", *corpus,
                              "--out", str(run), *SMALL_VOCAB], capture_output=True, text=True, timeout=300)
    finally:
        run.chmod(0o755)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == f"error: --out {run}: folder is not writable"


def _nan_at(monkeypatch, steps):
    """Make the loss NaN on the given (1-based) forward calls."""
    orig = Electra.forward
    calls = {"n": 0}

    def forward(self, *a, **k):
        out = orig(self, *a, **k)
        calls["n"] += 1
        if self.training and (steps == "all" or calls["n"] in steps):
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(Electra, "forward", forward)


def test_nan_loss_skips_the_step_and_counts_it(tmp_path, capsys, corpus, monkeypatch):
    _nan_at(monkeypatch, {3, 4})
    run = tmp_path / "run"
    code, err = _run(capsys, [*corpus, "--steps", "8", "--out", str(run), *SMALL_VOCAB])
    assert code == 0, err
    assert "non-finite loss or gradient at step 3; step skipped" in err
    assert "skipped non-finite steps=2" in err.strip().splitlines()[-1]
    state = load_checkpoint(list_checkpoints(run)[-1])
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_every_step_stops_the_run_naming_the_step(tmp_path, capsys, corpus, monkeypatch):
    _nan_at(monkeypatch, "all")
    code, err = _run(capsys, [*corpus, "--steps", "8", "--max-bad-steps", "3", "--out", str(tmp_path / "r"),
                              *SMALL_VOCAB])
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: 3 consecutive non-finite steps ending at step 3")


# ------------------------------------------------------------------------- run folders and resume
def test_overwrite_starts_over_deleting_only_the_old_runs_files(tmp_path, capsys):
    data = _corpus(tmp_path / "corpus", seed=8)
    run = tmp_path / "run"
    base = ["--data", str(data), "--out", str(run), *SMALL]
    assert _run(capsys, [*base, "--steps", "6", "--save-every", "3"])[0] == 0
    (run / "notes.txt").write_text("mine\n")
    code, err = _run(capsys, [*base, "--steps", "6"])
    assert code == 2 and f"--resume {run}" in err.strip().splitlines()[-1]
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000003.pt", "ckpt-00000006.pt"]  # untouched
    code, err = _run(capsys, [*base, "--steps", "2", "--overwrite", "--vocab-size", "100"])
    assert code == 0, err
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000002.pt"]  # no step-6 checkpoint of the old run
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2]  # the new run's two steps and its final evaluation, no old history
    assert load_checkpoint(list_checkpoints(run)[0])["config"]["vocab_size"] <= 100  # a new vocabulary
    assert (run / "notes.txt").read_text() == "mine\n"


def test_resume_of_a_run_stopped_before_its_first_checkpoint_says_start_again(tmp_path, capsys):
    """A run killed before its first checkpoint was complete (checkpoints are written in the background)
    has nothing to resume: --resume says so in one line, and the original command takes the folder over."""
    data = _corpus(tmp_path / "corpus", seed=11)
    run = tmp_path / "run"
    command = ["--data", str(data), "--out", str(run), *SMALL, "--steps", "2"]
    assert _run(capsys, command)[0] == 0
    for p in list_checkpoints(run):  # what a SIGKILL during the first background write leaves
        p.unlink()
    code, err = _run(capsys, ["--resume", str(run), *RESUME])
    assert code == 2 and "before its first checkpoint was complete" in err.strip().splitlines()[-1], err
    assert _run(capsys, command)[0] == 0
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000002.pt"]


def test_resume_of_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    data = _corpus(tmp_path / "corpus", seed=9)
    run = tmp_path / "run"
    assert _run(capsys, ["--data", str(data), "--out", str(run), *SMALL, "--steps", "3"])[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    code, err = _run(capsys, ["--resume", str(run), *RESUME])
    assert code == 0
    assert err.strip().splitlines()[-1] == (f"the run in {run} is finished: step 3 of 3; final checkpoint "
                                            f"{run / 'ckpt-00000003.pt'} (resume with a larger --steps to train on)")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_resume_accepts_the_same_corpus_moved_and_extends_steps(tmp_path, capsys):
    data = _corpus(tmp_path / "corpus", seed=10)
    run = tmp_path / "run"
    assert _run(capsys, ["--data", str(data), "--out", str(run), *SMALL, "--steps", "3"])[0] == 0
    moved = tmp_path / "elsewhere"
    shutil.move(str(data), moved)
    code, err = _run(capsys, ["--resume", str(run), "--steps", "5", "--data", str(moved), *RESUME])
    assert code == 0, err
    state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["step"] == 5 and state["run_args"]["data"] == [str(moved)]
    assert json.loads((run / "config.json").read_text())["train_steps"] == 5


def test_corpus_smaller_than_one_batch_is_one_line_naming_a_real_flag(tmp_path, capsys):
    data = _corpus(tmp_path / "corpus", n_docs=4, seed=3)
    code, err = _run(capsys, ["--data", str(data), "--out", str(tmp_path / "r"), *SMALL[:4], "--batch-size", "512",
                              "--no-progress"])
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err
    assert last.startswith("error: the corpus gives") and "lower --batch-size" in last and "drop_last" not in last
    # the folder of a run that stopped before its first checkpoint is not a run to protect: retry in place
    code, err = _run(capsys, ["--data", str(data), "--out", str(tmp_path / "r"), *SMALL, "--steps", "1"])
    assert code == 0, err


# ------------------------------------------------------------------------- non-finite is failure
def test_diverging_lr_fails_the_run_and_keeps_only_finite_checkpoints(tmp_path, capsys):
    """--lr 1e30: the first update (after a zero-lr warmup step) sends the weights to inf; the run
    must end with an error, never 'done', and every checkpoint left must be finite."""
    data = _corpus(tmp_path / "corpus", seed=6)
    run = tmp_path / "run"
    code, err = _run(capsys, ["--data", str(data), "--out", str(run), *SMALL, "--steps", "8", "--save-every", "1",
                              "--lr", "1e30", "--warmup", "1", "--max-bad-steps", "3"])
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "non-finite" in last and "done:" not in err, err
    kept = list_checkpoints(run)
    assert kept and str(kept[-1]) in last  # the message names the last finite checkpoint
    for p in kept:
        assert all(torch.isfinite(v).all() for v in load_checkpoint(p)["model"].values()), p.name


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    data = _corpus(tmp_path / "corpus", seed=4)
    argv = ["--data", str(data), "--out", str(tmp_path / "r"), *SMALL[:6], "--steps", "3"]  # no --no-progress
    code, err = _run(capsys, argv)
    assert code == 0, err
    assert "\r" not in err and "pre-training:" not in err
    assert "step 3/3 loss=" in err
