"""PPCA with missing entries: the observed-dims posterior, the exact M-step, imputation.

Row ``n`` observes the dimensions ``O_n``; the mask ``O`` (N, d) holds 1.0 where an entry is
observed. Each row has its own ``M_n = W_O^T W_O + sigma2 I`` (q x q), and everything is batched
over rows as (N, q, q) tensors: no Python loop over rows, no d x d matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ppvae.baselines.checks import (
    check_count,
    check_mask,
    check_missing_data,
    check_params,
)
from ppvae.baselines.ppca import LOG_2PI, PPCAParams, standard_normal, tensor_like
from ppvae.data import DataError


class ObservedPosterior(NamedTuple):
    """Per-row posterior over ``z`` given the observed entries, and the observed log-likelihood.

    Attributes
    ----------
    mean : Tensor, shape (N, q)
        ``<z_n> = M_n^-1 W_O^T (x_O - mu_O)``.
    cov : Tensor, shape (N, q, q)
        ``sigma2 M_n^-1``.
    log_prob : Tensor, shape (N,)
        ``log N(x_O; mu_O, W_O W_O^T + sigma2 I)``; 0 for a row with nothing observed.
    """

    mean: Tensor
    cov: Tensor
    log_prob: Tensor


def _masked_gram(O: Tensor, W: Tensor) -> Tensor:
    """``sum_{i in O_n} W_i^T W_i`` for every row, shape (N, q, q), in O(N d q^2) memory-light."""
    d, q = W.shape
    outer = (W[:, :, None] * W[:, None, :]).reshape(d, q * q)
    return (O @ outer).reshape(-1, q, q)


def observed_posterior(R: Tensor, O: Tensor, W: Tensor, sigma2: Tensor) -> ObservedPosterior:
    """Posterior and observed-data log-likelihood of each row.

    Parameters
    ----------
    R : Tensor, shape (N, d)
        Centred data ``x - mu``, set to 0 at missing entries.
    O : Tensor, shape (N, d)
        Observation mask as 0.0 / 1.0 in ``R``'s dtype.
    W : Tensor, shape (d, q)
    sigma2 : Tensor, shape ()
    """
    check_mask(O, R.shape, "the mask O")
    q = W.shape[1]
    eye = torch.eye(q, dtype=W.dtype, device=W.device)
    L = torch.linalg.cholesky(_masked_gram(O, W) + sigma2 * eye)
    # for a batch of tiny matrices one triangular inverse beats cholesky_solve + _inverse
    L_inv = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
    M_inv = L_inv.mT @ L_inv
    b = R @ W
    mean = (M_inv @ b[..., None])[..., 0]
    n_obs = O.sum(1)
    # |C_O| = sigma2^(|O_n| - q) |M_n| and x^T C_O^-1 x = (|x|^2 - b^T M_n^-1 b) / sigma2
    logdet = (n_obs - q) * sigma2.log() + 2 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    quad = (R.square().sum(1) - (b * mean).sum(1)) / sigma2
    log_prob = -0.5 * (n_obs * LOG_2PI + logdet + quad)
    return ObservedPosterior(mean, sigma2 * M_inv, log_prob)


def missing_mstep(Y: Tensor, O: Tensor, post: ObservedPosterior) -> PPCAParams:
    """Exact M-step for ``W``, ``mu`` and ``sigma2`` given the observed-dims posterior.

    Row ``i`` of ``[W, mu]`` solves a (q+1) x (q+1) system built from the second moments of the
    augmented latent ``[z; 1]`` over the rows observing dimension ``i``, so ``W`` and ``mu``
    move together. ``sigma2`` keeps the posterior-covariance terms ``W_i Cov_n W_i^T``.

    Parameters
    ----------
    Y : Tensor, shape (N, d)
        Data, 0 at missing entries.
    O : Tensor, shape (N, d)
        Observation mask as 0.0 / 1.0.
    post : ObservedPosterior
        From :func:`observed_posterior` at the current parameters.
    """
    N, d = Y.shape
    q = post.mean.shape[1]
    z1 = torch.cat([post.mean, torch.ones_like(post.mean[:, :1])], dim=1)
    zz1 = z1[:, :, None] * z1[:, None, :]
    zz1[:, :q, :q] += post.cov
    A = (O.mT @ zz1.reshape(N, -1)).reshape(d, q + 1, q + 1)
    Wmu = torch.cholesky_solve((Y.mT @ z1)[..., None], torch.linalg.cholesky(A))[..., 0]
    W, mu = Wmu[:, :q], Wmu[:, q]
    resid = O * (Y - post.mean @ W.mT - mu)
    cov_term = (_masked_gram(O, W) * post.cov).sum()
    return PPCAParams(W, mu, (resid.square().sum() + cov_term) / O.sum())


class _Conditioned(NamedTuple):
    X: Tensor  # (N, d), in the parameters' dtype and device
    observed: Tensor  # (N, d) bool
    params: PPCAParams
    post: ObservedPosterior


def _condition(X, params: PPCAParams) -> _Conditioned:
    """Check ``X`` (N, d) with NaN at missing entries and condition on its observed entries."""
    W = params.W
    mu, sigma2 = tensor_like(params.mu, W), tensor_like(params.sigma2, W)
    check_params(W, mu, sigma2)
    X = tensor_like(X, W)
    check_missing_data(X, W.shape[-2])
    observed = ~torch.isnan(X)
    post = observed_posterior(torch.where(observed, X - mu, 0.0), observed.to(W.dtype), W, sigma2)
    return _Conditioned(X, observed, PPCAParams(W, mu, sigma2), post)


def observed_log_prob(X, params: PPCAParams) -> Tensor:
    """Per-row ``log N(x_O; mu_O, W_O W_O^T + sigma2 I)`` of the observed (non-NaN) entries.

    Parameters
    ----------
    X : array_like, shape (N, d)
        Data with NaN at missing entries; a row with nothing observed scores 0.
    params : PPCAParams

    Returns
    -------
    Tensor, shape (N,)
    """
    return _condition(X, params).post.log_prob


def impute(X, params: PPCAParams) -> Tensor:
    """Replace NaN entries by ``E[x_m | x_o] = W_m <z_n> + mu_m``.

    ``<z_n>`` is the posterior mean given row ``n``'s observed entries only; a row with
    nothing observed gets ``mu``.

    Parameters
    ----------
    X : array_like, shape (N, d)
        Data with NaN at missing entries.
    params : PPCAParams

    Returns
    -------
    Tensor, shape (N, d)
        A copy of ``X`` in ``params``' dtype and device, observed entries unchanged.
    """
    X, observed, (W, mu, _), post = _condition(X, params)
    return torch.where(observed, X, post.mean @ W.mT + mu)


def impute_samples(
    X, params: PPCAParams, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Multiple imputation: exact draws of the NaN entries from ``p(x_m | x_o)``.

    Each draw takes ``z ~ N(<z_n>, sigma2 M_n^-1)`` from the observed-dims posterior, then
    ``x_m = W_m z + mu_m + sigma eps``, so the missing block of row ``n`` is
    ``N(W_m <z_n> + mu_m, W_m (sigma2 M_n^-1) W_m^T + sigma2 I)``; its mean is :func:`impute`.

    Parameters
    ----------
    X : array_like, shape (N, d)
        Data with NaN at missing entries; a row with nothing observed is drawn from the
        marginal ``N(mu, W W^T + sigma2 I)``.
    params : PPCAParams
    num_samples : int
        Number of completed data sets ``S``.
    generator : torch.Generator, optional
        Draws happen on its device and move to ``params.W``'s device.

    Returns
    -------
    Tensor, shape (S, N, d)
        ``S`` completed copies of ``X``, observed entries unchanged.
    """
    num_samples = check_count("num_samples", num_samples)
    X, observed, (W, mu, sigma2), post = _condition(X, params)
    (N, d), q = X.shape, W.shape[1]
    scale = torch.linalg.cholesky(post.cov)
    white = standard_normal((num_samples, N, q, 1), generator, W)
    z = post.mean + (scale @ white)[..., 0]
    eps = standard_normal((num_samples, N, d), generator, W)
    return torch.where(observed, X, z @ W.mT + mu + sigma2.sqrt() * eps)


def observed_column_means(X) -> Tensor:
    """Mean of each column over its observed (non-NaN) entries, shape (d,).

    Raises
    ------
    DataError
        If ``X`` is not 2-D, has infinite entries, or a column has nothing observed (the
        message names the columns).
    """
    X = torch.as_tensor(X)
    if X.ndim != 2:
        raise DataError(f"X must be 2-D with shape (N, d); got shape {tuple(X.shape)}")
    check_missing_data(X, X.shape[1])
    observed = ~torch.isnan(X)
    empty = (~observed.any(0)).nonzero().flatten().tolist()
    if empty:
        raise DataError(f"columns {empty} have no observed entries, so they have no mean")
    return torch.where(observed, X, 0.0).sum(0) / observed.sum(0)


def mean_impute(X_train, X=None, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Fill the NaN entries of ``X`` with the observed column means of ``X_train``.

    The floor that any imputation should beat: it ignores every other entry of the row.

    Parameters
    ----------
    X_train : array_like, shape (N_train, d)
        Data whose observed entries give the column means.
    X : array_like, shape (N, d), optional
        Data to fill; by default ``X_train`` itself.
    dtype : torch.dtype

    Returns
    -------
    Tensor, shape (N, d)
        A copy of ``X``, observed entries unchanged.
    """
    means = observed_column_means(torch.as_tensor(X_train, dtype=dtype))
    X = tensor_like(X_train if X is None else X, means)
    check_missing_data(X, means.shape[0])
    return torch.where(torch.isnan(X), means, X)


def imputation_rmse(X_true, X_imputed, missing_mask) -> float:
    """Root mean squared error over the held-out entries, ``sqrt(mean_{mask} (x - x_hat)^2)``.

    Parameters
    ----------
    X_true : array_like, shape (N, d)
        The complete data, finite at every held-out entry.
    X_imputed : array_like, shape (N, d)
        The imputation, finite at every held-out entry.
    missing_mask : array_like of bool, shape (N, d)
        True at the held-out entries that are scored.

    Returns
    -------
    float
    """
    X_true = torch.as_tensor(X_true, dtype=torch.float64)
    X_imputed = tensor_like(X_imputed, X_true)
    mask = torch.as_tensor(missing_mask, device=X_true.device)
    check_mask(X_imputed, X_true.shape, "X_imputed")
    check_mask(mask, X_true.shape, "missing_mask")
    if mask.dtype != torch.bool:
        raise DataError(f"missing_mask must be boolean; got dtype {mask.dtype}")
    if not mask.any():
        raise DataError("missing_mask selects no entries, so there is nothing to score")
    error = (X_true - X_imputed)[mask]
    if not torch.isfinite(error).all():
        raise DataError("X_true or X_imputed is NaN or infinite at a held-out entry")
    return error.square().mean().sqrt().item()
