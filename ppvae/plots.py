"""Pictures of a trained model: reconstructions, samples, the ELBO curve and the latent space.

Every function takes tensors or a DataFrame and writes one PNG (atomically); none opens a
window, so they run on machines without a screen.
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _grid(images: torch.Tensor, image_shape, ncols: int) -> torch.Tensor:
    """(n, D) -> one (rows*H, ncols*W) image, padded with blank tiles."""
    c, h, w = image_shape
    n = images.shape[0]
    rows = -(-n // ncols)
    tiles = images.new_zeros(rows * ncols, h, w)
    tiles[:n] = images.reshape(n, c, h, w).mean(1)
    return tiles.reshape(rows, ncols, h, w).permute(0, 2, 1, 3).reshape(rows * h, ncols * w)


def image_grid(
    images: torch.Tensor, image_shape, path, *, ncols: int = 10, title: str = ""
) -> Path:
    """Tile a batch of flattened images (n, D) into one PNG."""
    grid = _grid(images.detach().float().cpu().clamp(0, 1), image_shape, ncols)
    fig, ax = plt.subplots(figsize=(ncols * 0.6, grid.shape[0] / grid.shape[1] * ncols * 0.6))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return _save(fig, path)


def reconstructions(x: torch.Tensor, x_hat: torch.Tensor, image_shape, path) -> Path:
    """Data (odd rows) above their reconstructions E[x | z ~ q(z | x)] (even rows)."""
    ncols = min(10, x.shape[0])
    pairs = [
        t for i in range(0, x.shape[0], ncols) for t in (x[i : i + ncols], x_hat[i : i + ncols])
    ]
    return image_grid(
        torch.cat(pairs), image_shape, path, ncols=ncols, title="data / reconstruction"
    )


def elbo_curve(history: pd.DataFrame, path) -> Path:
    """Train and test ELBO (nats per example) against epoch."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(history["epoch"], history["train_elbo"], marker=".", label="train (objective)")
    ax.plot(history["epoch"], history["test_elbo"], marker=".", label="test ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def latent_scatter(z: torch.Tensor, labels: torch.Tensor | None, path) -> Path:
    """Posterior means E_q[z | x] of a 2-D latent space, coloured by label."""
    z = z.detach().cpu()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    colours = None if labels is None else labels.cpu().numpy()
    points = ax.scatter(z[:, 0], z[:, 1], c=colours, cmap="tab10", s=6)
    if labels is not None:
        fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title("posterior means of the test set")
    return _save(fig, path)
