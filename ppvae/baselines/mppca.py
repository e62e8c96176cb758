"""Mixture of probabilistic PCA (Tipping & Bishop, Neural Computation 1999), in plain torch."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ppvae.baselines.em import _run_em
from ppvae.baselines.ppca import (
    NotFittedError,
    _check_data,
    _like,
    _ppca_from_covariance,
    _randn,
    ppca_log_prob,
)


class MixtureParams(NamedTuple):
    """Parameters of a mixture of K PPCA components.

    Attributes
    ----------
    weights : Tensor, shape (K,)
    means : Tensor, shape (K, d)
    W : Tensor, shape (K, d, q)
    sigma2 : Tensor, shape (K,)
    """

    weights: Tensor
    means: Tensor
    W: Tensor
    sigma2: Tensor


class MixtureSample(NamedTuple):
    """Draws ``X`` (n, d) and the component ``labels`` (n,) that produced them."""

    X: Tensor
    labels: Tensor


def _uniform(generator: torch.Generator | None, ref: Tensor) -> Tensor:
    device = ref.device if generator is None else generator.device
    return torch.rand((), generator=generator, dtype=ref.dtype, device=device).to(ref.device)


def _kmeans(X: Tensor, K: int, generator: torch.Generator, n_iter: int = 100) -> Tensor:
    """Labels (N,) from k-means++ seeding followed by Lloyd iterations."""
    first = torch.randint(X.shape[0], (), generator=generator, device=generator.device)
    centres = X[first.to(X.device)][None]
    for _ in range(1, K):
        d2 = (X[:, None] - centres).square().sum(-1).min(1).values
        cdf = d2.cumsum(0)
        # right=True never picks a point at distance 0 (an existing centre)
        i = torch.searchsorted(cdf, _uniform(generator, X) * cdf[-1], right=True)
        centres = torch.cat([centres, X[i.clamp_max(X.shape[0] - 1)][None]])
    labels = None
    for _ in range(n_iter):
        new = (X[:, None] - centres).square().sum(-1).argmin(1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        counts = torch.bincount(labels, minlength=K).to(X.dtype)[:, None]
        sums = torch.zeros_like(centres).index_add_(0, labels, X)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return labels


def _log_joint(X: Tensor, params: MixtureParams) -> Tensor:
    """``log pi_k + log N(x_n; mu_k, W_k W_k^T + sigma_k^2 I)``, shape (N, K)."""
    return params.weights.log() + ppca_log_prob(X, params.W, params.means, params.sigma2).mT


def _mstep(X: Tensor, R: Tensor, q: int, sigma2_min: Tensor) -> MixtureParams:
    """Exact M-step from responsibilities R (N, K): weighted means, then closed-form PPCA on
    each responsibility-weighted covariance ``S_k`` with ``sigma_k^2`` floored."""
    Nk = R.sum(0)
    # a component that lost every point keeps finite parameters and weight 0
    safe = Nk.clamp_min(torch.finfo(X.dtype).tiny)
    means = (R.mT @ X) / safe[:, None]
    Xc = X - means[:, None]
    S = (R.mT[..., None] * Xc).mT @ Xc / safe[:, None, None]
    W, sigma2 = _ppca_from_covariance(S, q, sigma2_min)
    return MixtureParams(Nk / X.shape[0], means, W, sigma2)


def _fit_mixture(X, labels, K, q, sigma2_min, max_iter, tol):
    """EM started from the M-step of the hard assignment ``labels`` (N,)."""
    R = torch.nn.functional.one_hot(labels, K).to(X.dtype)
    state = _mstep(X, R, q, sigma2_min)

    def estep(params):
        joint = _log_joint(X, params)
        loglik = torch.logsumexp(joint, dim=1, keepdim=True)
        return loglik.mean().item(), (joint - loglik).exp()

    def mstep(params, R):
        return _mstep(X, R, q, sigma2_min)

    return _run_em(estep, mstep, state, max_iter, tol, X)


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
        As in :class:`PPCA`.

    Notes
    -----
    .. math::

        c \\sim \\operatorname{Categorical}(\\pi), \\quad z \\sim \\mathcal{N}(0, I_q), \\quad
        x \\mid c, z \\sim \\mathcal{N}(W_c z + \\mu_c, \\sigma_c^2 I_d).

    The M-step is exact: with the component labels as the only latent variables, the
    expected complete-data log-likelihood of component ``k`` is a PPCA likelihood with the
    responsibility-weighted covariance ``S_k``, maximised in closed form. The recorded
    log-likelihood is therefore monotone up to round-off.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.cat([torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g) + 10])
    >>> model = MixturePPCA(n_clusters=2, n_components=1).fit(X)
    >>> model.weights_
    tensor([0.5000, 0.5000], dtype=torch.float64)
    >>> model.predict(X[[0, -1]]).tolist() in ([0, 1], [1, 0])
    True
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
        self.n_clusters = n_clusters
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.sigma2_floor = sigma2_floor
        self.n_init = n_init
        self.seed = seed
        self.dtype = dtype
        self.device = device
        self._params: MixtureParams | None = None

    def fit(self, X) -> MixturePPCA:
        """Fit by EM from ``n_init`` k-means++ initialisations; ``X`` has shape (N, d)."""
        X = torch.as_tensor(X, dtype=self.dtype, device=self.device)
        _check_data(X, self.n_components)
        if X.shape[0] < self.n_clusters:
            raise ValueError(f"need at least n_clusters={self.n_clusters} rows; got {len(X)}")
        sigma2_min = self.sigma2_floor * X.var(0, correction=0).mean()
        generator = torch.Generator().manual_seed(self.seed)
        best = None
        for _ in range(self.n_init):
            labels = _kmeans(X, self.n_clusters, generator)
            run = _fit_mixture(
                X, labels, self.n_clusters, self.n_components, sigma2_min, self.max_iter, self.tol
            )
            if best is None or run.trace[-1] > best.trace[-1]:
                best = run
        self._params, self.log_likelihood_, self.n_iter_, self.converged_ = best
        return self

    @property
    def params_(self) -> MixtureParams:
        if self._params is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X)")
        return self._params

    @property
    def weights_(self) -> Tensor:
        return self.params_.weights

    @property
    def means_(self) -> Tensor:
        return self.params_.means

    @property
    def W_(self) -> Tensor:
        return self.params_.W

    @property
    def sigma2_(self) -> Tensor:
        return self.params_.sigma2

    def log_prob(self, X) -> Tensor:
        """Per-row log-likelihood under the mixture, shape (N,)."""
        return torch.logsumexp(_log_joint(_like(X, self.W_), self.params_), dim=1)

    def score(self, X) -> float:
        """Mean log-likelihood per row."""
        return self.log_prob(X).mean().item()

    def predict_proba(self, X) -> Tensor:
        """Responsibilities ``p(c = k | x_n)``, shape (N, K)."""
        return torch.softmax(_log_joint(_like(X, self.W_), self.params_), dim=1)

    def predict(self, X) -> Tensor:
        """Most probable component of each row, shape (N,)."""
        return _log_joint(_like(X, self.W_), self.params_).argmax(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> MixtureSample:
        """Draw ``n`` rows and their component labels."""
        weights, means, W, sigma2 = self.params_
        device = weights.device if generator is None else generator.device
        labels = torch.multinomial(weights.to(device), n, replacement=True, generator=generator)
        labels = labels.to(weights.device)
        z = _randn((n, W.shape[2]), generator, W)
        eps = _randn((n, W.shape[1]), generator, W)
        X = (W[labels] @ z[..., None])[..., 0] + means[labels]
        return MixtureSample(X + sigma2[labels, None].sqrt() * eps, labels)
