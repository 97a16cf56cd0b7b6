"""Learning curves of one or more training runs from their ``metrics.jsonl``.

    python -m electra_fast.plot runs/tiny runs/tiny-mlm --out curves.png [--x tokens]

One panel per quantity (total, generator and discriminator loss; generator accuracy at the
masked positions, at the hidden ones for held-out records; discriminator ROC AUC), train records
as lines and held-out (eval) records as dots in the same colour, one legend entry per run. The
x axis is the optimizer step, or the tokens seen: step x batch_size x max_seq_length of the run's
config.json (the sequences' full length, padding included). Needs matplotlib (``pip install -e
".[plot]"``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import ArgumentParser

# (title, train key, held-out key): a run logs the keys of its objective (an MLM run has no disc_*)
PANELS = (
    ("loss", "loss", None),
    ("generator (MLM) loss", "mlm_loss", None),
    ("discriminator loss", "disc_loss", None),
    ("generator accuracy (masked; held-out: hidden)", "mlm_accuracy", "mlm_accuracy_hidden"),
    ("discriminator ROC AUC (held-out)", None, "disc_auc"),
)


class PlotError(ValueError):
    """A run folder that cannot be plotted; one line."""


def read_metrics(run: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, held-out records) of a run folder's metrics.jsonl."""
    path = Path(run) / "metrics.jsonl"
    if not Path(run).is_dir():
        raise PlotError(f"{run}: no such run folder")
    if not path.is_file():
        raise PlotError(f"{run}: no metrics.jsonl (not a training run, or it has not logged yet)")
    train, held = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise PlotError(f"{path}:{i}: not a JSON line") from None
        if isinstance(rec.get("eval"), dict):
            held.append({"step": rec["step"], **rec["eval"]})
        elif "step" in rec:
            train.append(rec)
    if not train and not held:
        raise PlotError(f"{path}: no metrics recorded yet")
    return train, held


def tokens_per_step(run: str | Path) -> int:
    """Tokens one optimizer step reads: batch_size x max_seq_length from the run's config.json."""
    path = Path(run) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        return int(cfg["batch_size"]) * int(cfg["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        raise PlotError(f"{run}: no readable config.json with batch_size and max_seq_length (needed for "
                        "--x tokens)") from None


def plot(runs: list[str | Path], out: str | Path, x: str = "steps") -> Path:
    """Draw the learning curves of ``runs`` into the image ``out`` (format from its suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(Path(r), *read_metrics(r), tokens_per_step(r) if x == "tokens" else 1) for r in runs]
    panels = [p for p in PANELS if any(any(p[1] in rec for rec in tr) or any(p[2] in rec for rec in ev)
                                       for _, tr, ev, _ in data)]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = _labels([r for r, *_ in data])
    for ax, (title, tkey, ekey) in zip(axes.flat, panels):
        for i, (_, tr, ev, scale) in enumerate(data):
            c = colours[i % len(colours)]
            pts = [(r["step"] * scale, r[tkey]) for r in tr if tkey and r.get(tkey) is not None]
            if pts:
                ax.plot(*zip(*pts), color=c, lw=1.2)
            pts = [(r["step"] * scale, r[ekey or tkey]) for r in ev if r.get(ekey or tkey) is not None]
            if pts:
                ax.plot(*zip(*pts), color=c, marker="o", ls="--", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("tokens seen" if x == "tokens" else "step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[i % len(colours)], label=n) for i, n in enumerate(names)]
    handles += [plt.Line2D([], [], color="grey", label="train"),
                plt.Line2D([], [], color="grey", marker="o", ls="--", label="held-out")]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _labels(runs: list[Path]) -> list[str]:
    """Each run's folder name, or its path when two runs share a name."""
    names = [r.name or str(r) for r in runs]
    return names if len(set(names)) == len(names) else [str(r) for r in runs]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m electra_fast.plot",
                       description="Learning curves (train and held-out loss, generator accuracy, discriminator "
                                   "AUC) of one or more training runs, from their metrics.jsonl.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="training run folders")
    p.add_argument("--out", default="curves.png", help="image file (.png, .pdf, .svg)")
    p.add_argument("--x", default="steps", choices=["steps", "tokens"], help="x axis: optimizer steps or tokens seen")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: plotting needs matplotlib: pip install matplotlib (or pip install -e \".[plot]\")",
              file=sys.stderr)
        return 2
    try:
        out = plot(args.runs, args.out, args.x)
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # an unwritable --out, an unknown image suffix
        print(f"error: cannot write {args.out}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(args.runs)} run{'s' * (len(args.runs) > 1)}, x = {args.x})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
