"""ELECTRA pre-training: ``python -m electra_fast.train`` (see --help).

With no arguments: the ``tiny`` preset on the embedded default corpus (the running Python's own
documentation), on the GPU if there is one. Under ``torchrun`` it trains with
DistributedDataParallel (NCCL on GPUs, gloo on the CPU), each rank on its own slice of the data.

Reads top to bottom as the data flows: corpus -> tokenizer -> packed examples -> loader with
dynamic masking -> model -> AdamW with warmup x linear decay -> checkpoints and evaluation.
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
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, load_latest, save_checkpoint
from .config import PRESETS, ElectraConfig


class TrainError(Exception):
    """A problem the user can fix (bad flag, bad data); printed as one line, no traceback."""


def say(*a, rank: int = 0) -> None:
    if rank == 0:
        print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m electra_fast.train",
        description="ELECTRA pre-training (replaced-token detection). With no arguments: the tiny preset on "
                    "the embedded default corpus. A preset carries the official hyper-parameters; any flag "
                    "overrides it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    p.add_argument("--vocab-size", type=int, help="size of the trained vocabulary (tiny: 4096, else 30522)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<preset>)")
    p.add_argument("--objective", default="electra", choices=["electra", "mlm"],
                   help="electra (replaced-token detection) or mlm (the paper's BERT baseline, same network size)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--warmup", type=int, help="warmup steps")
    p.add_argument("--batch-size", type=int, help="sequences per optimizer step (all ranks and micro-batches)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--seq-len", type=int, help="maximum sequence length")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--mask-prob", type=float, help="masking probability (0.15; 0.25 for large)")
    p.add_argument("--whole-word", action=argparse.BooleanOptionalAction, default=None,
                   help="mask whole words (all their WordPiece pieces together); default: on for tiny, "
                        "off for the official presets")
    p.add_argument("--gdes", action="store_true", help="DeBERTa-v3 gradient-disentangled embedding sharing")
    p.add_argument("--tie-encoders", action=argparse.BooleanOptionalAction, default=None,
                   help="generator and discriminator share their whole encoder (the paper's 'tie all weights'; "
                        "on in the tiny preset, needs equal sizes)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (and at the end)")
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    p.add_argument("--eval-batches", type=int, default=20, help="held-out batches per evaluation")
    p.add_argument("--log-every", type=int, default=10, help="metrics JSONL / progress update interval")
    p.add_argument("--max-bad-steps", type=int, default=5,
                   help="consecutive non-finite steps (skipped) before the run stops")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest good checkpoint")
    p.add_argument("--workers", type=int, help="processes for tokenising large corpora (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")
    return p


def resolve_config(args, saved: dict | None) -> ElectraConfig:
    if saved is not None:  # resume: the run's own config wins; --steps may extend it
        cfg = ElectraConfig.from_dict(saved)
        return cfg.replace(train_steps=args.steps) if args.steps else cfg
    over = {}
    for flag, name in (("steps", "train_steps"), ("warmup", "warmup_steps"), ("batch_size", "batch_size"),
                       ("seq_len", "max_seq_length"), ("lr", "learning_rate"), ("mask_prob", "mask_prob")):
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
    if seq > base.max_position_embeddings:
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


def param_groups(model: torch.nn.Module, weight_decay: float):
    """Decoupled weight decay on matrices; none on LayerNorm and biases (official optimization.py)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


# ---------------------------------------------------------------------------- evaluation
def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (ties get average ranks)."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    s = scores[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@torch.no_grad()
def evaluate(model, batches, device, autocast, most_frequent_id: int | None = None) -> dict:
    """Held-out metrics: MLM accuracy, discriminator accuracy, precision / recall on replaced
    tokens, ROC AUC.

    A masked position either hides its token (``[MASK]``, or a random token for the MLM baseline)
    or shows it unchanged (ELECTRA's 15%, BERT's 10%), where copying the input is already right.
    So besides ``mlm_accuracy`` over all masked positions this reports ``mlm_accuracy_hidden`` over
    the hidden ones alone, and with ``most_frequent_id`` the matching baselines: copy the visible
    token, else guess the most frequent one (``mlm_baseline_accuracy``), and the most frequent
    token at the hidden positions (``mlm_baseline_accuracy_hidden``)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    scores, labels = [], []
    count = {k: 0.0 for k in ("total", "hits", "hidden", "hidden_hits", "base_hits", "base_hidden_hits")}
    for i, batch in enumerate(batches):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            out = model(**_model_inputs(batch), seed=10_007 + i, return_logits=True)
        for k, v in out.metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        sums["loss"] = sums.get("loss", 0.0) + float(out.loss)
        n += 1
        slot = batch["masked_weights"] > 0
        target = batch["masked_ids"]
        hidden = slot & (torch.gather(batch["input_ids"], 1, batch["masked_positions"]) != target)
        right = out.mlm_predictions == target
        count["total"] += float(slot.sum())
        count["hits"] += float((right & slot).sum())
        count["hidden"] += float(hidden.sum())
        count["hidden_hits"] += float((right & hidden).sum())
        if most_frequent_id is not None:
            guess = (target == most_frequent_id) & hidden
            count["base_hidden_hits"] += float(guess.sum())
            count["base_hits"] += float(guess.sum() + (slot & ~hidden).sum())
        if out.disc_logits is not None:
            real = batch["attention_mask"].bool()
            scores.append(out.disc_logits[real].float().cpu().numpy())
            labels.append(out.is_replaced[real].cpu().numpy())
    model.train(was_training)
    res = {k: v / max(n, 1) for k, v in sums.items()}
    total, hidden = max(count["total"], 1.0), max(count["hidden"], 1.0)
    res["mlm_accuracy"] = count["hits"] / total  # weighted by masked positions, not per batch
    res["mlm_accuracy_hidden"] = count["hidden_hits"] / hidden
    if most_frequent_id is not None:
        res["mlm_baseline_accuracy"] = count["base_hits"] / total
        res["mlm_baseline_accuracy_hidden"] = count["base_hidden_hits"] / hidden
    if scores:
        res["disc_auc"] = roc_auc(np.concatenate(scores), np.concatenate(labels))
    return res


# Whole-word masking is a data option, not a model one: the presets that turn it on by default.
# tiny: the generator samples each piece of a masked word on its own, which gives the CPU demo's
# discriminator replacements it learns to detect within its budget (benchmarks/RESULTS.md).
WHOLE_WORD_PRESETS = ("tiny",)

# flags that define a run: a resumed run takes them from its checkpoint, not the command line
RUN_ARGS = ("preset", "data", "errors", "vocab", "objective", "whole_word", "grad_accum", "seed")

_MODEL_KEYS = ("input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_ids",
               "masked_weights", "original_ids")


def _model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in _MODEL_KEYS if k in batch}


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return train(args)
    except (TrainError, CheckpointError) as e:
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


def train(args) -> int:
    t_start = time.time()
    if args.data:  # absolute, so that --resume works from any folder
        args.data = [str(Path(p).expanduser().absolute()) for p in args.data]
    rank, world, device = _setup_distributed(args.device)
    out_dir = Path(args.resume or args.out or f"runs/{args.preset}")
    resume_state = None
    if args.resume:
        if not Path(args.resume).is_dir():
            raise TrainError(f"--resume {args.resume}: no such run folder")
        resume_state, ck_path = load_latest(args.resume, log=lambda m: say(m, rank=rank))
        say(f"resuming from {ck_path} (step {resume_state['step']})", rank=rank)
        for k, v in resume_state.get("run_args", {}).items():  # the run's data, seed, objective, ...
            setattr(args, k, v)
    if args.whole_word is None:
        args.whole_word = args.preset in WHOLE_WORD_PRESETS
    cfg = resolve_config(args, resume_state["config"] if resume_state else None)
    if cfg.batch_size % (world * args.grad_accum):
        raise TrainError(f"--batch-size {cfg.batch_size} is not divisible by ranks x --grad-accum "
                         f"({world} x {args.grad_accum})")
    if args.save_every <= 0:
        raise TrainError(f"--save-every must be positive, got {args.save_every}")

    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise TrainError(f"--out {out_dir}: folder is not writable")
    tok, data_dir = _prepare_data(args, cfg, out_dir, rank, world, resume_state is not None)
    if resume_state is not None and resume_state.get("vocab_hash") not in (None, tok.vocab_hash()):
        raise TrainError(f"{out_dir}/vocab does not match the checkpoint's vocabulary (hash differs)")
    if cfg.vocab_size != tok.vocab_size:
        cfg = cfg.replace(vocab_size=tok.vocab_size)

    from .data import PretrainingLoader
    from .model import Electra

    micro = cfg.batch_size // (world * args.grad_accum)
    mlm = args.objective == "mlm"
    mask_kw = dict(mask_prob=cfg.mask_prob, max_predictions=cfg.max_predictions, whole_word=args.whole_word,
                   # BERT's 80/10/10 for the MLM baseline; ELECTRA's 85/15 (pretrain_helpers.mask) otherwise
                   mask_replace_prob=0.8 if mlm else 0.85, random_replace_prob=0.1 if mlm else 0.0)
    loader = PretrainingLoader(data_dir, "train", micro, tokenizer=tok, seed=args.seed, rank=rank,
                               world_size=world, **mask_kw)

    torch.manual_seed(args.seed)  # identical init on every rank
    model = Electra(cfg, objective=args.objective).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt_kw = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    if device.type == "cuda":
        opt_kw["fused"] = True
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), **opt_kw)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.train_steps))

    step = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        loader.load_state_dict(resume_state["loader"][rank] if isinstance(resume_state["loader"], list)
                               else resume_state["loader"])
        step = resume_state["step"]
        set_rng_state(resume_state["rng"][rank] if isinstance(resume_state["rng"], list) else resume_state["rng"])
    else:
        torch.manual_seed(args.seed + rank)
        random.seed(args.seed + rank)
        np.random.seed((args.seed + rank) % 2**32)

    # bf16 autocast on CUDA where supported, fp16 + GradScaler otherwise; fp32 on the CPU
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        autocast = torch.autocast("cuda", dtype=amp_dtype)
    else:
        amp_dtype, autocast = torch.float32, nullcontext()
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    fwd = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        fwd = torch.compile(fwd)

    metrics_path = out_dir / "metrics.jsonl"
    if rank == 0:
        _truncate_metrics(metrics_path, step)
        (out_dir / "config.json").write_text(cfg.to_json() + "\n", encoding="utf-8")

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def save(at_step: int) -> Path | None:
        loader_states = _gather(loader.state_dict(), world)
        rngs = _gather(rng_state(), world)
        if rank != 0:
            return None
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "step": at_step, "config": cfg.to_dict(),
                 "objective": args.objective, "vocab_hash": tok.vocab_hash(),
                 "run_args": {k: getattr(args, k) for k in RUN_ARGS},
                 "loader": loader_states, "rng": rngs, "world_size": world,
                 "scaler": scaler.state_dict() if scaler else None}
        return save_checkpoint(state, out_dir, at_step, keep=args.keep)

    say(f"electra_fast: preset={args.preset} objective={args.objective} params={n_params / 1e6:.2f}M "
        f"vocab={cfg.vocab_size} seq={cfg.max_seq_length} batch={cfg.batch_size} steps={cfg.train_steps} "
        f"device={device} ranks={world} out={out_dir}", rank=rank)

    progress = None
    if rank == 0 and not args.no_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=cfg.train_steps, initial=step, desc="pre-training", unit="step",
                        dynamic_ncols=True, file=sys.stderr, mininterval=0.5)

    model.train()
    it = iter(loader)
    bad_in_a_row = skipped = 0
    tokens_seen = 0
    t0 = time.time()
    last_ckpt = None
    log_acc: dict[str, torch.Tensor] = {}
    log_n = 0
    try:
        while step < cfg.train_steps:
            optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device)
            for _ in range(args.grad_accum):
                cpu_batch = next(it)
                tokens_seen += int(cpu_batch["attention_mask"].sum()) * world  # CPU tensor: no device sync
                batch = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
                # the sampling seed: from the (checkpointed) CPU generator, passed as a tensor
                seed = torch.randint(0, 2**31 - 1, (1,)).to(device, non_blocking=True)
                with autocast:
                    out = fwd(**_model_inputs(batch), seed=seed)
                loss = out.loss / args.grad_accum
                (scaler.scale(loss) if scaler else loss).backward()
                step_loss += loss.detach()
                for k, v in (("mlm_loss", out.mlm_loss), ("disc_loss", out.disc_loss), *out.metrics.items()):
                    log_acc[k] = log_acc.get(k, 0) + v.detach().float() / args.grad_accum
            if scaler:
                scaler.unscale_(optimizer)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            finite = bool(torch.isfinite(gnorm) & torch.isfinite(step_loss))  # the one sync per step
            if finite:
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                bad_in_a_row = 0
            else:
                skipped += 1
                bad_in_a_row += 1
                if scaler:
                    scaler.update()
                say(f"warning: non-finite loss or gradient at step {step + 1}; step skipped "
                    f"({bad_in_a_row} in a row)", rank=rank)
                if bad_in_a_row >= args.max_bad_steps:
                    raise TrainError(f"{bad_in_a_row} consecutive non-finite steps ending at step {step + 1}; "
                                     f"stopping (last good checkpoint: {last_ckpt or 'none'}). Lower --lr?")
            with warnings.catch_warnings():  # a skipped step still advances the schedule, by design
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                scheduler.step()
            step += 1
            log_acc["loss"] = log_acc.get("loss", 0) + step_loss
            log_n += 1

            if step % args.log_every == 0 or step == cfg.train_steps:
                vals = {k: float(v) / log_n for k, v in log_acc.items()}
                elapsed = time.time() - t0
                rec = {"step": step, "lr": scheduler.get_last_lr()[0], **vals, "grad_norm": float(gnorm),
                       "tokens_per_s": tokens_seen / max(elapsed, 1e-9), "skipped_steps": skipped,
                       "time": round(time.time() - t_start, 3)}
                if rank == 0:
                    with open(metrics_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(rec) + "\n")
                    if progress is not None:
                        post = {"loss": f"{vals['loss']:.3f}", "tok/s": f"{rec['tokens_per_s']:.0f}"}
                        if "disc_accuracy" in vals:
                            post["disc_acc"] = f"{vals['disc_accuracy']:.3f}"
                        else:
                            post["mlm_acc"] = f"{vals['mlm_accuracy']:.3f}"
                        progress.set_postfix(post, refresh=False)
                log_acc, log_n = {}, 0
            if progress is not None:
                progress.update(1)

            if args.eval_every and step % args.eval_every == 0 and step < cfg.train_steps:
                res = evaluate(model, loader.iter_eval(micro, max_batches=args.eval_batches), device, autocast)
                _log_eval(metrics_path, step, res, rank)
            if step % args.save_every == 0 or step == cfg.train_steps:
                last_ckpt = save(step) or last_ckpt
            if stop["signal"] is not None:
                name = signal.Signals(stop["signal"]).name
                if step % args.save_every and step != cfg.train_steps:
                    last_ckpt = save(step) or last_ckpt
                if progress is not None:
                    progress.close()
                say(f"{name}: stopped at step {step}; checkpoint {last_ckpt}. "
                    f"Continue with: python -m electra_fast.train --resume {out_dir}", rank=rank)
                return 128 + stop["signal"]
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if progress is not None:
            progress.close()

    # final evaluation on the held-out split
    res = evaluate(model, loader.iter_eval(micro, max_batches=args.eval_batches), device, autocast,
                   most_frequent_id=loader.most_frequent_token())
    _log_eval(metrics_path, step, res, rank)
    elapsed = time.time() - t0
    parts = [f"done: {step} steps in {time.time() - t_start:.0f} s ({tokens_seen / max(elapsed, 1e-9):,.0f} tokens/s)",
             f"held-out mlm_acc={res['mlm_accuracy']:.3f} (baseline {res['mlm_baseline_accuracy']:.3f}: copy "
             f"the visible token, else the most frequent) mlm_acc_at_hidden={res['mlm_accuracy_hidden']:.3f} "
             f"(most-frequent-token baseline {res['mlm_baseline_accuracy_hidden']:.3f})"]
    if "disc_auc" in res:
        parts.append(f"disc_acc={res['disc_accuracy']:.3f} precision={res['disc_precision']:.3f} "
                     f"recall={res['disc_recall']:.3f} auc={res['disc_auc']:.3f}")
    if skipped:
        parts.append(f"skipped non-finite steps={skipped}")
    parts.append(f"checkpoint={last_ckpt}")
    say(" | ".join(parts), rank=rank)
    if world > 1:
        import torch.distributed as dist

        digests = _gather(_param_digest(model), world)
        if len(set(digests)) != 1:
            raise TrainError(f"parameters differ between ranks after step {step}: {digests}")
        say(f"parameters identical on all {world} ranks (sha256 {digests[0][:16]})", rank=rank)
        dist.destroy_process_group()
    return 0


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


def _log_eval(path: Path, step: int, res: dict, rank: int) -> None:
    if rank != 0:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "eval": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                                   for k, v in res.items()}}) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records logged after the checkpoint: those steps are trained again."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
