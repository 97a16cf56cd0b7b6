"""The training CLI end to end on the CPU: exact resume after SIGKILL, signals, DDP with gloo,
and one clear error line for each bad input."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from train_helpers import RESUME, SMALL, SMALL_VOCAB, _corpus, _vocab

from electra_fast.checkpoint import list_checkpoints, load_checkpoint
from electra_fast.evaluate import roc_auc
from electra_fast.train import lr_lambda, main


def _cli(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "electra_fast.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _steps_logged(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for ln in p.read_text().splitlines():
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:  # a line being written
            continue
        if "eval" not in rec:
            out.append(rec)
    return out


def _logged_values(rec: dict) -> dict:
    """A metrics record without what depends on the clock."""
    return {k: v for k, v in rec.items() if k not in ("time", "tokens_per_s")}


def _final_params(run: Path) -> dict:
    return load_checkpoint(list_checkpoints(run)[-1])["model"]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_uninterrupted_run(tmp_path, seed):
    data = _corpus(tmp_path / "corpus", seed=1)
    steps, every = 24, 5
    # one vocabulary file for both runs (also what a user who passes --vocab does)
    # logs every 3 steps, checkpoints every 5: logging windows straddle checkpoints, so a resumed
    # run must carry the window's device-side sums in its checkpoint to log what the
    # uninterrupted run logs
    common = ["--data", str(data), "--vocab", str(_vocab(data, tmp_path / "vocab")), "--steps", str(steps),
              "--save-every", str(every), *SMALL_VOCAB, "--log-every", "3"]
    ref = _cli(*common, "--out", str(tmp_path / "ref"))
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    want = {r["step"]: _logged_values(r) for r in _steps_logged(tmp_path / "ref")}
    assert sorted(want) == list(range(3, steps + 1, 3))

    run = tmp_path / "killed"
    rng = random.Random(seed)
    kills = sorted(rng.sample([s for s in range(every + 1, steps - 1) if s % every], 3))
    proc = _cli(*common, "--out", str(run))
    for target in kills:
        deadline = time.time() + 300
        while time.time() < deadline and not any(r["step"] >= target for r in _steps_logged(run)):
            if proc.poll() is not None:
                pytest.fail(f"run ended before the kill at step {target}: {proc.stderr.read()}")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if list_checkpoints(run):
            proc = _cli("--resume", str(run), *RESUME, "--log-every", "3")
        else:  # killed while its first checkpoint was still being written (in the background): start over,
            # as a user does (the run's folder is taken over); only possible before a second one was due
            assert target < 2 * every, f"no checkpoint after a kill at step {target}"
            proc = _cli(*common, "--out", str(run))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    got = {r["step"]: _logged_values(r) for r in _steps_logged(run)}
    assert got == want, f"kills at {kills}"
    a, b = _final_params(tmp_path / "ref"), _final_params(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    data = _corpus(tmp_path / "corpus", seed=2)
    run = tmp_path / "run"
    proc = _cli("--data", str(data), "--steps", "400", "--save-every", "1000", "--out", str(run), *SMALL)
    deadline = time.time() + 300
    while time.time() < deadline and len(_steps_logged(run)) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: stopped at step" in err and "--resume" in err
    assert "Traceback" not in err
    ck = list_checkpoints(run)
    assert len(ck) == 1
    assert load_checkpoint(ck[0])["step"] >= 3


@pytest.mark.slow
def test_torchrun_two_ranks_gloo_keep_identical_parameters(tmp_path):
    data = _corpus(tmp_path / "corpus", seed=3)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(29500 + random.randint(0, 2000)), "-m", "electra_fast.train", "--data", str(data),
                          "--steps", "6", "--device", "cpu", "--out", str(tmp_path / "ddp"), *SMALL],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "parameters identical on all 2 ranks" in res.stderr
    assert "ranks=2" in res.stderr
    ck = load_checkpoint(list_checkpoints(tmp_path / "ddp")[-1])
    assert ck["world_size"] == 2 and len(ck["loader"]) == 2
    assert ck["loader"][0] == ck["loader"][1]  # same number of batches consumed by each rank


def _one_error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        sys.exit(main(argv))
    assert e.value.code not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: "), err
    return err[-1]


def test_bad_inputs_get_one_clear_error_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o"), "--no-progress"]
    assert "no such file" in _one_error_line(capsys, ["--data", str(tmp_path / "missing.txt"), *out])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    assert "empty" in _one_error_line(capsys, ["--data", str(empty), *out])
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    line = _one_error_line(capsys, ["--data", str(bad), *out])
    assert "latin1.txt" in line and "byte offset 3" in line
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\nhello\nworld\n")
    assert "[MASK]" in _one_error_line(capsys, ["--data", str(_corpus(tmp_path / "c")), "--vocab", str(vocab), *out])
    assert "position embeddings" in _one_error_line(capsys, ["--seq-len", "4096", *out])
    assert "--batch-size must be an integer >= 1, got 0" in _one_error_line(capsys, ["--batch-size", "0", *out])


def test_schedule_is_warmup_times_linear_decay():
    assert lr_lambda(0, 10, 100) == 0.0
    assert lr_lambda(5, 10, 100) == pytest.approx(0.5 * 0.95)
    assert lr_lambda(10, 10, 100) == pytest.approx(0.9)
    assert lr_lambda(100, 10, 100) == 0.0


def test_roc_auc_against_pairwise_definition(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(300, generator=g).round(decimals=1).numpy()  # ties included
    labels = (torch.rand(300, generator=g) < 0.3).numpy()
    pos, neg = scores[labels], scores[~labels]
    want = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert roc_auc(scores, labels) == pytest.approx(want, abs=1e-12)


def test_evaluate_separates_hidden_positions_and_their_baselines(seed):
    """evaluate's MLM numbers against a direct count from the generator's full logits: accuracy
    over all masked positions, over the hidden ([MASK]ed) ones, and both baselines (copy the
    visible token, else the most frequent; the most frequent at hidden positions)."""
    from electra_fast.config import ElectraConfig
    from electra_fast.evaluate import evaluate
    from electra_fast.masking import mask_batch
    from electra_fast.model import Electra

    g = torch.Generator().manual_seed(seed)
    V, T, B = 50, 37, 5
    cfg = ElectraConfig.preset("tiny", vocab_size=V, max_seq_length=T, max_position_embeddings=64,
                               num_layers=1, generator_num_layers=1)
    torch.manual_seed(seed)
    model = Electra(cfg).eval()
    ids = torch.randint(5, 12, (B, T), generator=g).numpy()  # few distinct ids: the baseline hits
    batches = []
    for k in range(3):
        m = mask_batch(ids, vocab_size=V, mask_token_id=4, special_ids=[0, 1, 2, 3, 4], pad_token_id=0,
                       mask_prob=0.3, max_predictions=14, seed=seed + k)
        batches.append({"input_ids": torch.as_tensor(m.input_ids, dtype=torch.long),
                        "token_type_ids": torch.zeros(B, T, dtype=torch.long),
                        "attention_mask": torch.ones(B, T, dtype=torch.bool),
                        "masked_positions": torch.as_tensor(m.masked_positions),
                        "masked_ids": torch.as_tensor(m.masked_ids),
                        "masked_weights": torch.as_tensor(m.masked_weights),
                        "original_ids": torch.as_tensor(ids)})
    mft = 7
    res = evaluate(model, batches, torch.device("cpu"), nullcontext(), most_frequent_id=mft)

    n = hit = hid = hid_hit = base = base_hid = 0
    with torch.no_grad():
        for b in batches:
            pred = model.generator_logits(b["input_ids"], b["token_type_ids"], b["attention_mask"]).argmax(-1)
            for i in range(B):
                for j in range(b["masked_positions"].shape[1]):
                    if b["masked_weights"][i, j] == 0:
                        continue
                    p, want = int(b["masked_positions"][i, j]), int(b["masked_ids"][i, j])
                    hidden = int(b["input_ids"][i, p]) != want
                    n += 1
                    hit += int(pred[i, p]) == want
                    hid += hidden
                    hid_hit += hidden and int(pred[i, p]) == want
                    base += (not hidden) or want == mft
                    base_hid += hidden and want == mft
    assert 0 < hid < n  # both kinds of masked position occur
    assert res["mlm_accuracy"] == pytest.approx(hit / n)
    assert res["mlm_accuracy_hidden"] == pytest.approx(hid_hit / hid)
    assert res["mlm_baseline_accuracy"] == pytest.approx(base / n)
    assert res["mlm_baseline_accuracy_hidden"] == pytest.approx(base_hid / hid)


@pytest.mark.parametrize("flags, preset, expected", [
    ([], "tiny", True), (["--no-whole-word"], "tiny", False), ([], "small", False), (["--whole-word"], "small", True)])
def test_whole_word_masking_defaults_on_for_tiny_only_and_is_saved_with_the_run(tmp_path, flags, preset, expected):
    """The tiny preset masks whole words unless told not to; the official presets do not unless
    told to. The choice is a run argument, so the checkpoint keeps it for --resume."""
    corpus = _corpus(tmp_path / "corpus", seed=0)
    run = tmp_path / "run"
    over = [] if preset == "tiny" else ["--preset", preset]
    assert main(["--data", str(corpus), "--out", str(run), *SMALL, *over, "--steps", "1", "--save-every", "1",
                 *flags]) == 0
    state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["run_args"]["whole_word"] is expected


def test_disc_weight_flag_reaches_the_config():
    """--disc-weight sets the paper's lambda (the discriminator loss's weight); the preset's value otherwise."""
    from electra_fast.train import build_parser, resolve_config

    given = resolve_config(build_parser().parse_args(["--disc-weight", "12.5"]), None)
    tiny = resolve_config(build_parser().parse_args([]), None)
    small = resolve_config(build_parser().parse_args(["--preset", "small"]), None)
    assert given.disc_weight == 12.5 and tiny.disc_weight == 10.0 and small.disc_weight == 50.0
