"""ppvae.exercises: every checker passes the reference solution under 20 seeds, and catches
each planted mistake with its own message."""

import math

import pytest
import torch
from torch.distributions import Normal

from ppvae.exercises import CHECKERS, Verdict, solutions
from ppvae.exercises import solutions as S

LOG_2PI = math.log(2 * math.pi)


@pytest.mark.parametrize("name", sorted(CHECKERS))
def test_reference_passes_under_20_seeds(name):
    for seed in range(20):
        verdict = CHECKERS[name](getattr(solutions, name), seed=seed)
        assert verdict.ok, f"seed {seed}: {verdict}"
        assert verdict.message.startswith("correct")


def test_verdict_is_truthy_when_ok_and_shows_its_message():
    assert Verdict(True, "correct: x") and not Verdict(False, "wrong")
    assert repr(Verdict(False, "your KL has the wrong sign")) == "your KL has the wrong sign"


# planted mistakes, one function each: (solution name, wrong function, words its verdict says)
def cov_unbiased(X):
    return X.mean(0), torch.cov(X.T)


def cov_forgot_n(X):
    Xc = X - X.mean(0)
    return X.mean(0), Xc.T @ Xc


def iid_mean(X, mu, Sigma):
    return S.gaussian_iid_log_likelihood(X, mu, Sigma) / X.shape[0]


def iid_sign(X, mu, Sigma):
    return -S.gaussian_iid_log_likelihood(X, mu, Sigma)


def gmm_forgot_n(X, w, m, c):
    w, m, c = S.gmm_em_step(X, w, m, c)
    return w * X.shape[0], m, c


def gmm_old_means(X, w, m, c):
    w_new, m_new, _ = S.gmm_em_step(X, w, m, c)
    log_joint = w.log() + torch.distributions.MultivariateNormal(m, c).log_prob(X[:, None])
    r = torch.softmax(log_joint, 1)
    Xc = X[:, None] - m
    return w_new, m_new, torch.einsum("nk,nki,nkj->kij", r, Xc, Xc) / r.sum(0)[:, None, None]


def gauss_no_const(x, loc):
    return -0.5 * (x - loc).square().sum(-1)


def gauss_sigma_log_sigma(x, loc, sigma):
    return -0.5 * (((x - loc) / sigma).square() + LOG_2PI + math.log(sigma)).sum(-1)


def gauss_sigma_missing_half(x, loc, sigma):
    return -(((x - loc) / sigma).square() + LOG_2PI + math.log(sigma**2)).sum(-1)


def bernoulli_sign(x, p):
    return -S.bernoulli_log_likelihood(x, p)


def bernoulli_one_term(x, p):
    return (x * p.log()).sum(-1)


def kl_log_sigma(mu, sigma):
    return 0.5 * (sigma.square() + mu.square() - 1 - sigma.log()).sum(-1)


def kl_missing_half(mu, sigma):
    return (sigma.square() + mu.square() - 1 - sigma.square().log()).sum(-1)


def kl_sign(mu, sigma):
    return -S.kl_diagonal(mu, sigma)


def kl_full_reversed(mu0, S0, mu1, S1):
    return S.kl_full(mu1, S1, mu0, S0)


def kl_full_missing_half(mu0, S0, mu1, S1):
    return 2 * S.kl_full(mu0, S0, mu1, S1)


def sample_detached(mu, sigma, n):
    return Normal(mu, sigma).sample((n,))


def sample_unit_variance(mu, sigma, n):
    return mu + torch.randn(n, *mu.shape, dtype=mu.dtype)


def sample_variance_scale(mu, sigma, n):
    return mu + sigma**2 * torch.randn(n, *mu.shape, dtype=mu.dtype)


def elbo_sum(x, decoder, z_loc, z_scale, sigma):
    return S.gaussian_vae_elbo(x, decoder, z_loc, z_scale, sigma) * x.shape[0]


def elbo_sign(x, decoder, z_loc, z_scale, sigma):
    return -S.gaussian_vae_elbo(x, decoder, z_loc, z_scale, sigma)


def elbo_log_sigma(x, decoder, z_loc, z_scale, sigma):
    z = z_loc + z_scale * torch.randn_like(z_loc)
    rec = -0.5 * (((x - decoder(z)) / sigma).square() + LOG_2PI + math.log(sigma)).sum(-1)
    return (rec - S.kl_diagonal(z_loc, z_scale)).mean()


def elbo_plus_kl(x, decoder, z_loc, z_scale, sigma):
    z = z_loc + z_scale * torch.randn_like(z_loc)
    rec = S.gaussian_sigma_log_likelihood(x, decoder(z), sigma)
    return (rec + S.kl_diagonal(z_loc, z_scale)).mean()


def elbo_detached(x, decoder, z_loc, z_scale, sigma):
    z = Normal(z_loc, z_scale).sample()
    rec = S.gaussian_sigma_log_likelihood(x, decoder(z), sigma)
    return (rec - S.kl_diagonal(z_loc, z_scale)).mean()


def score_sum(f, loc, scale, n):
    return S.score_function_surrogate(f, loc, scale, n) * n


def score_sign(f, loc, scale, n):
    return -S.score_function_surrogate(f, loc, scale, n)


def score_through_f(f, loc, scale, n):
    return S.reparameterized_objective(f, loc, scale, n)


def score_no_log_q(f, loc, scale, n):
    z = Normal(loc, scale).sample((n,))
    return f(z).mean()


def reparam_detached(f, loc, scale, n):
    return f(Normal(loc, scale).sample((n,))).mean()


def reparam_sum(f, loc, scale, n):
    return S.reparameterized_objective(f, loc, scale, n) * n


def reparam_sign(f, loc, scale, n):
    return -S.reparameterized_objective(f, loc, scale, n)


def ppca_step_forgot_d(X, W, sigma2):
    W, sigma2 = S.ppca_em_step(X, W, sigma2)
    return W, sigma2 * X.shape[1]


def ppca_step_no_posterior_cov(X, W, sigma2):
    Xc = X - X.mean(0)
    Ez = Xc @ W @ torch.linalg.inv(W.T @ W + sigma2 * torch.eye(W.shape[1], dtype=X.dtype))
    W_new = Xc.T @ Ez @ torch.linalg.inv(Ez.T @ Ez)
    return W_new, (Xc - Ez @ W_new.T).square().mean()


def missing_divides_by_nd(X, W, mu, sigma2):
    W, mu, sigma2 = S.ppca_em_step_missing(X, W, mu, sigma2)
    return W, mu, sigma2 * (~torch.isnan(X)).sum() / X.numel()


def missing_zero_filled(X, W, mu, sigma2):
    filled = torch.where(torch.isnan(X), mu, X)
    W_new, sigma2_new = S.ppca_em_step(filled, W, sigma2)
    return W_new, filled.mean(0), sigma2_new


def is_forgot_log_k(x, log_joint, q, K):
    return S.importance_sampled_log_px(x, log_joint, q, K) + math.log(K)


def is_mean_log_weights(x, log_joint, q, K):
    z = q.sample((K,))
    return (log_joint(z) - q.log_prob(z)).mean(0)


def identity_no_trace(x, W, mu, sigma2, q_loc, q_cov):
    return S.ppca_elbo(x, W, mu, sigma2, q_loc, q_cov) + (W.T @ W @ q_cov).trace() / (2 * sigma2)


def identity_log_sigma(x, W, mu, sigma2, q_loc, q_cov):
    return S.ppca_elbo(x, W, mu, sigma2, q_loc, q_cov) + x.shape[1] * sigma2.log() / 4


def identity_sign(x, W, mu, sigma2, q_loc, q_cov):
    return -S.ppca_elbo(x, W, mu, sigma2, q_loc, q_cov)


def raises(*args):
    raise ValueError("not done yet")


MISTAKES = [
    ("gaussian_mle", cov_unbiased, "divides by N - 1"),
    ("gaussian_mle", cov_forgot_n, "a forgotten N"),
    ("gaussian_iid_log_likelihood", iid_mean, "is the mean over the N = 40 rows"),
    ("gaussian_iid_log_likelihood", iid_sign, "has the wrong sign"),
    ("gmm_em_step", gmm_forgot_n, "weights sum to N = 60, not 1"),
    ("gmm_em_step", gmm_old_means, "centred on the old means"),
    ("gaussian_log_likelihood", gauss_no_const, "leaves out the -(D/2) log(2 pi) constant"),
    ("gaussian_sigma_log_likelihood", gauss_sigma_log_sigma, "uses log sigma where log sigma^2"),
    ("gaussian_sigma_log_likelihood", gauss_sigma_missing_half, "twice the exact value"),
    ("bernoulli_log_likelihood", bernoulli_sign, "has the wrong sign"),
    ("bernoulli_log_likelihood", bernoulli_one_term, "leaves out the (1 - x) log(1 - p)"),
    ("kl_diagonal", kl_log_sigma, "KL uses log sigma where log sigma^2 belongs at sigma = 0.5"),
    ("kl_diagonal", kl_missing_half, "KL is off by a factor of 2 (a missing 1/2?) at sigma = 0.5"),
    ("kl_diagonal", kl_sign, "your KL has the wrong sign at sigma = 0.5"),
    ("kl_full", kl_full_reversed, "the reverse direction"),
    ("kl_full", kl_full_missing_half, "off by a factor of 2"),
    ("reparameterized_sample", sample_detached, "detached from mu and sigma"),
    (
        "reparameterized_sample",
        sample_unit_variance,
        "right mean but variance 1 instead of sigma^2",
    ),
    ("reparameterized_sample", sample_variance_scale, "variance sigma^4"),
    ("gaussian_vae_elbo", elbo_sum, "a sum in place of a mean"),
    ("gaussian_vae_elbo", elbo_sign, "has the wrong sign"),
    ("gaussian_vae_elbo", elbo_log_sigma, "uses log sigma where log sigma^2 belongs"),
    ("gaussian_vae_elbo", elbo_plus_kl, "adds the KL instead of subtracting it"),
    ("gaussian_vae_elbo", elbo_detached, "your sample z is detached"),
    ("score_function_surrogate", score_sum, "a forgotten 1/n"),
    ("score_function_surrogate", score_sign, "has the wrong sign"),
    ("score_function_surrogate", score_through_f, "that is the reparameterized gradient"),
    ("score_function_surrogate", score_no_log_q, "it needs log q(z)"),
    ("reparameterized_objective", reparam_detached, "the sample is detached"),
    ("reparameterized_objective", reparam_sum, "a forgotten 1/n"),
    ("reparameterized_objective", reparam_sign, "has the wrong sign"),
    ("ppca_em_step", ppca_step_forgot_d, "divide by N d, not N"),
    ("ppca_em_step", ppca_step_no_posterior_cov, "leaves the posterior covariance"),
    ("ppca_em_step_missing", missing_divides_by_nd, "not by the number of observed entries"),
    ("ppca_em_step_missing", missing_zero_filled, "W is wrong with 20% of the entries missing"),
    ("importance_sampled_log_px", is_forgot_log_k, "is log K too high"),
    ("importance_sampled_log_px", is_mean_log_weights, "averages the log weights"),
    ("ppca_elbo", identity_no_trace, "leaves out tr(W^T W q_cov)"),
    ("ppca_elbo", identity_log_sigma, "uses log sigma where log sigma^2 belongs"),
    ("ppca_elbo", identity_sign, "has the wrong sign at the exact posterior"),
    *[(name, raises, "raised ValueError: not done yet") for name in ("kl_full", "ppca_elbo")],
]


@pytest.mark.parametrize(
    "name, wrong, words", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES]
)
def test_planted_mistake_is_caught_with_its_message(name, wrong, words):
    for seed in (0, 1, 2):
        verdict = CHECKERS[name](wrong, seed=seed)
        assert not verdict.ok
        assert words in verdict.message, verdict.message


def test_every_checker_has_a_planted_mistake():
    assert {name for name, _, _ in MISTAKES} == set(CHECKERS)


def test_beats_ppca_against_the_closed_form():
    from ppvae.baselines import ppca_log_prob, ppca_mle
    from ppvae.exercises import check_beats_ppca

    X = torch.randn(200, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ppca = ppca_log_prob(X[100:], *ppca_mle(X[:100], 2)).mean().item()
    assert check_beats_ppca(ppca + 0.01, X[:100], X[100:], 2).ok
    below = check_beats_ppca(ppca - 0.01, X[:100], X[100:], 2)
    assert not below and f"PPCA's (q = 2), {ppca:.2f} nats" in below.message
    assert "should be a number" in check_beats_ppca(..., X[:100], X[100:], 2).message


@pytest.mark.parametrize("name", sorted(CHECKERS))
def test_an_unanswered_exercise_says_nothing_was_computed(name):
    def unanswered(*args):
        return ...

    verdict = CHECKERS[name](unanswered)
    assert not verdict
    assert "returned Ellipsis: nothing was computed" in verdict.message, verdict
