"""Per-datapoint (non-amortized) guides: free variational parameters for every example."""

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from ppvae.models.sites import LATENT, data_plate


class LocalGuide(PyroModule):
    """q(z_n) = head(h_n) with free parameters h_n for every training example n.

    Parameters
    ----------
    head : nn.Module
        Raw parameters to a distribution over z (for example
        :class:`~ppvae.guides.amortized.DiagonalNormalHead`); it has a ``param_dim``.
    num_data : int
        N, the number of examples with their own parameters.
    init : Tensor, shape (N, head.param_dim), optional
        Starting parameters, for example an amortized encoder's output (see :func:`refine`).
        Defaults to zeros.

    Notes
    -----
    .. math::

        q(z_n; \\psi_n) = \\mathrm{head}(\\psi_n), \\qquad n = 1, \\dots, N,

    indexed by the data plate's subsample, so a minibatch updates only its own rows' gradient.
    Nothing is shared between examples: the best ELBO per example, with no amortization gap,
    at the price of N * P parameters and no way to encode a new x without optimizing
    (:mod:`ppvae.guides.refine` fits such parameters for held-out examples).

    Examples
    --------
    >>> from ppvae.guides.amortized import DiagonalNormalHead
    >>> guide = LocalGuide(DiagonalNormalHead(2), num_data=100)
    >>> guide(torch.zeros(8, 64), idx=torch.arange(8), num_data=100).shape
    torch.Size([8, 2])
    """

    amortized = False
    """No encoder: it cannot score examples it was not fitted to (:mod:`ppvae.guides.refine`)."""

    def __init__(
        self,
        head: nn.Module,
        num_data: int,
        *,
        init: torch.Tensor | None = None,
        name: str = "guide",
    ):
        super().__init__(name)
        self.head = head
        if init is None:
            init = torch.zeros(num_data, head.param_dim)
        if init.shape != (num_data, head.param_dim):
            raise ValueError(
                f"init must have shape {(num_data, head.param_dim)}, got {init.shape}"
            )
        self.local = nn.Parameter(init.detach().clone())

    def forward(
        self, x: torch.Tensor, idx: torch.Tensor | None = None, num_data: int | None = None
    ) -> torch.Tensor:
        if idx is None and x.shape[0] != self.local.shape[0]:
            raise ValueError(
                f"a per-datapoint guide with {self.local.shape[0]} rows got {x.shape[0]} "
                "examples and no idx: pass idx, the examples' row numbers"
            )
        with data_plate(x, idx, num_data) as ind:
            return pyro.sample(LATENT, self.head(self.local[ind]))
