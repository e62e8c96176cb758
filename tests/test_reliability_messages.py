"""Misleading messages made exact (issue 24): argparse mistakes are one line with "did you
mean", user values are cut to about 80 characters, half-precision data is upcast with a note,
impute refuses what memory cannot hold and a model not built for missing data in one line, and
under torchrun rank 0 alone prints."""

import os
import subprocess
import sys

import pytest
import torch

from ppvae import ArchConfig, DataShape, FitConfig, fit, load_dataset
from ppvae.cli import main
from ppvae.data import DataError
from ppvae.errors import ConfigError, ModelGuideError, shown
from ppvae.evaluation.imputation import impute
from ppvae.evaluation.metrics import elbo_terms
from ppvae.guides import GUIDES
from ppvae.models import MODELS

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ppvae", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


CHOICES = ", ".join(MODELS)  # the registry, in its order


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["train", "--model", "bernouli"],
            "ppvae: error: --model: unknown choice 'bernouli'; did you mean 'bernoulli'? "
            f"(choices: {CHOICES})",
        ),
        (
            ["trian"],
            "ppvae: error: <command>: unknown choice 'trian'; did you mean 'train'? "
            "(choices: train, gradients, compare)",
        ),
        (
            ["train", "--epoch", "3"],
            "ppvae: error: unrecognized 2 arguments '--epoch', '3'; did you mean '--epochs'? "
            "(see 'ppvae train --help')",
        ),
        (["train", "--epochs", "x"], "ppvae: error: --epochs: invalid int value: 'x'"),
        ([], "ppvae: error: the following arguments are required: <command>"),
    ],
)
def test_command_line_mistakes_are_one_line_with_a_suggestion(args, expected, capsys):
    assert in_process(args, capsys) == expected


def in_process(args, capsys) -> str:
    """The one stderr line of ``ppvae args`` run in this process (exit status 2)."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert len(err.splitlines()) == 1, err
    return err.splitlines()[0]


def test_a_misspelt_model_is_one_line_from_the_console():
    assert one_line(cli("train", "--model", "bernouli")) == (
        "ppvae: error: --model: unknown choice 'bernouli'; did you mean 'bernoulli'? "
        f"(choices: {CHOICES})"
    )


def test_help_is_still_the_whole_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0 and err == ""
    assert "--model {bernoulli," in out and "--eval-samples" in out


def test_a_long_value_is_cut_on_the_command_line(capsys):
    line = in_process(["train", "--dataset", "a" * 5000], capsys)
    assert line == (
        f"ppvae: error: --dataset: unknown choice '{'a' * 80}…' (5000 characters) "
        "(choices: digits, fashion-mnist, mnist, synthetic-ppca)"
    )


def test_a_long_value_is_cut_in_library_errors():
    with pytest.raises(DataError) as err:
        load_dataset("a" * 20_000_000)
    assert str(err.value) == (
        f"unknown dataset '{'a' * 80}…' (20000000 characters); "
        "choose one of: digits, fashion-mnist, mnist, synthetic-ppca"
    )
    with pytest.raises(ConfigError, match=r"unknown objective 'x\\ny'; choose"):
        FitConfig(objective="x\ny")  # a newline cannot break the one line
    assert shown("b" * 80) == repr("b" * 80)  # 80 characters are shown whole


def vae(x_dim: int, num_data: int, *, missing: bool = False, guide: str = "diag"):
    shape = DataShape(x_dim=x_dim, image_shape=None, num_data=num_data, missing=missing)
    arch = ArchConfig(z_dim=2, hidden=(8,))
    model = MODELS["gaussian"](arch, shape)
    return model, GUIDES[guide](arch, shape, model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_data_trains_as_float32_with_a_note(dtype):
    """The digits are multiples of 1/16, exact in both half formats: upcast, they are the
    float32 data, so the same seed gives the same parameters and history."""
    x = load_dataset("digits").train[:256]
    assert torch.equal(x.to(dtype).float(), x)
    config = FitConfig(epochs=2, batch_size=64, device="cpu")
    torch.manual_seed(0)
    expected = fit(*vae(64, 256), x, config)
    with pytest.warns(UserWarning, match=rf"training data is {dtype}: ppvae upcasts it to"):
        torch.manual_seed(0)
        got = fit(*vae(64, 256), x.to(dtype), config)
    assert got.history.train_elbo.tolist() == expected.history.train_elbo.tolist()
    assert torch.isfinite(torch.tensor(got.history.train_elbo.tolist())).all()


def test_half_precision_data_is_upcast_for_scoring_and_imputation():
    x = torch.rand(4, 4)
    pair = vae(4, 4)
    torch.manual_seed(0)
    expected = elbo_terms(*pair, x.half().float()).elbo
    with pytest.warns(UserWarning, match="evaluation data is torch.float16"):
        torch.manual_seed(0)
        got = elbo_terms(*pair, x.half()).elbo
    assert torch.equal(got, expected)
    x[0, 1] = float("nan")
    with pytest.warns(UserWarning, match="data to impute is torch.bfloat16"):
        result = impute(*vae(4, 4, missing=True, guide="masked-diag"), x.bfloat16())
    assert result.mean.dtype == torch.float32 and bool(result.mean.isfinite().all())


def test_impute_refuses_imputations_that_memory_cannot_hold():
    x = torch.rand(4, 64)
    x[:, 0] = float("nan")
    pair = vae(64, 4, missing=True, guide="masked-diag")
    with pytest.raises(ConfigError) as err:  # 10**9 x 4 x 64 floats: 1 TB, refused at once
        impute(*pair, x, num_samples=10, multiple=10**9)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("multiple=1000000000 imputations of 4 x 64 data would take 1.91e+03")
    assert "GiB, more than 50% of the" in message and "ask for at most" in message


def test_multiple_imputations_are_drawn_in_blocks_into_one_tensor(monkeypatch):
    """Blocks of draws (MAX_ROWS made tiny) give the same draws as one block."""
    x = torch.rand(3, 4)
    x[:, 1] = float("nan")
    pair = vae(4, 3, missing=True, guide="masked-diag")
    one = impute(*pair, x, num_samples=8, multiple=50, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr("ppvae.evaluation.imputation.MAX_ROWS", 3)  # one row, one draw at a time
    blocks = impute(
        *pair, x, num_samples=8, multiple=50, generator=torch.Generator().manual_seed(1)
    )
    assert blocks.samples.shape == (50, 3, 4)
    assert torch.equal(blocks.samples[:, :, [0, 2, 3]], x[:, [0, 2, 3]].expand(50, 3, 3))
    assert bool(blocks.samples.isfinite().all()) and bool(one.samples.isfinite().all())


def test_elbo_terms_streams_its_samples(monkeypatch):
    """With MAX_ROWS = 8, 100 samples of 4 rows go through the pair 2 rows x 4 samples at a
    time, and give the mean of the per-sample terms (checked on the exact PPCA guide, whose
    ELBO is log p(x) for every draw)."""
    from ppvae.baselines import ppca_mle
    from ppvae.guides import ExactPPCAGuide
    from ppvae.models import PPCA

    x = torch.randn(4, 5, dtype=torch.float64)
    model = PPCA(5, 2).double().set_params(*ppca_mle(torch.randn(50, 5, dtype=torch.float64), 2))
    guide = ExactPPCAGuide(model)
    whole = elbo_terms(model, guide, x, num_samples=100, analytic=False).elbo
    seen = []
    inner = model.forward

    def forward(x, *args, **kwargs):
        seen.append(x.shape[0])
        return inner(x, *args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    monkeypatch.setattr(sys.modules["ppvae.evaluation.bounds"], "MAX_ROWS", 8)
    streamed = elbo_terms(model, guide, x, num_samples=100, analytic=False).elbo
    assert max(seen[1:]) <= 8  # (the first call is the check on the probe rows)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-9)


def test_impute_with_a_model_not_built_for_missing_data_is_one_line():
    x = torch.rand(4, 4)
    x[0, 1] = float("nan")
    with pytest.raises(ModelGuideError) as err:
        impute(*vae(4, 4), x, num_samples=10)
    assert str(err.value) == (
        "impute needs a model that scores only the observed entries (accepts_missing): build "
        "it with missing=True (DataShape(..., missing=True)) and pair it with a guide that "
        "reads the mask (GUIDES['masked-diag'])"
    )
    with pytest.raises(ModelGuideError) as err:  # the model reads NaN, the guide does not
        impute(*vae(4, 4, missing=True), x, num_samples=10)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("the guide failed on a batch of shape (4, 4)")
    assert str(err.value).endswith("GUIDES['masked-diag'])")


def test_under_torchrun_rank_zero_alone_prints_a_command_line_mistake():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "ppvae", "train", "--model", "bernouli"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert proc.returncode != 0
    line = (
        "ppvae: error: --model: unknown choice 'bernouli'; did you mean 'bernoulli'? "
        f"(choices: {CHOICES})"
    )
    printed = [s for s in proc.stderr.splitlines() if s.startswith("ppvae: error:")]
    assert printed == [line]  # rank 0 alone prints it
    # torchrun's own failure summary quotes it from rank 0's error file, not "<N/A>"
    assert f"traceback : {line}" in proc.stderr
    assert "usage:" not in proc.stderr
