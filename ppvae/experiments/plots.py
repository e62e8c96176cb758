"""Pictures of a trained model: reconstructions, samples, interpolations, the latent grid, the
ELBO curve and the latent space.

Every function builds an :class:`InlineFigure` without pyplot (so it never opens a window nor
changes the global backend, and works on machines without a screen), writes it as a PNG when
given a path (atomically), and returns it: Jupyter and IPython show it as an image, with or
without pyplot imported.
"""

import io
import os
from pathlib import Path

import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from ppvae.evaluation.decoding import interpolate
from ppvae.evaluation.decoding import latent_grid as decoded_grid
from ppvae.evaluation.metrics import posterior_means
from ppvae.pairs import DEFAULT_PLATE

GAP = 1
"""Pixels of background between the tiles of an image grid."""
BACKGROUND = "white"
"""The colour of the gaps (NaN pixels) of an image grid: the figure's own background."""


class InlineFigure(Figure):
    """A matplotlib ``Figure`` that IPython and Jupyter display as a PNG image.

    A ``Figure`` made without pyplot shows as ``<Figure size ...>`` text in a kernel, whose
    inline backend formats only pyplot's figures; this one carries ``_repr_png_``, which
    IPython's display machinery calls for any object, so it shows wherever it is the value of a
    cell or passed to ``display``. Nothing global changes.

    Examples
    --------
    >>> fig = InlineFigure(figsize=(2, 1))
    >>> _ = fig.subplots().plot([0, 1], [1, 0])
    >>> fig._repr_png_()[:4]
    b'\\x89PNG'
    """

    def _repr_png_(self) -> bytes:
        return png_bytes(self)


def png_bytes(fig: Figure) -> bytes:
    """``fig`` rendered as PNG (as :func:`save` writes it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, bbox_inches="tight", format="png")
    return buffer.getvalue()


def save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    """Write ``fig`` to ``path`` as PNG via a temporary file; no-op when ``path`` is None."""
    if path is None:
        return fig
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        tmp.write_bytes(png_bytes(fig))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return fig


def tile(images: torch.Tensor, image_shape, ncols: int, gap: int = GAP) -> torch.Tensor:
    """Flattened images (n, D) tiled ``ncols`` to a row into one grey image, shape
    (rows * (H + gap) - gap, ncols * (W + gap) - gap), channels averaged.

    The ``gap`` rows and columns between tiles, and unused tiles of the last row, are NaN:
    drawn in the background colour, so neighbouring images stay apart.
    """
    c, h, w = image_shape
    n = images.shape[0]
    rows = -(-n // ncols)
    tiles = images.new_full((rows * ncols, h + gap, w + gap), float("nan"))
    tiles[:n, :h, :w] = images.reshape(n, c, h, w).mean(1)
    grid = tiles.reshape(rows, ncols, h + gap, w + gap).permute(0, 2, 1, 3)
    grid = grid.reshape(rows * (h + gap), ncols * (w + gap))
    return grid[: grid.shape[0] - gap, : grid.shape[1] - gap]  # no gap after the last tile


def image_grid(images: torch.Tensor, image_shape, path=None, *, ncols=10, title="") -> Figure:
    """Tile a batch of flattened images (n, D) with values in [0, 1] into one picture, a gap of
    background between neighbours (:func:`tile`)."""
    grid = tile(images.detach().float().cpu().clamp(0, 1), image_shape, ncols)
    fig = InlineFigure(figsize=(ncols * 0.6, grid.shape[0] / grid.shape[1] * ncols * 0.6 + 0.3))
    ax = fig.subplots()
    grey = colormaps["gray"].with_extremes(bad=BACKGROUND)
    ax.imshow(grid.numpy(), cmap=grey, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return save(fig, path)


def reconstructions(x: torch.Tensor, x_hat: torch.Tensor, image_shape, path=None) -> Figure:
    """Data (odd rows) above their reconstructions E[x | z = E_q[z | x]] (even rows)."""
    ncols = min(10, x.shape[0])
    rows = [t for i in range(0, len(x), ncols) for t in (x[i : i + ncols], x_hat[i : i + ncols])]
    return image_grid(
        torch.cat(rows), image_shape, path, ncols=ncols, title="data / reconstruction"
    )


def interpolation(
    model, guide, x: torch.Tensor, image_shape, path=None, *, steps=8, plate=DEFAULT_PLATE
) -> Figure:
    """One row per pair of examples (x[0], x[1]), (x[2], x[3]), ...: the first example, the
    decodings E[x | z_t] along the line from its posterior mean to the second's
    (:func:`~ppvae.evaluation.decoding.interpolate`, ``steps`` of them), the second example."""
    rows = [
        torch.cat(
            [
                x[i : i + 1],
                interpolate(model, guide, x[i : i + 2], steps=steps, plate=plate),
                x[i + 1 : i + 2],
            ]
        )
        for i in range(0, x.shape[0] - 1, 2)
    ]
    title = "data, decoded $z_t = (1-t)\\,\\mu_0 + t\\,\\mu_1$ for $t = 0 \\ldots 1$, data"
    return image_grid(torch.cat(rows), image_shape, path, ncols=steps + 2, title=title)


def latent_grid(
    model, guide, x: torch.Tensor, image_shape, path=None, *, n=15, plate=DEFAULT_PLATE
) -> Figure:
    """E[x | z] over a grid of z_1 (across) and z_2 (up) at the standard normal's quantiles
    0.05 ... 0.95 (:func:`~ppvae.evaluation.decoding.latent_grid`); with more than two latent
    dimensions the others are held at 0, and the title says so. ``x`` gives the model's input
    shape (see :func:`~ppvae.evaluation.decoding.decode`)."""
    images, values = decoded_grid(model, guide, x, n=n, plate=plate)
    fig = image_grid(images, image_shape, ncols=n)
    ax = fig.axes[0]
    _, h, w = image_shape
    centres = [(w + GAP) * j + (w - 1) / 2 for j in range(n)]
    ax.set_axis_on()
    ax.set_frame_on(False)
    ax.set_xticks(centres[::2], [f"{v:.1f}" for v in values[::2].tolist()])
    ax.set_yticks(
        [(h + GAP) * i + (h - 1) / 2 for i in range(n)][::2],
        [f"{v:.1f}" for v in values.flip(0)[::2].tolist()],
    )
    ax.tick_params(length=0, labelsize="small")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    q = posterior_means(guide, x[:1], plate=plate).shape[-1]
    held = "" if q == 2 else f"\n($z_3 \\ldots z_{{{q}}}$ held at 0)"
    ax.set_title(f"decoded grid over $z_1, z_2${held}")
    return save(fig, path)


def elbo_curve(history: pd.DataFrame, path=None) -> Figure:
    """Train objective and test ELBO (nats per example) against epoch."""
    fig = InlineFigure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot(history["epoch"], history["train_elbo"], marker=".", label="train (objective)")
    ax.plot(history["epoch"], history["test_elbo"], marker=".", label="test ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    ax.legend()
    ax.grid(alpha=0.3)
    return save(fig, path)


def latent_scatter(z: torch.Tensor, labels: torch.Tensor | None, path=None) -> Figure:
    """Posterior means E_q[z | x] of a 2-D latent space, coloured by label."""
    z = z.detach().cpu()
    fig = InlineFigure(figsize=(5, 4.5))
    ax = fig.subplots()
    colours = None if labels is None else labels.cpu().numpy()
    points = ax.scatter(z[:, 0], z[:, 1], c=colours, cmap="tab10", s=6)
    if labels is not None:
        fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title("posterior means of the test set")
    return save(fig, path)
