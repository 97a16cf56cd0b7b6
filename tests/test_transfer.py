"""The transfer benchmark (``python -m electra_fast.bench --transfer``, electra_fast.transfer): its tasks,
its equal-compute rule, its bag-of-words baseline and one small end-to-end run. The benchmark itself
(about an hour on 2 cores) is not run here; its numbers are in benchmarks/RESULTS.md."""

import json

import pytest

from electra_fast import ElectraConfig
from electra_fast import transfer as T
from electra_fast.finetune import load_run


@pytest.fixture(scope="module")
def tasks():
    return T.build_tasks(400, 100, 200)


def test_tasks_are_balanced_deterministic_and_split_by_file(tasks):
    assert set(tasks) == {"topic", "order", "next", "words"}
    again = T.build_tasks(400, 100, 200)
    for name, data in tasks.items():
        for s in T.SPLITS:
            ex = data.splits[s]
            assert len(ex) == {"train": 400, "dev": 100, "test": 200}[s], (name, s)
            assert ex.text_a == again[name].splits[s].text_a and ex.labels == again[name].splits[s].labels
            counts = {label: ex.labels.count(label) for label in data.task.labels}
            assert min(counts.values()) > 0, (name, s, counts)
            if name != "topic":  # pair tasks: exactly half of each label
                assert max(counts.values()) - min(counts.values()) <= 1, (name, s, counts)
    # whole module files go to one split: no passage or sentence of test was fine-tuned on
    for name, data in tasks.items():
        train = set(data.splits["train"].text_a) | set(data.splits["train"].text_b or [])
        test = set(data.splits["test"].text_a) | set(data.splits["test"].text_b or [])
        assert not train & test, (name, sorted(train & test)[:3])
    # "words" negatives: a sentence of the split with two neighbours among its first 12 words swapped
    import numpy as np

    words = tasks["words"].splits["train"]
    pairs = [("m", a, b) for a, b in zip(tasks["order"].splits["train"].text_a, tasks["order"].splits["train"].text_b)]
    ex = T._word_order_examples(pairs, 50, np.random.default_rng(7))
    assert set(words.labels) == {"as_written", "swapped"} and len(ex) == 50
    assert all(t == " ".join(t.split()) for t in words.text_a)  # spacing never tells the label
    src = {" ".join(a.split()) for _, a, _ in pairs}  # examples are single-spaced, whatever their label
    for text, label in zip(ex.text_a, ex.labels):
        if label == "as_written":
            assert text in src
        else:
            diff = [i for i, (x, y) in enumerate(zip(text.split(), next(
                a for a in src if sorted(a.split()) == sorted(text.split()) and a != text).split())) if x != y]
            assert len(diff) == 2 and diff[1] == diff[0] + 1 and diff[1] < 12, (text, diff)


def test_split_of_a_module_is_fixed():
    assert [T._split_of(m) for m in ("torch.nn.modules.linear", "numpy.lib.format")] == \
        [T._split_of(m) for m in ("torch.nn.modules.linear", "numpy.lib.format")]
    shares = [T._split_of(f"m{i}") for i in range(4000)]
    assert abs(shares.count("train") / 4000 - 0.7) < 0.03 and abs(shares.count("test") / 4000 - 0.2) < 0.03


def test_equal_compute_gives_the_cheaper_objective_more_steps():
    cfg = ElectraConfig.preset("tiny", vocab_size=4096)
    steps = T.equal_compute_steps(cfg, 2400)
    assert steps * cfg.flops_per_token(objective="mlm") == pytest.approx(2400 * cfg.flops_per_token(), rel=1e-3)
    assert steps > 2400  # tied encoders: ELECTRA runs its one encoder twice
    assert T._without(["--steps", "5", "--lr", "1e-3", "--warmup=2"], "--steps", "--warmup") == ["--lr", "1e-3"]


def test_bag_of_words_learns_the_topic_task(tasks):
    acc = T.bag_of_words(tasks["topic"], seed=3)
    assert acc > 3 / len(T.TOPICS), acc  # chance is 1 / 9


def test_a_small_transfer_run_end_to_end(tmp_path, capsys):
    """Pre-training (a few steps of each objective), fine-tuning of all three encoders with two seeds,
    the bag of words, the table and transfer.json; later calls reuse the finished pre-training and
    tasks, and fine-tune what is new in worker processes."""
    args = ["--steps", "4", "--warmup", "1", "--batch-size", "8", "--save-every", "2", "--eval-batches", "1"]
    res = T.run(tmp_path, [1, 2], args, sizes=(40, 20, 30), epochs=1, task_names=("topic", "order", "next"))
    capsys.readouterr()
    res = T.run(tmp_path, [1, 2], args, sizes=(40, 20, 30), epochs=1, workers=2)  # "words" in 2 processes
    out = capsys.readouterr().out
    assert out.count("already trained by this command, reused") == 2 and out.count("reused from") == 3, out
    assert "fine-tuning in 2 worker processes" in out
    saved = json.loads((tmp_path / "transfer.json").read_text())
    assert saved["tasks"].keys() == {"topic", "order", "next", "words"}
    for task in saved["tasks"].values():
        assert task["scores"].keys() == {"electra", "mlm", "random", "bow"}
        for sc in task["scores"].values():
            assert len(sc["values"]) == 2 and 0 <= sc["min"] <= sc["mean"] <= sc["max"] <= 1
    mlm = saved["encoders"]["mlm"]
    assert mlm["steps"] == T.equal_compute_steps(load_run(tmp_path / "pretrain/electra", log=lambda m: None).model.config, 4)
    table = T.format_table(res)
    assert "ELECTRA" in table and "MLM (equal FLOPs)" in table and "random init" in table and "bag of words" in table
    again = T.run(tmp_path, [1, 2], args, sizes=(40, 20, 30), epochs=1, task_names=("words", "topic"))
    assert "reused from" in capsys.readouterr().out and again["tasks"]["words"] == res["tasks"]["words"]
    # a killed benchmark loses at most the fine-tuning it was in: finished ones are read back, and
    # only while encoder, examples and settings are the same
    (tmp_path / "transfer.json").unlink()
    folder = tmp_path / "finetune" / "order" / "electra" / "1"
    stamp = (folder / "results.json").stat().st_mtime_ns
    redo = T.run(tmp_path, [1, 2], args, sizes=(40, 20, 30), epochs=1, task_names=("order",))
    assert (folder / "results.json").stat().st_mtime_ns == stamp
    assert redo["tasks"]["order"]["scores"]["electra"] == res["tasks"]["order"]["scores"]["electra"]
    T.run(tmp_path, [1, 2], args, sizes=(40, 20, 30), epochs=2, task_names=("order",))
    assert (folder / "results.json").stat().st_mtime_ns != stamp


def test_a_task_with_other_examples_of_the_same_size_is_not_reused(tmp_path, capsys, monkeypatch):
    """A new numpy or torch, or a fix to how a task is built, changes the examples but not their
    number: the task's results must be redone, not read back from transfer.json."""
    args = ["--steps", "2", "--warmup", "1", "--batch-size", "8", "--save-every", "2", "--eval-batches", "1"]
    T.run(tmp_path, [1], args, sizes=(20, 10, 10), epochs=1, task_names=("topic", "order"))
    capsys.readouterr()
    build = T.build_tasks

    def changed(*a, **k):
        tasks = build(*a, **k)
        ex = tasks["order"].splits["test"]
        ex.text_a[0], ex.text_b[0] = ex.text_b[0], ex.text_a[0]  # one test example swapped, same sizes
        return tasks

    monkeypatch.setattr(T, "build_tasks", changed)
    T.run(tmp_path, [1], args, sizes=(20, 10, 10), epochs=1, task_names=("topic", "order"))
    out = capsys.readouterr().out
    assert "topic: reused from" in out and "order: reused from" not in out, out


def test_bench_pretrains_both_objectives_with_the_pretraining_seed_it_is_given(tmp_path, capsys):
    """``bench --transfer --transfer-pretrain-seed N``: another pre-training trajectory, for ELECTRA and
    MLM alike, recorded in transfer.json and named under the table."""
    from electra_fast import bench
    from electra_fast.checkpoint import load_latest

    rc = bench.main(["--transfer", "--transfer-out", str(tmp_path), "--transfer-pretrain-seed", "7",
                     "--transfer-train-args", "--steps 2 --warmup 1 --batch-size 8 --save-every 2 --eval-batches 1",
                     "--transfer-sizes", "20,10,10", "--transfer-epochs", "1", "--transfer-tasks", "order",
                     "--transfer-seeds", "1", "--transfer-jobs", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "(pre-training seed 7)" in out
    for name in ("electra", "mlm"):
        state, _ = load_latest(tmp_path / "pretrain" / name, log=lambda m: None)
        assert state["run_args"]["seed"] == 7, name
    assert json.loads((tmp_path / "transfer.json").read_text())["pretrain_seed"] == 7


def test_a_changed_preset_default_retrains_under_the_same_command(monkeypatch):
    """The reuse stamp of a finished pre-training holds the presets: the default run's command has no
    flags, so a new preset default (say, the tiny learning rate) must not reuse the old run."""
    cmd = ["python", "-m", "electra_fast.train", "--seed", "1234"]
    before = T._stamp(cmd)
    assert T._stamp(list(cmd)) == before
    monkeypatch.setitem(T.PRESETS, "tiny", dict(T.PRESETS["tiny"], learning_rate=T.PRESETS["tiny"]["learning_rate"] * 2))
    assert T._stamp(cmd) != before


def test_the_default_corpus_never_holds_the_tasks_text(tasks):
    """The tasks are text the default pre-training never saw: none of their sentences is a line of the
    default corpus, but for a few stock phrases ("Returns the result.") that any two libraries share."""
    from electra_fast.corpus import default_corpus

    corpus = {line for doc in default_corpus() for line in doc}
    for name in ("order", "words"):
        for s in T.SPLITS:
            ex = tasks[name].splits[s]
            lines = set(ex.text_a) | set(ex.text_b or [])
            shared = lines & corpus
            assert len(shared) <= 0.01 * len(lines), (name, s, sorted(shared)[:10])


def test_sentence_pairs_never_cross_a_docstring(tasks):
    """ "Consecutive" means within one docstring: the end of one function's docstring followed by the
    start of the next function's is not a pair whose order or continuity the text can show."""
    within = set()
    for _, doc in T.source_documents():
        lines = [line for line in doc if len(line.split()) >= T._MIN_WORDS]
        within |= set(zip(lines, lines[1:]))
    for name in ("order", "next"):
        for s in T.SPLITS:
            ex = tasks[name].splits[s]
            for a, b, label in zip(ex.text_a, ex.text_b, ex.labels):
                if label in ("in_order", "next"):
                    assert (a, b) in within, (name, s, a, b)
                elif name == "order":
                    assert (b, a) in within, (name, s, a, b)
    topic = tasks["topic"].splits["train"].text_a
    passages = {f"{a} {b}" for a, b in within}
    assert all(text in passages for text in topic)
