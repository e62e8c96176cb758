"""Decoding chosen latent values: E[x | z] for z on a line between two posterior means
(interpolation) or on a grid over two latent dimensions.

The latent sites are read from a trace of the guide (the sites it samples inside the plate over
examples, as :func:`ppvae.evaluation.metrics.posterior_means` reads them), and the model is run
conditioned on the chosen values, so a pair with its own site names works as ours do.
"""

import torch
from pyro import poutine

from ppvae.evaluation.metrics import posterior_means
from ppvae.pairs import DEFAULT_PLATE, batched, data_frame, observed_site, sample_sites


def _latent_shapes(guide, x: torch.Tensor, plate: str) -> dict[str, torch.Size]:
    """Each local latent site the guide samples, with the shape of one example's value."""
    trace = poutine.trace(batched(guide, plate)).get_trace(x, None, None)
    return {
        name: site["value"].shape[1:]
        for name, site in sample_sites(trace).items()
        if not site["is_observed"]
        and data_frame(site, plate)
        and not site["infer"].get("is_auxiliary")
    }


@torch.no_grad()
def decode(
    model, guide, z: torch.Tensor, x: torch.Tensor, *, plate: str = DEFAULT_PLATE
) -> torch.Tensor:
    """E[x | z] for each row of ``z``, shape (N, D).

    Parameters
    ----------
    z : Tensor, shape (N, q)
        Latent values, laid out as :func:`~ppvae.evaluation.metrics.posterior_means` returns
        them: the local latent sites in the order the guide samples them, each flattened.
    x : Tensor, shape (M, D)
        Data the model is called on: its first row, repeated N times (its values do not enter
        E[x | z]; they only give the model an observation of the right shape).
    """
    like = x[:1].expand(z.shape[0], *x.shape[1:]).contiguous()
    shapes = _latent_shapes(guide, like, plate)
    sizes = [s.numel() for s in shapes.values()]
    if sum(sizes) != z.shape[-1]:
        raise ValueError(f"z has {z.shape[-1]} columns, the guide's latent sites {sum(sizes)}")
    parts = z.to(like).split(sizes, dim=-1)
    values = {
        n: p.reshape(z.shape[0], *s) for (n, s), p in zip(shapes.items(), parts, strict=True)
    }
    trace = poutine.trace(poutine.condition(batched(model, plate), data=values)).get_trace(
        like, None, None
    )
    site = observed_site(trace, plate, skip=values)
    if site is None:
        raise ValueError("the model has no observed site inside the plate over examples")
    return site["fn"].mean


@torch.no_grad()
def interpolate(
    model, guide, x: torch.Tensor, *, steps: int = 10, plate: str = DEFAULT_PLATE
) -> torch.Tensor:
    """Decodings along the line between the posterior means of two examples, shape
    (steps, D): E[x | z_t] with z_t = (1 - t) E_q[z | x_0] + t E_q[z | x_1], t = 0 ... 1.

    The first and last rows are the decodings of the two posterior means themselves, which
    are :func:`~ppvae.evaluation.metrics.reconstruct`'s reconstructions of ``x``.
    """
    if x.shape[0] != 2:
        raise ValueError(f"interpolate takes two examples, got {x.shape[0]}")
    means = posterior_means(guide, x, plate=plate)
    t = torch.linspace(0, 1, steps, dtype=means.dtype, device=means.device)[:, None]
    z = (1 - t) * means[0] + t * means[1]
    z[0], z[-1] = means[0], means[1]  # exactly, not up to the rounding of (1 - t) a + t b
    return decode(model, guide, z, x, plate=plate)


def grid_values(n: int) -> torch.Tensor:
    """``n`` values spaced evenly in probability under N(0, 1): its quantiles at
    0.05 ... 0.95, so a standard normal prior puts equal mass between neighbours."""
    return torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))


@torch.no_grad()
def latent_grid(
    model, guide, x: torch.Tensor, *, n: int = 15, plate: str = DEFAULT_PLATE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decodings over a grid of the first two latent dimensions, the others held at 0.

    Returns
    -------
    images : Tensor, shape (n * n, D)
        Row ``i * n + j`` decodes z_1 = values[j], z_2 = values[n - 1 - i] (z_2 grows upwards
        when the images are tiled n to a row).
    values : Tensor, shape (n,)
        The grid along each axis, :func:`grid_values`.
    """
    q = posterior_means(guide, x[:1], plate=plate).shape[-1]
    if q < 2:
        raise ValueError(f"a latent grid needs at least two latent dimensions, got {q}")
    values = grid_values(n).to(x)
    z = x.new_zeros(n * n, q)
    z[:, 0] = values.repeat(n)
    z[:, 1] = values.flip(0).repeat_interleave(n)
    return decode(model, guide, z, x, plate=plate), values
