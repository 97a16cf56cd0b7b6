"""Shared by the training and reliability tests: a small synthetic corpus and CLI flags."""

import random
from pathlib import Path

WORDS = ("the cat sat on a mat while dogs ran in the park and birds sang over trees near quiet rivers "
         "where children played games with bright red balls every sunny morning before school began").split()


def _corpus(folder: Path, n_docs=40, seed=None) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs = []
    for _ in range(n_docs):
        sents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(rng.randint(3, 8))]
        docs.append("\n".join(sents))
    (folder / "part1.txt").write_text("\n\n".join(docs[: n_docs // 2]) + "\n", encoding="utf-8")
    (folder / "part2.txt").write_text("\n\n".join(docs[n_docs // 2:]) + "\n", encoding="utf-8")
    return folder


SMALL = ["--vocab-size", "120", "--seq-len", "32", "--batch-size", "4", "--no-progress", "--log-every", "1",
         "--eval-batches", "2"]
SMALL_VOCAB = SMALL[2:]  # with --vocab (a given vocabulary has its own size: --vocab-size is refused with it)
RESUME = ["--no-progress", "--log-every", "1", "--eval-batches", "2"]  # what --resume accepts of SMALL


def _vocab(corpus: Path, out: Path) -> Path:
    from electra_fast.corpus import read_corpus
    from electra_fast.tokenizer import train_tokenizer

    train_tokenizer(list(read_corpus([corpus])), 120).save(out)
    return out


