"""EM for probabilistic PCA (Tipping & Bishop, JRSS-B 1999), complete and with missing entries.

Both fits record the mean per-row log-likelihood of every iterate and stop once one iteration
raises it by less than ``tol`` nats per row (an absolute criterion: the mean per-row
log-likelihood is O(d), so a relative one would only rescale ``tol``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ppvae.baselines.checks import check_data, check_not_degenerate
from ppvae.baselines.missing import (
    impute,
    missing_mstep,
    observed_log_prob,
    observed_posterior,
)
from ppvae.baselines.ppca import (
    LOG_2PI,
    PPCA,
    PPCAParams,
    cholesky_M,
    standard_normal,
    tensor_like,
)
from ppvae.data import DataError


class EMResult(NamedTuple):
    """The outcome of an EM fit.

    Attributes
    ----------
    params : PPCAParams
        The final parameters.
    log_likelihood : Tensor, shape (n_iter + 1,)
        Mean per-row (observed-data) log-likelihood of the initial and of every later iterate.
    n_iter : int
        Number of EM iterations run.
    converged : bool
        Whether the last iteration raised the log-likelihood by less than ``tol``.
    """

    params: PPCAParams
    log_likelihood: Tensor
    n_iter: int
    converged: bool


class _Run(NamedTuple):
    state: object
    trace: Tensor
    n_iter: int
    converged: bool


def run_em(estep: Callable, mstep: Callable, state, max_iter: int, tol: float, ref: Tensor):
    """Alternate ``estep(state) -> (loglik, stats)`` and ``mstep(state, stats) -> state``.

    The trace (a tensor like ``ref``) holds the log-likelihood of the initial and of every
    later state; the run stops once an iteration raises it by less than ``tol``.
    """
    loglik, stats = estep(state)
    trace = [loglik]
    n_iter, converged = max_iter, False
    for it in range(1, max_iter + 1):
        state = mstep(state, stats)
        loglik, stats = estep(state)
        trace.append(loglik)
        if trace[-1] - trace[-2] < tol:
            n_iter, converged = it, True
            break
    return _Run(state, torch.tensor(trace, dtype=ref.dtype, device=ref.device), n_iter, converged)


def _random_init(d: int, q: int, var: Tensor, generator, ref: Tensor) -> tuple[Tensor, Tensor]:
    """Gaussian ``W`` with the data's scale, and ``sigma2`` equal to the mean variance."""
    return standard_normal((d, q), generator, ref) * var.sqrt(), var


def ppca_em(
    X,
    q: int,
    *,
    max_iter: int = 1000,
    tol: float = 1e-10,
    init: PPCAParams | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> EMResult:
    """Complete-data EM for PPCA in O(N d q) per iteration.

    ``mu`` is the sample mean throughout (it is its maximum-likelihood value whatever ``W``
    and ``sigma2`` are). Each iteration needs only ``S W = X_c^T (X_c W) / N`` (d, q):

    .. math::

        W' = S W M^{-1} \\big(\\sigma^2 M^{-1} + M^{-1} W^T S W M^{-1}\\big)^{-1}, \\qquad
        \\sigma'^2 = \\tfrac{1}{d} \\operatorname{tr}\\big(S - S W M^{-1} W'^T\\big).

    Parameters
    ----------
    X : array_like, shape (N, d)
    q : int
        Latent dimension, ``1 <= q < d``.
    max_iter : int
    tol : float
        Stop when an iteration raises the mean per-row log-likelihood by less than ``tol``
        (absolute, nats per row); ``-inf`` runs exactly ``max_iter`` iterations.
    init : PPCAParams, optional
        Initial ``W`` and ``sigma2`` (``init.mu`` is not used). By default ``W`` is Gaussian
        with the data's scale, drawn from ``generator``, and ``sigma2`` is the mean variance.
    generator : torch.Generator, optional
    dtype : torch.dtype

    Returns
    -------
    EMResult

    Raises
    ------
    DataError
        When the data lie in a ``q``-dimensional affine subspace (``N <= q + 1`` rows, say):
        the likelihood is unbounded, as :func:`ppca_mle` says.
    """
    X = torch.as_tensor(X, dtype=dtype)
    check_data(X, q)
    N, d = X.shape
    mu = X.mean(0)
    Xc = X - mu
    check_not_degenerate(Xc, q)  # what the closed form refuses, EM would run to sigma2 = 0
    trS = Xc.square().sum() / N
    if init is None:
        state = _random_init(d, q, trS / d, generator, X)
    else:
        state = (tensor_like(init.W, X), tensor_like(init.sigma2, X))

    def estep(state):
        W, sigma2 = state
        SW = Xc.mT @ (Xc @ W) / N
        L = cholesky_M(W, sigma2)
        tr_CS = (trS - torch.cholesky_solve(W.mT @ SW, L).trace()) / sigma2
        logdet = (d - q) * sigma2.log() + 2 * L.diagonal().log().sum()
        return (-0.5 * (d * LOG_2PI + logdet + tr_CS)).item(), (SW, L)

    def mstep(state, stats):
        W, sigma2 = state
        SW, L = stats
        xz = torch.cholesky_solve(SW.mT, L).mT  # sum_n (x_n - mu) <z_n>^T / N
        zz = sigma2 * torch.cholesky_inverse(L) + torch.cholesky_solve(W.mT @ xz, L)
        # zz = sum_n <z_n z_n^T> / N is symmetric in exact arithmetic
        W = torch.cholesky_solve(xz.mT, torch.linalg.cholesky((zz + zz.mT) / 2)).mT
        return W, (trS - (W * xz).sum()) / d

    (W, sigma2), trace, n_iter, converged = run_em(estep, mstep, state, max_iter, tol, X)
    return EMResult(PPCAParams(W, mu, sigma2), trace, n_iter, converged)


def observed_rows(X: Tensor, q: int) -> tuple[Tensor, Tensor]:
    """Drop rows with nothing observed; return them and their 0/1 mask, checking each column."""
    check_data(X, q, allow_nan=True)
    observed = ~torch.isnan(X)
    keep = observed.any(1)
    X, observed = X[keep], observed[keep]
    few = (observed.sum(0) < 2).nonzero().flatten().tolist()
    if few:
        raise DataError(f"columns {few} are observed in fewer than 2 rows; drop them first")
    return X, observed


def ppca_em_missing(
    X,
    q: int,
    *,
    max_iter: int = 1000,
    tol: float = 1e-10,
    init: PPCAParams | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> EMResult:
    """Exact EM for PPCA with missing entries (NaN), in O(N d q^2) per iteration.

    The E-step conditions on each row's observed dimensions ``O_n``:
    ``M_n = W_O^T W_O + sigma2 I``, ``<z_n> = M_n^-1 W_O^T (x_O - mu_O)``,
    ``Cov_n = sigma2 M_n^-1``. The M-step solves for each row ``[W_i, mu_i]`` jointly from the
    rows observing dimension ``i``, and ``sigma2`` includes ``W_i Cov_n W_i^T``; imputing and
    then running complete-data EM would drop those terms and is not EM. The recorded
    observed-data log-likelihood therefore never decreases (up to round-off). Without NaN
    this is :func:`ppca_em` (same ``init`` or ``generator`` state, same iterates).

    Rows with nothing observed carry no information about the parameters and are dropped
    before fitting; the trace is the mean over the remaining rows.

    Parameters
    ----------
    X : array_like, shape (N, d)
        Data with NaN at missing entries.
    q, max_iter, tol, generator, dtype
        As in :func:`ppca_em`.
    init : PPCAParams, optional
        Initial ``W``, ``mu`` and ``sigma2``. By default ``mu`` is the column means of the
        observed entries and ``W``, ``sigma2`` are drawn as in :func:`ppca_em`.

    Returns
    -------
    EMResult

    Raises
    ------
    DataError
        If a column is observed in fewer than 2 rows (the message names the columns).
    """
    X, observed = observed_rows(torch.as_tensor(X, dtype=dtype), q)
    O = observed.to(dtype)
    # work about the observed column means so that sums of squares do not cancel
    shift = torch.where(observed, X, 0.0).sum(0) / O.sum(0)
    Y = torch.where(observed, X - shift, 0.0)
    if init is None:
        W, sigma2 = _random_init(X.shape[1], q, Y.square().sum() / O.sum(), generator, X)
        state = PPCAParams(W, torch.zeros_like(shift), sigma2)
    else:
        state = PPCAParams(
            tensor_like(init.W, X), tensor_like(init.mu, X) - shift, tensor_like(init.sigma2, X)
        )

    def estep(state):
        post = observed_posterior(O * (Y - state.mu), O, state.W, state.sigma2)
        return post.log_prob.mean().item(), post

    def mstep(state, post):
        return missing_mstep(Y, O, post)

    (W, mu, sigma2), trace, n_iter, converged = run_em(estep, mstep, state, max_iter, tol, X)
    return EMResult(PPCAParams(W, mu + shift, sigma2), trace, n_iter, converged)


class EMPPCA(PPCA):
    """PPCA fitted by EM, exact also when entries are missing (NaN).

    Parameters
    ----------
    n_components : int
        Latent dimension ``q``.
    max_iter, tol
        As in :func:`ppca_em`.
    seed : int
        Seeds the random initialisation.
    dtype, device
        As in :class:`PPCA`.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> A = torch.tensor([[2.0, 1.0, 1.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5]])
    >>> X = torch.randn(100, 3, generator=g) @ A
    >>> X[0, 1] = float("nan")
    >>> model = EMPPCA(n_components=1).fit(X)
    >>> model.converged_, model.n_iter_, round(model.score(X), 4)
    (True, 129, -3.3222)
    >>> model.impute(X)[0]
    tensor([-2.2517, -1.2246, -1.2511], dtype=torch.float64)
    """

    def __init__(
        self,
        n_components: int,
        *,
        max_iter: int = 1000,
        tol: float = 1e-10,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ):
        super().__init__(n_components, dtype=dtype, device=device)
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed

    def fit(self, X) -> EMPPCA:
        """Fit by EM: :func:`ppca_em`, or :func:`ppca_em_missing` if ``X`` has NaN entries."""
        X = self._data(X)
        fit = ppca_em_missing if torch.isnan(X).any() else ppca_em
        generator = torch.Generator().manual_seed(self.seed)
        result = fit(
            X, self.n_components, max_iter=self.max_iter, tol=self.tol,
            generator=generator, dtype=self.dtype,
        )  # fmt: skip
        self._params = result.params
        self.log_likelihood_ = result.log_likelihood
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        return self

    def log_prob(self, X) -> Tensor:
        """Per-row log-likelihood of the observed entries (NaN = missing), shape (N,)."""
        return observed_log_prob(X, self.params_)

    def impute(self, X) -> Tensor:
        """``X`` with NaN entries replaced by ``E[x_missing | x_observed]``, shape (N, d)."""
        return impute(X, self.params_)
