"""``ppvae compare --labels N`` (M2 against its classifier trained on the labels alone) and
``--quadrants K`` (the CVAE's IS log p(y|x), its ELBO and the plain network): each row against
an independent recomputation, the ELBO below the IS figure, resume row by row, bad flags."""

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from ppvae.cli import main
from ppvae.config import ConfigError
from ppvae.errors import DataError
from ppvae.experiments import compare_labels
from ppvae.experiments.compare import CompareConfig, compare, to_markdown
from ppvae.experiments.compare_labels import (
    LABEL_COLUMNS,
    QUADRANT_COLUMNS,
    caption,
    table_data,
)
from ppvae.experiments.conditions import ConditionsConfig, completion_data, train_cvae
from ppvae.experiments.labelled import (
    LabelsConfig,
    accuracy,
    labelled_data,
    train_classifier,
    train_m2,
)

SIZES = {"z_dim": 2, "hidden": (16,), "epochs": 1, "batch_size": 128, "train_size": 300,
         "test_size": 50, "seed": 0, "lr": 3e-3}  # fmt: skip
LABELS = CompareConfig(dataset="digits", labels=100, eval_samples=2, device="cpu", **SIZES)
QUADRANTS = CompareConfig(
    dataset="digits", quadrants=2, eval_samples=20, elbo_samples=2, device="cpu", **SIZES
)
TINY_ARGS = [
    "--train-size", "300", "--test-size", "50", "--epochs", "1", "--hidden", "16",
    "--z-dim", "2", "--eval-samples", "2", "--elbo-samples", "2", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def labels_table() -> pd.DataFrame:
    return compare(LABELS, progress=False)


@pytest.fixture(scope="module")
def quadrants_table() -> pd.DataFrame:
    return compare(QUADRANTS, progress=False)


def test_labels_table_has_its_rows_and_columns(labels_table):
    assert list(labels_table.columns) == LABEL_COLUMNS
    assert labels_table.method.tolist() == ["m2", "labels-only"]
    assert set(labels_table.status) == {"ok"}
    m2, alone = (labels_table.set_index("method").loc[k] for k in ("m2", "labels-only"))
    assert math.isnan(alone.log_px) and math.isnan(alone.log_px_stderr)
    assert m2.log_px < 0 and m2.log_px_stderr > 0 and m2.estimator == "IS K=2 per class"
    for row in (m2, alone):  # a share of the 50 test rows
        assert row.accuracy * 50 == pytest.approx(round(row.accuracy * 50), abs=1e-9)


def test_labels_rows_are_the_experiment_recomputed_by_hand(labels_table):
    """The same sizes given to labelled.py directly (not through the table's mapping): the
    seeded trainings give the table's accuracies exactly."""
    config = LabelsConfig(**SIZES, eval_samples=2)
    data = labelled_data("digits", 100, 0, config)
    x, _ = data.test
    net = train_classifier(data, config)
    alone = accuracy(lambda v: net(v).argmax(1), x, data.test_labels)
    _, guide, _ = train_m2(data, config)
    rows = labels_table.set_index("method").accuracy
    assert rows["labels-only"] == alone
    assert rows["m2"] == accuracy(guide.classify, x, data.test_labels)


def test_quadrants_table_has_its_rows_and_columns(quadrants_table):
    assert list(quadrants_table.columns) == QUADRANT_COLUMNS
    assert quadrants_table.method.tolist() == ["cvae", "cvae-elbo", "baseline"]
    rows = quadrants_table.set_index("method")
    assert rows.estimator.tolist() == ["IS K=20", "ELBO, 2 samples", "exact"]
    assert rows.log_py_x_stderr["baseline"] == 0 and rows.log_py_x_stderr["cvae"] > 0
    assert rows.fit_seconds.nunique() == 1  # one training makes the three rows
    # log p(y|x) of the 32 hidden pixels of an 8x8 image: below 0, above 32 coin flips' worth
    assert (rows.log_py_x < 0).all() and (rows.log_py_x > -32 * 2.0).all()


def test_cvae_elbo_is_below_its_importance_sampled_likelihood(quadrants_table):
    rows = quadrants_table.set_index("method")
    assert rows.log_py_x["cvae-elbo"] <= rows.log_py_x["cvae"] + 3 * rows.log_py_x_stderr["cvae"]


def test_baseline_row_is_the_exact_bernoulli_likelihood_of_the_hidden_pixels(quadrants_table):
    config = ConditionsConfig(**SIZES, baseline_epochs=1, eval_samples=20, elbo_samples=2)
    data = completion_data("digits", 2, config)
    _, _, net, _ = train_cvae(data, config)
    inputs, outputs = data.test
    with torch.no_grad():
        p = net(inputs).double()
    y, hidden = outputs.double(), outputs != -1
    assert int(hidden[0].sum()) == 32  # the right half of an 8x8 digit
    by_hand = torch.where(hidden, y * p.log() + (1 - y) * (1 - p).log(), 0.0).sum(1).mean()
    row = quadrants_table.set_index("method").loc["baseline"]
    assert row.log_py_x == pytest.approx(by_hand.item(), rel=1e-6)


def test_markdown_explains_every_column_and_pyro_s_sign(quadrants_table, labels_table):
    md = to_markdown(quadrants_table, caption(QUADRANTS, table_data(QUADRANTS)))
    assert md.startswith("digits, quadrant completion from 2 given quadrant(s), train/test 300/50")
    assert '"negative CLL"' in md and "- `cvae-elbo`: The CVAE's ELBO, a lower bound" in md
    assert all(f"- {c}: " in md for c in QUADRANT_COLUMNS[1:])
    md = to_markdown(labels_table, caption(LABELS, table_data(LABELS)))
    assert "100 class-balanced labels (draw 0)" in md
    assert all(f"- {c}: " in md for c in LABEL_COLUMNS[1:])


def _counting(monkeypatch, table: str, fail: str | None = None, error=DataError):
    """Replace a table's rows by counted fakes; ``fail`` raises ``error``."""
    calls = []

    def fake(name):
        def method(data, config):
            calls.append(name)
            if name == fail:
                raise error(f"{name} broke\nsecond line")
            return {"accuracy": 0.5, "log_px": -1.0, "log_px_stderr": 0.0, "fit_seconds": 0.0}

        return method

    monkeypatch.setattr(
        compare_labels, table, {k: fake(k) for k in getattr(compare_labels, table)}
    )
    return calls


def test_ctrl_c_keeps_the_rows_fitted_and_resume_fits_the_missing_ones(
    tmp_path, capsys, monkeypatch
):
    args = ["compare", "--labels", "100", "--out", str(tmp_path / "c"), *TINY_ARGS]
    calls = _counting(monkeypatch, "LABEL_METHODS", fail="m2", error=lambda m: KeyboardInterrupt())
    assert main(args) == 130
    assert pd.read_csv(tmp_path / "c" / "compare.csv").status.tolist() == ["interrupted"]
    calls = _counting(monkeypatch, "LABEL_METHODS")
    assert main([*args, "--resume"]) == 0
    assert calls == ["m2", "labels-only"]
    calls.clear()
    assert main([*args, "--resume"]) == 0 and calls == []  # all ok: nothing to fit


def test_a_failed_row_is_refitted_alone_and_the_shared_training_runs_once_a_run(
    tmp_path, capsys, monkeypatch
):
    trainings = []

    def counted(data, config):
        trainings.append(config)
        return train_cvae(data, config)

    monkeypatch.setattr(compare_labels, "train_cvae", counted)
    methods = dict(compare_labels.QUADRANT_METHODS)

    def broken(done, config):
        assert done.scores  # the shared training, then a failure
        raise DataError("baseline broke")

    monkeypatch.setattr(compare_labels, "QUADRANT_METHODS", dict(methods, baseline=broken))
    args = ["compare", "--quadrants", "2", "--out", str(tmp_path / "c"), *TINY_ARGS]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("ppvae: error: baseline: baseline broke")
    table = pd.read_csv(tmp_path / "c" / "compare.csv")
    assert table.status.tolist() == ["ok", "ok", "failed: baseline broke"]
    assert len(trainings) == 1  # cvae and cvae-elbo shared it
    monkeypatch.setattr(compare_labels, "QUADRANT_METHODS", methods)
    assert main([*args, "--resume"]) == 0
    assert len(trainings) == 2  # the baseline row alone, one more training
    again = pd.read_csv(tmp_path / "c" / "compare.csv")
    assert again.status.tolist() == ["ok"] * 3
    pd.testing.assert_frame_equal(again.iloc[:2], table.iloc[:2])  # kept as they were


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--labels", "7"], "--labels 7 cannot be class-balanced over 10 classes"),
        (["--labels", "400"], "--labels 400 is more than the 300 training rows"),
        (["--labels", "-10"], "labels must be >= 0, got -10"),
        (["--quadrants", "4"], "quadrants must be 1, 2 or 3 given quadrants, got 4"),
        (["--labels", "100", "--quadrants", "1"], "--labels and --quadrants make different"),
        (["--quadrants", "1", "--missing-rate", "0.2"], "--missing-rate and --quadrants make"),
        (["--labels", "100", "--methods", "vae"], "(leave out --labels for vae)"),
        (["--methods", "cvae"], "(add --quadrants K for cvae)"),
        (["--quadrants", "1", "--methods", "m2"], "(use --labels N instead of --quadrants for"),
        (["--dataset", "synthetic-ppca", "--labels", "10"], "synthetic-ppca has no class labels"),
        (["--dataset", "synthetic-ppca", "--quadrants", "1"], "is not images"),
    ],
)
def test_bad_flags_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, flags, line):
    out = tmp_path / "c"
    assert main(["compare", "--out", str(out), *TINY_ARGS, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppvae: error: ") and err.count("\n") == 1 and line in err, err
    assert not out.exists()


def test_config_round_trips_and_refuses_two_tables():
    assert CompareConfig.from_json(QUADRANTS.to_json()) == QUADRANTS
    with pytest.raises(ConfigError, match="--missing-rate and --labels make different tables"):
        CompareConfig(labels=100, missing_rate=0.1)


def test_a_fit_stopped_by_ctrl_c_is_no_table_result(monkeypatch):
    """train_m2 and train_cvae raise KeyboardInterrupt when fit reports that Ctrl-C stopped
    it, so that the half-trained pair is never scored as an ok row."""
    from ppvae.experiments import conditions, labelled

    def stopped(model, guide, *args, **kwargs):
        return SimpleNamespace(interrupted=True)

    for module in (labelled, conditions):
        monkeypatch.setattr(module, "fit", stopped)
    tiny = {"z_dim": 2, "hidden": (8,), "epochs": 1, "train_size": 60, "test_size": 20}
    config = labelled.LabelsConfig(**tiny)
    with pytest.raises(KeyboardInterrupt):
        labelled.train_m2(labelled.labelled_data("digits", 10, 0, config), config)
    config = conditions.ConditionsConfig(**tiny, baseline_epochs=1)
    with pytest.raises(KeyboardInterrupt):
        conditions.train_cvae(conditions.completion_data("digits", 1, config), config)
