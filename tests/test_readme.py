"""The README runs as written: every fenced shell and Python block is extracted and run, in order,
in one scratch folder (the shell commands first: the Python blocks read the run they make).

Each shell command is listed in COMMANDS, either run (with flags appended that only shrink it to
a few CPU steps, and `--device cuda` read as `--device cpu`) or skipped with the reason; a README
command missing from the table fails the test, so a new snippet cannot go untested silently.
The CLIs run in-process through their ``main`` (as ``python -m`` would, minus interpreter start).
"""

import json
import random
import re
import shlex
from pathlib import Path

import pytest
import torch
from train_helpers import _corpus

README = Path(__file__).resolve().parent.parent / "README.md"
TINY_TRAIN = ["--steps", "2", "--batch-size", "4", "--seq-len", "32", "--vocab-size", "200", "--eval-batches", "1"]
TINY_FT = ["--epochs", "1", "--seq-len", "32", "--batch-size", "8"]

# command as written in the README -> extra arguments for a tiny CPU run, or a str: why it is skipped
COMMANDS = {
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": ".ci/run runs it",
    'pip install -e ".[test]"': ".ci/run runs it",
    "pytest": ".ci/run runs it (this test is part of it)",
    "python -m electra_fast.train": TINY_TRAIN,
    "python -m electra_fast.train --help": [],
    "python -m electra_fast.train --preset small --data corpus/ --out runs/small --device cuda": TINY_TRAIN,
    "torchrun --nproc_per_node 8 -m electra_fast.train --preset base --data corpus/": "needs 8 GPUs "
    "(tests/test_train.py::test_torchrun_two_ranks_gloo_keep_identical_parameters runs 2 CPU ranks)",
    "python -m electra_fast.train --resume runs/small": [],  # the tiny run is finished: it says so
    "python -m electra_fast.prepare --data owt/ --out prepared/owt-128 --seq-len 128 --vocab-size 30522":
        ["--vocab-size", "200"],
    "python -m electra_fast.train --preset small --data prepared/owt-128 --out runs/owt-small --device cuda":
        ["--steps", "2", "--batch-size", "4", "--eval-batches", "1"],
    "python -m electra_fast.finetune --checkpoint runs/small --task sst2 --data-dir glue/SST-2 --out runs/sst2": TINY_FT,
    "python -m electra_fast.finetune --checkpoint runs/small --task tsv --data-dir mydata --text-cols title,body "
    "--label-col label": TINY_FT,
    "python -m electra_fast.finetune --checkpoint runs/tiny --task probe": [*TINY_FT, "--probe-train", "32",
                                                                            "--probe-dev", "16"],
    "python -m electra_fast.finetune --checkpoint runs/small --task squad --data-dir squad --out runs/squad": TINY_FT,
    'python -m electra_fast.predict --model runs/sst2 --text "a good film"': [],
    "python -m electra_fast.predict --model runs/sst2 --input glue/SST-2/dev.tsv --out preds.tsv": [],
    "python -m electra_fast.finetune --checkpoint runs/small --task sst2 --data-dir glue/SST-2 --out runs/sst2-test "
    "--predict-test": TINY_FT,
    "python -m electra_fast.finetune --checkpoint runs/small --task sst2 --data-dir glue/SST-2 --out runs/sst2-seeds "
    "--seeds 1,2,3,4,5": TINY_FT,
    "python -m electra_fast.export --checkpoint runs/small --out runs/hf": [],
    "tensorboard --logdir runs": "starts a server (tests/test_watch.py reads the event files back)",
    "python -m electra_fast.plot runs/small runs/owt-small --out curves.png --x tokens": [],
    "python -m electra_fast.train --init-from runs/hf --data corpus/ --out runs/domain --lr 1e-4 --steps 10000 "
    "--warmup 1000": ["--steps", "2", "--warmup", "0", "--batch-size", "4", "--seq-len", "32", "--eval-batches", "1"],
    "pytest benchmarks/": "benchmarks are timed runs, not tests",
    "pytest benchmarks/ --benchmark-json out.json": "benchmarks are timed runs, not tests",
    "python -m electra_fast.bench": "a GPU benchmark (tests/test_bench_cli.py runs its CPU path)",
    "python -m electra_fast.bench --proxies": "minutes on the CPU (tests/test_bench_cli.py covers it)",
    "python -m electra_fast.bench --transfer": "about an hour on a 2-core CPU (tests/test_transfer.py runs a small one "
    "end to end)",
    "python tools/compile_kernels.py": "compiles kernels for sm_80 / sm_90a (minutes)",
    "bash tools/gpu_session.sh [OUT_DIR]": "needs a CUDA GPU (tests/test_bench_cli.py checks its flags, and that "
    "it stops at once without one)",
}


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)


def shell_commands() -> list[str]:
    lines = [re.sub(r"\s+#.*$", "", ln.strip()) for b in blocks("bash") for ln in b.splitlines()]
    return [" ".join(ln.split()) for ln in lines if ln and not ln.startswith("#")]


def _inputs(cwd: Path) -> None:
    """What the README's commands read: two corpora, GLUE SST-2, a user TSV, SQuAD 1.1."""
    _corpus(cwd / "corpus", seed=21)
    _corpus(cwd / "owt", n_docs=80, seed=22)
    rng = random.Random(0)
    words = "the cat sat on a mat dogs ran in park good bad".split()
    sst = cwd / "glue" / "SST-2"
    sst.mkdir(parents=True)
    my = cwd / "mydata"
    my.mkdir()
    for split, n in (("train", 24), ("dev", 8)):
        rows = [(" ".join(rng.choice(words) for _ in range(5)), rng.randint(0, 1)) for _ in range(n)]
        (sst / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
        if split == "dev":  # GLUE's test.tsv: an index column, no label
            (sst / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\t{s}\n" for i, (s, _) in enumerate(rows)))
        (my / f"{split}.tsv").write_text("title\tbody\tlabel\n" + "".join(f"{s[:5]}\t{s}\t{y}\n" for s, y in rows))
        data = []
        for i in range(n):
            ctx = [rng.choice(words) for _ in range(12)]
            data.append({"title": "t", "paragraphs": [{"context": " ".join(ctx), "qas": [{
                "id": f"{split}{i}", "question": "what sat ?",
                "answers": [{"text": ctx[3], "answer_start": len(" ".join(ctx[:3])) + 1}]}]}]})
        (cwd / "squad").mkdir(exist_ok=True)
        (cwd / "squad" / f"{split}-v1.1.json").write_text(json.dumps({"version": "1.1", "data": data}))


def _run_cli(cmd: str, extra: list[str], capsys) -> str:
    from electra_fast import bench, export, finetune, plot, predict, prepare, train

    argv = shlex.split(cmd)
    assert argv[:2] == ["python", "-m"], cmd
    mains = {"electra_fast.train": train.main, "electra_fast.finetune": finetune.main,
             "electra_fast.export": export.main, "electra_fast.bench": bench.main,
             "electra_fast.prepare": prepare.main, "electra_fast.plot": plot.main,
             "electra_fast.predict": predict.main}
    args = argv[3:]
    args = ["cpu" if a == "cuda" and i and args[i - 1] == "--device" else a for i, a in enumerate(args)]
    try:
        rc = mains[argv[2]]([*args, *extra])
    except SystemExit as e:  # --help
        rc = e.code
    out = capsys.readouterr()
    assert rc in (0, None), f"{cmd}: exit {rc}\n{out.err[-2000:]}"
    return out.out + out.err


def test_every_readme_command_is_listed():
    assert sorted(shell_commands()) == sorted(COMMANDS)


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _inputs(tmp_path)
    said = {}
    for cmd in shell_commands():
        extra = COMMANDS[cmd]
        if isinstance(extra, list):
            said[cmd] = _run_cli(cmd, extra, capsys)
    assert "finished: step 2 of 2" in said["python -m electra_fast.train --resume runs/small"]
    assert (tmp_path / "runs" / "hf" / "discriminator" / "vocab.txt").is_file()
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert said['python -m electra_fast.predict --model runs/sst2 --text "a good film"'].startswith(
        "line\tprediction\tp(0)\tp(1)\n1\t")
    assert len((tmp_path / "preds.tsv").read_text().splitlines()) == 1 + 8
    assert (tmp_path / "runs" / "sst2-test" / "SST-2.tsv").read_text().splitlines()[:2][0] == "index\tprediction"
    seeds = json.loads((tmp_path / "runs" / "sst2-seeds" / "results.json").read_text())
    assert seeds["seeds"] == [1, 2, 3, 4, 5] and (tmp_path / "runs" / "sst2-seeds" / "seed-5" / "best").is_dir()
    assert (tmp_path / "runs" / "domain" / "vocab" / "vocab.txt").read_text() == \
        (tmp_path / "runs" / "hf" / "discriminator" / "vocab.txt").read_text()
    namespace: dict = {}
    for code in blocks("python"):
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert (tmp_path / "export" / "discriminator" / "tokenizer.json").is_file()
    assert namespace["logits"].shape == (2, 128) and torch.isfinite(namespace["logits"]).all()
