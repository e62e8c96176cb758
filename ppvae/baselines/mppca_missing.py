"""Mixture of PPCA with missing entries (NaN): exact EM, observed-data density, imputation.

The latent variables are the component label ``c`` and the missing entries ``x_m`` (with ``z``
integrated out), as in Ghahramani & Jordan (NIPS 1994) for Gaussian mixtures. Given ``x_o``
and ``c = k``, component ``k``'s observed-dims posterior ``N(<z>_k, Cov_k)`` gives

.. math::

    x_m \\mid x_o, k \\sim \\mathcal{N}\\big(W_{k,m} \\langle z \\rangle_k + \\mu_{k,m},\\;
    W_{k,m} \\mathrm{Cov}_k W_{k,m}^T + \\sigma_k^2 I\\big).

The M-step is then the complete-data one on the expected scatter: ``mu_k`` is the weighted mean
of the completed rows ``E[x | x_o, k]``, and ``S_k`` adds the conditional covariance of the
missing block, so the closed-form PPCA of ``S_k`` maximises the expected complete-data
log-likelihood exactly. Without missing entries this is :func:`mppca_em` step for step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ppvae.baselines.checks import (
    check_count,
    check_missing_data,
    check_nonnegative,
    check_params,
)
from ppvae.baselines.em import observed_rows, run_em
from ppvae.baselines.missing import ObservedPosterior, observed_posterior
from ppvae.baselines.mppca_em import (
    MixtureEMResult,
    MixtureParams,
    check_rows,
    component_log_joint,
    initial_params,
    mixture_mstep,
)
from ppvae.baselines.ppca import tensor_like

# rows per chunk of the (rows, d, q) tensor behind the conditional scatter: bounds its memory
_CHUNK_ELEMENTS = 2**22


def _observed_joint(X0: Tensor, O: Tensor, params: MixtureParams):
    """``log pi_k + log N(x_o; mu_k,o, C_k,oo)`` (N, K) and each component's posterior."""
    posts = [
        observed_posterior(O * (X0 - mu), O, W, sigma2)
        for mu, W, sigma2 in zip(params.means, params.W, params.sigma2, strict=True)
    ]
    joint = params.weights.log() + torch.stack([post.log_prob for post in posts], dim=1)
    return joint, posts


def _conditional_scatter(missing: Tensor, W: Tensor, cov: Tensor, r: Tensor, sigma2) -> Tensor:
    """``sum_n r_n Cov(x_n | x_o, k)`` (d, d), zero outside the missing blocks.

    With ``P_n`` the diagonal 0/1 matrix of row ``n``'s missing entries, each term is
    ``P_n (W Cov_n W^T + sigma2 I) P_n``; it is built as ``U U^T`` from the Cholesky factors
    of ``Cov_n`` (N, q, q), a chunk of rows at a time.
    """
    d, q = W.shape
    total = torch.diag(sigma2 * (r @ missing))
    rows = missing.any(1).nonzero().flatten()
    for idx in rows.split(max(1, _CHUNK_ELEMENTS // (d * q))):
        factor = torch.linalg.cholesky(cov[idx]) * r[idx].sqrt()[:, None, None]
        U = (missing[idx, :, None] * (W @ factor)).transpose(0, 1).reshape(d, -1)
        total = total + U @ U.mT
    return total


def _completed(X0: Tensor, O: Tensor, params: MixtureParams, posts) -> Tensor:
    """``E[x_n | x_o, c = k]`` for every component, shape (K, N, d)."""
    pairs = zip(posts, params.W, params.means, strict=True)
    return torch.where(O > 0, X0, torch.stack([post.mean @ W.mT + mu for post, W, mu in pairs]))


def _missing_mstep(X0, O, R, posts: list[ObservedPosterior], params, q, sigma2_min):
    """Exact M-step: the complete-data one on ``E[x | x_o, k]`` plus the conditional scatter."""
    scatter = torch.stack(
        [
            _conditional_scatter(1 - O, W, post.cov, r, sigma2)
            for post, W, r, sigma2 in zip(posts, params.W, R.mT, params.sigma2, strict=True)
        ]
    )
    return mixture_mstep(_completed(X0, O, params, posts), R, q, sigma2_min, scatter)


def mppca_em_missing(
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
    """Exact EM for a mixture of PPCAs on data with missing entries (NaN).

    The E-step conditions each component on the observed entries; the M-step is exact (see
    the module notes), so the recorded observed-data log-likelihood never decreases (up to
    round-off). Without NaN this is :func:`mppca_em` (same ``init`` or ``generator`` state,
    same iterates). Rows with nothing observed carry no information and are dropped, as in
    :func:`ppca_em_missing`; the trace is the mean over the remaining rows.

    Parameters
    ----------
    X : array_like, shape (N, d)
        Data with NaN at missing entries.
    n_clusters, n_components, max_iter, tol, generator, dtype
        As in :func:`mppca_em`.
    init : MixtureParams, optional
        Initial parameters. By default the M-step of a k-means++ clustering of the data with
        NaN filled by the observed column means.
    sigma2_floor : float
        Lower bound on every ``sigma_k^2`` as a fraction of the mean over columns of the
        variance of their observed entries.

    Returns
    -------
    MixtureEMResult

    Raises
    ------
    DataError
        If a column is observed in fewer than 2 rows, or fewer than ``n_clusters`` rows have
        an observed entry.
    """
    K, q = check_count("n_clusters", n_clusters), n_components
    check_nonnegative("sigma2_floor", sigma2_floor)
    X, observed = observed_rows(torch.as_tensor(X, dtype=dtype), q)
    check_rows(X, K)
    O = observed.to(dtype)
    X0 = torch.where(observed, X, 0.0)
    fill = X0.sum(0) / O.sum(0)
    variance = (O * (X0 - fill)).square().sum(0) / O.sum(0)
    sigma2_min = sigma2_floor * variance.mean()
    params = initial_params(torch.where(observed, X, fill), K, q, sigma2_min, init, generator)

    def estep(params):
        joint, posts = _observed_joint(X0, O, params)
        loglik = torch.logsumexp(joint, dim=1, keepdim=True)
        return loglik.mean().item(), ((joint - loglik).exp(), posts)

    def mstep(params, stats):
        return _missing_mstep(X0, O, *stats, params, q, sigma2_min)

    return MixtureEMResult(*run_em(estep, mstep, params, max_iter, tol, X))


def observed_log_joint(X, params: MixtureParams) -> tuple[Tensor, Tensor, list | None]:
    """``log pi_k + log N(x_o; mu_k,o, C_k,oo)`` on the observed (non-NaN) entries.

    Returns ``X`` in the parameters' dtype (N, d), the log-joint (N, K) and, if ``X`` has NaN,
    each component's observed-dims posterior (else None, and the complete-data path is used).
    """
    params = MixtureParams(*(tensor_like(p, params.W) for p in params))
    check_params(params.W, params.means, params.sigma2)
    X = tensor_like(X, params.W)
    check_missing_data(X, params.W.shape[-2])
    observed = ~torch.isnan(X)
    if observed.all():
        return X, component_log_joint(X, params), None
    O = observed.to(X.dtype)
    return X, *_observed_joint(torch.where(observed, X, 0.0), O, params)


def mixture_log_prob(X, params: MixtureParams) -> Tensor:
    """Per-row observed-data log-likelihood ``log sum_k pi_k N(x_o; mu_k,o, C_k,oo)``, (N,).

    ``X`` (N, d) has NaN at missing entries; a row with nothing observed scores 0.
    """
    return torch.logsumexp(observed_log_joint(X, params)[1], dim=1)


def mixture_impute(X, params: MixtureParams) -> Tensor:
    """Replace NaN entries by ``E[x_m | x_o] = sum_k p(k | x_o) (W_k <z>_k + mu_k)_m``.

    Parameters
    ----------
    X : array_like, shape (N, d)
        Data with NaN at missing entries; a row with nothing observed gets
        ``sum_k pi_k mu_k``.
    params : MixtureParams

    Returns
    -------
    Tensor, shape (N, d)
        A copy of ``X`` in ``params``' dtype and device, observed entries unchanged.
    """
    X, joint, posts = observed_log_joint(X, params)
    if posts is None:
        return X.clone()
    observed = ~torch.isnan(X)
    completed = _completed(torch.where(observed, X, 0.0), observed.to(X.dtype), params, posts)
    conditional = (torch.softmax(joint, dim=1).mT[..., None] * completed).sum(0)
    return torch.where(observed, X, conditional)
