"""PPCA with missing entries: the posterior on observed dimensions, the exact M-step, imputation.

Row ``n`` observes the dimensions ``O_n``; the mask ``O`` (N, d) holds 1.0 where an entry is
observed. Each row has its own ``M_n = W_O^T W_O + sigma2 I`` (q x q), and everything is batched
over rows as (N, q, q) tensors: no Python loop over rows, no d x d matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ppvae.baselines.ppca import LOG_2PI, PPCAParams, _like


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
    W, mu, sigma2 = params
    X = _like(X, W)
    observed = ~torch.isnan(X)
    R = torch.where(observed, X - mu, 0.0)
    post = observed_posterior(R, observed.to(W.dtype), W, _like(sigma2, W))
    return torch.where(observed, X, post.mean @ W.mT + mu)
