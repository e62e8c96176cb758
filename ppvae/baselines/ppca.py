"""Probabilistic PCA in closed form (Tipping & Bishop, JRSS-B 1999), in plain torch.

These functions are test oracles for the Pyro models, so they use no Pyro. Everything works
in the low-rank form: with ``M = W^T W + sigma2 I`` (q x q)::

    C^-1 = sigma2^-1 (I - W M^-1 W^T),    |C| = sigma2^(d - q) |M|,

so no d x d matrix is ever inverted or factorised.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ppvae.baselines.checks import (
    check_count,
    check_data,
    check_noise_variance,
    check_params,
)
from ppvae.config import ConfigError

LOG_2PI = math.log(2 * math.pi)


class NotFittedError(ValueError, AttributeError):
    """A fitted attribute or method was used before ``fit``."""


class PPCAParams(NamedTuple):
    """PPCA parameters of ``x = W z + mu + eps``, ``z ~ N(0, I_q)``, ``eps ~ N(0, sigma2 I_d)``.

    Attributes
    ----------
    W : Tensor, shape (d, q)
    mu : Tensor, shape (d,)
    sigma2 : Tensor, shape ()
    """

    W: Tensor
    mu: Tensor
    sigma2: Tensor


class PPCAPosterior(NamedTuple):
    """The Gaussian posterior ``p(z | x_n) = N(mean[n], cov)``; every row shares ``cov``.

    Attributes
    ----------
    mean : Tensor, shape (N, q)
    cov : Tensor, shape (q, q)
    """

    mean: Tensor
    cov: Tensor


def tensor_like(value, ref: Tensor) -> Tensor:
    """``value`` as a tensor with the dtype and device of ``ref``."""
    return torch.as_tensor(value, dtype=ref.dtype, device=ref.device)


def standard_normal(
    shape: tuple[int, ...], generator: torch.Generator | None, ref: Tensor
) -> Tensor:
    """Standard normals like ``ref``, drawn on the generator's device so a CPU seed is portable."""
    device = ref.device if generator is None else generator.device
    z = torch.randn(shape, generator=generator, dtype=ref.dtype, device=device)
    return z.to(ref.device)


def cholesky_M(W: Tensor, sigma2: Tensor) -> Tensor:
    """Cholesky factor of ``M = W^T W + sigma2 I``, shape (..., q, q)."""
    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
    return torch.linalg.cholesky(W.mT @ W + sigma2[..., None, None] * eye)


def _column_signs(U: Tensor) -> Tensor:
    """Signs making the largest-magnitude entry of each column positive, shape (..., 1, q)."""
    idx = U.abs().argmax(dim=-2, keepdim=True)
    return torch.gather(U, -2, idx).sign()


def ppca_from_covariance(S: Tensor, q: int, sigma2_min=0.0) -> tuple[Tensor, Tensor]:
    """Maximum-likelihood ``W`` (..., d, q) and ``sigma2`` (...,) for a covariance S (..., d, d).

    ``sigma2`` is clamped below at ``sigma2_min``; with ``sigma2`` fixed, ``W`` below is still
    the maximiser, so the clamped pair maximises the likelihood subject to the floor.
    """
    lam, U = torch.linalg.eigh(S)
    # eigh sorts ascending; round-off can make the zero eigenvalues slightly negative
    lam, U = lam.flip(-1).clamp_min(0), U.flip(-1)[..., :q]
    sigma2 = lam[..., q:].mean(-1).clamp_min(sigma2_min)
    scale = (lam[..., :q] - sigma2[..., None]).clamp_min(0).sqrt()
    return U * _column_signs(U) * scale[..., None, :], sigma2


def ppca_log_prob(X, W, mu, sigma2) -> Tensor:
    """Per-row log-density ``log N(x_n; mu, W W^T + sigma2 I)``.

    Parameters
    ----------
    X : array_like, shape (N, d)
    W : Tensor, shape (..., d, q)
        Leading batch dimensions (e.g. the K components of a mixture) broadcast.
    mu : Tensor, shape (..., d)
    sigma2 : Tensor or float, shape (...)

    Returns
    -------
    Tensor, shape (..., N)

    Raises
    ------
    ConfigError or DataError
        If ``sigma2 <= 0`` or ``W`` and ``mu`` disagree on ``d`` (ConfigError), or if ``X``
        does not have ``d`` columns (DataError).
    """
    W = torch.as_tensor(W)
    X, mu, sigma2 = tensor_like(X, W), tensor_like(mu, W), tensor_like(sigma2, W)
    check_params(W, mu, sigma2, X)
    d, q = W.shape[-2:]
    Xc = X - mu[..., None, :]
    L = cholesky_M(W, sigma2)
    # rows of B have |B_n|^2 = x_n^T W M^-1 W^T x_n, the low-rank part of x_n^T C^-1 x_n
    B = torch.linalg.solve_triangular(L.mT, Xc @ W, upper=True, left=False)
    quad = (Xc.square().sum(-1) - B.square().sum(-1)) / sigma2[..., None]
    logdet = (d - q) * sigma2.log() + 2 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * (d * LOG_2PI + logdet[..., None] + quad)


def ppca_posterior(X, W, mu, sigma2, *, check: bool = True) -> PPCAPosterior:
    """The posterior ``p(z | x) = N(M^-1 W^T (x - mu), sigma2 M^-1)``.

    Parameters
    ----------
    X : array_like, shape (N, d)
    W : Tensor, shape (d, q)
    mu : Tensor, shape (d,)
    sigma2 : Tensor or float, shape ()
    check : bool
        Check the parameters first (``sigma2 > 0`` reads a value on the host: a guide that
        calls this at every training step passes False).

    Returns
    -------
    PPCAPosterior
        ``mean`` (N, q) and the shared ``cov`` (q, q).

    Raises
    ------
    ConfigError or DataError
        If ``sigma2 <= 0`` or ``W`` and ``mu`` disagree on ``d`` (ConfigError), or if ``X``
        does not have ``d`` columns (DataError).
    """
    W = torch.as_tensor(W)
    X, mu, sigma2 = tensor_like(X, W), tensor_like(mu, W), tensor_like(sigma2, W)
    if check:
        check_params(W, mu, sigma2, X)
    L = cholesky_M(W, sigma2)
    mean = torch.cholesky_solve(((X - mu) @ W).mT, L).mT
    return PPCAPosterior(mean, sigma2 * torch.cholesky_inverse(L))


def ppca_mle(X, q: int, *, dtype: torch.dtype = torch.float64) -> PPCAParams:
    """Closed-form maximum-likelihood PPCA (Tipping & Bishop 1999).

    ``mu`` is the mean, ``sigma2`` the mean of the ``d - q`` smallest eigenvalues of the
    1/N covariance ``S`` and ``W = U_q (Lambda_q - sigma2 I)^(1/2)``, so ``W^T W`` is diagonal.
    The free rotation is fixed by making the largest-magnitude entry of each column positive.

    Parameters
    ----------
    X : array_like, shape (N, d)
        Complete data; for NaN (missing) entries use :func:`ppca_em_missing`.
    q : int
        Latent dimension, ``1 <= q < d``.
    dtype : torch.dtype
        Dtype the data is converted to; the device is the input's.

    Returns
    -------
    PPCAParams
        ``W`` (d, q), ``mu`` (d,), ``sigma2`` ().
    """
    X = torch.as_tensor(X, dtype=dtype)
    check_data(X, q)
    mu = X.mean(0)
    Xc = X - mu
    S = Xc.mT @ Xc / X.shape[0]
    W, sigma2 = ppca_from_covariance(S, q)
    check_noise_variance(sigma2, S.trace(), q)
    return PPCAParams(W, mu, sigma2)


def ppca_sample(n: int, W, mu, sigma2, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n`` rows from ``N(mu, W W^T + sigma2 I)``.

    Parameters
    ----------
    n : int
    W : Tensor, shape (d, q)
    mu : Tensor, shape (d,)
    sigma2 : Tensor or float, shape ()
    generator : torch.Generator, optional
        Draws happen on its device and move to ``W``'s device.

    Returns
    -------
    Tensor, shape (n, d)
    """
    W = torch.as_tensor(W)
    mu, sigma2 = tensor_like(mu, W), tensor_like(sigma2, W)
    d, q = W.shape
    z = standard_normal((n, q), generator, W)
    eps = standard_normal((n, d), generator, W)
    return z @ W.mT + mu + sigma2.sqrt() * eps


class PPCA:
    """Probabilistic PCA fitted in closed form, with a scikit-learn-style interface.

    Parameters
    ----------
    n_components : int
        Latent dimension ``q``.
    dtype : torch.dtype
        Dtype for fitting; inputs are converted to it.
    device : torch.device or str, optional
        Device for fitting; by default the input's.

    Notes
    -----
    .. math::

        z \\sim \\mathcal{N}(0, I_q), \\qquad
        x \\mid z \\sim \\mathcal{N}(W z + \\mu, \\sigma^2 I_d).

    Examples
    --------
    >>> X = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.2], [3.0, 2.8]])
    >>> model = PPCA(n_components=1).fit(X)
    >>> model.W_.shape, round(model.sigma2_.item(), 4)
    (torch.Size([2, 1]), 0.0093)
    >>> model.transform(X).shape
    torch.Size([4, 1])
    """

    def __init__(
        self,
        n_components: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ):
        self.n_components = check_count("n_components", n_components)
        self.dtype = dtype
        self.device = device
        self._params: PPCAParams | None = None

    def _data(self, X) -> Tensor:
        return torch.as_tensor(X, dtype=self.dtype, device=self.device)

    def fit(self, X) -> PPCA:
        """Fit by closed-form maximum likelihood; ``X`` has shape (N, d)."""
        self._params = ppca_mle(self._data(X), self.n_components, dtype=self.dtype)
        return self

    @classmethod
    def from_params(cls, W, mu, sigma2) -> PPCA:
        """A fitted model with the given ``W`` (d, q), ``mu`` (d,) and ``sigma2`` ()."""
        W = torch.as_tensor(W)
        W = W if W.is_floating_point() else W.to(torch.float64)
        mu, sigma2 = tensor_like(mu, W), tensor_like(sigma2, W)
        if W.ndim != 2:
            raise ConfigError(f"W must have shape (d, q); got shape {tuple(W.shape)}")
        check_params(W, mu, sigma2)
        model = cls(W.shape[-1], dtype=W.dtype, device=W.device)
        model._params = PPCAParams(W, mu, sigma2)
        return model

    @property
    def params_(self) -> PPCAParams:
        """The fitted parameters; :class:`NotFittedError` before :meth:`fit`."""
        if self._params is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X)")
        return self._params

    @property
    def W_(self) -> Tensor:
        """The loading matrix W, shape (D, q)."""
        return self.params_.W

    @property
    def mu_(self) -> Tensor:
        """The mean mu, shape (D,)."""
        return self.params_.mu

    @property
    def sigma2_(self) -> Tensor:
        """The noise variance sigma2, a scalar tensor."""
        return self.params_.sigma2

    def log_prob(self, X) -> Tensor:
        """Per-row log-likelihood, shape (N,)."""
        return ppca_log_prob(X, *self.params_)

    def score(self, X) -> float:
        """Mean log-likelihood per row, as scikit-learn's ``PCA.score``."""
        return self.log_prob(X).mean().item()

    def posterior(self, X) -> PPCAPosterior:
        """The posterior ``p(z | x)``: ``mean`` (N, q) and the shared ``cov`` (q, q)."""
        return ppca_posterior(X, *self.params_)

    def transform(self, X) -> Tensor:
        """The posterior mean ``E[z | x]``, shape (N, q)."""
        return self.posterior(X).mean

    def reconstruct(self, X) -> Tensor:
        """``W E[z | x] + mu``, shape (N, d)."""
        W, mu, _ = self.params_
        return self.transform(X) @ W.mT + mu

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` rows from the fitted marginal, shape (n, d)."""
        return ppca_sample(n, *self.params_, generator=generator)
