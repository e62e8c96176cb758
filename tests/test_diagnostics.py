"""Gradient-estimator diagnostics: the table's arithmetic, the ordering of variances, the CLI."""

import math

import pandas as pd
import pyro
import pytest
import torch
from torch import nn

from ppvae.cli import main
from ppvae.experiments.gradients import (
    TABLE_COLUMNS,
    GradientMoments,
    gradient_estimates,
    gradient_table,
)
from ppvae.guides.amortized import AmortizedGuide, DiagonalNormalHead
from ppvae.models.ppca import PPCA
from ppvae.pairs.objectives import OBJECTIVES


def test_table_reports_norms_variances_and_snr_per_group_and_in_total():
    moments = {
        "a": GradientMoments(
            count=10,
            mean={"net.w": torch.tensor([3.0, 4.0]), "head.b": torch.tensor([0.0, 12.0])},
            var={"net.w": torch.tensor([1.0, 4.0]), "head.b": torch.tensor([20.0, 144.0])},
        )
    }
    table = gradient_table(moments).set_index("group")
    assert list(gradient_table(moments).columns) == TABLE_COLUMNS
    assert list(table.index) == ["net", "head", "total"]
    assert table.loc["net", "mean_norm"] == pytest.approx(5.0)
    assert table.loc["net", "total_variance"] == pytest.approx(5.0)
    assert table.loc["net", "snr"] == pytest.approx(5 / math.sqrt(5))
    assert table.loc["net", "coordinate_snr"] == pytest.approx((3 / 1 + 4 / 2) / 2)
    assert table.loc["total", "mean_norm"] == pytest.approx(13.0)
    assert table.loc["total", "total_variance"] == pytest.approx(169.0)
    assert table.loc["total", "snr"] == pytest.approx(1.0)
    assert table.loc["total", "num_params"] == 4


def test_moments_are_the_sample_mean_and_variance_of_the_estimates():
    model = PPCA(x_dim=3, z_dim=2).double()
    guide = AmortizedGuide(nn.Linear(3, 4), DiagonalNormalHead(2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    m = gradient_estimates(model, guide, x, objectives=("trace",), num_estimates=3, seed=4)
    # redo the three draws by hand with the same seed
    pyro.set_rng_seed(4)
    draws = []
    for _ in range(3):
        guide.zero_grad()
        OBJECTIVES["trace"].build().loss_and_grads(model, guide, x)
        draws.append(-guide.net.weight.grad.clone())
    stacked = torch.stack(draws)
    name = pyro.get_param_store().param_name(guide.net.weight)  # keyed by param-store name
    assert name == "guide.net$$$weight"
    torch.testing.assert_close(m["trace"].mean[name], stacked.mean(0))
    torch.testing.assert_close(m["trace"].var[name], stacked.var(0))


def test_reparameterized_variance_is_below_the_score_function_variance():
    torch.manual_seed(0)
    model = PPCA(x_dim=4, z_dim=2).double()
    guide = AmortizedGuide(nn.Linear(4, 4), DiagonalNormalHead(2)).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    moments = gradient_estimates(
        model, guide, x, objectives=("trace", "score"), num_estimates=100, num_particles=4
    )
    total = gradient_table(moments).query("group == 'total'").set_index("estimator")
    assert total.loc["trace", "total_variance"] < total.loc["score", "total_variance"]
    assert total.loc["trace", "snr"] > total.loc["score", "snr"]


FAST = ["--hidden", "16", "--num-estimates", "20", "--warmup", "5", "--batch-size", "16"]


def test_cli_writes_csv_markdown_and_png(tmp_path, capsys):
    out = tmp_path / "grads"
    assert main(["gradients", "--out", str(out), "--train-epochs", "1", *FAST]) == 0
    assert {p.name for p in out.iterdir()} == {"gradients.csv", "gradients.md", "gradients.png"}
    table = pd.read_csv(out / "gradients.csv")
    assert list(table.columns) == TABLE_COLUMNS
    assert set(table.estimator) == {"trace", "score", "score-baseline"}
    assert (table.num_estimates == 20).all()
    assert "| score-baseline" in (out / "gradients.md").read_text()
    assert (out / "gradients.png").read_bytes()[:4] == b"\x89PNG"
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num-estimates", "1"], "num_estimates must be >= 2"),
        (["--batch-size", "0"], "batch-size must be >= 1"),
        (["--guide", "ppca-exact"], "needs the ppca model"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "grads"
    assert main(["gradients", "--out", str(out), *FAST, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ppvae: error:"), err
    assert message in err
    assert not out.exists()
