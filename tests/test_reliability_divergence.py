"""A run that diverged says so, the history reports the ELBO, EM refuses what the closed form
refuses, and ``compare`` keeps what it fitted (issue 24)."""

import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

import ppvae.experiments.compare as compare_module
from ppvae import ArchConfig, FitConfig
from ppvae.baselines import EMPPCA, PPCA, ppca_em
from ppvae.baselines.independent import (
    PROB_CLAMP,
    bernoulli_log_prob,
    diverged,
    gaussian_log_prob,
)
from ppvae.cli import main
from ppvae.data import DataError, load_dataset
from ppvae.errors import DivergenceWarning
from ppvae.evaluation.metrics import elbo_terms
from ppvae.experiments.rows import Row
from ppvae.experiments.run import RunConfig, train
from tests.test_compare import TINY_ARGS


def test_bernoulli_baseline_is_the_sum_of_bernoulli_log_probs_at_the_clamped_means():
    g = torch.Generator().manual_seed(0)
    train_x = (torch.rand(50, 6, generator=g) < torch.linspace(0, 0.9, 6)).double()
    test_x = (torch.rand(7, 6, generator=g) < 0.5).double()
    p = train_x.mean(0).clamp(PROB_CLAMP, 1 - PROB_CLAMP)
    expected = torch.distributions.Bernoulli(probs=p).log_prob(test_x).sum(1)
    assert torch.allclose(bernoulli_log_prob(train_x, test_x), expected)
    assert p[0] == PROB_CLAMP  # a pixel never on in training: clamped, not log 0
    # the training means maximize the training log-likelihood (the MLE)
    best = bernoulli_log_prob(train_x, train_x).sum()
    for shift in (-0.05, 0.05):
        q = (p + shift).clamp(0.01, 0.99)
        other = torch.distributions.Bernoulli(probs=q).log_prob(train_x).sum()
        assert best > other


def test_gaussian_baseline_is_the_diagonal_maximum_likelihood_gaussian():
    g = torch.Generator().manual_seed(1)
    train_x = torch.randn(40, 5, generator=g, dtype=torch.float64) * torch.arange(1.0, 6.0)
    test_x = torch.randn(9, 5, generator=g, dtype=torch.float64)
    mean, sd = train_x.mean(0), train_x.std(0, correction=0)
    expected = torch.distributions.Normal(mean, sd).log_prob(test_x).sum(1)
    assert torch.allclose(gaussian_log_prob(train_x, test_x), expected)
    fixed = torch.distributions.Normal(mean, 1.0).log_prob(test_x).sum(1)
    assert torch.allclose(gaussian_log_prob(train_x, test_x, torch.tensor(1.0)), fixed)
    best = gaussian_log_prob(train_x, train_x).sum()
    for scale in (0.9, 1.1):  # the MLE: other variances score the training data lower
        other = torch.distributions.Normal(mean, sd * scale).log_prob(train_x).sum()
        assert best > other
    constant = torch.zeros(10, 2)  # a constant pixel: the variance is floored, not 0
    assert torch.isfinite(gaussian_log_prob(constant, torch.ones(1, 2))).all()


def test_divergence_margin():
    assert diverged(-1.5e28, -27.0, 64) and diverged(math.nan, -27.0, 64)
    assert diverged(-2.7e4, 40.0, 64)
    assert not diverged(-44.4, -27.0, 64)  # an untrained Bernoulli VAE: 64 log 2 nats
    assert not diverged(-61.0, 40.0, 64)  # a Gaussian decoder still at sigma = 1


def _run(tmp_path, name, **fit):
    run = RunConfig(
        arch=ArchConfig(z_dim=2, hidden=(8,)),
        fit=FitConfig(**({"epochs": 1, "batch_size": 256, "device": "cpu"} | fit)),
        eval_samples=5,
    )
    return train(run, tmp_path / name)


def test_a_diverged_run_warns_in_one_line_and_is_marked_in_metrics(tmp_path):
    with pytest.warns(DivergenceWarning, match="diverged") as caught:
        result = _run(tmp_path, "bad", lr=1e6)
    assert len(caught) == 1
    metrics = pd.read_csv(tmp_path / "bad" / "metrics.csv")
    assert bool(metrics.diverged.iloc[0])
    assert metrics.log_px.iloc[0] < -1e6 < metrics.baseline_log_px.iloc[0]
    assert result.metrics.diverged.iloc[0]


def test_a_healthy_run_is_not_marked(tmp_path):
    _run(tmp_path, "good")  # pytest turns a ppvae warning into an error
    metrics = pd.read_csv(tmp_path / "good" / "metrics.csv")
    assert not metrics.diverged.iloc[0]
    data = load_dataset("digits", seed=0)
    expected = bernoulli_log_prob(data.train.double(), data.test.double()).mean().item()
    assert metrics.baseline_log_px.iloc[0] == pytest.approx(expected, rel=1e-5)


def test_the_cli_prints_one_warning_line_and_exits_0(tmp_path):
    args = ["train", "--out", str(tmp_path / "r"), "--epochs", "1", "--lr", "1e6"]
    args += ["--hidden", "8", "--batch-size", "512", "--eval-samples", "2", "--device", "cpu"]
    done = subprocess.run(
        [sys.executable, "-m", "ppvae", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("ppvae: warning: the run diverged: test log p(x) -")
    assert pd.read_csv(tmp_path / "r" / "metrics.csv").diverged.iloc[0]


def test_with_a_large_beta_the_history_reports_the_elbo_and_the_objective_beside_it(tmp_path):
    result = _run(tmp_path, "beta", beta=1e9, batch_size=1437, test_samples=50)
    last = result.fit.history.iloc[-1]
    assert last.train_objective < -1e6  # the beta-weighted loss, under its own name
    # train_elbo is the ELBO with beta = 1 of the epoch's (one, whole) batch
    data = load_dataset("digits", seed=0)
    with torch.random.fork_rng():
        terms = elbo_terms(result.fit.model, result.fit.guide, data.train, num_samples=200)
    assert last.train_elbo == pytest.approx(terms.elbo.mean().item(), abs=0.2)
    assert -60 < last.train_elbo < -10


def test_with_beta_1_the_two_columns_are_one_number(tmp_path):
    history = _run(tmp_path, "one").fit.history
    assert (history.train_elbo == history.train_objective).all()


@pytest.mark.parametrize("rows", [2, 3])
def test_em_refuses_data_in_a_q_dimensional_subspace_as_the_closed_form_does(rows):
    x = torch.randn(rows, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(DataError) as closed:
        PPCA(2).fit(x)
    with pytest.raises(DataError) as em:
        ppca_em(x, 2)
    assert str(em.value) == str(closed.value)
    assert "likelihood is unbounded" in str(em.value)
    with pytest.raises(DataError, match="unbounded"):
        EMPPCA(2).fit(x)
    EMPPCA(2, max_iter=5).fit(torch.cat([x, x.flip(1), x.roll(1, 1)]))  # enough rows: fits


def test_compare_cli_refuses_em_on_three_rows_as_the_closed_form(tmp_path, capsys):
    args = ["compare", "--train-size", "3", "--z-dim", "2", "--test-size", "20", "--device", "cpu"]
    for method in ("ppca", "ppca-em"):
        assert main([*args, "--out", str(tmp_path / method), "--methods", method]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "likelihood is unbounded" in err, err


def _cmp(tmp_path, *extra):
    return ["compare", "--out", str(tmp_path / "c"), *TINY_ARGS, *extra]


def _counting(monkeypatch, fail: str | None = None, error=RuntimeError):
    """Replace compare's methods by counted fakes; ``fail`` raises ``error``."""
    calls = []

    def fake(name):
        def method(split, config):
            calls.append(name)
            if name == fail:
                raise error(f"{name} broke\nsecond line")
            return Row(-10.0, 0.0, "exact", math.nan, 0.0)

        return method

    methods = {k: fake(k) for k in compare_module.METHODS}
    monkeypatch.setattr(compare_module, "METHODS", methods)
    return calls


def test_a_failed_row_keeps_the_others_and_resume_fits_only_it(tmp_path, capsys, monkeypatch):
    calls = _counting(monkeypatch, fail="mppca", error=DataError)
    assert main(_cmp(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ppvae: error: mppca: mppca broke"), err
    table = pd.read_csv(tmp_path / "c" / "compare.csv")
    assert table.method.tolist() == list(compare_module.METHODS)  # every row, one noted
    status = dict(zip(table.method, table.status, strict=True))
    assert status.pop("mppca") == "failed: mppca broke"
    assert set(status.values()) == {"ok"}
    calls.clear()
    _counting(monkeypatch)  # fixed: --resume fits the failed row alone
    calls = _counting(monkeypatch)
    assert main(_cmp(tmp_path, "--resume")) == 0
    assert calls == ["mppca"]
    assert set(pd.read_csv(tmp_path / "c" / "compare.csv").status) == {"ok"}


def test_ctrl_c_writes_the_rows_fitted_and_exits_130(tmp_path, capsys, monkeypatch):
    calls = _counting(monkeypatch, fail="ppca-svi", error=lambda m: KeyboardInterrupt())
    assert main(_cmp(tmp_path)) == 130
    assert calls == ["ppca", "ppca-em", "mppca", "ppca-svi"]
    table = pd.read_csv(tmp_path / "c" / "compare.csv")
    assert table.status.tolist() == ["ok", "ok", "ok", "interrupted"]
    calls = _counting(monkeypatch)
    assert main(_cmp(tmp_path, "--resume")) == 0
    assert calls == ["ppca-svi", "linear-vae", "vae"]  # only the missing rows
    assert pd.read_csv(tmp_path / "c" / "compare.csv").method.tolist() == list(
        compare_module.METHODS
    )


def test_resume_refuses_other_settings_in_one_line(tmp_path, capsys, monkeypatch):
    _counting(monkeypatch)
    assert main(_cmp(tmp_path, "--methods", "ppca")) == 0
    folder = tmp_path / "c"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()
    assert main(_cmp(tmp_path, "--methods", "ppca", "--resume", "--seed", "4")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed 4 (saved 0)" in err, err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert main(["compare", "--out", str(tmp_path / "none"), *TINY_ARGS, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_a_diverged_row_is_marked_in_the_table(tmp_path, capsys, monkeypatch):
    calls = _counting(monkeypatch)
    bad = Row(-1e9, 0.0, "exact", math.nan, 0.0)
    compare_module.METHODS["vae"] = lambda split, config: calls.append("vae") or bad
    with pytest.warns(DivergenceWarning, match="vae diverged"):
        assert main(_cmp(tmp_path)) == 0
    table = pd.read_csv(tmp_path / "c" / "compare.csv")
    assert table.status.tolist() == ["ok"] * 5 + ["diverged"]
    calls.clear()
    assert main(_cmp(tmp_path, "--resume")) == 0  # a diverged row is a result: kept
    assert calls == []


@pytest.mark.parametrize("stem", ["sub/table", "..", ""])
def test_a_stem_that_is_a_path_is_refused_before_any_fit(stem, tmp_path, capsys, monkeypatch):
    calls = _counting(monkeypatch)
    assert main(_cmp(tmp_path, "--stem", stem)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be a file name" in err, err
    assert calls == [] and not (tmp_path / "c").exists()
