"""Checkers for densities and divergences: the Gaussian MLE, log-likelihoods and KLs.

The exact answers come from ``torch.distributions`` and ``torch.cov``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Bernoulli, MultivariateNormal, Normal, kl_divergence

from ppvae.exercises.verdict import Verdict, call, compare, judge, seeded, unpack

SIGMAS = (0.5, 2.0)
"""The noise scales a checker tries (away from 1, where log sigma = log sigma^2 = 0)."""


def _data(g: torch.Generator, N: int, d: int) -> Tensor:
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(N, d, generator=g, dtype=torch.float64) @ A + torch.arange(d) + 1.0


def _spd(g: torch.Generator, k: int) -> Tensor:
    A = torch.randn(k, k, generator=g, dtype=torch.float64)
    return A @ A.T / k + 0.5 * torch.eye(k, dtype=torch.float64)


def check_gaussian_mle(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``gaussian_mle(X) -> (mu, Sigma)``: the maximum-likelihood mean (d,) and
    covariance (d, d) of the rows of ``X`` (N, d).

    Examples
    --------
    >>> from ppvae.exercises import check_gaussian_mle, solutions
    >>> check_gaussian_mle(solutions.gaussian_mle)
    correct: the Gaussian MLE
    """
    X = _data(seeded(seed), N=50, d=3)
    N = X.shape[0]

    def check() -> str:
        got = call(student, X.clone(), name="Gaussian MLE")
        mu, Sigma = unpack(got, ("mu", "Sigma"), "Gaussian MLE")
        compare(mu, X.mean(0), "mean", " on 50 rows")
        exact = torch.cov(X.T, correction=0)
        mistakes = [
            (
                "divides by N - 1 (the unbiased estimate); the MLE divides by N",
                exact * N / (N - 1),
            ),
            (f"is N = {N} times too large: divide the sum by N (a forgotten N)", exact * N),
            ("is not centred: subtract the mean before the outer products", X.T @ X / N),
        ]
        compare(Sigma, exact, "covariance", " on 50 rows", mistakes)
        return "correct: the Gaussian MLE"

    return judge(check)


def check_gaussian_iid_log_likelihood(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``gaussian_iid_log_likelihood(X, mu, Sigma) -> scalar``: the log-likelihood
    ``sum_n log N(x_n; mu, Sigma)`` of the rows of ``X`` (N, d).

    Examples
    --------
    >>> from ppvae.exercises import check_gaussian_iid_log_likelihood, solutions
    >>> check_gaussian_iid_log_likelihood(solutions.gaussian_iid_log_likelihood)
    correct: the log-likelihood of i.i.d. Gaussian data
    """
    g = seeded(seed)
    X, mu, Sigma = (
        _data(g, N=40, d=3),
        torch.randn(3, generator=g, dtype=torch.float64),
        _spd(g, 3),
    )
    N, d = X.shape

    def check() -> str:
        got = call(student, X.clone(), mu.clone(), Sigma.clone(), name="log-likelihood")
        exact = MultivariateNormal(mu, Sigma).log_prob(X).sum()
        mistakes = [
            (f"is the mean over the N = {N} rows, not their sum", exact / N),
            (
                "leaves out the -(N d / 2) log(2 pi) constant",
                exact + N * d * math.log(2 * math.pi) / 2,
            ),
        ]
        compare(got, exact, "log-likelihood", f" on {N} rows", mistakes)
        return "correct: the log-likelihood of i.i.d. Gaussian data"

    return judge(check)


def _batch(g: torch.Generator, B: int = 4, D: int = 6) -> tuple[Tensor, Tensor]:
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    return x, x + torch.randn(B, D, generator=g, dtype=torch.float64)


def check_gaussian_log_likelihood(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``gaussian_log_likelihood(x, loc) -> (B,)``: ``log N(x; loc, I)`` of each row
    of ``x`` (B, D), summed over D.

    Examples
    --------
    >>> from ppvae.exercises import check_gaussian_log_likelihood, solutions
    >>> check_gaussian_log_likelihood(solutions.gaussian_log_likelihood)
    correct: the unit-variance Gaussian log-likelihood
    """
    x, loc = _batch(seeded(seed))
    D = x.shape[1]

    def check() -> str:
        got = call(student, x.clone(), loc.clone(), name="Gaussian log-likelihood")
        exact = Normal(loc, 1.0).log_prob(x).sum(-1)
        mistakes = [
            ("leaves out the -(D/2) log(2 pi) constant", exact + D * math.log(2 * math.pi) / 2),
            (f"averages over the D = {D} dimensions instead of summing", exact / D),
        ]
        compare(got, exact, "Gaussian log-likelihood", "", mistakes)
        return "correct: the unit-variance Gaussian log-likelihood"

    return judge(check)


def check_gaussian_sigma_log_likelihood(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``gaussian_sigma_log_likelihood(x, loc, sigma) -> (B,)``: ``log N(x; loc,
    sigma^2 I)`` of each row of ``x`` (B, D) for a float ``sigma``, summed over D.

    Examples
    --------
    >>> from ppvae.exercises import check_gaussian_sigma_log_likelihood, solutions
    >>> check_gaussian_sigma_log_likelihood(solutions.gaussian_sigma_log_likelihood)
    correct: the Gaussian log-likelihood with sigma
    """
    x, loc = _batch(seeded(seed))
    D = x.shape[1]

    def check() -> str:
        for sigma in SIGMAS:
            got = call(student, x.clone(), loc.clone(), sigma, name="Gaussian log-likelihood")
            exact = Normal(loc, sigma).log_prob(x).sum(-1)
            sq = (x - loc).square().sum(-1)
            mistakes = [
                ("uses log sigma where log sigma^2 belongs", exact + D * math.log(sigma) / 2),
                (
                    "divides the squared error by sigma, not sigma^2",
                    exact + sq / 2 / sigma**2 - sq / 2 / sigma,
                ),
                (
                    "leaves out the -(D/2) log(2 pi) constant",
                    exact + D * math.log(2 * math.pi) / 2,
                ),
            ]
            compare(got, exact, "Gaussian log-likelihood", f" at sigma = {sigma}", mistakes)
        return "correct: the Gaussian log-likelihood with sigma"

    return judge(check)


def check_bernoulli_log_likelihood(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``bernoulli_log_likelihood(x, probs) -> (B,)``: ``log Bernoulli(x; probs)`` of
    each row of binary ``x`` (B, D), summed over D.

    Examples
    --------
    >>> from ppvae.exercises import check_bernoulli_log_likelihood, solutions
    >>> check_bernoulli_log_likelihood(solutions.bernoulli_log_likelihood)
    correct: the Bernoulli log-likelihood
    """
    g = seeded(seed)
    probs = torch.rand(4, 6, generator=g, dtype=torch.float64) * 0.8 + 0.1
    x = torch.bernoulli(torch.full_like(probs, 0.5), generator=g)

    def check() -> str:
        got = call(student, x.clone(), probs.clone(), name="Bernoulli log-likelihood")
        exact = Bernoulli(probs=probs).log_prob(x).sum(-1)
        mistakes = [
            ("leaves out the (1 - x) log(1 - p) term", (x * probs.log()).sum(-1)),
            ("swaps p and 1 - p", Bernoulli(probs=1 - probs).log_prob(x).sum(-1)),
        ]
        compare(got, exact, "Bernoulli log-likelihood", "", mistakes)
        return "correct: the Bernoulli log-likelihood"

    return judge(check)


def check_kl_diagonal(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``kl_diagonal(mu, sigma) -> (B,)``: ``KL(N(mu, diag sigma^2) || N(0, I))`` of
    each row of ``mu`` and ``sigma`` (B, q).

    Examples
    --------
    >>> from ppvae.exercises import check_kl_diagonal, solutions
    >>> check_kl_diagonal(solutions.kl_diagonal)
    correct: the diagonal Gaussian KL
    """
    mu = torch.randn(4, 3, generator=seeded(seed), dtype=torch.float64)

    def check() -> str:
        for value in SIGMAS:
            sigma = torch.full_like(mu, value)
            got = call(student, mu.clone(), sigma.clone(), name="KL")
            exact = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum(-1)
            s2, m2 = sigma.square(), mu.square()
            mistakes = [
                (
                    "uses log sigma where log sigma^2 belongs",
                    0.5 * (s2 + m2 - 1 - sigma.log()).sum(-1),
                ),
                ("uses sigma where sigma^2 belongs", 0.5 * (sigma + m2 - 1 - s2.log()).sum(-1)),
                (
                    "is KL(p || q), the reverse direction",
                    kl_divergence(Normal(0.0, 1.0), Normal(mu, sigma)).sum(-1),
                ),
                ("is off by a factor of 2 (a missing 1/2?)", 2 * exact),
            ]
            compare(got, exact, "KL", f" at sigma = {value}", mistakes)
        return "correct: the diagonal Gaussian KL"

    return judge(check)


def check_kl_full(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``kl_full(mu0, Sigma0, mu1, Sigma1) -> scalar``: ``KL(N(mu0, Sigma0) ||
    N(mu1, Sigma1))`` for means (k,) and full covariances (k, k).

    Examples
    --------
    >>> from ppvae.exercises import check_kl_full, solutions
    >>> check_kl_full(solutions.kl_full)
    correct: the full-covariance Gaussian KL
    """
    g = seeded(seed)
    mu0, mu1 = (torch.randn(3, generator=g, dtype=torch.float64) for _ in range(2))
    Sigma0, Sigma1 = _spd(g, 3), _spd(g, 3)

    def check() -> str:
        args = (mu0.clone(), Sigma0.clone(), mu1.clone(), Sigma1.clone())
        got = call(student, *args, name="KL")
        p0, p1 = MultivariateNormal(mu0, Sigma0), MultivariateNormal(mu1, Sigma1)
        exact = kl_divergence(p0, p1)
        mistakes = [
            ("is KL(N1 || N0), the reverse direction", kl_divergence(p1, p0)),
            ("is off by a factor of 2 (a missing 1/2?)", 2 * exact),
        ]
        compare(got, exact, "KL", "", mistakes)
        return "correct: the full-covariance Gaussian KL"

    return judge(check)
