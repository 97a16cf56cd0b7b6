"""ELECTRA pre-training: ``python -m electra_fast.train`` (see --help).

With no arguments: the ``tiny`` preset on the embedded default corpus (the running Python's own
documentation), on the GPU if there is one. Under ``torchrun`` it trains with
DistributedDataParallel (NCCL on GPUs, gloo on the CPU), each rank on its own slice of the data.

The file reads in the order a run happens:
  setup            arguments -> corpus, vocabulary, shards -> model, optimizer, loader, resumed state
  make_train_step  one optimizer step on the device: forward and backward of every micro-batch,
                   gradient clipping, AdamW, metrics; compiled as one region (CUDA graphs on a GPU)
  train            the loop: next batch -> step -> maybe_log / maybe_eval / maybe_save

What keeps the GPU busy: batches come from a background thread (pinned, copied non-blocking),
the step never reads a tensor back to the host (the non-finite guard, its counters and the metrics
stay on the device and are read at log steps), and checkpoints are written by a background
thread after a snapshot to host memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import AsyncCheckpointer, CheckpointError, list_checkpoints, load_latest
from .cli import ArgumentParser, HelpFormatter
from .config import PRESETS, ElectraConfig


class TrainError(Exception):
    """A problem the user can fix (bad flag, bad data); printed as one line, no traceback."""


class RunFinished(Exception):
    """``--resume`` of a run that has reached its last step: said in one line, exit status 0."""


# what a training run writes into its folder (``--overwrite`` deletes these, nothing else)
RUN_FILES = ("ckpt-*.pt", ".ckpt-*.tmp", "metrics.jsonl", "config.json", "vocab", "data", "tb")


def say(*a, rank: int = 0) -> None:
    if rank == 0:
        print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- CLI
def _preset_values(field_name: str) -> str:
    """'tiny 2400, small 1000000, ...': a config field's value in each preset."""
    return ", ".join(f"{name} {PRESETS[name].get(field_name, getattr(ElectraConfig, field_name))}"
                     for name in PRESETS)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m electra_fast.train",
        description="ELECTRA pre-training (replaced-token detection). With no arguments: the tiny preset on "
                    "the embedded default corpus. A preset carries the official hyper-parameters; any flag "
                    "overrides it.",
        formatter_class=HelpFormatter)
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="model size and schedule")
    p.add_argument("--data", nargs="+", metavar="PATH",
                   help="a folder made by `python -m electra_fast.prepare` (used as it is), or text files / folders "
                        "(one sentence per line, blank line between documents), .jsonl, Parquet / Arrow, optionally "
                        ".gz/.bz2/.xz/.zst; default: the embedded corpus (Python's own documentation)")
    p.add_argument("--text-field", default="text", help="JSON field / Parquet column holding the text")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="skip unreadable corpus files, folders and broken links with a counted warning")
    p.add_argument("--errors", default="strict", choices=["strict", "replace"],
                   help="undecodable bytes in the corpus: stop with an error, or replace them with U+FFFD")
    p.add_argument("--vocab", metavar="PATH", help="vocab.txt or tokenizer.json (or a folder with one); "
                                                    "default: train a WordPiece vocabulary on the corpus")
    p.add_argument("--init-from", nargs="+", metavar="DIR",
                   help="continue pre-training a published model: a HuggingFace ELECTRA discriminator folder and "
                        "optionally its generator folder (DISC [GEN]), a folder holding discriminator/ and "
                        "generator/ (as export writes), or one of our run folders (its newest checkpoint). The model "
                        "sizes and the vocabulary come from it; the optimizer and schedule start fresh")
    p.add_argument("--vocab-size", type=int, help="size of the trained vocabulary (tiny: 4096, else 30522)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<preset>)")
    p.add_argument("--objective", default="electra", choices=["electra", "mlm"],
                   help="electra (replaced-token detection) or mlm (the paper's BERT baseline, same network size)")
    p.add_argument("--steps", type=int, help=f"optimizer steps (default by preset: {_preset_values('train_steps')})")
    p.add_argument("--warmup", type=int, help=f"warmup steps (default: {_preset_values('warmup_steps')})")
    p.add_argument("--batch-size", type=int, help="sequences per optimizer step (all ranks and micro-batches; "
                   f"default: {_preset_values('batch_size')})")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--seq-len", type=int, help=f"maximum sequence length (default: {_preset_values('max_seq_length')})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default: {_preset_values('learning_rate')})")
    p.add_argument("--mask-prob", type=float, help=f"masking probability (default: {_preset_values('mask_prob')})")
    p.add_argument("--disc-weight", type=float,
                   help="weight of the discriminator's loss against the generator's (the paper's lambda; default: "
                        f"{_preset_values('disc_weight')})")
    p.add_argument("--whole-word", action=argparse.BooleanOptionalAction, default=None,
                   help="mask whole words (all their WordPiece pieces together); default: on for tiny, "
                        "off for the official presets")
    p.add_argument("--gdes", action="store_true", help="DeBERTa-v3 gradient-disentangled embedding sharing")
    p.add_argument("--tie-encoders", action=argparse.BooleanOptionalAction, default=None,
                   help="generator and discriminator share their whole encoder (the paper's 'tie all weights'; "
                        "on in the tiny preset, needs equal sizes)")
    p.add_argument("--seed", type=int, default=1234, help="random seed (initialisation, data order, masking)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the whole step (forward, backward, clipping, AdamW) with torch.compile, "
                        "with CUDA graphs on a GPU; default: on for CUDA, off on the CPU (--no-compile: eager)")
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (and at the end)")
    p.add_argument("--save-every-minutes", type=float, default=30.0,
                   help="also checkpoint when this much time passed since the last one (checked at log steps)")
    p.add_argument("--prefetch", type=int, default=4, help="batches prepared ahead by the background loader")
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    p.add_argument("--eval-batches", type=int, default=20,
                   help="held-out batches per evaluation; a held-out split of fewer batches is evaluated in as "
                        "many whole passes as fit, each with fresh masks and generator samples")
    p.add_argument("--log-every", type=int, default=10, help="metrics JSONL / progress update interval")
    p.add_argument("--max-bad-steps", type=int, default=5,
                   help="consecutive non-finite steps (skipped) before the run stops")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest good checkpoint, with "
                   "its own settings; only --steps, --save-every(-minutes), --log-every, --eval-every, "
                   "--eval-batches, --keep, --max-bad-steps, --prefetch, --workers, --device, --compile, "
                   "--no-progress and --data (the same content moved elsewhere) may be given with it")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in --out even if it holds a run or other files (the old run's "
                        "checkpoints, metrics, vocabulary and shards are deleted; other files are kept)")
    p.add_argument("--workers", type=int, help="processes for tokenising large corpora (default: all cores)")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="also write the metrics.jsonl scalars to <run>/tb/ for TensorBoard, at log and eval "
                        "steps only; default: on when tensorboard is installed (pip install -e \".[tb]\")")
    p.add_argument("--no-progress", action="store_true",
                   help="no live progress bar (also off when stderr is not a terminal: plain lines instead)")
    return p


def given_flags(argv: list[str] | None) -> set[str]:
    """The dests of the flags written on the command line (not left at their defaults)."""
    p = build_parser()
    for a in p._actions:
        a.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


# flags that may change when a run is resumed: they do not change what the run computes
RESUME_SAFE = {"resume", "steps", "save_every", "save_every_minutes", "log_every", "eval_every", "eval_batches",
               "keep", "max_bad_steps", "prefetch", "workers", "device", "compile", "no_progress", "data",
               "tensorboard"}

_INT_RANGES = {  # dest: (lowest, highest or None): every integer flag
    "vocab_size": (16, 2**31 - 1), "steps": (1, None), "warmup": (0, None), "batch_size": (1, None),
    "grad_accum": (1, None), "seq_len": (8, None), "seed": (0, 2**32 - 1), "save_every": (1, None),
    "prefetch": (1, 1024), "keep": (1, None), "eval_every": (0, None), "eval_batches": (1, None),
    "log_every": (1, None), "max_bad_steps": (1, None), "workers": (1, 4096),
}


def _range_text(lo, hi) -> str:
    return f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"


def validate_args(args, given: set[str]) -> None:
    """Every flag's type, range, finiteness and combination, before any file is read or written.

    Raises TrainError naming the flag and what it accepts."""
    for dest, (lo, hi) in _INT_RANGES.items():
        v = getattr(args, dest)
        if v is not None and (v < lo or (hi is not None and v > hi)):
            raise TrainError(f"--{dest.replace('_', '-')} must be {_range_text(lo, hi)}, got {v}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise TrainError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.mask_prob is not None and not 0 < args.mask_prob < 1:
        raise TrainError(f"--mask-prob must be in (0, 1), got {args.mask_prob}")
    if args.disc_weight is not None and not (math.isfinite(args.disc_weight) and args.disc_weight > 0):
        raise TrainError(f"--disc-weight must be a finite number > 0, got {args.disc_weight}")
    if not (math.isfinite(args.save_every_minutes) and args.save_every_minutes > 0):
        raise TrainError(f"--save-every-minutes must be a finite number > 0, got {args.save_every_minutes}")
    if args.tensorboard is None:
        args.tensorboard = _tensorboard_available()
    elif args.tensorboard and not _tensorboard_available():
        raise TrainError("--tensorboard needs the tensorboard package: pip install tensorboard "
                         "(or pip install -e \".[tb]\"), or pass --no-tensorboard")
    if args.resume:
        if args.init_from:
            raise TrainError(f"--init-from starts a new run from a model's weights; --resume {args.resume} continues "
                             "a run from its own checkpoint: drop one of them")
        extra = sorted(given - RESUME_SAFE - {"out"})
        if extra:
            flag = extra[0].replace("_", "-")
            raise TrainError(f"--{flag} cannot change when resuming: --resume {args.resume} continues the run with "
                             f"its own settings; drop --{flag}, or start a new run in another --out folder")
        if args.out and Path(args.out).absolute() != Path(args.resume).absolute():
            raise TrainError(f"--out {args.out} with --resume {args.resume}: a resumed run stays in its own folder; "
                             "drop --out")
        return
    if args.objective == "mlm" and args.gdes:
        raise TrainError("--gdes shares the generator's embeddings with the discriminator; --objective mlm has no "
                         "discriminator: drop one of them")
    if args.vocab and args.vocab_size is not None:
        raise TrainError("--vocab-size sizes a vocabulary trained on the corpus; --vocab gives one: drop one of them")
    if args.init_from:
        _validate_init_from(args)
    out = Path(args.out or f"runs/{args.preset}")
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out}: is a file, not a folder")
    for d in args.data or ():
        if Path(d).is_dir() and Path(d).resolve() in (out.resolve(), *out.resolve().parents):
            raise TrainError(f"--out {out} is inside the --data folder {d}: the run's shards would be read as text "
                             "by the next run; put the run folder elsewhere")
    base = ElectraConfig.preset(args.preset)
    seq = args.seq_len or base.max_seq_length
    if seq > base.max_position_embeddings and not args.init_from:  # --init-from: checked against its model
        raise TrainError(f"--seq-len {seq} exceeds the {args.preset} model's {base.max_position_embeddings} "
                         f"position embeddings: use a --seq-len in [8, {base.max_position_embeddings}]")
    batch = args.batch_size or base.batch_size
    if batch % args.grad_accum:
        raise TrainError(f"--batch-size {batch} is not divisible by --grad-accum {args.grad_accum}")


def _validate_init_from(args) -> None:
    if len(args.init_from) > 2:
        raise TrainError(f"--init-from takes one folder, or a discriminator and a generator folder; got "
                         f"{len(args.init_from)}")
    for d in args.init_from:
        if not Path(d).is_dir():
            raise TrainError(f"--init-from {d}: no such folder")
    for flag, dest in (("--vocab-size", "vocab_size"), ("--gdes", "gdes"), ("--tie-encoders", "tie_encoders")):
        if getattr(args, dest) not in (None, False):
            what = "vocabulary" if dest == "vocab_size" else "model's structure"
            raise TrainError(f"{flag} with --init-from: the {what} comes from {args.init_from[0]}; drop {flag}")


def _tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def resolve_config(args, saved: dict | None) -> ElectraConfig:
    if saved is not None:  # resume: the run's own config wins; --steps may extend it
        cfg = ElectraConfig.from_dict(saved)
        return cfg.replace(train_steps=args.steps) if args.steps else cfg
    over = {}
    for flag, name in (("steps", "train_steps"), ("warmup", "warmup_steps"), ("batch_size", "batch_size"),
                       ("seq_len", "max_seq_length"), ("lr", "learning_rate"), ("mask_prob", "mask_prob"),
                       ("disc_weight", "disc_weight")):
        v = getattr(args, flag)
        if v is not None:
            over[name] = v
    if args.gdes:
        over["gdes"] = True
    if args.tie_encoders is not None:
        over["tie_encoders"] = args.tie_encoders
    for flag, name in (("--steps", "train_steps"), ("--batch-size", "batch_size"), ("--seq-len", "max_seq_length")):
        if name in over and over[name] <= 0:
            raise TrainError(f"{flag} must be positive, got {over[name]}")
    if args.grad_accum <= 0:
        raise TrainError(f"--grad-accum must be positive, got {args.grad_accum}")
    if "warmup_steps" in over and over["warmup_steps"] < 0:
        raise TrainError(f"--warmup must be >= 0, got {over['warmup_steps']}")
    base = ElectraConfig.preset(args.preset)
    seq = over.get("max_seq_length", base.max_seq_length)
    if seq > base.max_position_embeddings and not args.init_from:
        raise TrainError(f"--seq-len {seq} exceeds the {args.preset} model's {base.max_position_embeddings} "
                         "position embeddings")
    if seq < 8:
        raise TrainError(f"--seq-len {seq} is too short; use at least 8")
    try:
        return base.replace(**over)
    except ValueError as e:
        raise TrainError(str(e)) from e


# ---------------------------------------------------------------------------- schedule
def lr_lambda(step: int, warmup: int, total: int) -> float:
    """Official: peak * min(1, step / warmup) * linear decay to 0 (multiplied, not chained)."""
    warm = min(1.0, step / warmup) if warmup > 0 else 1.0
    return warm * max(0.0, 1.0 - step / max(1, total))


# ---------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    np_state = np.random.get_state()
    st = {"python": random.getstate(), "torch": torch.get_rng_state(),
          "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(_tuplify(st["python"]))
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


# Whole-word masking is a data option, not a model one: the presets that turn it on by default (tiny: its
# discriminator learns to spot independently sampled word pieces; benchmarks/RESULTS.md, "Default pre-training run").
WHOLE_WORD_PRESETS = ("tiny",)

PLAIN_LINE_SECONDS = 30.0  # without a live bar (stderr not a terminal, --no-progress): a line this often

# flags that define a run: a resumed run takes them from its checkpoint, not the command line
RUN_ARGS = ("preset", "data", "errors", "text_field", "skip_unreadable", "vocab", "objective", "whole_word",
            "grad_accum", "seed")


# ---------------------------------------------------------------------------- the step
# What one step logs (the device-side window holds model.VALUE_NAMES and grad_norm; StepStats.read
# turns them into these).
STEP_METRICS = {
    "electra": ("loss", "mlm_loss", "disc_loss", "mlm_accuracy", "sampled_accuracy", "disc_accuracy",
                "disc_precision", "disc_recall", "replaced_fraction"),
    "mlm": ("loss", "mlm_loss", "mlm_accuracy"),
}


class StepStats:
    """Device-side counters of the training step, read on the host at log steps only.

    ``window``: sums of the step values (``model.VALUE_NAMES``: losses and token counts; grad_norm
    appended) over the good steps since the last read; the logged metrics are their means (losses,
    grad_norm) and ratios of their sums (accuracies: over the window's tokens). ``good``: how many
    good steps; ``skipped`` / ``skipped_window``: non-finite steps skipped in all / since the last
    read; ``bad_run``: the current run of consecutive skipped steps; ``first_bad``: the first
    skipped step since the last read; ``stop_at``: the step at which a run of ``max_bad_steps``
    skipped steps was reached (0: never); ``steps``: steps taken. All of it goes into checkpoints,
    so a resumed run logs exactly what the uninterrupted one would.
    """

    COUNTERS = ("steps", "good", "skipped", "skipped_window", "bad_run", "first_bad", "stop_at")
    FORMAT = 2  # checkpoints: window of raw values and counts (1: per-step ratios of STEP_METRICS)

    def __init__(self, keys: tuple[str, ...], device, max_bad_steps: int, step: int = 0):
        self.keys = (*keys, "grad_norm")
        f64 = dict(dtype=torch.float64, device=device)  # integers exactly up to 2**53
        self.window = torch.zeros(len(self.keys), dtype=torch.float32, device=device)
        # the counters live in one tensor, so that a step updates them with a handful of small kernels;
        # first_bad and stop_at hold inf until set (a minimum keeps the first step that set them)
        self.counts = torch.tensor([step, 0, 0, 0, 0, math.inf, math.inf], **f64)
        # steps, good, skipped, skipped_window, bad_run += (1, 1, 0, 0, 0) + bad * (0, -1, 1, 1, 1)
        self._inc = torch.tensor([1, 1, 0, 0, 0], **f64)
        self._per_bad = torch.tensor([0, -1, 1, 1, 1], **f64)
        # first_bad / stop_at take the step number when bad_run first reaches 1 / max_bad_steps
        self._thresholds = torch.tensor([1, max_bad_steps], **f64)
        self._never = torch.full((2,), math.inf, **f64)

    def __getattr__(self, name: str) -> torch.Tensor:  # stats.good, stats.steps, ...: 0-dim views
        if name in StepStats.COUNTERS:
            return self.__dict__["counts"][StepStats.COUNTERS.index(name)]
        raise AttributeError(name)

    def buffers(self) -> tuple[torch.Tensor, ...]:
        """The tensors the step writes in place (a CUDA graph keeps their addresses)."""
        return self.window, self.counts

    @torch.no_grad()
    def update(self, values: torch.Tensor, found_inf: torch.Tensor) -> None:
        """Add one step: ``values`` (len(keys),) fp32, ``found_inf`` 0-dim bool (the step was skipped).
        Eight small kernels."""
        self.window.add_(values.masked_fill(found_inf, 0.0))  # a fill, not a product: values may be NaN
        c = self.counts
        c[:5].addcmul_(self._per_bad, found_inf).add_(self._inc)
        c[4].mul_(found_inf)  # bad_run: (run + 1) if skipped, else 0
        torch.minimum(c[5:], torch.where(c[4] >= self._thresholds, c[0], self._never), out=c[5:])

    def read(self) -> dict:
        """The window's means and ratios (NaN when every step was skipped) and the counters, in one
        host read; resets the window."""
        from .model import COUNT_NAMES, metrics_from_counts

        n = len(self.keys)
        flat = torch.cat([self.window.double(), self.counts]).tolist()
        counters = dict(zip(self.COUNTERS, (int(x) if math.isfinite(x) else 0 for x in flat[n:])))
        good = counters["good"]
        sums = dict(zip(self.keys, flat[:n]))
        means = {k: (v / good if good else float("nan")) for k, v in sums.items()}
        if "masked_slots" in sums:  # token counts: the metrics are ratios of their sums
            ratios = metrics_from_counts(sums)
            means = {**{k: (v if good else float("nan")) for k, v in ratios.items()},
                     **{k: means[k] for k in self.keys if k not in COUNT_NAMES}}
        self.window.zero_()
        self.good.zero_()
        self.skipped_window.zero_()
        self.first_bad.fill_(math.inf)
        return {"means": means, **{k: counters[k] for k in ("good", "skipped", "skipped_window", "first_bad",
                                                             "stop_at", "steps")}}

    def state_dict(self) -> dict:
        c = self.counts.nan_to_num(posinf=0.0).long()  # 0: never (the format of earlier checkpoints)
        return {"format": self.FORMAT, "window": self.window.detach().clone(),
                **{k: c[i].clone() for i, k in enumerate(self.COUNTERS)}}

    def load_state_dict(self, state: dict) -> None:
        c = torch.stack([torch.as_tensor(state[k]).to(self.counts) for k in self.COUNTERS])
        self.counts.copy_(c)
        self.counts[5:].masked_fill_(self.counts[5:] == 0, math.inf)
        if state.get("format") == self.FORMAT and state["window"].shape == self.window.shape:
            self.window.copy_(state["window"])
        else:  # a checkpoint of an earlier version: its window cannot be read as ours; start a new one
            self.window.zero_()
            self.good.zero_()


class TrainStep:
    """``step(batches, seeds)``: one optimizer step over ``grad_accum`` micro-batches, all on the device.

    batches: a list of model-input dicts on the device (``attention_mask`` left out for a batch
    without padding); seeds: (len(batches),) int64 device tensor, one Gumbel-noise seed each.
    Nothing is read back to the host: the non-finite guard sets the optimizer's ``found_inf`` on
    the device and the metrics accumulate in ``stats`` (see StepStats).
    """

    def __init__(self, fn, stats: StepStats, compiled: bool, cuda_graphs: bool, eager=None, params=()):
        self._fn, self.stats, self.compiled, self.cuda_graphs = fn, stats, compiled, cuda_graphs
        self._eager, self._params, self._first = eager, list(params), True

    def __call__(self, batches: list[dict], seeds: torch.Tensor) -> None:
        from .ops import value_checks

        with value_checks(False):  # the loader guarantees id ranges; no range check reads on the host
            if not self._first:
                if self.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                return self._fn(batches, seeds)
            self._first = False
            if not self.compiled:
                return self._fn(batches, seeds)
            try:  # the first call compiles: a torch that cannot compile this step must not end the run
                if self.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                return self._fn(batches, seeds)
            except Exception as e:  # noqa: BLE001 - reported in one line, then the eager step runs
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                say(f"warning: compiling the training step failed ({type(e).__name__}: {first}); "
                    "training eagerly instead (--no-compile skips the attempt)")
                for p in self._params:  # whatever the failed attempt left behind
                    p.grad = None
                self._fn, self.compiled, self.cuda_graphs = self._eager, False, False
                return self._fn(batches, seeds)


def make_train_step(model: torch.nn.Module, optimizer, cfg: ElectraConfig, *, objective: str = "electra",
                    amp_dtype: torch.dtype | None = None, max_bad_steps: int = 5, compile: bool = False,
                    forward: torch.nn.Module | None = None, step: int = 0) -> TrainStep:
    """The training step of ``model`` with ``optimizer`` (an ``electra_fast.optim.AdamW``).

    amp_dtype: autocast dtype (bf16 on CUDA) or None for full fp32. compile: one
    ``torch.compile(fullgraph=True)`` region of forward, backward, clipping and AdamW (backward
    traced through ``torch._dynamo.config.trace_autograd_ops``), with CUDA graphs
    (mode="reduce-overhead") on CUDA. forward: the module to call (a DDP wrapper), default model.
    """
    fwd = forward if forward is not None else model
    params = optimizer.params
    device = params[0].device
    from .model import VALUE_NAMES

    stats = StepStats(VALUE_NAMES[objective], device, max_bad_steps, step)
    one = torch.ones((), device=device)  # the gradient of the loss, made once
    # (gnorm + 1e-6) / max_norm as one fused multiply-add: eps / max_norm + gnorm * (1 / max_norm)
    clip_eps = torch.tensor(1e-6 / cfg.max_grad_norm, device=device)

    def train_step(batches: list[dict], seeds: torch.Tensor) -> None:
        n = len(batches)
        values = None
        for i, batch in enumerate(batches):
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = fwd(**batch, seed=seeds[i:i + 1])
            if n == 1:  # no division: a kernel forward and one backward fewer
                out.loss.backward(one)
                values = out.values
                continue
            (out.loss / n).backward(one)
            v = torch.stack(out.values) / n
            values = v if values is None else values + v
        with torch.no_grad():
            for p in params:  # a parameter no loss reached this step (rare): a zero gradient
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            gnorm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
            # clip_grad_norm_'s factor min(1, max_norm / (norm + 1e-6)), which AdamW divides out of the
            # gradients as it reads them (no pass over the gradients of its own)
            grad_scale = torch.add(clip_eps, gnorm, alpha=1.0 / cfg.max_grad_norm).clamp_min_(1.0)
            # x * 0 is 0 for a finite x and NaN for inf or NaN: one check covers the norm and the loss
            found_inf = (gnorm + values[0]) * 0 != 0
            optimizer.found_inf.copy_(found_inf)
            optimizer.step(grad_scale)
            # values: the model's 0-dim tensors (one micro-batch) or their summed stack: one stack either way
            stats.update(torch.stack([*values, gnorm.float()]), found_inf)
        for p in params:  # backward writes fresh gradients next step (accumulating would cost a kernel each)
            p.grad = None

    if not compile:
        return TrainStep(train_step, stats, compiled=False, cuda_graphs=False)
    import torch._dynamo as dynamo

    if not _can_compile_step():
        raise TrainError(f"compiling the whole step needs torch >= 2.11 (this is {torch.__version__}); "
                         "pass --no-compile")
    dynamo.config.trace_autograd_ops = True  # trace loss.backward() into the compiled region
    cuda_graphs = device.type == "cuda"
    if cuda_graphs:  # state the graph reads and writes in place: keep its addresses fixed
        for t in (*optimizer.tensors(), *stats.buffers()):
            dynamo.mark_static_address(t)
    compiled = torch.compile(train_step, fullgraph=True, mode="reduce-overhead" if cuda_graphs else None)
    return TrainStep(compiled, stats, compiled=True, cuda_graphs=cuda_graphs, eager=train_step, params=params)


# ---------------------------------------------------------------------------- setup
@dataclass
class Run:
    """Everything the loop needs, built by :func:`setup`."""

    args: argparse.Namespace
    cfg: ElectraConfig
    out_dir: Path
    rank: int
    world: int
    device: torch.device
    amp_dtype: torch.dtype | None
    tokenizer: object
    loader: object  # PretrainingLoader (also serves the held-out batches)
    batches: object  # Prefetcher over the loader
    micro: int  # sequences per micro-batch on this rank
    model: torch.nn.Module
    optimizer: object
    train_step: TrainStep
    checkpointer: AsyncCheckpointer
    step: int = 0
    t_start: float = 0.0
    stop_signal: int | None = None
    progress: object = None
    window_tokens: int = 0
    window_t0: float = 0.0
    last_save_time: float = 0.0
    last_saved_step: int = -1
    time_save_due: bool = False  # set at log steps by --save-every-minutes
    last_line_time: float = 0.0  # of the last plain progress line (no live bar)
    data_fingerprint: str | None = None  # of the --data files' content: --resume accepts the corpus moved
    tb: object = None  # a torch.utils.tensorboard SummaryWriter on rank 0 with --tensorboard, else None
    old_handlers: dict = field(default_factory=dict)

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def to_device(self, b) -> dict:
        return device_batch(b.tensors, b.padded, self.device)

    def close(self) -> None:
        for s, h in self.old_handlers.items():
            signal.signal(s, h)
        if self.progress is not None:
            self.progress.close()
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        self.batches.close()


def device_batch(tensors: dict, padded: bool, device: torch.device) -> dict:
    """A loader batch as the step takes it: model inputs on ``device`` (non-blocking from pinned
    memory) and no attention mask when the batch has no padding (``padded`` is known on the host)."""
    from .evaluate import model_inputs

    t = model_inputs(tensors)
    if not padded:
        t.pop("attention_mask", None)
    return {k: v.to(device, non_blocking=True) for k, v in t.items()}


def _amp_dtype(device: torch.device, rank: int) -> torch.dtype | None:
    """bf16 autocast on CUDA (fp32 master weights, fp32 losses); fp32 on the CPU and on a GPU without bf16."""
    if device.type != "cuda":
        return None
    if not torch.cuda.is_bf16_supported():
        say(f"note: {torch.cuda.get_device_name(device)} has no bf16; training in fp32", rank=rank)
        return None
    return torch.bfloat16


def setup(args) -> Run:
    """Arguments -> run folder, data, model, optimizer, step function, prefetching loader, resumed state."""
    t_start = time.time()
    if not sys.stderr.isatty():  # a log file: no \r frames of live bars, plain lines (maybe_log)
        args.no_progress = True
    if args.data:  # absolute, so that --resume works from any folder
        args.data = [str(Path(p).expanduser().absolute()) for p in args.data]
    rank, world, device = _setup_distributed(args.device)
    out_dir = Path(args.resume or args.out or f"runs/{args.preset}")
    resume_state, fingerprint, own_checkpoints = None, None, []
    if args.resume:
        if not Path(args.resume).is_dir():
            raise TrainError(f"--resume {args.resume}: no such run folder")
        from .runfolder import read_marker

        if not list_checkpoints(args.resume) and (read_marker(args.resume) or {}).get("kind") == "training":
            # checkpoints are written in the background: a run killed within a step or two of its first
            # --save-every may have none yet, and then nothing was lost but those first steps
            raise TrainError(f"--resume {args.resume}: the run stopped before its first checkpoint was complete, "
                             f"so there is nothing to resume; start it again with its original command (its "
                             f"--out {args.resume} takes the folder over)")
        resume_state, ck_path = load_latest(args.resume, log=lambda m: say(m, rank=rank))
        if "exp_avg" not in resume_state.get("optimizer", {}):
            raise TrainError(f"{ck_path} was written by an older electra_fast (torch.optim state) and cannot be "
                             "resumed by this version; start a new run")
        fingerprint = resume_state.get("data_fingerprint")
        saved_args = dict(resume_state.get("run_args", {}))
        if args.data and args.data != saved_args.get("data"):  # the same corpus moved: same content
            if saved_args.get("data") is None or _data_fingerprint(args.data) != fingerprint:
                raise TrainError(f"--data {' '.join(args.data)} is not the corpus this run was trained on "
                                 f"({' '.join(saved_args.get('data') or ['the embedded corpus'])}); drop --data, or "
                                 "start a new run in another --out folder")
            saved_args["data"] = args.data
        for k, v in saved_args.items():  # the run's data, seed, objective, ...
            setattr(args, k, v)
        if args.steps is not None and args.steps < resume_state["step"]:
            raise TrainError(f"--steps {args.steps} is below step {resume_state['step']} of the run's newest "
                             f"checkpoint {ck_path}; give --steps >= {resume_state['step']}")
        if resume_state["step"] >= (args.steps or resume_state["config"]["train_steps"]):
            raise RunFinished(f"the run in {out_dir} is finished: step {resume_state['step']} of "
                              f"{resume_state['config']['train_steps']}; final checkpoint {ck_path} (resume with a "
                              "larger --steps to train on)")
        say(f"resuming from {ck_path} (step {resume_state['step']})", rank=rank)
        own_checkpoints = list_checkpoints(out_dir)  # the folder is the run's: so are its checkpoints
    if args.whole_word is None:
        args.whole_word = args.preset in WHOLE_WORD_PRESETS
    cfg = resolve_config(args, resume_state["config"] if resume_state else None)
    init = None
    if args.init_from and resume_state is None:
        from .init_from import load_init

        try:
            init = load_init(args.init_from, args.preset, objective=args.objective, log=lambda m: say(m, rank=rank))
        except ValueError as e:
            raise TrainError(str(e).strip().splitlines()[0]) from None
        cfg = init.config_for(cfg)
        if cfg.max_seq_length > cfg.max_position_embeddings:
            raise TrainError(f"--seq-len {cfg.max_seq_length} exceeds the {cfg.max_position_embeddings} position "
                             f"embeddings of {init.source}: use a --seq-len in [8, {cfg.max_position_embeddings}]")
        if args.vocab:
            from .tokenizer import load_tokenizer

            if load_tokenizer(args.vocab).vocab_hash() != init.tokenizer.vocab_hash():
                raise TrainError(f"--vocab {args.vocab} is not the vocabulary of {init.source}: a model continues "
                                 "with its own vocabulary; drop --vocab")
        args.vocab = str(init.vocab_path)
    if cfg.batch_size % (world * args.grad_accum):
        raise TrainError(f"--batch-size {cfg.batch_size} is not divisible by ranks x --grad-accum "
                         f"({world} x {args.grad_accum})")

    if rank == 0:
        if out_dir.is_dir() and not os.access(out_dir, os.W_OK):
            raise TrainError(f"--out {out_dir}: folder is not writable")
        if resume_state is None:
            from .runfolder import claim

            claim(out_dir, "training", "--out", args.overwrite, RUN_FILES, work=("ckpt-*.pt",),
                  hint=f"continue it with --resume {out_dir}")
            if init is not None:  # the corpus is tokenised with the model's vocabulary (prepare_for_run reads it)
                init.tokenizer.save(out_dir / "vocab")
        elif not (out_dir / "run.json").exists():  # a run from before run.json
            from .runfolder import write_marker

            write_marker(out_dir, {"run_id": "unknown", "kind": "training"})
    tok, data_dir = _prepare_data(args, cfg, out_dir, rank, world, resume_state is not None)
    if resume_state is None and args.data:  # preparation hashed the files: its manifest makes this a stat each
        from .prepare import read_manifest

        fingerprint = _data_fingerprint(args.data, known=read_manifest(data_dir))
    if resume_state is not None and resume_state.get("vocab_hash") not in (None, tok.vocab_hash()):
        raise TrainError(f"{out_dir}/vocab does not match the checkpoint's vocabulary (hash differs)")
    if cfg.vocab_size != tok.vocab_size:
        cfg = cfg.replace(vocab_size=tok.vocab_size)

    from . import ops
    from .data import PretrainingLoader
    from .model import Electra
    from .optim import AdamW, param_groups
    from .prefetch import Prefetcher

    micro = cfg.batch_size // (world * args.grad_accum)
    mlm = args.objective == "mlm"
    mask_kw = dict(mask_prob=cfg.mask_prob, max_predictions=cfg.max_predictions, whole_word=args.whole_word,
                   # BERT's 80/10/10 for the MLM baseline; ELECTRA's 85/15 (pretrain_helpers.mask) otherwise
                   mask_replace_prob=0.8 if mlm else 0.85, random_replace_prob=0.1 if mlm else 0.0)
    try:
        loader = PretrainingLoader(data_dir, "train", micro, tokenizer=tok, seed=args.seed, rank=rank,
                                   world_size=world, **mask_kw)
    except ValueError as e:
        if "fewer than one batch" not in str(e):
            raise
        n = str(e).split(" examples")[0].rsplit(" ", 1)[-1]
        raise TrainError(f"the corpus gives {n} training examples of <= {cfg.max_seq_length} tokens, fewer than "
                         f"one batch ({micro} per micro-batch): lower --batch-size or give more text") from None

    torch.manual_seed(args.seed)  # identical init on every rank
    try:  # the backend (ELECTRA_FAST_BACKEND by default) is fixed here, for the whole run
        model = Electra(cfg, objective=args.objective).to(device)
        op_backend = ops.backend(device, model.backend)
    except ValueError as e:
        raise TrainError(str(e)) from None
    optimizer = AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                      betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    step = 0
    if init is not None:
        init.load_into(model)
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        loader.load_state_dict(_mine(resume_state["loader"], rank))
        step = resume_state["step"]
        set_rng_state(_mine(resume_state["rng"], rank))
    else:
        torch.manual_seed(args.seed + rank)
        random.seed(args.seed + rank)
        np.random.seed((args.seed + rank) % 2**32)

    amp_dtype = _amp_dtype(device, rank)
    compile = args.compile if args.compile is not None else device.type == "cuda"
    if compile and args.compile is None and not _can_compile_step():
        say(f"note: torch {torch.__version__} cannot trace backward into a compiled step (needs >= 2.11); "
            "the step runs eagerly", rank=rank)
        compile = False
    forward = None
    if world > 1:  # DDP reduces the gradients in backward; the step runs eagerly around it
        from torch.nn.parallel import DistributedDataParallel as DDP

        forward = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        if compile:
            say("note: with several ranks the step runs eagerly (DDP); --compile compiles one rank's step only "
                "with torchrun --nproc_per_node 1", rank=rank)
            compile = False
    train_step = make_train_step(model, optimizer, cfg, objective=args.objective, amp_dtype=amp_dtype,
                                 max_bad_steps=args.max_bad_steps, compile=compile, forward=forward, step=step)
    if resume_state is not None and "stats" in resume_state:
        train_step.stats.load_state_dict(_mine(resume_state["stats"], rank))
    batches = Prefetcher(loader, depth=args.prefetch, pin_memory=device.type == "cuda")
    run = Run(args=args, cfg=cfg, out_dir=out_dir, rank=rank, world=world, device=device, amp_dtype=amp_dtype,
              tokenizer=tok, loader=loader, batches=batches, micro=micro, model=model, optimizer=optimizer,
              train_step=train_step, checkpointer=AsyncCheckpointer(out_dir, keep=args.keep, owned=own_checkpoints),
              step=step, t_start=t_start, data_fingerprint=fingerprint)
    if rank == 0:
        _truncate_metrics(run.metrics_path, step)
        # the model's config and the op implementation this run's device takes (model.backend)
        info = {**cfg.to_dict(), "backend": op_backend}
        (out_dir / "config.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if args.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run drops the events logged after its checkpoint, as metrics.jsonl does
            run.tb = SummaryWriter(str(out_dir / "tb"), purge_step=step + 1 if step else None)
    n_params = sum(p.numel() for p in model.parameters())
    mode = ("compiled + CUDA graphs" if train_step.cuda_graphs else "compiled") if train_step.compiled else "eager"
    say(f"electra_fast: preset={args.preset} objective={args.objective} params={n_params / 1e6:.2f}M "
        f"vocab={cfg.vocab_size} seq={cfg.max_seq_length} batch={cfg.batch_size} steps={cfg.train_steps} "
        f"device={device} ops={op_backend} precision={'bf16 autocast' if amp_dtype else 'fp32'} step={mode} "
        f"ranks={world} out={out_dir}", rank=rank)
    return run


def _can_compile_step() -> bool:
    import torch._dynamo as dynamo

    return hasattr(dynamo.config, "trace_autograd_ops")


def _mine(per_rank, rank: int):
    """A checkpoint entry gathered from every rank (a list) or written by a single rank."""
    return per_rank[rank] if isinstance(per_rank, list) else per_rank


# ---------------------------------------------------------------------------- the loop
def maybe_log(run: Run) -> None:
    """At log steps: read the device counters once, stop on a run of non-finite steps, write metrics."""
    args, step = run.args, run.step
    if step % args.log_every and step != run.cfg.train_steps:
        return
    st = run.train_step.stats.read()
    run.checkpointer.poll()  # a failed background write stops the run here, not hundreds of steps later
    if st["stop_at"]:
        raise TrainError(f"{args.max_bad_steps} consecutive non-finite steps ending at step {st['stop_at']}; "
                         f"stopping (last good checkpoint: {run.checkpointer.wait() or 'none'}). Lower --lr?")
    if st["skipped_window"]:
        more = (f" ({st['skipped_window']} steps skipped since step {step - step % args.log_every or 0})"
                if st["skipped_window"] > 1 else "")
        say(f"warning: non-finite loss or gradient at step {st['first_bad']}; step skipped{more}", rank=run.rank)
    now = time.time()
    tokens_per_s = run.window_tokens / max(now - run.window_t0, 1e-9)
    run.window_tokens, run.window_t0 = 0, now
    means = st["means"]
    rec = {"step": step, "lr": run.cfg.learning_rate * lr_lambda(step - 1, run.cfg.warmup_steps, run.cfg.train_steps),
           **means, "tokens_per_s": tokens_per_s, "skipped_steps": st["skipped"], "time": round(now - run.t_start, 3)}
    if run.rank == 0:
        _append_jsonl(run.metrics_path, rec)
        _tb_scalars(run.tb, "train", rec, step)
        if run.progress is None and (now - run.last_line_time >= PLAIN_LINE_SECONDS or step == run.cfg.train_steps):
            run.last_line_time = now
            say(f"step {step}/{run.cfg.train_steps} loss={means['loss']:.4f} tokens/s={tokens_per_s:.0f} "
                f"skipped={st['skipped']}")
        if run.progress is not None:
            post = {"loss": f"{means['loss']:.3f}", "tok/s": f"{tokens_per_s:.0f}"}
            key = "disc_accuracy" if "disc_accuracy" in means else "mlm_accuracy"
            post[key.replace("uracy", "")] = f"{means[key]:.3f}"
            run.progress.set_postfix(post, refresh=False)
    if run.world == 1:
        due = now - run.last_save_time >= 60 * args.save_every_minutes
    else:  # every rank must agree on a save step: rank 0's clock decides
        due = _gather(now - run.last_save_time >= 60 * args.save_every_minutes, run.world)[0]
    run.time_save_due = due


def maybe_eval(run: Run) -> None:
    every = run.args.eval_every
    if every and run.step % every == 0 and run.step < run.cfg.train_steps:
        _log_eval(run, run.step, _evaluate(run))


def maybe_save(run: Run, force: bool = False) -> None:
    step = run.step
    due = (step % run.args.save_every == 0 or step == run.cfg.train_steps or run.time_save_due
           or force)
    if not due or step == run.last_saved_step:
        return
    run.time_save_due = False
    # the loader position after the last batch *consumed*; one gather for the three per-rank entries
    mine = (run.batches.state_dict(), rng_state(), run.train_step.stats.state_dict())
    loaders, rngs, stats = mine if run.world == 1 else (list(x) for x in zip(*_gather(mine, run.world)))
    run.last_saved_step, run.last_save_time = step, time.time()
    if run.rank != 0:
        return
    args = run.args
    if not _params_finite(run.model):
        raise TrainError(f"parameters became non-finite by step {step}; not saved (last finite checkpoint: "
                         f"{run.checkpointer.wait() or 'none'}). Lower --lr?")
    state = {"data_fingerprint": run.data_fingerprint, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "step": step,
             "config": run.cfg.to_dict(), "objective": args.objective, "vocab_hash": run.tokenizer.vocab_hash(),
             "run_args": {k: getattr(args, k) for k in RUN_ARGS}, "loader": loaders, "rng": rngs,
             "stats": stats, "world_size": run.world}
    run.checkpointer.save(state, step)


def _evaluate(run: Run, most_frequent: bool = False) -> dict:
    from .evaluate import evaluate

    autocast = (torch.autocast(run.device.type, dtype=run.amp_dtype) if run.amp_dtype is not None
                else nullcontext())
    n = run.args.eval_batches
    batches = run.loader.iter_eval(run.micro, max_batches=n, passes=run.loader.eval_passes(run.micro, n))
    return evaluate(run.model, batches, run.device,
                    autocast, most_frequent_id=run.loader.most_frequent_token() if most_frequent else None)


def train(args) -> int:
    try:
        run = setup(args)
    except RunFinished as e:
        say(str(e))
        return 0
    try:
        return _loop(run)
    finally:
        run.close()
        run.checkpointer.wait_quietly()


def _loop(run: Run) -> int:
    args, cfg = run.args, run.cfg

    def on_signal(signum, _frame):
        run.stop_signal = signum

    run.old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if run.rank == 0 and not args.no_progress:
        from tqdm.auto import tqdm

        run.progress = tqdm(total=cfg.train_steps, initial=run.step, desc="pre-training", unit="step",
                            dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
    run.model.train()
    run.window_t0 = run.last_save_time = run.last_line_time = time.time()
    seeds_on = run.device
    while run.step < cfg.train_steps:
        micro = [next(run.batches) for _ in range(args.grad_accum)]
        # Gumbel-noise seeds from the (checkpointed) CPU generator, passed as a device tensor
        seeds = torch.randint(0, 2**31 - 1, (args.grad_accum,)).to(seeds_on, non_blocking=True)
        run.optimizer.set_lr(cfg.learning_rate * lr_lambda(run.step, cfg.warmup_steps, cfg.train_steps))
        run.train_step([run.to_device(b) for b in micro], seeds)
        run.step += 1
        run.window_tokens += sum(b.tokens for b in micro) * run.world
        maybe_log(run)
        maybe_eval(run)
        maybe_save(run)
        if run.progress is not None:
            run.progress.update(1)
        if run.stop_signal is not None:
            maybe_save(run, force=True)
            last = run.checkpointer.wait()
            if run.progress is not None:
                run.progress.close()
                run.progress = None
            say(f"{signal.Signals(run.stop_signal).name}: stopped at step {run.step}; checkpoint {last}. "
                f"Continue with: python -m electra_fast.train --resume {run.out_dir}", rank=run.rank)
            return 128 + run.stop_signal
    if run.progress is not None:
        run.progress.close()
        run.progress = None
    return _finish(run)


def _finish(run: Run) -> int:
    """Final held-out evaluation, the summary line, and (with several ranks) the parameter check."""
    if not _params_finite(run.model):
        raise TrainError(f"parameters are non-finite after step {run.step}; last finite checkpoint: "
                         f"{run.checkpointer.wait() or 'none'}. Lower --lr?")
    res = _evaluate(run, most_frequent=True)
    _log_eval(run, run.step, res)
    last = run.checkpointer.wait()
    skipped = int(run.train_step.stats.skipped)
    parts = [f"done: {run.step} steps in {time.time() - run.t_start:.0f} s",
             f"held-out mlm_acc={res['mlm_accuracy']:.3f} (baseline {res['mlm_baseline_accuracy']:.3f}: copy "
             f"the visible token, else the most frequent) mlm_acc_at_hidden={res['mlm_accuracy_hidden']:.3f} "
             f"(most-frequent-token baseline {res['mlm_baseline_accuracy_hidden']:.3f})"]
    if "disc_auc" in res:
        parts.append(f"disc_acc={res['disc_accuracy']:.3f} precision={res['disc_precision']:.3f} "
                     f"recall={res['disc_recall']:.3f} auc={res['disc_auc']:.3f}")
    if skipped:
        parts.append(f"skipped non-finite steps={skipped}")
    parts.append(f"checkpoint={last}")
    say(" | ".join(parts), rank=run.rank)
    if run.world > 1:
        import torch.distributed as dist

        digests = _gather(_param_digest(run.model), run.world)
        if len(set(digests)) != 1:
            raise TrainError(f"parameters differ between ranks after step {run.step}: {digests}")
        say(f"parameters identical on all {run.world} ranks (sha256 {digests[0][:16]})", rank=run.rank)
        dist.destroy_process_group()
    return 0


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .runfolder import RunFolderError

    try:
        validate_args(args, given_flags(argv))
        return train(args)
    except (TrainError, CheckpointError, RunFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # data / tokenizer errors are ValueError subclasses with one-line messages
        from .corpus import CorpusError
        from .tokenizer import TokenizerError

        if isinstance(e, (CorpusError, TokenizerError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


def _setup_distributed(device_flag):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device_flag == "cuda") or (device_flag is None and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise TrainError("--device cuda but no CUDA GPU is visible to torch")
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return rank, world, device


def _prepare_data(args, cfg, out_dir: Path, rank: int, world: int, resumed: bool):
    """corpus -> tokenizer -> packed example shards (``prepare.prepare_for_run``), or a folder
    made by ``python -m electra_fast.prepare`` as it is. Rank 0 prepares; the others wait at a
    barrier, then read the saved vocabulary."""
    from .prepare import prepare_for_run
    from .tokenizer import load_tokenizer

    data_dir = out_dir / "data"
    if rank == 0:
        tok, data_dir = prepare_for_run(
            args.data, out_dir, vocab=args.vocab, vocab_size=args.vocab_size or (4096 if args.preset == "tiny" else 30522),
            max_seq_length=cfg.max_seq_length, seed=args.seed, resumed=resumed, log=say,
            num_workers=args.workers, progress=not args.no_progress, errors=args.errors,
            text_field=getattr(args, "text_field", "text"), skip_unreadable=getattr(args, "skip_unreadable", False))  # fmt: skip
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank != 0:
        from .prepare import is_prepared

        if args.data and len(args.data) == 1 and is_prepared(args.data[0]):
            data_dir = Path(args.data[0])
        tok = load_tokenizer(out_dir / "vocab")
    return tok, data_dir


def _params_finite(model: torch.nn.Module) -> bool:
    """One host read: every parameter finite (checked before a checkpoint is written and at the end)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def _data_fingerprint(paths: list[str], known: dict | None = None) -> str:
    """The --data files' content fingerprint (``corpus.content_fingerprint``: not their paths, so a
    moved corpus matches); ``known``, a manifest with per-file records, spares re-hashing unchanged files."""
    from .corpus import content_fingerprint, corpus_files

    return content_fingerprint(corpus_files(paths), known)[0]


def _param_digest(model: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _gather(obj, world: int):
    if world == 1:
        return obj
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _json_safe(rec: dict) -> dict:
    """Strict JSON: a non-finite number becomes null and its key is listed under "nonfinite"."""
    bad = [k for k, v in rec.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return rec
    return {**{k: (None if k in bad else v) for k, v in rec.items()}, "nonfinite": bad}


def _append_jsonl(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(_json_safe(rec), allow_nan=False) + "\n")


def _log_eval(run: Run, step: int, res: dict) -> None:
    if run.rank == 0:
        _append_jsonl(run.metrics_path, {"step": step, "eval": _json_safe(res)})
        _tb_scalars(run.tb, "eval", res, step)


def _tb_scalars(tb, group: str, rec: dict, step: int) -> None:
    """The numbers of a metrics.jsonl record as TensorBoard scalars ``group/name`` (host values
    already read for the record: no device access)."""
    if tb is None:
        return
    for k, v in rec.items():
        if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
            tb.add_scalar(f"{group}/{k}", v, step)
    tb.flush()


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records logged after the checkpoint: those steps are trained again."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
