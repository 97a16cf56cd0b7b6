"""Watching a run: TensorBoard scalars equal to metrics.jsonl, and learning-curve pictures."""

import json

import numpy as np
import pytest
from train_helpers import SMALL, _corpus

from electra_fast import plot
from electra_fast.train import main


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("watch")
    data = _corpus(tmp / "corpus", seed=5)
    runs = []
    for name, extra in (("electra", []), ("mlm", ["--objective", "mlm"])):
        run = tmp / name
        assert main(["--data", str(data), "--out", str(run), *SMALL, "--steps", "4", "--eval-every", "2",
                     "--tensorboard", *extra]) == 0
        runs.append(run)
    return runs


def test_tensorboard_holds_the_metrics_jsonl_scalars(two_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = two_runs[0]
    ev = EventAccumulator(str(run / "tb"))
    ev.Reload()
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "eval" not in r]
    held = [r for r in recs if "eval" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["step"] for r in held] == [2, 4]
    for key in ("loss", "disc_loss", "mlm_accuracy", "lr", "grad_norm", "tokens_per_s", "skipped_steps"):
        logged = [(e.step, e.value) for e in ev.Scalars(f"train/{key}")]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in train], key
    for key in ("disc_auc", "mlm_accuracy_hidden"):
        logged = [(e.step, e.value) for e in ev.Scalars(f"eval/{key}")]
        assert logged == [(r["step"], pytest.approx(r["eval"][key], rel=1e-6)) for r in held], key


def test_no_tensorboard_writes_no_events(tmp_path):
    data = _corpus(tmp_path / "corpus", seed=6)
    assert main(["--data", str(data), "--out", str(tmp_path / "run"), *SMALL, "--steps", "1",
                 "--no-tensorboard"]) == 0
    assert not (tmp_path / "run" / "tb").exists()


@pytest.mark.parametrize("x", ["steps", "tokens"])
def test_plot_of_two_runs_is_a_real_picture(two_runs, tmp_path, x, capsys):
    import matplotlib.image

    out = tmp_path / "curves.png"
    assert plot.main([*map(str, two_runs), "--out", str(out), "--x", x]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000
    img = matplotlib.image.imread(out)
    assert img.shape[0] > 400 and img.shape[1] > 800
    rgb = (img[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    # white, black text, grey grid, and the two runs' line colours (matplotlib's C0 blue, C1 orange)
    assert len(colours[counts > 50]) >= 5
    for c in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        assert (rgb == c).all(axis=1).sum() > 100, c


def test_plot_x_tokens_scales_steps_by_the_batch(two_runs):
    assert plot.tokens_per_step(two_runs[0]) == 4 * 32  # SMALL: --batch-size 4 --seq-len 32


def test_plot_a_folder_without_metrics_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert plot.main([str(tmp_path / "empty"), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no metrics.jsonl" in err[0]
    assert not (tmp_path / "c.png").exists()
