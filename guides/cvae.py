"""The guide of the conditional VAE (Pyro's ``examples/cvae``): q(z | x, y) when the hidden
pixels y are given, and the model's own prior network p(z | x) when they are not (completion)."""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ppvae.models.cvae import CVAE, QuadrantEncoder
from ppvae.models.sites import DATA, LATENT


class CVAEGuide(PyroModule):
    """q_phi(z | x, y), a recognition network reading the whole image.

    Parameters
    ----------
    model : CVAE
        Its prior network is the guide when ``ys`` is None (its parameters stay the model's).
    x_dim, z_dim : int
    hidden : tuple of int

    Notes
    -----
    .. math::

        q_\\phi(z \\mid x, y) = \\mathcal{N}(\\mu_\\phi(x, y), \\sigma_\\phi(x, y)^2), \\qquad
        \\mathrm{ELBO}(y \\mid x) = \\mathbb{E}_q[\\log p(y \\mid z)]
        - \\mathrm{KL}(q(z \\mid x, y) \\,\\|\\, p(z \\mid x)) \\le \\log p(y \\mid x).

    Examples
    --------
    >>> from ppvae.models.cvae import BaselineNet
    >>> model = CVAE(64, 2, BaselineNet(64, hidden=(16,)), hidden=(16,))
    >>> guide = CVAEGuide(model, 64, 2, hidden=(16,))
    >>> pyro.poutine.trace(guide).get_trace(torch.rand(5, 64)).nodes["z"]["value"].shape
    torch.Size([5, 2])
    """

    def __init__(self, model: CVAE, x_dim: int, z_dim: int, hidden=(500, 500), *, name="guide"):
        super().__init__(name)
        self.recognition_net = QuadrantEncoder(x_dim, z_dim, hidden)
        self.prior = model.prior  # a bound method: the model keeps its own parameter names

    def forward(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        with pyro.plate(DATA, xs.shape[0]):
            if ys is None:
                pyro.sample(LATENT, self.prior(xs))
                return
            loc, scale = self.recognition_net(xs, ys)
            pyro.sample(LATENT, dist.Normal(loc, scale).to_event(1))
