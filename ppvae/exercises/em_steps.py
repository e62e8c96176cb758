"""Checkers for one EM step: a Gaussian mixture (against scikit-learn) and PPCA, complete and
with missing entries (against ``ppvae.baselines`` run for one iteration)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torch import Tensor

from ppvae.baselines import PPCAParams, ppca_em, ppca_em_missing, ppca_sample
from ppvae.exercises.verdict import Verdict, call, compare, judge, seeded, unpack

F64 = torch.float64


def _mixture_problem(g: torch.Generator, N: int = 60, K: int = 3, d: int = 2):
    centres = 4 * torch.randn(K, d, generator=g, dtype=F64)
    X = centres[torch.arange(N) % K] + torch.randn(N, d, generator=g, dtype=F64)
    weights = torch.distributions.Dirichlet(torch.full((K,), 5.0, dtype=F64)).sample()
    means = X[torch.randperm(N, generator=g)[:K]] + 0.5
    covs = torch.eye(d, dtype=F64).expand(K, d, d) * (1.0 + torch.rand(K, 1, 1, generator=g))
    return X, weights, means, covs.contiguous()


def _sklearn_step(X: Tensor, weights: Tensor, means: Tensor, covs: Tensor) -> list[Tensor]:
    """One E-step and M-step of scikit-learn's ``GaussianMixture`` from the given start."""
    gm = GaussianMixture(
        len(weights),
        covariance_type="full",
        max_iter=1,
        reg_covar=0.0,
        weights_init=weights.numpy(),
        means_init=means.numpy(),
        precisions_init=torch.linalg.inv(covs).numpy(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X.numpy())
    return [torch.as_tensor(a, dtype=F64) for a in (gm.weights_, gm.means_, gm.covariances_)]


def check_gmm_em_step(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``gmm_em_step(X, weights, means, covs) -> (weights, means, covs)``: one EM step
    of a Gaussian mixture, ``X`` (N, d), ``weights`` (K,), ``means`` (K, d), ``covs``
    (K, d, d), against scikit-learn's ``GaussianMixture`` run for one iteration.

    Examples
    --------
    >>> from ppvae.exercises import check_gmm_em_step, solutions
    >>> check_gmm_em_step(solutions.gmm_em_step)
    correct: one EM step of a Gaussian mixture
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else seed)
        X, weights, means, covs = _mixture_problem(seeded(seed))
    N = X.shape[0]

    def check() -> str:
        got = call(
            student, X.clone(), weights.clone(), means.clone(), covs.clone(), name="EM step"
        )
        got = unpack(got, ("weights", "means", "covs"), "EM step")
        w, m, S = _sklearn_step(X, weights, means, covs)
        r = torch.softmax(
            weights.log()
            + torch.distributions.MultivariateNormal(means, covs).log_prob(X[:, None]),
            1,
        )
        Xc_old = X[:, None, :] - means
        old_centre = torch.einsum("nk,nki,nkj->kij", r, Xc_old, Xc_old) / r.sum(0)[:, None, None]
        compare(
            got[0],
            w,
            "weights",
            f" (N = {N})",
            [(f"sum to N = {N}, not 1: divide N_k by N (a forgotten N)", w * N)],
        )
        compare(got[1], m, "means")
        compare(
            got[2],
            S,
            "covariances",
            "",
            [("are centred on the old means; use the new ones", old_centre)],
        )
        return "correct: one EM step of a Gaussian mixture"

    return judge(check)


def _ppca_problem(g: torch.Generator, N: int = 40, d: int = 5, q: int = 2):
    W_true = torch.randn(d, q, generator=g, dtype=F64)
    X = ppca_sample(N, W_true, torch.arange(d, dtype=F64), torch.tensor(0.3, dtype=F64), g)
    W = torch.randn(d, q, generator=g, dtype=F64)
    return X, W, torch.tensor(1.0, dtype=F64)


def _without_posterior_cov(X: Tensor, W: Tensor, sigma2: Tensor) -> tuple[Tensor, Tensor]:
    """The complete-data step with ``<z z^T> = <z><z>^T``: a typical mistake."""
    Xc = X - X.mean(0)
    Ez = Xc @ W @ torch.linalg.inv(W.T @ W + sigma2 * torch.eye(W.shape[1], dtype=F64))
    W_new = Xc.T @ Ez @ torch.linalg.inv(Ez.T @ Ez)
    resid = Xc - Ez @ W_new.T
    return W_new, resid.square().mean()


def check_ppca_em_step(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``ppca_em_step(X, W, sigma2) -> (W, sigma2)``: one complete-data EM step of PPCA
    (``mu`` is the sample mean), ``X`` (N, d), ``W`` (d, q), ``sigma2`` a scalar tensor,
    against :func:`ppvae.baselines.ppca_em` run for one iteration.

    Examples
    --------
    >>> from ppvae.exercises import check_ppca_em_step, solutions
    >>> check_ppca_em_step(solutions.ppca_em_step)
    correct: one EM step of PPCA
    """
    X, W, sigma2 = _ppca_problem(seeded(seed))
    N, d = X.shape

    def check() -> str:
        got = call(student, X.clone(), W.clone(), sigma2.clone(), name="EM step")
        got = unpack(got, ("W", "sigma2"), "EM step")
        init = PPCAParams(W, X.mean(0), sigma2)
        exact = ppca_em(X, W.shape[1], max_iter=1, tol=float("-inf"), init=init).params
        W_bad, sigma2_bad = _without_posterior_cov(X, W, sigma2)
        dropped = "leaves the posterior covariance sigma2 M^-1 out of <z z^T>"
        compare(got[0], exact.W, "W", "", [(dropped, W_bad)])
        mistakes = [(f"is d = {d} times too large: divide by N d, not N", exact.sigma2 * d)]
        compare(got[1], exact.sigma2, "sigma2", "", mistakes)
        return "correct: one EM step of PPCA"

    return judge(check)


def _missing_problem(g: torch.Generator):
    X, W, sigma2 = _ppca_problem(g)
    missing = torch.rand(X.shape, generator=g) < 0.2
    missing[:, 0] = False  # every row keeps an observed entry
    X = torch.where(missing, torch.nan, X)
    mu = torch.nanmean(X, 0) + 0.1
    return X, W, mu, sigma2


def check_ppca_em_step_missing(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``ppca_em_step_missing(X, W, mu, sigma2) -> (W, mu, sigma2)``: one exact EM step
    of PPCA on ``X`` (N, d) with NaN at missing entries, against
    :func:`ppvae.baselines.ppca_em_missing` run for one iteration.

    Examples
    --------
    >>> from ppvae.exercises import check_ppca_em_step_missing, solutions
    >>> check_ppca_em_step_missing(solutions.ppca_em_step_missing)
    correct: one EM step of PPCA with missing data
    """
    X, W, mu, sigma2 = _missing_problem(seeded(seed))

    def check() -> str:
        got = call(student, X.clone(), W.clone(), mu.clone(), sigma2.clone(), name="EM step")
        got = unpack(got, ("W", "mu", "sigma2"), "EM step")
        init = PPCAParams(W, mu, sigma2)
        exact = ppca_em_missing(X, W.shape[1], max_iter=1, tol=float("-inf"), init=init).params
        where = " with 20% of the entries missing"
        compare(got[0], exact.W, "W", where)
        compare(got[1], exact.mu, "mu", where)
        n_obs = (~torch.isnan(X)).sum()
        mistakes = [
            (
                "divides by N d, not by the number of observed entries",
                exact.sigma2 * n_obs / X.numel(),
            )
        ]
        compare(got[2], exact.sigma2, "sigma2", where, mistakes)
        return "correct: one EM step of PPCA with missing data"

    return judge(check)
