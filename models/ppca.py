"""Probabilistic PCA as a Pyro model: the linear-Gaussian VAE's decoder."""

import torch
from torch import nn

from ppvae.models.decoders import GaussianDecoder
from ppvae.models.vae import VAE

LOG_2PI = 1.8378770664093453


class PPCA(VAE):
    """Probabilistic PCA (Tipping & Bishop 1999) with W, mu and sigma learned by SVI.

    Parameters
    ----------
    x_dim, z_dim : int
        Data dimension D and latent dimension q.
    sigma : float
        Initial noise scale.

    Notes
    -----
    .. math::

        z_n \\sim \\mathcal{N}(0, I_q), \\qquad
        x_n \\mid z_n \\sim \\mathcal{N}(W z_n + \\mu, \\sigma^2 I_D),

    so that x_n ~ N(mu, W W^T + sigma^2 I). Paired with the linear amortized guide this is the
    linear VAE of Lucas et al. (2019), whose ELBO optimum is the PPCA MLE; paired with
    :class:`~ppvae.guides.ppca_exact.ExactPPCAGuide` the ELBO equals log p(x).

    Examples
    --------
    >>> model = PPCA(x_dim=5, z_dim=2)
    >>> model.W.shape, model.mu.shape, model.sigma2.shape
    (torch.Size([5, 2]), torch.Size([5]), torch.Size([]))
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        *,
        sigma: float = 1.0,
        missing: bool = False,
        name: str = "model",
    ):
        decoder = GaussianDecoder(nn.Linear(z_dim, x_dim), sigma=sigma, learn_sigma=True)
        super().__init__(decoder, z_dim, missing=missing, name=name)

    @property
    def W(self) -> torch.Tensor:
        """The loading matrix, shape (D, q)."""
        return self.decoder.net.weight

    @property
    def mu(self) -> torch.Tensor:
        """The data mean, shape (D,)."""
        return self.decoder.net.bias

    @property
    def sigma2(self) -> torch.Tensor:
        """The noise variance, a scalar tensor."""
        return self.decoder.sigma**2

    @torch.no_grad()
    def set_params(self, W: torch.Tensor, mu: torch.Tensor, sigma2: torch.Tensor) -> "PPCA":
        """Copy (W, mu, sigma^2), e.g. a closed-form MLE, into the model."""
        self.decoder.net.weight.copy_(W)
        self.decoder.net.bias.copy_(mu)
        self.decoder.sigma_unconstrained.copy_(torch.as_tensor(sigma2).sqrt().log())
        return self

    def analytic_elbo(self, x: torch.Tensor, q) -> torch.Tensor:
        """The ELBO of each row in closed form, for a Gaussian q(z | x) with batch shape (N,).

        ``E_q[log N(x; W z + mu, s^2 I)]
        = -D/2 log(2 pi s^2) - (|x - W m - mu|^2 + tr(W S W^T)) / (2 s^2)``
        and ``KL(N(m, S) || N(0, I)) = (tr S + m^T m - q - log|S|) / 2``, with m, S the mean and
        covariance of q. No sampling noise, so it is the number to compare with log p(x).

        Returns
        -------
        Tensor, shape (N,)
        """
        m, S = q.mean, _covariance(q)
        W, s2 = self.W, self.sigma2
        resid = x - m @ W.T - self.mu
        trace = torch.einsum("dq,nqr,dr->n", W, S, W)
        expected = -0.5 * (
            x.shape[-1] * (LOG_2PI + s2.log()) + (resid.pow(2).sum(-1) + trace) / s2
        )
        kl = 0.5 * (S.diagonal(dim1=-2, dim2=-1).sum(-1) + m.pow(2).sum(-1) - m.shape[-1])
        kl = kl - 0.5 * torch.linalg.slogdet(S).logabsdet
        return expected - kl


def _covariance(q) -> torch.Tensor:
    """Covariance matrices (N, q, q) of a multivariate or diagonal Gaussian."""
    if hasattr(q, "covariance_matrix"):
        return q.covariance_matrix
    return torch.diag_embed(q.variance)
