"""ppvae compare: every method on one dequantized split, the PPCA rows against the oracles."""

import math

import pandas as pd
import pytest
import torch

from ppvae.baselines import ppca_log_prob, ppca_mle
from ppvae.cli import main
from ppvae.config import ConfigError
from ppvae.data import load_dataset
from ppvae.experiments.compare import COLUMNS, METHODS, CompareConfig, compare, prepare
from ppvae.experiments.methods import mixture_ppca, ppca_closed_form
from tests.conftest import cuda

# few epochs and samples: these tests check the table, not how well SVI converges
TINY = CompareConfig(
    dataset="digits", z_dim=3, components=2, hidden=(16,), epochs=2, batch_size=256,
    eval_samples=20, elbo_samples=5, train_size=400, test_size=100, device="cpu",
)  # fmt: skip
TINY_ARGS = [
    "--z-dim", "3", "--components", "2", "--hidden", "16", "--epochs", "1",
    "--batch-size", "256", "--eval-samples", "10", "--elbo-samples", "2",
    "--train-size", "300", "--test-size", "50", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return compare(TINY, progress=False)


def test_prepare_dequantizes_the_seventeen_digit_levels():
    """Each dequantized value lies in the bin [k / 17, (k + 1) / 17) of its grey level k."""
    split = prepare(TINY)
    assert split.levels == 17
    assert split.train.shape == (400, 64) and split.test.shape == (100, 64)
    assert split.train.dtype == torch.float64
    levels = set((load_dataset("digits").test * 16).round().unique().tolist())
    k = (split.test * 17).floor()
    assert set(k.unique().tolist()) <= levels
    assert ((split.test * 17 - k) > 0).float().mean() > 0.99  # the noise is continuous
    assert torch.equal(prepare(TINY).test, split.test)  # seeded


def test_table_has_every_method_and_column(table):
    assert list(table.columns) == COLUMNS
    assert table.method.tolist() == list(METHODS)
    exact = table.estimator == "exact"
    assert table[exact].method.tolist() == ["ppca", "ppca-em", "mppca", "ppca-svi"]
    assert (table[exact].log_px_stderr == 0).all()
    assert (table[~exact].log_px_stderr > 0).all()
    assert table[~exact].estimator.tolist() == ["IS K=20", "IS K=20"]
    assert table.set_index("method").elbo[["ppca", "ppca-em", "mppca"]].isna().all()
    assert (table.fit_seconds > 0).all()


def test_closed_form_row_is_the_baseline_log_likelihood_on_the_dequantized_test_set(table):
    split = prepare(TINY)
    expected = ppca_log_prob(split.test, *ppca_mle(split.train, TINY.z_dim)).mean().item()
    row = table.set_index("method").loc["ppca"]
    assert row.log_px == pytest.approx(expected, rel=1e-12)
    bits = (-expected + 64 * math.log(17)) / (64 * math.log(2))
    assert row.bits_per_dim == pytest.approx(bits, rel=1e-12)


def test_em_row_matches_the_closed_form(table):
    rows = table.set_index("method").log_px
    assert rows["ppca-em"] == pytest.approx(rows["ppca"], abs=1e-3)


def test_ppca_svi_elbo_is_its_log_likelihood(table):
    """The exact posterior guide makes the test ELBO equal the exact test log p(x)."""
    row = table.set_index("method").loc["ppca-svi"]
    assert row.elbo == pytest.approx(row.log_px, abs=1e-3)


def test_vae_bounds_are_ordered(table):
    """The importance-sampled log p(x) is a tighter bound than the ELBO (to MC error)."""
    rows = table.set_index("method")
    for name in ("linear-vae", "vae"):
        assert rows.loc[name].log_px >= rows.loc[name].elbo - 3 * rows.loc[name].log_px_stderr


def test_cli_writes_csv_and_markdown(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--stem", "digits", *TINY_ARGS]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["digits.csv", "digits.json", "digits.md"]
    frame = pd.read_csv(out / "digits.csv")
    assert frame.method.tolist() == list(METHODS)
    md = (out / "digits.md").read_text()
    assert md.startswith("digits, uniformly dequantized (17 levels), train/test 300/50 rows")
    assert all(f"| {name}" in md for name in METHODS)
    assert md.count("n/a") == 3  # no ELBO for the closed form and the two EM fits
    assert str(out / "digits.csv") in capsys.readouterr().out
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["compare", "--out", str(out), "--stem", "digits", *TINY_ARGS]) == 2
    assert "digits.csv exists: pass --overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert main(["compare", "--out", str(out), "--stem", "digits", "--overwrite", *TINY_ARGS]) == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--z-dim", "64"], "z_dim must be < the data dimension 64"),
        (["--z-dim", "0"], "z_dim must be >= 1"),
        (["--eval-samples", "0"], "eval_samples must be >= 1"),
        (["--train-size", "1"], "train_size must be >= 2"),
        (["--train-size", "3"], "z_dim must be < the number of training rows 3"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--dataset", "mnist", "--data-dir", "EMPTY"], "MNIST not found"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), *TINY_ARGS, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ppvae: error:"), err
    assert message in err
    assert not out.exists()


def test_config_round_trips_and_validates():
    assert CompareConfig.from_json(TINY.to_json()) == TINY
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        CompareConfig(dataset="cifar")


@cuda
def test_exact_rows_on_cuda_match_the_cpu():
    """The closed-form and mixture fits are deterministic, so the GPU gives the CPU's numbers."""
    on_gpu = CompareConfig.from_dict({**TINY.to_dict(), "device": "cuda"})
    cpu, gpu = prepare(TINY), prepare(on_gpu)
    assert gpu.train.is_cuda and torch.equal(gpu.test.cpu(), cpu.test)
    for method in (ppca_closed_form, mixture_ppca):
        expected = method(cpu, TINY).log_px
        assert method(gpu, on_gpu).log_px == pytest.approx(expected, rel=1e-9)
