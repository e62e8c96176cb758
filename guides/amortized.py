"""Amortized guides q_phi(z | x) = head(net(x)): an encoder net and a distribution head.

The net maps x (B, D) to raw variational parameters h (B, P); the head turns h into a
distribution over z. Splitting them lets the same head serve amortized guides (h = net(x)) and
per-datapoint guides (h is a free parameter per example, :mod:`ppvae.guides.local`).
"""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from ppvae.data.missing import observed
from ppvae.models.sites import LATENT, data_plate

MIN_SCALE = 1e-5
"""Floor on standard deviations, so that a collapsing scale never gives log(0)."""


def positive(h: torch.Tensor) -> torch.Tensor:
    """Softplus plus a small floor: raw parameters to standard deviations."""
    return F.softplus(h) + MIN_SCALE


class DiagonalNormalHead(nn.Module):
    """h = (mu, rho) -> N(mu, diag(softplus(rho)^2)), the mean-field Gaussian.

    Examples
    --------
    >>> DiagonalNormalHead(2)(torch.zeros(5, 4)).event_shape
    torch.Size([2])
    """

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.param_dim = 2 * z_dim

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc, rho = h.split(self.z_dim, dim=-1)
        return dist.Normal(loc, positive(rho)).to_event(1)


class FullCovarianceHead(nn.Module):
    """h = (mu, L entries) -> N(mu, L L^T) with L lower triangular with positive diagonal.

    Examples
    --------
    >>> FullCovarianceHead(3)(torch.zeros(5, 9)).covariance_matrix.shape
    torch.Size([5, 3, 3])
    """

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.param_dim = z_dim + z_dim * (z_dim + 1) // 2
        self.register_buffer("rows", torch.tril_indices(z_dim, z_dim)[0], persistent=False)
        self.register_buffer("cols", torch.tril_indices(z_dim, z_dim)[1], persistent=False)

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc, entries = h.split([self.z_dim, self.param_dim - self.z_dim], dim=-1)
        tril = h.new_zeros(*h.shape[:-1], self.z_dim, self.z_dim)
        tril[..., self.rows, self.cols] = entries
        diag = positive(tril.diagonal(dim1=-2, dim2=-1))
        tril = tril.tril(-1) + torch.diag_embed(diag)
        return dist.MultivariateNormal(loc, scale_tril=tril)


class LowRankHead(nn.Module):
    """h = (mu, U, rho) -> N(mu, U U^T + diag(softplus(rho)^2)) with U of shape (q, rank).

    Examples
    --------
    >>> LowRankHead(3, rank=1)(torch.zeros(5, 9)).covariance_matrix.shape
    torch.Size([5, 3, 3])
    """

    def __init__(self, z_dim: int, rank: int = 2):
        super().__init__()
        self.z_dim, self.rank = z_dim, rank
        self.param_dim = z_dim * (rank + 2)

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        q = self.z_dim
        loc, factor, rho = h.split([q, q * self.rank, q], dim=-1)
        factor = factor.reshape(*h.shape[:-1], q, self.rank)
        return dist.LowRankMultivariateNormal(loc, factor, positive(rho) ** 2)


class MaskedInput(nn.Module):
    """An encoder net that reads data with missing entries (NaN): it sees the zero-filled data
    and the mask side by side, ``net([x_0, m])`` with x_0 = x where observed and 0 elsewhere,
    m = 1 where observed and 0 elsewhere (Mattei & Frellsen 2019).

    Parameters
    ----------
    net : nn.Module
        (..., 2 D) -> (..., P). A conv net takes the mask as extra channels: images (C, H, W)
        become (2 C, H, W), since the flat data and mask are concatenated channel-major.

    Examples
    --------
    >>> enc = MaskedInput(nn.Linear(6, 4))
    >>> enc(torch.tensor([[0.5, float("nan"), 1.0]])).isfinite().all()
    tensor(True)
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        filled, mask = observed(x)
        return self.net(torch.cat([filled, mask.to(filled.dtype)], -1))


class AmortizedGuide(PyroModule):
    """q_phi(z | x) = head(net(x)), one encoder shared by all data points.

    Parameters
    ----------
    net : nn.Module
        The encoder network, (..., D) -> (..., head.param_dim).
    head : nn.Module
        Raw parameters h to a distribution over z with event shape (q,).
    name : str
        Prefix of the parameter names in Pyro's param store.

    Notes
    -----
    .. math::

        q_\\phi(z \\mid x) = \\mathrm{head}(\\mathrm{net}_\\phi(x)), \\qquad
        \\mathrm{ELBO}(x) = \\mathbb{E}_{q}[\\log p_\\theta(x \\mid z)]
        - \\mathrm{KL}(q_\\phi(z \\mid x) \\,\\|\\, p(z)).

    Samples are reparameterized (z = mu + L eps), so gradients flow through z.

    Examples
    --------
    >>> guide = AmortizedGuide(nn.Linear(64, 4), DiagonalNormalHead(2))
    >>> trace = pyro.poutine.trace(guide).get_trace(torch.zeros(5, 64))
    >>> trace.nodes["z"]["value"].shape
    torch.Size([5, 2])
    """

    static_structure = True
    """The same operations for every batch, so ``fit``'s auto mode may compile the loss."""

    def __init__(self, net: nn.Module, head: nn.Module, *, name: str = "guide"):
        super().__init__(name)
        self.net = net
        self.head = head

    def encode(self, x: torch.Tensor) -> dist.Distribution:
        """q(z | x) for a batch x of shape (B, D): batch shape (B,), event shape (q,)."""
        return self.head(self.net(x))

    def forward(
        self, x: torch.Tensor, idx: torch.Tensor | None = None, num_data: int | None = None
    ) -> torch.Tensor:
        with data_plate(x, idx, num_data):
            return pyro.sample(LATENT, self.encode(x))
