"""Mixture of probabilistic PCA (Tipping & Bishop, Neural Computation 1999), in plain torch.

The estimator; the EM fits live in :mod:`~ppvae.baselines.mppca_em` (complete data) and
:mod:`~ppvae.baselines.mppca_missing` (NaN at missing entries).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ppvae.baselines.checks import check_count, check_nonnegative
from ppvae.baselines.mppca_em import MixtureParams, mppca_em
from ppvae.baselines.mppca_missing import (
    mixture_impute,
    mppca_em_missing,
    observed_log_joint,
)
from ppvae.baselines.ppca import NotFittedError, standard_normal


class MixtureSample(NamedTuple):
    """Draws ``X`` (n, d) and the component ``labels`` (n,) that produced them."""

    X: Tensor
    labels: Tensor


class MixturePPCA:
    """Mixture of probabilistic PCA fitted by EM, with k-means++ initialisation.

    Parameters
    ----------
    n_clusters : int
        Number of components ``K``.
    n_components : int
        Latent dimension ``q`` of every component.
    max_iter : int
    tol : float
        Stop when an iteration raises the mean per-row log-likelihood by less than ``tol``
        (absolute, nats per row).
    sigma2_floor : float
        Lower bound on every ``sigma_k^2``, as a fraction of the data's mean per-dimension
        variance ``tr(S) / d``: a component owning ``<= q`` points would otherwise drive its
        ``sigma_k^2`` to 0 and the likelihood to infinity.
    n_init : int
        Number of k-means initialisations; the fit with the highest log-likelihood is kept.
    seed : int
        Seeds the k-means++ initialisation.
    dtype, device
        As in :class:`~ppvae.baselines.ppca.PPCA`.

    Notes
    -----
    .. math::

        c \\sim \\operatorname{Categorical}(\\pi), \\quad z \\sim \\mathcal{N}(0, I_q), \\quad
        x \\mid c, z \\sim \\mathcal{N}(W_c z + \\mu_c, \\sigma_c^2 I_d).

    The M-step is exact: with the component labels as the only latent variables, the
    expected complete-data log-likelihood of component ``k`` is a PPCA likelihood with the
    responsibility-weighted covariance ``S_k``, maximised in closed form. The recorded
    log-likelihood is therefore monotone up to round-off. With missing entries (NaN) these
    are treated as latent too, and EM stays exact (:func:`mppca_em_missing`).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.cat([torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g) + 10])
    >>> model = MixturePPCA(n_clusters=2, n_components=1).fit(X)
    >>> model.weights_
    tensor([0.5000, 0.5000], dtype=torch.float64)
    >>> model.predict(X[[0, -1]]).tolist() in ([0, 1], [1, 0])
    True
    >>> X[0, 1] = X[-1, 0] = float("nan")
    >>> model = MixturePPCA(n_clusters=2, n_components=1).fit(X)
    >>> model.impute(X)[[0, -1], [1, 0]]  # each from its own cluster, near 0 and near 10
    tensor([-0.1695,  9.9567], dtype=torch.float64)
    """

    def __init__(
        self,
        n_clusters: int,
        n_components: int,
        *,
        max_iter: int = 500,
        tol: float = 1e-8,
        sigma2_floor: float = 1e-6,
        n_init: int = 1,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ):
        self.n_clusters = check_count("n_clusters", n_clusters)
        self.n_components = check_count("n_components", n_components)
        self.max_iter = check_count("max_iter", max_iter, low=0)
        self.tol = tol
        self.sigma2_floor = check_nonnegative("sigma2_floor", sigma2_floor)
        self.n_init = check_count("n_init", n_init)
        self.seed = seed
        self.dtype = dtype
        self.device = device
        self._params: MixtureParams | None = None

    def fit(self, X) -> MixturePPCA:
        """Fit by EM from ``n_init`` k-means++ initialisations; ``X`` has shape (N, d).

        With NaN (missing) entries this runs :func:`mppca_em_missing`, else :func:`mppca_em`.
        """
        X = torch.as_tensor(X, dtype=self.dtype, device=self.device)
        fit = mppca_em_missing if torch.isnan(X).any() else mppca_em
        generator = torch.Generator().manual_seed(self.seed)
        best = None
        for _ in range(self.n_init):
            run = fit(
                X, self.n_clusters, self.n_components, max_iter=self.max_iter, tol=self.tol,
                sigma2_floor=self.sigma2_floor, generator=generator, dtype=self.dtype,
            )  # fmt: skip
            if best is None or run.log_likelihood[-1] > best.log_likelihood[-1]:
                best = run
        self._params, self.log_likelihood_, self.n_iter_, self.converged_ = best
        return self

    @property
    def params_(self) -> MixtureParams:
        """The fitted parameters; :class:`NotFittedError` before :meth:`fit`."""
        if self._params is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X)")
        return self._params

    @property
    def weights_(self) -> Tensor:
        """The mixing weights pi_k, shape (K,)."""
        return self.params_.weights

    @property
    def means_(self) -> Tensor:
        """The component means mu_k, shape (K, D)."""
        return self.params_.means

    @property
    def W_(self) -> Tensor:
        """The loading matrices W_k, shape (K, D, q)."""
        return self.params_.W

    @property
    def sigma2_(self) -> Tensor:
        """The noise variances sigma2_k, shape (K,)."""
        return self.params_.sigma2

    def _log_joint(self, X) -> Tensor:
        return observed_log_joint(X, self.params_)[1]

    def log_prob(self, X) -> Tensor:
        """Per-row log-likelihood of the observed entries (NaN = missing), shape (N,)."""
        return torch.logsumexp(self._log_joint(X), dim=1)

    def score(self, X) -> float:
        """Mean log-likelihood per row."""
        return self.log_prob(X).mean().item()

    def predict_proba(self, X) -> Tensor:
        """Responsibilities ``p(c = k | x_o)`` given the observed entries, shape (N, K)."""
        return torch.softmax(self._log_joint(X), dim=1)

    def predict(self, X) -> Tensor:
        """Most probable component of each row, shape (N,)."""
        return self._log_joint(X).argmax(1)

    def impute(self, X) -> Tensor:
        """``X`` with NaN entries replaced by ``E[x_missing | x_observed]``, shape (N, d)."""
        return mixture_impute(X, self.params_)

    def sample(self, n: int, generator: torch.Generator | None = None) -> MixtureSample:
        """Draw ``n`` rows and their component labels."""
        weights, means, W, sigma2 = self.params_
        device = weights.device if generator is None else generator.device
        labels = torch.multinomial(weights.to(device), n, replacement=True, generator=generator)
        labels = labels.to(weights.device)
        z = standard_normal((n, W.shape[2]), generator, W)
        eps = standard_normal((n, W.shape[1]), generator, W)
        X = (W[labels] @ z[..., None])[..., 0] + means[labels]
        return MixtureSample(X + sigma2[labels, None].sqrt() * eps, labels)
