"""EM for the mixture of PPCA (Tipping & Bishop, Neural Computation 1999) on complete data.

The component labels are the only latent variables: the E-step gives responsibilities, and
the M-step is the closed-form PPCA of each responsibility-weighted covariance ``S_k``, so it is
exact and one M-step reaches each component's optimum for the current responsibilities.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ppvae.baselines.checks import check_count, check_data, check_nonnegative, check_params
from ppvae.baselines.em import run_em
from ppvae.baselines.ppca import ppca_from_covariance, ppca_log_prob, tensor_like
from ppvae.config import ConfigError
from ppvae.data import DataError


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


class MixtureEMResult(NamedTuple):
    """The outcome of a mixture EM fit.

    Attributes
    ----------
    params : MixtureParams
        The final parameters.
    log_likelihood : Tensor, shape (n_iter + 1,)
        Mean per-row (observed-data) log-likelihood of the initial and of every later iterate.
    n_iter : int
        Number of EM iterations run.
    converged : bool
        Whether the last iteration raised the log-likelihood by less than ``tol``.
    """

    params: MixtureParams
    log_likelihood: Tensor
    n_iter: int
    converged: bool


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


def component_log_joint(X: Tensor, params: MixtureParams) -> Tensor:
    """``log pi_k + log N(x_n; mu_k, W_k W_k^T + sigma_k^2 I)``, shape (N, K)."""
    return params.weights.log() + ppca_log_prob(X, params.W, params.means, params.sigma2).mT


def mixture_mstep(X: Tensor, R: Tensor, q: int, sigma2_min: Tensor, scatter=0.0) -> MixtureParams:
    """Exact M-step from responsibilities R (N, K): weighted means, then closed-form PPCA on
    each responsibility-weighted covariance ``S_k`` with ``sigma_k^2`` floored.

    ``X`` is (N, d), or (K, N, d) when each component sees its own completion of the data;
    ``scatter`` (K, d, d) is added to ``sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T`` before the
    division by ``N_k`` (the conditional covariance of missing entries).
    """
    Nk = R.sum(0)
    # a component that lost every point keeps finite parameters and weight 0
    safe = Nk.clamp_min(torch.finfo(X.dtype).tiny)
    means = (R.mT[:, None] @ X)[:, 0] / safe[:, None]
    Xc = X - means[:, None]
    S = ((R.mT[..., None] * Xc).mT @ Xc + scatter) / safe[:, None, None]
    W, sigma2 = ppca_from_covariance(S, q, sigma2_min)
    return MixtureParams(Nk / X.shape[-2], means, W, sigma2)


def initial_params(X: Tensor, K: int, q: int, sigma2_min: Tensor, init, generator):
    """``init`` in ``X``'s dtype and device, or the M-step of a k-means++ hard assignment."""
    if init is not None:
        params = MixtureParams(*(tensor_like(p, X) for p in init))
        check_params(params.W, params.means, params.sigma2, X)
        if params.weights.shape != (K,) or params.W.shape[-1] != q:
            raise ConfigError(
                f"init must have K={K} components with q={q}; got weights of shape "
                f"{tuple(params.weights.shape)} and W of shape {tuple(params.W.shape)}"
            )
        return params
    if generator is None:  # like ppca_em: draw from the global RNG
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    labels = _kmeans(X, K, generator)
    return mixture_mstep(X, torch.nn.functional.one_hot(labels, K).to(X.dtype), q, sigma2_min)


def check_rows(X: Tensor, K: int) -> None:
    """Raise :class:`~ppvae.errors.DataError` when ``X`` has fewer rows than ``K`` clusters."""
    if X.shape[0] < K:
        raise DataError(f"need at least n_clusters={K} rows with an observed entry; got {len(X)}")


def mppca_em(
    X,
    n_clusters: int,
    n_components: int,
    *,
    init: MixtureParams | None = None,
    max_iter: int = 500,
    tol: float = 1e-8,
    sigma2_floor: float = 1e-6,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> MixtureEMResult:
    """EM for a mixture of ``n_clusters`` PPCAs with latent dimension ``n_components``.

    Parameters
    ----------
    X : array_like, shape (N, d)
        Complete data; for NaN (missing) entries use :func:`mppca_em_missing`.
    n_clusters, n_components : int
        ``K >= 1`` and ``1 <= q < d``.
    init : MixtureParams, optional
        Initial parameters. By default the M-step of a k-means++ clustering drawn from
        ``generator`` (the global RNG if None).
    max_iter, tol
        As in :func:`~ppvae.baselines.em.ppca_em`.
    sigma2_floor : float
        Lower bound on every ``sigma_k^2`` as a fraction of the mean per-column variance.
    generator : torch.Generator, optional
    dtype : torch.dtype

    Returns
    -------
    MixtureEMResult
    """
    K = check_count("n_clusters", n_clusters)
    check_nonnegative("sigma2_floor", sigma2_floor)
    X = torch.as_tensor(X, dtype=dtype)
    check_data(X, n_components)
    check_rows(X, K)
    sigma2_min = sigma2_floor * X.var(0, correction=0).mean()
    params = initial_params(X, K, n_components, sigma2_min, init, generator)

    def estep(params):
        joint = component_log_joint(X, params)
        loglik = torch.logsumexp(joint, dim=1, keepdim=True)
        return loglik.mean().item(), (joint - loglik).exp()

    def mstep(params, R):
        return mixture_mstep(X, R, n_components, sigma2_min)

    return MixtureEMResult(*run_em(estep, mstep, params, max_iter, tol, X))
