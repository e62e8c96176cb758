"""ppvae compare --missing-rate: one masked split, each row against what it can be checked by."""

import dataclasses

import pandas as pd
import pytest
import torch

from ppvae.baselines import EMPPCA, observed_log_prob
from ppvae.cli import main
from ppvae.config import ConfigError
from ppvae.experiments.compare import CompareConfig, compare, prepare
from ppvae.experiments.compare_missing import COLUMNS, METHODS, mask
from tests.test_compare import TINY, TINY_ARGS

MISSING = dataclasses.replace(TINY, missing_rate=0.3, num_particles=3, em_max_iter=50)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return compare(MISSING, progress=False)


@pytest.fixture(scope="module")
def masked():
    return mask(prepare(MISSING), MISSING.missing_rate, MISSING.seed)


def test_every_method_and_column(table):
    assert list(table.columns) == COLUMNS and table.method.tolist() == list(METHODS)
    assert (table.set_index("method").log_px_stderr.drop("vae") == 0).all()
    assert table.set_index("method").loc["vae", "log_px_stderr"] > 0
    assert table.imputation_rmse.between(0, 1).all()


def test_the_split_is_masked_at_the_rate_and_the_test_truth_is_kept(masked):
    assert masked.train.isnan().float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert masked.held_out.float().mean().item() == pytest.approx(0.3, abs=0.03)
    observed = ~masked.held_out
    assert torch.equal(masked.test[observed], masked.test_complete[observed])
    assert not masked.test_complete.isnan().any()


def test_mean_imputation_row_is_its_closed_form(table, masked):
    mean = torch.nanmean(masked.train, dim=0)
    errors = (masked.test_complete - mean)[masked.held_out]
    rmse = errors.square().mean().sqrt().item()
    assert table.set_index("method").loc["mean", "imputation_rmse"] == pytest.approx(rmse)


def test_mean_row_log_likelihood_is_independent_gaussians_on_the_observed_entries(table, masked):
    x = masked.train.double()
    mean = torch.nanmean(x, dim=0)
    sd = torch.nanmean((x - mean).square(), dim=0).clamp(min=1e-6).sqrt()
    observed = ~masked.test.isnan()
    lp = torch.distributions.Normal(mean, sd).log_prob(masked.test.double().nan_to_num())
    expected = (lp * observed).sum(1).mean().item()
    assert table.set_index("method").loc["mean", "log_px"] == pytest.approx(expected, rel=1e-6)


def test_the_legend_lists_the_rows_of_the_table(table):
    from ppvae.experiments.compare import to_markdown

    text = to_markdown(table[table.method.isin(["mean", "ppca-em"])], "title")
    assert "- `mean`:" in text and "- `ppca-em`:" in text
    assert "- `mppca`:" not in text and "- `vae`:" not in text


def test_ppca_em_row_is_the_exact_observed_data_likelihood(table, masked):
    em = EMPPCA(MISSING.z_dim, max_iter=MISSING.em_max_iter, tol=MISSING.em_tol, seed=0)
    model = em.fit(masked.train)
    exact = observed_log_prob(masked.test, model.params_).mean().item()
    assert table.set_index("method").loc["ppca-em", "log_px"] == pytest.approx(exact, rel=1e-9)


def test_the_cli_writes_the_table_and_refuses_a_bad_rate(tmp_path, capsys):
    out = tmp_path / "c"
    args = ["compare", "--out", str(out), "--missing-rate", "0.25", *TINY_ARGS]
    assert main([*args, "--em-max-iter", "20", "--num-particles", "2"]) == 0
    written = pd.read_csv(out / "compare.csv")
    assert written.method.tolist() == list(METHODS)
    assert "25% of entries missing completely at random" in (out / "compare.md").read_text()
    assert main(["compare", "--out", str(tmp_path / "d"), "--missing-rate", "1"]) == 2
    assert "missing_rate must be in [0, 1)" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        CompareConfig(missing_rate=-0.1)
    with pytest.raises(ConfigError, match=r"add --missing-rate R for mean\)"):
        CompareConfig(methods=("mean",))
    with pytest.raises(ConfigError, match=r"leave out --missing-rate for ppca\)"):
        CompareConfig(missing_rate=0.2, methods=("ppca",))


def test_train_with_missing_entries_reports_the_imputation_error(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--missing-rate", "0.25", "--epochs", "2"]
    fast = ["--hidden", "16", "--eval-samples", "20", "--batch-size", "256"]
    assert main([*args, "--guide", "masked-diag", *fast]) == 0
    metrics = pd.read_csv(out / "metrics.csv").iloc[0]
    assert 0 < metrics.imputation_rmse < 1
    # a guide that cannot read NaN: one line that says which guide to use
    assert main([*args[:2], str(tmp_path / "plain"), *args[3:], *fast]) == 2
    assert "GUIDES['masked-diag']" in capsys.readouterr().err
