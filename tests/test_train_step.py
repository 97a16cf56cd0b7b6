"""The training step as ``train`` runs it: compiled as one fullgraph region and equal to eager,
no host read in a steady-state step, background batches with an exact resume position, and
background checkpoints that report a failed write."""

import math
import sys
import threading
import time
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from train_helpers import SMALL, _corpus, _vocab

from electra_fast.config import ElectraConfig
from electra_fast.model import Electra
from electra_fast.optim import AdamW, param_groups
from electra_fast.train import STEP_METRICS, StepStats, main, make_train_step


def _batches(cfg, n, seed, pad_from=None):
    """Synthetic masked batches; with ``pad_from`` every row is padding from that position on."""
    from electra_fast.baselines import random_masked_batch

    out = []
    for k in range(n):
        b = random_masked_batch(cfg, 6, seed=seed + k)
        b["attention_mask"] = b["attention_mask"].bool()
        if pad_from is not None:
            b["attention_mask"][:, pad_from:] = False
            b["masked_weights"] = b["masked_weights"] * (b["masked_positions"] < pad_from)
        out.append(b)
    return out


def _setup(cfg, seed):
    torch.manual_seed(seed)
    model = Electra(cfg).train()
    opt = AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                eps=cfg.adam_eps)
    return model, opt


def _cfg():
    # dropout off: eager and compiled code draw dropout masks differently
    return ElectraConfig.preset("tiny", vocab_size=211, max_seq_length=24, num_layers=1, generator_num_layers=1,
                                dropout=0.0, attention_dropout=0.0)


# Metrics that are ratios of token counts (electra_fast.model: correct / masked slots, correct / real
# tokens, true positives / replaced, ...), and the continuous ones.
DISCRETE = ("mlm_accuracy", "sampled_accuracy", "disc_accuracy", "disc_precision", "disc_recall",
            "replaced_fraction")
CONTINUOUS = ("loss", "mlm_loss", "disc_loss", "grad_norm")


def _token_counts(means: dict, n_slots: int, n_real: int) -> dict:
    """One step's discrete metrics as the token counts behind them: correct MLM predictions and samples
    equal to the original (of the masked slots); correct discriminator predictions, replaced tokens, true
    positives and tokens predicted replaced (of the real tokens; model._rtd_metrics)."""
    correct, replaced = means["disc_accuracy"] * n_real, means["replaced_fraction"] * n_real
    tp = means["disc_recall"] * max(replaced, 1.0)
    return {"mlm_accuracy": means["mlm_accuracy"] * n_slots, "sampled_accuracy": means["sampled_accuracy"] * n_slots,
            "disc_accuracy": correct, "replaced_fraction": replaced, "disc_recall": tp,
            "disc_precision": 2 * tp + n_real - correct - replaced}  # tp + fp, as fp = n - correct - (replaced - tp)


def _ratios(tot: dict) -> dict:
    """The discrete metrics as ratios of summed token counts, written out by hand (independent of
    model.metrics_from_counts): wrong discriminator calls are false positives plus false negatives."""
    tp, guessed, replaced = tot["true_positives"], tot["predicted_replaced"], tot["replaced"]
    return {"mlm_accuracy": tot["mlm_correct"] / tot["masked_slots"],
            "sampled_accuracy": 1 - replaced / tot["masked_slots"],
            "disc_accuracy": 1 - ((guessed - tp) + (replaced - tp)) / tot["real_tokens"],
            "disc_precision": tp / max(guessed, 1), "disc_recall": tp / replaced,
            "replaced_fraction": replaced / tot["real_tokens"]}


@pytest.mark.slow
def test_compiled_step_is_one_graph_and_matches_eager_for_5_steps(seed):
    """make_train_step(compile=True) traces forward, backward, clipping and AdamW with
    fullgraph=True (a graph break would raise), compiles once per batch layout (a padded and an
    unpadded batch: two graphs, no recompilation after that), and its per-step losses, counters
    and final parameters match the eager step within fp32 tolerance. Passed 30 of 30 runs with
    fresh seeds (benchmarks/RESULTS.md, "Test seeds")."""
    import torch._dynamo

    cfg = _cfg()
    batches = _batches(cfg, 5, seed % 1000)
    unpadded = batches[1]
    unpadded.pop("attention_mask")
    losses = {}
    models = {}
    for mode in ("eager", "compiled"):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()  # other tests' graphs are counted there too
        model, opt = _setup(cfg, seed)
        step = make_train_step(model, opt, cfg, compile=mode == "compiled")
        per_step = []
        for k, b in enumerate(batches):
            opt.set_lr(cfg.learning_rate * (k + 1) / 5)
            step([b], torch.tensor([seed + k]))
            per_step.append(step.stats.read())
        if mode == "compiled":
            frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            assert frames == 2, f"{frames} graphs for two batch layouts (recompiled?)"
        losses[mode] = per_step
        models[mode] = model
    assert set(STEP_METRICS["electra"] + ("grad_norm",)) == set(DISCRETE + CONTINUOUS)
    for b, e, c in zip(batches, losses["eager"], losses["compiled"]):
        assert e["good"] == c["good"] == 1 and e["skipped"] == c["skipped"] == 0
        for k in CONTINUOUS:
            assert c["means"][k] == pytest.approx(e["means"][k], rel=2e-4, abs=2e-5), k
        # A count may differ by one token: compiled and eager sum in different orders, so a logit within
        # ~1e-6 of 0 (a discriminator prediction) or of a tie (an argmax) can land on either side. It
        # happened once: disc_accuracy, one token of 144.
        n_slots = int(b["masked_weights"].sum())
        n_real = int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
        want, got = _token_counts(e["means"], n_slots, n_real), _token_counts(c["means"], n_slots, n_real)
        for k in DISCRETE:
            assert abs(want[k] - round(want[k])) < 1e-3, (k, want[k])  # the ratios do come from counts
            assert abs(got[k] - want[k]) <= 1 + 1e-3, (k, got[k], want[k])
    for (name, p), q in zip(models["eager"].named_parameters(), models["compiled"].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=2e-5, msg=name)


@pytest.mark.slow
def test_the_mlm_objectives_compiled_step_is_one_graph_and_matches_eager(seed):
    """The MLM baseline's step (a head that draws no samples) traces with fullgraph=True into one graph
    and gives eager's losses and parameters over 3 steps."""
    import torch._dynamo

    cfg = _cfg()
    batches = _batches(cfg, 3, seed % 1000)
    results = {}
    for mode in ("eager", "compiled"):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        torch.manual_seed(seed)
        model = Electra(cfg, objective="mlm").train()
        opt = AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                    betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
        step = make_train_step(model, opt, cfg, objective="mlm", compile=mode == "compiled")
        losses = []
        for k, b in enumerate(batches):
            opt.set_lr(cfg.learning_rate * (k + 1) / 3)
            step([b], torch.tensor([seed + k]))
            losses.append(step.stats.read()["means"]["mlm_loss"])
        if mode == "compiled":
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
        results[mode] = (losses, model)
    assert results["compiled"][0] == pytest.approx(results["eager"][0], rel=2e-4)
    for (name, p), q in zip(results["eager"][1].named_parameters(), results["compiled"][1].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=2e-5, msg=name)


def test_a_step_that_fails_to_compile_falls_back_to_eager_with_one_warning(monkeypatch, capsys):
    """A torch that cannot compile the step (an error at the first call) must not end the run: one
    warning line, then the eager step, whose result equals a plain eager step's."""
    cfg = _cfg()
    b = _batches(cfg, 1, 9)[0]

    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("Unsupported: something dynamo cannot trace\nlong details")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model, opt = _setup(cfg, 4)
    step = make_train_step(model, opt, cfg, compile=True)
    step([b], torch.tensor([3]))
    step([b], torch.tensor([4]))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: compiling the training step failed (RuntimeError: "
                                               "Unsupported: something dynamo cannot trace)")
    assert not step.compiled
    ref_model, ref_opt = _setup(cfg, 4)
    ref = make_train_step(ref_model, ref_opt, cfg)
    ref([b], torch.tensor([3]))
    ref([b], torch.tensor([4]))
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)
    assert step.stats.read()["good"] == 2


def test_non_finite_step_is_skipped_on_the_device_and_counted():
    """A NaN loss skips the update (parameters and optimizer state unchanged), and the counters
    say which step it was; a run of max_bad_steps such steps records where it was reached."""
    cfg = _cfg()
    model, opt = _setup(cfg, 3)
    step = make_train_step(model, opt, cfg, max_bad_steps=2)
    b = _batches(cfg, 1, 5)[0]
    step([b], torch.tensor([1]))
    before = [p.detach().clone() for p in model.parameters()]
    # NaN activations in the discriminator head: a NaN loss and NaN gradients, while the hook is on
    hook = model.discriminator_head.dense.register_forward_hook(lambda m, i, out: out * float("nan"))
    step([b], torch.tensor([2]))
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    st = step.stats.read()
    assert (st["good"], st["skipped"], st["first_bad"], st["stop_at"]) == (1, 1, 2, 0)
    step([b], torch.tensor([3]))
    st = step.stats.read()
    assert (st["skipped"], st["skipped_window"], st["first_bad"], st["stop_at"]) == (2, 1, 3, 3)
    assert float(opt.step_count) == 1
    hook.remove()
    step([b], torch.tensor([4]))
    assert float(opt.step_count) == 2 and step.stats.read()["good"] == 1


def test_step_counters_match_a_plain_python_count_over_random_runs_of_skipped_steps():
    """StepStats keeps its counters in one tensor updated with a few vector ops; over a random
    sequence of good and skipped steps, with reads in between, they equal a plain count."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    max_bad, start = 3, 7
    stats = StepStats(("loss",), "cpu", max_bad, step=start)
    steps, good, skipped, window_skipped, run, first_bad, stop_at, total = start, 0, 0, 0, 0, 0, 0, 0.0
    for i in range(200):
        bad = 50 <= i < 50 + max_bad or bool(torch.rand((), generator=gen) < 0.4)  # at least one full run
        value = float(torch.rand((), generator=gen))
        stats.update(torch.tensor([float("nan") if bad else value, 1.0]), torch.tensor(bad))
        steps += 1
        good, total = (good, total) if bad else (good + 1, total + value)
        skipped, window_skipped = skipped + bad, window_skipped + bad
        run = run + 1 if bad else 0
        first_bad = steps if bad and not first_bad else first_bad
        stop_at = steps if run >= max_bad and not stop_at else stop_at
        if torch.rand((), generator=gen) < 0.1 or i == 199:
            st = stats.read()
            assert (st["steps"], st["good"], st["skipped"], st["skipped_window"], st["first_bad"], st["stop_at"]) \
                == (steps, good, skipped, window_skipped, first_bad, stop_at)
            if good:
                assert st["means"]["loss"] == pytest.approx(total / good)
            else:  # every step of the window skipped: NaN
                assert math.isnan(st["means"]["loss"])
            assert int(stats.bad_run) == run
            good, window_skipped, first_bad, total = 0, 0, 0, 0.0
    assert stop_at > 0


def test_logged_metrics_are_ratios_of_the_window_sums_and_old_checkpoints_load():
    """Over a window the accuracies are ratios of summed token counts (every token weighs the
    same, whatever its step), the losses and grad_norm are means over the good steps, and a skipped
    step adds nothing. A checkpoint of the earlier format (per-step ratios in the window) keeps its
    counters and starts a new window."""
    from electra_fast.model import VALUE_NAMES

    names = VALUE_NAMES["electra"]
    stats = StepStats(names, "cpu", 3)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    steps = []
    for _ in range(3):
        slots, real = (int(torch.randint(5, 40, (), generator=gen)) for _ in range(2))
        real += 100
        rep = int(torch.randint(1, slots, (), generator=gen))
        guessed = int(torch.randint(1, real, (), generator=gen))
        tp = min(rep, guessed) // 2
        c = dict(loss=float(torch.rand((), generator=gen)) * 9, mlm_loss=1.0, disc_loss=0.5, masked_slots=slots,
                 mlm_correct=int(torch.randint(0, slots, (), generator=gen)), true_positives=tp,
                 predicted_replaced=guessed, replaced=rep, real_tokens=real, grad_norm=2.0)
        steps.append(c)
        stats.update(torch.tensor([float(c[k]) for k in (*names, "grad_norm")]), torch.tensor(False))
    stats.update(torch.full((len(names) + 1,), float("nan")), torch.tensor(True))  # skipped: adds nothing
    state = stats.state_dict()
    got = stats.read()
    tot = {k: sum(c[k] for c in steps) for k in steps[0]}
    want = {"loss": tot["loss"] / 3, "mlm_loss": 1.0, "disc_loss": 0.5, "grad_norm": 2.0, **_ratios(tot)}
    assert got["means"] == pytest.approx(want, rel=1e-6)
    assert set(got["means"]) == set(STEP_METRICS["electra"] + ("grad_norm",))
    assert (got["good"], got["skipped"], got["first_bad"], got["steps"]) == (3, 1, 4, 4)
    # a resumed run reads the same window
    again = StepStats(names, "cpu", 3)
    again.load_state_dict(state)
    assert again.read() == got
    # the earlier format: counters kept, the window restarts
    old = StepStats(names, "cpu", 3)
    old.load_state_dict({k: v for k, v in state.items() if k != "format"})
    st = old.read()
    assert (st["good"], st["skipped"], st["steps"]) == (0, 1, 4) and math.isnan(st["means"]["loss"])


def test_grad_accum_step_logs_the_micro_batches_pooled_and_takes_one_averaged_update(seed):
    """Two micro-batches in one optimizer step: the logged losses are the mean of the micro-batch
    losses, the accuracies ratios of their pooled token counts, grad_norm the norm of the averaged
    gradient, and the parameters move as one AdamW step on that gradient (clipped)."""
    import copy

    from electra_fast.model import VALUE_NAMES

    cfg = _cfg().replace(max_grad_norm=0.05)  # small enough that clipping acts
    model, opt = _setup(cfg, seed)
    ref_model = copy.deepcopy(model)
    ref_opt = AdamW(param_groups(ref_model, cfg.weight_decay), lr=cfg.learning_rate,
                    betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    batches = _batches(cfg, 2, seed, pad_from=17)
    batches[0] = {k: v for k, v in batches[0].items() if k != "attention_mask"}  # one unpadded, one padded
    seeds = torch.randint(0, 2**62, (2,))

    step = make_train_step(model, opt, cfg)
    step(batches, seeds)
    got = step.stats.read()["means"]

    # the same two micro-batches by hand: per-batch values, averaged gradient, clip, one update
    names = VALUE_NAMES["electra"]
    vals = []
    for i, b in enumerate(batches):
        out = ref_model(**b, seed=seeds[i:i + 1])
        (out.loss / 2).backward()
        vals.append(dict(zip(names, (float(v) for v in out.values))))
    grads = [p.grad for p in ref_opt.params]
    gnorm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
    tot = {k: vals[0][k] + vals[1][k] for k in names}
    assert tot["masked_slots"] > 0 and tot["replaced"] > 0
    want = {"loss": tot["loss"] / 2, "mlm_loss": tot["mlm_loss"] / 2, "disc_loss": tot["disc_loss"] / 2,
            "grad_norm": gnorm, **_ratios(tot)}
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert gnorm > cfg.max_grad_norm
    with torch.no_grad():
        for g in grads:
            g.mul_(cfg.max_grad_norm / (gnorm + 1e-6))
    ref_opt.step()
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------- host reads
_READS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.nonzero.default",
          "aten.equal.default", "aten.allclose.default"}
_ALLOWED = {"maybe_log", "maybe_eval", "maybe_save", "_finish",  # the loop's log / eval / save steps
            "_cpu_seed"}  # the CPU-only reference head reads its seed (host memory) for csrc/philox.cpp


class _HostReads(TorchDispatchMode):
    """Records every op that hands a tensor value to the host, with the loop function it ran in."""

    def __init__(self):
        super().__init__()
        self.bad, self.allowed = [], 0

    def note(self, what: str) -> None:
        names, f = [], sys._getframe(1)
        while f is not None:
            names.append(f.f_code.co_name)
            f = f.f_back
        if "_loop" not in names:  # setup and data preparation, before the first step
            return
        if _ALLOWED & set(names):
            self.allowed += 1
        else:
            self.bad.append((what, names[:8]))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in _READS or (str(func) == "aten._to_copy.default" and kwargs and
                                   str(kwargs.get("device", "")) == "cpu" and args[0].device.type != "cpu"):
            self.note(str(func))
        return func(*args, **(kwargs or {}))


@contextmanager
def _record_host_reads():
    rec = _HostReads()
    main_thread = threading.main_thread()
    patched = {}
    for name in ("tolist", "numpy", "item", "__bool__", "__float__", "__int__"):  # reads that bypass dispatch
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, _orig=orig, _name=name, **k):
            if threading.current_thread() is main_thread:  # the prefetch thread's CPU batches are host data
                rec.note(f"Tensor.{_name}")
            return _orig(self, *a, **k)

        patched[name] = orig
        setattr(torch.Tensor, name, wrapper)
    try:
        with rec:
            yield rec
    finally:
        for name, orig in patched.items():
            setattr(torch.Tensor, name, orig)


def test_steady_state_steps_read_nothing_back_to_the_host(tmp_path):
    """24 steps with log and checkpoint at 12 and 24: the 22 steps in between run the real loop
    (prefetched batch -> device -> step) and read no tensor on the host; the log and save steps
    do (which shows the recorder sees reads)."""
    corpus = _corpus(tmp_path / "corpus", seed=4)
    argv = ["--data", str(corpus), "--out", str(tmp_path / "run"), *SMALL, "--steps", "24", "--log-every", "12",
            "--save-every", "12", "--eval-batches", "1"]
    with _record_host_reads() as rec:
        assert main(argv) == 0
    assert not rec.bad, "host reads in steady-state steps:\n" + "\n".join(f"{w} in {n}" for w, n in rec.bad[:10])
    assert rec.allowed > 0


# ------------------------------------------------------------------------------- prefetch
def _loader(tmp_path, **kw):
    from electra_fast.data import PretrainingLoader, prepare_dataset
    from electra_fast.tokenizer import load_tokenizer

    data = tmp_path / "data"
    if not (tmp_path / "vocab").exists():  # built once per test
        corpus = _corpus(tmp_path / "corpus", seed=7)
        prepare_dataset([corpus], load_tokenizer(_vocab(corpus, tmp_path / "vocab")), data, 32, seed=0,
                        num_workers=1, progress=False)
    return PretrainingLoader(data, "train", 4, tokenizer=load_tokenizer(tmp_path / "vocab"), seed=11, **kw)


def test_prefetcher_position_is_after_the_last_batch_consumed(tmp_path):
    """The worker runs ahead; state_dict() names the first batch the loop has not taken, and a
    loader restored from it yields exactly that batch next."""
    from electra_fast.prefetch import Prefetcher

    pf = Prefetcher(_loader(tmp_path), depth=3)
    got = [next(pf) for _ in range(5)]
    deadline = time.time() + 30
    while pf._queue.qsize() < 3 and time.time() < deadline:  # let the worker fill the queue
        time.sleep(0.01)
    state = pf.state_dict()
    nxt = next(pf)
    pf.close()
    assert pf.loader.state_dict()["index"] > state["index"]  # the worker was ahead of the loop
    fresh = _loader(tmp_path)
    fresh.load_state_dict(state)
    want = next(iter(fresh))
    for k in want:
        assert torch.equal(nxt.tensors[k], want[k]), k
    assert [b.tokens for b in got] == [int(b.tensors["attention_mask"].sum()) for b in got]
    assert all(b.padded == bool((~b.tensors["attention_mask"]).any()) for b in got)


def test_prefetcher_reraises_a_loader_error_in_the_loop():
    from electra_fast.prefetch import Prefetcher

    class Broken:
        def state_dict(self):
            return {"epoch": 0, "index": 0}

        def __iter__(self):
            yield {"attention_mask": torch.ones(2, 3, dtype=torch.bool)}
            raise OSError("shard file vanished")

    pf = Prefetcher(Broken())
    next(pf)
    with pytest.raises(OSError, match="vanished"):
        next(pf)
    pf.close()


# ------------------------------------------------------------------------------- async checkpoints
def test_async_checkpoint_is_a_snapshot_and_a_failed_write_is_reported(tmp_path, monkeypatch):
    from electra_fast import checkpoint as ckpt

    w = torch.randn(5)
    at_save = w.clone()
    saver = ckpt.AsyncCheckpointer(tmp_path, keep=2)
    saver.save({"model": {"w": w}, "step": 1}, 1)
    w.add_(1.0)  # training goes on mutating the live tensor
    assert saver.wait() == ckpt.checkpoint_path(tmp_path, 1)
    assert torch.equal(ckpt.load_checkpoint(saver.last)["model"]["w"], at_save)

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    saver.save({"model": {"w": w}, "step": 2}, 2)
    with pytest.raises(ckpt.CheckpointError, match="No space left"):
        saver.wait()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000001.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
