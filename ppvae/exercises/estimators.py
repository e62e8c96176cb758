"""Checkers for Monte Carlo estimators: the reparameterized sample, the one-sample ELBO, the
score-function and reparameterized gradients, importance-sampled log p(x), and the identity
log p(x) - ELBO = KL(q || p(z | x)) on PPCA.

A Monte Carlo answer is judged by its distribution over repeated runs, with a tolerance of
``N_SE`` standard errors of the run-to-run spread, so a correct estimator passes under any seed.
The exact answers come from PPCA's closed forms (``ppvae.baselines``) and
``torch.distributions``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Normal, kl_divergence

from ppvae.exercises.verdict import (
    Verdict,
    Wrong,
    as_tensor,
    call,
    compare,
    compare_estimates,
    judge,
    seeded,
)

F64 = torch.float64


def _repeat(run: Callable[[], Tensor], R: int, seed: int | None) -> Tensor:
    """``R`` runs of ``run`` stacked, under a forked and seeded global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else seed)
        return torch.stack([run() for _ in range(R)])


def _leaf(t: Tensor) -> Tensor:
    return t.clone().requires_grad_(True)


def check_reparameterized_sample(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``reparameterized_sample(mu, sigma, n) -> (n, q)``: ``n`` draws from
    ``N(mu, diag sigma^2)`` that are differentiable in ``mu`` and ``sigma`` (q,).

    Examples
    --------
    >>> from ppvae.exercises import check_reparameterized_sample, solutions
    >>> check_reparameterized_sample(solutions.reparameterized_sample)
    correct: the reparameterized sample
    """
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    sigma = torch.tensor([0.5, 2.0, 1.5], dtype=F64)
    n = 4000

    def check() -> str:
        m, s = _leaf(mu), _leaf(sigma)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if seed is None else seed)
            z = call(student, m, s, n, name="sample")
        as_tensor(z, torch.empty(n, 3), "sample")
        if z.grad_fn is None:
            raise Wrong(
                "your sample is detached from mu and sigma (it has no grad_fn): "
                "build it as mu + sigma * eps so gradients flow"
            )
        zd = z.detach()
        compare_estimates(zd, mu, "sample's mean", f" (mu = {mu.tolist()})")
        var = zd.var(0)
        # the standard error of a sample variance, from the sample's own fourth moment
        se = (((zd - zd.mean(0)) ** 4).mean(0) - var**2).clamp_min(0).sqrt() / math.sqrt(n)
        where = f" (sigma = {sigma.tolist()})"
        mistakes = [
            (
                "has the right mean but variance 1 instead of sigma^2: scale eps by sigma",
                torch.ones(3, dtype=F64),
            ),
            ("has variance sigma^4: scale eps by sigma, not by sigma^2", sigma**4),
            ("has variance sigma instead of sigma^2: scale eps by sigma, not sqrt(sigma)", sigma),
        ]
        _compare_spread(var, se, sigma**2, "sample", where, mistakes)
        grad_mu, grad_sigma = torch.autograd.grad(z.sum(), (m, s), allow_unused=True)
        if grad_mu is None or grad_sigma is None:
            raise Wrong("your sample does not depend on both mu and sigma: use mu + sigma * eps")
        compare(
            grad_sigma,
            ((zd - mu) / sigma).sum(0),
            "sample's gradient in sigma",
            " (should be the sum of eps)",
        )
        return "correct: the reparameterized sample"

    return judge(check)


def _compare_spread(var, se, exact, name, where, mistakes) -> None:
    if ((var - exact).abs() <= 5 * se).all():
        return
    for message, wrong in mistakes:
        if ((var - wrong).abs() <= 5 * se).all():
            raise Wrong(f"your {name} {message}{where}")
    raise Wrong(f"your {name} has variance {var.tolist()} instead of sigma^2 = {exact.tolist()}")


def _linear_vae(g: torch.Generator, B: int = 4, D: int = 5, q: int = 2):
    W = torch.randn(D, q, generator=g, dtype=F64)
    b = torch.randn(D, generator=g, dtype=F64)
    x = torch.randn(B, D, generator=g, dtype=F64)
    z_loc = torch.randn(B, q, generator=g, dtype=F64)
    z_scale = 0.2 + 0.3 * torch.rand(B, q, generator=g, dtype=F64)
    return x, W, b, z_loc, z_scale


def _exact_elbo_terms(x, W, b, z_loc, z_scale, sigma):
    """``E_q log p(x | z)`` and ``KL(q || p(z))`` per row, for the linear decoder ``W z + b``."""
    mean_rec = Normal(z_loc @ W.T + b, sigma).log_prob(x).sum(-1)
    rec = mean_rec - (z_scale.square() @ W.square().T).sum(-1) / (2 * sigma**2)
    kl = kl_divergence(Normal(z_loc, z_scale), Normal(0.0, 1.0)).sum(-1)
    return rec, kl


def check_gaussian_vae_elbo(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``gaussian_vae_elbo(x, decoder, z_loc, z_scale, sigma) -> scalar``: the one-sample
    ELBO of a Gaussian VAE, averaged over the batch, ``p(z) = N(0, I)``, ``p(x | z) =
    N(decoder(z), sigma^2 I)``, ``q(z | x) = N(z_loc, diag z_scale^2)``; ``x`` (B, D),
    ``z_loc`` and ``z_scale`` (B, q). Its mean over runs and its gradient in ``z_loc`` and
    ``z_scale`` are compared with the closed forms for a linear decoder.

    Examples
    --------
    >>> from ppvae.exercises import check_gaussian_vae_elbo, solutions
    >>> check_gaussian_vae_elbo(solutions.gaussian_vae_elbo)
    correct: the one-sample ELBO of a Gaussian VAE
    """
    x, W, b, z_loc, z_scale = _linear_vae(seeded(seed))
    B, D = x.shape
    sigma = 2.0

    def decoder(z: Tensor) -> Tensor:
        return z @ W.T + b

    def value() -> Tensor:
        loc, scale = _leaf(z_loc), _leaf(z_scale)
        out = call(student, x.clone(), decoder, loc, scale, sigma, name="ELBO")
        got = as_tensor(out, torch.empty(()), "ELBO")
        if not isinstance(out, Tensor) or out.grad_fn is None:
            raise Wrong("your ELBO has no grad_fn: it does not depend on z_loc and z_scale")
        return got

    def row_gradients(R: int = 1000) -> Tensor:
        """Per-row gradients of one call on the batch repeated R times: as the ELBO is the
        batch mean, R * B times the gradient of row n is that row's one-draw gradient."""
        loc, scale = _leaf(z_loc.repeat(R, 1)), _leaf(z_scale.repeat(R, 1))
        out = call(student, x.repeat(R, 1), decoder, loc, scale, sigma, name="ELBO")
        grads = torch.autograd.grad(out, (loc, scale), allow_unused=True)
        grads = [torch.zeros_like(loc) if g is None else g * (R * B) for g in grads]
        return torch.cat(grads, 1).reshape(R, B, -1)

    def exact_gradient(term: int) -> Tensor:
        loc, scale = _leaf(z_loc), _leaf(z_scale)
        grads = torch.autograd.grad(
            _exact_elbo_terms(x, W, b, loc, scale, sigma)[term].sum(), (loc, scale)
        )
        return torch.cat(grads, 1)

    def check() -> str:
        runs = _repeat(value, 100, seed)
        rec, kl = _exact_elbo_terms(x, W, b, z_loc, z_scale, sigma)
        elbo = (rec - kl).mean()
        summed = f"sums over the batch of B = {B} instead of averaging (a sum in place of a mean)"
        mistakes = [
            (summed, B * elbo),
            ("adds the KL instead of subtracting it", (rec + kl).mean()),
            ("uses log sigma where log sigma^2 belongs", elbo + D * math.log(sigma) / 2),
        ]
        where = f" at sigma = {sigma}"
        compare_estimates(runs, elbo, "ELBO", where, mistakes)
        kl_grad = -exact_gradient(1)
        detached = (
            "ignores the reconstruction term: your sample z is detached from z_loc and z_scale"
        )
        grads = _repeat(row_gradients, 1, seed)[0]
        exact = exact_gradient(0) + kl_grad
        compare_estimates(grads, exact, "ELBO's gradient", where, [(detached, kl_grad)])
        return "correct: the one-sample ELBO of a Gaussian VAE"

    return judge(check)


class _PPCAJoint:
    """``f(z) = log p(x, z)`` of one PPCA data point, recording whether ``z`` carried gradients."""

    def __init__(self, g: torch.Generator, d: int = 4, q: int = 2):
        self.W = torch.randn(d, q, generator=g, dtype=F64)
        self.mu = torch.randn(d, generator=g, dtype=F64)
        self.sigma = 0.7
        self.x = self.mu + self.W @ torch.tensor([1.5, -1.5], dtype=F64)
        self.differentiated = False

    def __call__(self, z: Tensor) -> Tensor:
        self.differentiated |= z.requires_grad
        log_lik = Normal(z @ self.W.T + self.mu, self.sigma).log_prob(self.x).sum(-1)
        return log_lik + Normal(0.0, 1.0).log_prob(z).sum(-1)

    def expected(self, loc: Tensor, scale: Tensor) -> Tensor:
        """``E_q[f(z)]`` in closed form, ``q = N(loc, diag scale^2)``."""
        log_lik = Normal(self.W @ loc + self.mu, self.sigma).log_prob(self.x).sum()
        log_lik = log_lik - (self.W.square() @ scale.square()).sum() / (2 * self.sigma**2)
        log_prior = Normal(0.0, 1.0).log_prob(loc).sum() - scale.square().sum() / 2
        return log_lik + log_prior

    def exact_gradient(self, loc: Tensor, scale: Tensor) -> Tensor:
        loc, scale = _leaf(loc), _leaf(scale)
        return torch.cat(torch.autograd.grad(self.expected(loc, scale), (loc, scale)))


def _gradient_runs(student, f, loc, scale, n, R, seed, name) -> Tensor:
    def run() -> Tensor:
        l, s = _leaf(loc), _leaf(scale)
        out = call(student, f, l, s, n, name=name)
        as_tensor(out, torch.empty(()), name)
        if not isinstance(out, Tensor) or out.grad_fn is None:
            raise Wrong(
                f"your {name} has no grad_fn: the sample is detached from loc and scale"
                if name != "surrogate"
                else "your surrogate has no grad_fn: it needs log q(z) computed from loc and scale"
            )
        grads = torch.autograd.grad(out.sum(), (l, s), allow_unused=True)
        return torch.cat([torch.zeros_like(loc) if g is None else g for g in grads])

    return _repeat(run, R, seed)


def check_score_function_gradient(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``score_function_surrogate(f, loc, scale, n) -> scalar``: a surrogate whose
    gradient in ``loc`` and ``scale`` (q,) is the score-function estimate, from ``n`` draws,
    of the gradient of ``E_q[f(z)]``, ``q = N(loc, diag scale^2)``, ``f`` mapping (n, q) draws
    to (n,) values. Here ``f(z) = log p(x, z)`` of PPCA, and the exact gradient is the
    autograd gradient of its closed-form expectation.

    Examples
    --------
    >>> from ppvae.exercises import check_score_function_gradient, solutions
    >>> check_score_function_gradient(solutions.score_function_surrogate)
    correct: the score-function gradient is unbiased
    """
    f = _PPCAJoint(seeded(seed))
    loc, scale, n = torch.zeros(2, dtype=F64), torch.full((2,), 0.8, dtype=F64), 60

    def check() -> str:
        runs = _gradient_runs(student, f, loc, scale, n, 100, seed, "surrogate")
        if f.differentiated:
            raise Wrong(
                "your draws carry gradients into f: that is the reparameterized gradient; "
                "draw z with q.sample() and weight log q(z) by f(z)"
            )
        exact = f.exact_gradient(loc, scale)
        mistakes = [
            (f"sums over the n = {n} draws instead of averaging (a forgotten 1/n)", n * exact)
        ]
        compare_estimates(runs, exact, "score-function gradient", "", mistakes)
        return "correct: the score-function gradient is unbiased"

    return judge(check)


def check_reparameterized_gradient(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``reparameterized_objective(f, loc, scale, n) -> scalar``: the ``n``-draw
    estimate of ``E_q[f(z)]``, ``q = N(loc, diag scale^2)``, differentiable in ``loc`` and
    ``scale`` (q,) through the draws. Its gradient is compared with the exact gradient of
    ``E_q[log p(x, z)]`` for PPCA.

    Examples
    --------
    >>> from ppvae.exercises import check_reparameterized_gradient, solutions
    >>> check_reparameterized_gradient(solutions.reparameterized_objective)
    correct: the reparameterized gradient is unbiased
    """
    f = _PPCAJoint(seeded(seed))
    loc, scale, n = torch.zeros(2, dtype=F64), torch.full((2,), 0.8, dtype=F64), 10

    def check() -> str:
        runs = _gradient_runs(student, f, loc, scale, n, 100, seed, "estimate")
        exact = f.exact_gradient(loc, scale)
        mistakes = [
            (f"sums over the n = {n} draws instead of averaging (a forgotten 1/n)", n * exact),
            (
                "is zero in scale: your draws do not depend on scale",
                torch.cat([exact[:2], torch.zeros(2, dtype=F64)]),
            ),
        ]
        compare_estimates(runs, exact, "reparameterized gradient", "", mistakes)
        return "correct: the reparameterized gradient is unbiased"

    return judge(check)
