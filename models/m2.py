"""The semi-supervised VAE M2 (Kingma et al. 2014): a class y and a style z generate x.

Written as Pyro's ``examples/vae/ss_vae_M2.py`` writes it: ``model(xs, ys=None)``, where a row
with its label observes y and a row without one leaves y latent, for the guide to enumerate
(:class:`~ppvae.guides.m2.M2Guide`, objective ``enum``).
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ppvae.models.sites import DATA, LABEL, LATENT, OBS
from ppvae.nets import MLP


def joined(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[z, y] along the last dimension, broadcasting their batch dimensions: an enumerated y
    (C, 1, C) meets a z (B, q) or (C, B, q).

    Examples
    --------
    >>> joined(torch.zeros(5, 2), torch.eye(3).reshape(3, 1, 3)).shape
    torch.Size([3, 5, 5])
    """
    batch = torch.broadcast_shapes(z.shape[:-1], y.shape[:-1])
    return torch.cat([z.expand(*batch, z.shape[-1]), y.expand(*batch, y.shape[-1])], -1)


class M2(PyroModule):
    """p(z) p(y) p_theta(x | y, z): the generative model of the semi-supervised VAE.

    Parameters
    ----------
    x_dim, classes, z_dim : int
        D, the number of classes C and the latent dimension q.
    hidden : tuple of int
        Hidden sizes of the decoder MLP.

    Notes
    -----
    .. math::

        z_n \\sim \\mathcal{N}(0, I_q), \\quad y_n \\sim \\mathrm{OneHotCategorical}(1/C),
        \\quad x_n \\mid y_n, z_n \\sim \\mathrm{Bernoulli}(\\sigma(f_\\theta(z_n, y_n))).

    On a labelled row y is observed; on the others it is latent and the guide's q(y | x) sums it
    out exactly (enumeration), so the unlabelled bound is
    ``sum_y q(y|x) [ELBO(x, y) - log q(y|x)]``.

    Examples
    --------
    >>> m2 = M2(x_dim=64, classes=10, z_dim=2, hidden=(32,))
    >>> xs, ys = torch.rand(5, 64).round(), torch.eye(10)[:5]
    >>> trace = pyro.poutine.trace(m2).get_trace(xs, ys)
    >>> trace.nodes["y"]["is_observed"], trace.nodes["z"]["value"].shape
    (True, torch.Size([5, 2]))
    """

    def __init__(
        self, x_dim: int, classes: int, z_dim: int, hidden=(500,), *, name: str = "model"
    ):
        super().__init__(name)
        self.x_dim, self.classes, self.z_dim = x_dim, classes, z_dim
        self.decoder = MLP(z_dim + classes, x_dim, hidden=tuple(hidden))

    def forward(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        """Score images ``xs`` (B, D) in [0, 1] with one-hot labels ``ys`` (B, C), or with the
        labels latent when ``ys`` is None; returns the Bernoulli means (B, D)."""
        batch = xs.shape[0]
        options = {"dtype": xs.dtype, "device": xs.device}
        with pyro.plate(DATA, batch):
            prior = dist.Normal(torch.zeros(batch, self.z_dim, **options), 1.0).to_event(1)
            z = pyro.sample(LATENT, prior)
            uniform = torch.full((batch, self.classes), 1.0 / self.classes, **options)
            y = pyro.sample(LABEL, dist.OneHotCategorical(uniform), obs=ys)
            logits = self.decoder(joined(z, y))
            likelihood = dist.Bernoulli(logits=logits, validate_args=False).to_event(1)
            pyro.sample(OBS, likelihood, obs=xs)
            return torch.sigmoid(logits)
