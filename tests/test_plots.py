"""Pictures: image grids keep a gap between images, the interpolation and the latent grid decode
exactly the latent values they claim to, and every figure shows as PNG in IPython."""

import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from ppvae.cli import main
from ppvae.config import ArchConfig
from ppvae.data import load_dataset
from ppvae.evaluation.decoding import decode, grid_values, interpolate, latent_grid
from ppvae.evaluation.metrics import generate, posterior_means, reconstruct
from ppvae.experiments import plots
from ppvae.experiments.run_config import RunConfig, build

PNG = b"\x89PNG\r\n\x1a\n"
SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def pair(digits, z_dim: int):
    """An untrained model and guide for digits with a ``z_dim``-dimensional latent."""
    run = RunConfig(arch=ArchConfig(z_dim=z_dim, hidden=(16,)))
    return build(run, digits)


def tiles(grid: torch.Tensor, rows: int, cols: int, gap: int = plots.GAP) -> torch.Tensor:
    """The (rows * cols, 64) images of a tiled 8x8 grid, read back from its pixels."""
    return torch.stack(
        [
            grid[i * (8 + gap) : i * (8 + gap) + 8, j * (8 + gap) : j * (8 + gap) + 8].flatten()
            for i in range(rows)
            for j in range(cols)
        ]
    )


def shown_pixels(fig) -> torch.Tensor:
    """The pixel array the figure's image shows, gaps as NaN."""
    array = fig.axes[0].images[0].get_array()
    return torch.tensor(array.filled(float("nan")), dtype=torch.float64)


def test_tiles_are_separated_by_background_gaps():
    images = torch.rand(5, 64) * 0.5 + 0.25
    grid = plots.tile(images, SHAPE, ncols=3)
    assert grid.shape == (2 * 9 - 1, 3 * 9 - 1)  # no gap after the last row or column
    gaps = torch.zeros_like(grid, dtype=torch.bool)
    gaps[8, :] = True
    gaps[:, [8, 17]] = True
    gaps[9:, 18:] = True  # the last row's unused sixth tile
    assert torch.equal(grid.isnan(), gaps)
    assert torch.equal(tiles(grid.nan_to_num(-1), 2, 3)[:5], images)


def test_image_grid_draws_the_gaps_in_the_background_colour(digits):
    fig = plots.image_grid(digits.test[:20], SHAPE, ncols=10)
    pixels = shown_pixels(fig)
    assert pixels.shape == (2 * 9 - 1, 10 * 9 - 1)
    assert pixels[8].isnan().all() and pixels[:, 8::9].isnan().all()
    assert torch.allclose(tiles(pixels, 2, 10), digits.test[:20].double())
    image = fig.axes[0].images[0]
    assert image.cmap.get_bad().tolist() == [1.0, 1.0, 1.0, 1.0]  # white, the figure's own
    assert fig.get_facecolor() == (1.0, 1.0, 1.0, 1.0)


def test_decode_of_the_posterior_means_is_the_reconstruction(digits):
    model, guide = pair(digits, 3)
    x = digits.test[:6]
    means = posterior_means(guide, x)
    torch.testing.assert_close(decode(model, guide, means, x), reconstruct(model, guide, x))
    with pytest.raises(ValueError, match="z has 2 columns, the guide's latent sites 3"):
        decode(model, guide, means[:, :2], x)


def test_interpolation_runs_from_one_posterior_mean_to_the_other(digits):
    model, guide = pair(digits, 2)
    x = digits.test[:2]
    path = interpolate(model, guide, x, steps=5)
    assert path.shape == (5, 64)
    ends = reconstruct(model, guide, x)
    assert (path[0] - ends[0]).abs().max() < 1e-6 and (path[-1] - ends[1]).abs().max() < 1e-6
    mu = posterior_means(guide, x)
    middle = decode(model, guide, (mu[:1] + mu[1:]) / 2, x)  # t = 1/2
    torch.testing.assert_close(path[2:3], middle)

    fig = plots.interpolation(model, guide, digits.test[:4], SHAPE, steps=5)
    shown = tiles(shown_pixels(fig), 2, 7)
    assert torch.allclose(shown[0], x[0].double()) and torch.allclose(shown[6], x[1].double())
    assert (shown[1:6] - path.double()).abs().max() < 1e-6  # the first row is this path
    second = reconstruct(model, guide, digits.test[2:4]).double()
    assert (shown[8] - second[0]).abs().max() < 1e-6
    assert (shown[12] - second[1]).abs().max() < 1e-6


@pytest.mark.parametrize("z_dim", [2, 3])
def test_latent_grid_decodes_the_quantile_grid(digits, z_dim):
    model, guide = pair(digits, z_dim)
    n = 5
    images, values = latent_grid(model, guide, digits.test, n=n)
    normal = torch.distributions.Normal(0.0, 1.0)
    torch.testing.assert_close(normal.cdf(values), torch.linspace(0.05, 0.95, n))
    assert values[n // 2] == 0 and torch.equal(values, grid_values(n))
    assert images.shape == (n * n, 64)
    for i, j in [(0, 0), (0, 4), (3, 1), (4, 4)]:
        z = torch.zeros(1, z_dim)  # the dimensions past the second are held at 0
        z[0, 0], z[0, 1] = values[j], values[n - 1 - i]  # z_1 across, z_2 up
        torch.testing.assert_close(images[i * n + j], decode(model, guide, z, digits.test)[0])

    fig = plots.latent_grid(model, guide, digits.test, SHAPE, n=n)
    shown = tiles(shown_pixels(fig), n, n)
    assert (shown - images.double()).abs().max() < 1e-6
    title = fig.axes[0].get_title()
    assert ("held at 0" in title) == (z_dim > 2)
    assert (f"z_{{{z_dim}}}" in title) == (z_dim > 2)


def test_every_figure_shows_as_png_in_ipython(digits, tmp_path):
    formatters = pytest.importorskip("IPython.core.formatters")
    model, guide = pair(digits, 2)
    x = digits.test[:4]
    history = pd.DataFrame(
        {"epoch": [1, 2], "train_elbo": [-40.0, -35.0], "test_elbo": [-41, -36]}
    )
    figures = {
        "grid": plots.image_grid(generate(model, x), SHAPE),
        "reconstructions": plots.reconstructions(x, reconstruct(model, guide, x), SHAPE),
        "interpolation": plots.interpolation(model, guide, x, SHAPE, steps=3),
        "latent_grid": plots.latent_grid(model, guide, x, SHAPE, n=3),
        "elbo": plots.elbo_curve(history),
        "latent": plots.latent_scatter(posterior_means(guide, x), digits.test_labels[:4]),
    }
    png = formatters.PNGFormatter()  # what a Jupyter kernel calls for image/png
    for name, fig in figures.items():
        shown = png(fig)
        assert shown is not None and shown.startswith(PNG), name
        # the image shown is the one written to a run folder, byte for byte
        assert plots.save(fig, tmp_path / f"{name}.png") is fig
        assert (tmp_path / f"{name}.png").read_bytes() == shown, name


def test_no_plain_figure_is_built_anywhere_in_the_package():
    """Every figure the package returns is an InlineFigure, so each one shows in Jupyter."""
    root = Path(plots.__file__).parents[1]
    plain = [
        f"{path.relative_to(root)}:{n}"
        for path in root.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"(?<![\w.])Figure\(", line) or "plt.figure(" in line
    ]
    assert plain == []


def test_train_writes_the_interpolation_and_the_latent_grid(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--epochs", "1", "--z-dim", "3", "--hidden", "16", "--eval-samples", "20"]
    assert main([*args, "--out", str(out)]) == 0
    for name in ("samples.png", "interpolation.png", "latent_grid.png"):
        assert (out / name).read_bytes().startswith(PNG), name
    assert not (out / "latent.png").exists()  # the scatter is for a 2-D latent alone
