"""Export a training run to HuggingFace format.

    python -m electra_fast.export --checkpoint runs/tiny --out exported/tiny

writes ``exported/tiny/discriminator`` (ElectraForPreTraining) and ``exported/tiny/generator``
(ElectraForMaskedLM): config.json, model.safetensors, vocab.txt, tokenizer.json and the
tokenizer config. ``transformers`` loads them offline with ``from_pretrained(folder)``; the
discriminator folder also serves ``ElectraForSequenceClassification`` / ``ElectraModel`` (a
fresh classification head, every encoder weight present). No transformers import is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cli import ArgumentParser
from .finetune import USER_ERRORS, load_run
from .hf import save_hf
from .recipe import FinetuneError
from .runfolder import claim

# what an export writes into --out (--overwrite deletes these, nothing else)
EXPORT_FILES = ("discriminator", "generator")


def load_source(checkpoint: str | Path, log=print):
    """A run folder's newest readable checkpoint, or exactly the ``ckpt-*.pt`` given, with an ELECTRA
    discriminator to export."""
    d = Path(checkpoint)
    if d.is_file() and d.suffix == ".pt":
        pre = load_run(d.parent, log=log, checkpoint=d)
    elif not d.is_dir():
        raise FinetuneError(f"--checkpoint {checkpoint}: no such folder (a run folder or one ckpt-*.pt of it)")
    else:
        pre = load_run(d, log=log)
    if pre.model.discriminator is None:
        raise FinetuneError(f"{pre.source}: an objective 'mlm' (BERT baseline) run has no discriminator to "
                            "export as ELECTRA; fine-tune it directly with python -m electra_fast.finetune")
    return pre


def export(run_dir: str | Path, out_dir: str | Path, log=print) -> tuple[Path, Path]:
    """A run folder's newest readable checkpoint (or exactly the ``ckpt-*.pt`` given) -> HF
    discriminator and generator folders."""
    pre = load_source(run_dir, log=log)
    log(f"exporting {pre.source}")
    pre.model.eval()
    return save_hf(pre.model, out_dir, tokenizer=pre.tokenizer)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m electra_fast.export",
                                description="Write a training run's newest checkpoint (or the one given) as "
                                            "HuggingFace ELECTRA discriminator and generator folders.")
    p.add_argument("--checkpoint", required=True, metavar="DIR|FILE",
                   help="training run folder (its newest good ckpt-*.pt, vocab/), or one ckpt-*.pt of it")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/discriminator and DIR/generator")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out folder that holds an export or other files (discriminator/ and "
                        "generator/ are replaced; other files are kept)")
    args = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        out, src = Path(args.out), Path(args.checkpoint)
        src = src.parent if src.suffix == ".pt" else src
        if src.exists() and (out.resolve() == src.resolve() or src.resolve() in out.resolve().parents):
            raise FinetuneError(f"--out {out} is inside the --checkpoint run folder {src}; export elsewhere")
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
            claim(out, "export", "--out", False, EXPORT_FILES, work=EXPORT_FILES)  # raises: names what is there
        pre = load_source(args.checkpoint, log=log)  # a bad checkpoint leaves --out untouched
        claim(out, "export", "--out", args.overwrite, EXPORT_FILES, work=EXPORT_FILES)
        log(f"exporting {pre.source}")
        pre.model.eval()
        disc, gen = save_hf(pre.model, out, tokenizer=pre.tokenizer)
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()
        print(f"error: {msg[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {disc} (ElectraForPreTraining) and {gen} (ElectraForMaskedLM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
