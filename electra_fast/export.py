"""Export a training run to HuggingFace format.

    python -m electra_fast.export --checkpoint runs/tiny --out exported/tiny

writes ``exported/tiny/discriminator`` (ElectraForPreTraining) and ``exported/tiny/generator``
(ElectraForMaskedLM): config.json, model.safetensors, vocab.txt, tokenizer.json and the
tokenizer config. ``transformers`` loads them offline with ``from_pretrained(folder)``; the
discriminator folder also serves ``ElectraForSequenceClassification`` / ``ElectraModel`` (a
fresh classification head, every encoder weight present). No transformers import is needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .finetune import USER_ERRORS, FinetuneError, load_run
from .hf import save_hf


def export(run_dir: str | Path, out_dir: str | Path, log=print) -> tuple[Path, Path]:
    """Newest readable checkpoint of ``run_dir`` -> HF discriminator and generator folders."""
    d = Path(run_dir)
    if not d.is_dir():
        raise FinetuneError(f"--checkpoint {run_dir}: no such folder")
    pre = load_run(d, log=log)
    if pre.model.discriminator is None:
        raise FinetuneError(f"{pre.source}: an objective 'mlm' (BERT baseline) run has no discriminator to "
                            "export as ELECTRA; fine-tune it directly with python -m electra_fast.finetune")
    pre.model.eval()
    return save_hf(pre.model, out_dir, tokenizer=pre.tokenizer)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m electra_fast.export",
                                description="Write a training run's newest checkpoint as HuggingFace ELECTRA "
                                            "discriminator and generator folders.")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="training run folder (ckpt-*.pt, vocab/)")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/discriminator and DIR/generator")
    args = p.parse_args(argv)
    try:
        disc, gen = export(args.checkpoint, args.out, log=lambda m: print(m, file=sys.stderr))
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
