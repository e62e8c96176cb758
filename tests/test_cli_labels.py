"""``ppvae train --model m2 --labels N`` and ``--model cvae --quadrants N``: bad flags are one
line with exit status 2 and nothing written; a small cvae run writes its scores."""

import pandas as pd
import pytest

from ppvae.cli import main
from ppvae.experiments.run import RunConfig

FAST = ["--hidden", "16", "--z-dim", "2", "--eval-samples", "20", "--batch-size", "256"]


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--model", "m2", "--labels", "7"], "--labels 7 cannot be class-balanced over 10"),
        (["--model", "m2", "--labels", "3000"], "--labels 3000 is more than the 1437 training"),
        (["--model", "m2"], "--model m2 needs --labels N"),
        (["--model", "cvae"], "--model cvae needs --quadrants N"),
        (["--model", "cvae", "--quadrants", "4"], "--quadrants: unknown choice 4"),
        (["--labels", "100"], "--labels is for --model m2, not bernoulli"),
        (["--model", "m2", "--labels", "100", "--quadrants", "1"], "--quadrants is for"),
    ],
)
def test_bad_flags_are_one_line_exit_2(tmp_path, capsys, flags, line):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:  # argparse's own refusals exit
        code = main(["train", *flags, "--out", str(out), *FAST])
        raise SystemExit(code)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ppvae: error: ") and line in err and "\n" not in err
    assert not out.exists()


def test_cvae_run_scores_the_hidden_pixels(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "cvae", "--quadrants", "2", "--epochs", "2",
                 "--out", str(out), *FAST]) == 0  # fmt: skip
    run = RunConfig.load(out / "config.json")
    assert (run.guide, run.fit.objective, run.quadrants) == ("cvae", "trace", 2)
    assert "test log p(y|x)" in capsys.readouterr().out
    m = pd.read_csv(out / "metrics.csv").iloc[0]
    # importance sampling tightens the ELBO; both score the 32 hidden pixels of an 8x8 image
    assert m.log_px >= m.elbo - 3 * m.log_px_stderr
    assert -32 * 2.0 < m.log_px < 0


def test_m2_run_trains_with_its_classifier_and_reports_accuracy(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "m2", "--labels", "100", "--epochs", "1",
                 "--out", str(out), *FAST]) == 0  # fmt: skip
    run = RunConfig.load(out / "config.json")
    assert (run.guide, run.fit.objective, run.labels) == ("m2", "enum", 100)
    printed = capsys.readouterr().out
    assert "test log p(x), y summed out" in printed and "test accuracy of q(y|x)" in printed
    m = pd.read_csv(out / "metrics.csv").iloc[0]
    assert 0 <= m.accuracy <= 1
    # log p(x) sums p(x, y) over the labels: it is above log p(x, y_true), up to the samplers
    assert m.log_px_unlabelled >= m.log_px - 3 * (m.log_px_stderr + m.log_px_unlabelled_stderr)
