"""The exact PPCA posterior as a guide: the oracle that makes the ELBO equal log p(x)."""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ppvae.baselines.missing import observed_posterior
from ppvae.baselines.ppca import ppca_posterior
from ppvae.data.missing import observed
from ppvae.models.ppca import PPCA
from ppvae.models.sites import LATENT, data_plate


class ExactPPCAGuide(PyroModule):
    """q(z | x) = p(z | x) of a :class:`~ppvae.models.ppca.PPCA` model, in closed form.

    The guide has no parameters of its own: it reads W, mu and sigma from the model at every
    call (without registering them twice), so it stays exact while SVI moves the model.

    Notes
    -----
    .. math::

        q(z \\mid x) = \\mathcal{N}\\big(M^{-1} W^\\top (x - \\mu),\\; \\sigma^2 M^{-1}\\big),
        \\qquad M = W^\\top W + \\sigma^2 I_q.

    Then log p(x, z) - log q(z | x) = log p(x) for every z: the ELBO is exact with zero
    variance, and its gradient in the model's parameters is the gradient of log p(x), so SVI
    with this guide is maximum likelihood.

    Examples
    --------
    >>> model = PPCA(x_dim=4, z_dim=2)
    >>> guide = ExactPPCAGuide(model)
    >>> guide(torch.zeros(3, 4)).shape
    torch.Size([3, 2])
    """

    def __init__(self, model: PPCA, *, name: str = "guide"):
        super().__init__(name)
        object.__setattr__(self, "model", model)  # a reference, not a submodule

    def encode(self, x: torch.Tensor) -> dist.Distribution:
        """The posterior p(z | x) for x of shape (B, D): batch shape (B,), event shape (q,)."""
        W, mu, sigma2 = self.model.W, self.model.mu, self.model.sigma2
        posterior = ppca_posterior(x, W, mu, sigma2, check=False)  # no host read per step
        return dist.MultivariateNormal(posterior.mean, covariance_matrix=posterior.cov)

    def forward(
        self, x: torch.Tensor, idx: torch.Tensor | None = None, num_data: int | None = None
    ) -> torch.Tensor:
        with data_plate(x, idx, num_data):
            return pyro.sample(LATENT, self.encode(x))


class ExactObservedPPCAGuide(ExactPPCAGuide):
    """q(z | x) = p(z | x_obs): the exact PPCA posterior given the observed (non-NaN) entries.

    Each row n has its own observed dimensions O_n, so its own q x q matrix M_n; with nothing
    missing this is :class:`ExactPPCAGuide`'s posterior, computed row by row.

    Notes
    -----
    .. math::

        q(z \\mid x) = \\mathcal{N}\\big(M_n^{-1} W_O^\\top (x_O - \\mu_O),\\;
        \\sigma^2 M_n^{-1}\\big), \\qquad M_n = W_O^\\top W_O + \\sigma^2 I_q.

    With the masked likelihood of :class:`~ppvae.models.vae.VAE`, log p(x_obs, z) -
    log q(z | x) = log p(x_obs) for every z, so every bound (ELBO, IWAE for any K) equals the
    observed-data log-likelihood: the oracle for training and scoring on incomplete data.

    Examples
    --------
    >>> model = PPCA(x_dim=4, z_dim=2)
    >>> x = torch.tensor([[0.0, float("nan"), 1.0, 2.0]])
    >>> ExactObservedPPCAGuide(model)(x).shape
    torch.Size([1, 2])
    """

    def encode(self, x: torch.Tensor) -> dist.Distribution:
        """p(z | x_obs) for x of shape (B, D) with NaN at missing entries: batch shape (B,)."""
        W, mu, sigma2 = self.model.W, self.model.mu, self.model.sigma2
        filled, mask = observed(x - mu)
        posterior = observed_posterior(filled, mask.to(W.dtype), W, sigma2)
        return dist.MultivariateNormal(posterior.mean, covariance_matrix=posterior.cov)
