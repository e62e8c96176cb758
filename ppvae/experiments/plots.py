"""Pictures of a trained model: reconstructions, samples, the ELBO curve and the latent space.

Every function builds a :class:`matplotlib.figure.Figure` without pyplot (so it never opens a
window nor changes the global backend, and works on machines without a screen), writes it as
a PNG when given a path (atomically), and returns it, so a notebook can show it inline.
"""

import os
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure


def save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    """Write ``fig`` to ``path`` as PNG via a temporary file; no-op when ``path`` is None."""
    if path is None:
        return fig
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return fig


def _grid(images: torch.Tensor, image_shape, ncols: int) -> torch.Tensor:
    """(n, D) -> one (rows*H, ncols*W) image, padded with blank tiles."""
    c, h, w = image_shape
    n = images.shape[0]
    rows = -(-n // ncols)
    tiles = images.new_zeros(rows * ncols, h, w)
    tiles[:n] = images.reshape(n, c, h, w).mean(1)
    return tiles.reshape(rows, ncols, h, w).permute(0, 2, 1, 3).reshape(rows * h, ncols * w)


def image_grid(images: torch.Tensor, image_shape, path=None, *, ncols=10, title="") -> Figure:
    """Tile a batch of flattened images (n, D) with values in [0, 1] into one picture."""
    grid = _grid(images.detach().float().cpu().clamp(0, 1), image_shape, ncols)
    fig = Figure(figsize=(ncols * 0.6, grid.shape[0] / grid.shape[1] * ncols * 0.6 + 0.3))
    ax = fig.subplots()
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
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


def elbo_curve(history: pd.DataFrame, path=None) -> Figure:
    """Train objective and test ELBO (nats per example) against epoch."""
    fig = Figure(figsize=(5, 3.5))
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
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    colours = None if labels is None else labels.cpu().numpy()
    points = ax.scatter(z[:, 0], z[:, 1], c=colours, cmap="tab10", s=6)
    if labels is not None:
        fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title("posterior means of the test set")
    return save(fig, path)
