"""Mixture of PPCA with missing entries: exact EM, checked against the complete-data mixture,
single-component PPCA and dense Gaussian conditioning."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from ppvae.baselines import (
    MixtureParams,
    MixturePPCA,
    PPCAParams,
    impute,
    mixture_impute,
    mixture_log_prob,
    mppca_em,
    mppca_em_missing,
    observed_log_prob,
    ppca_em_missing,
    ppca_sample,
)

F64 = torch.float64
K, D, Q, PER = 3, 5, 1, 300


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hide(X: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """X with ``fraction`` of its entries missing completely at random."""
    return X.masked_fill(
        torch.rand(X.shape, generator=seeded(seed), dtype=F64) < fraction, math.nan
    )


@pytest.fixture(scope="module")
def X() -> torch.Tensor:
    """PER rows from each of K overlapping PPCAs (d=5, q=1, sigma=0.3): EM needs tens of steps."""
    g = seeded(0)
    means = 0.5 * torch.eye(D, dtype=F64)[:K]
    return torch.cat(
        [ppca_sample(PER, torch.randn(D, Q, generator=g, dtype=F64), mu, 0.09, g) for mu in means]
    )


@pytest.fixture(scope="module")
def X_missing(X) -> torch.Tensor:
    return hide(X, 0.2)


@pytest.fixture(scope="module")
def fit_missing(X_missing):
    return mppca_em_missing(X_missing, K, Q, max_iter=2000, tol=1e-13, generator=seeded(1))


def covariances(params: MixtureParams) -> torch.Tensor:
    eye = torch.eye(params.W.shape[1], dtype=F64)
    return params.W @ params.W.mT + params.sigma2[:, None, None] * eye


def dense_conditionals(x: torch.Tensor, params: MixtureParams):
    """For one row: log pi_k + log N(x_o; mu_o, C_oo), and E[x | x_o, k], Cov(x | x_o, k)."""
    o, m = ~torch.isnan(x), torch.isnan(x)
    joint, means, covs = [], [], []
    for pi, mu, C in zip(params.weights, params.means, covariances(params), strict=True):
        gain = C[m][:, o] @ torch.linalg.inv(C[o][:, o])
        mean, cov = x.clone(), torch.zeros_like(C)
        mean[m] = mu[m] + gain @ (x[o] - mu[o])
        cov[torch.outer(m, m)] = (C[m][:, m] - gain @ C[o][:, m]).flatten()
        joint.append(pi.log() + MultivariateNormal(mu[o], C[o][:, o]).log_prob(x[o]))
        means.append(mean)
        covs.append(cov)
    return torch.stack(joint), torch.stack(means), torch.stack(covs)


def dense_em_step(X: torch.Tensor, params: MixtureParams) -> MixtureParams:
    """Ghahramani & Jordan's E-step row by row, then Tipping & Bishop's closed-form M-step."""
    rows = [dense_conditionals(x, params) for x in X]
    joint = torch.stack([r[0] for r in rows])
    R = joint.softmax(1)
    xhat = torch.stack([r[1] for r in rows], dim=1)  # (K, N, d)
    cov = torch.stack([r[2] for r in rows], dim=1)  # (K, N, d, d)
    Nk = R.sum(0)
    means = (R.T[..., None] * xhat).sum(1) / Nk[:, None]
    Xc = xhat - means[:, None]
    outer = Xc[..., :, None] * Xc[..., None, :] + cov
    S = (R.T[..., None, None] * outer).sum(1) / Nk[:, None, None]
    lam, U = torch.linalg.eigh(S)
    lam, U = lam.flip(-1), U.flip(-1)[..., :Q]
    sigma2 = lam[:, Q:].mean(-1)
    W = U * (lam[:, :Q] - sigma2[:, None]).sqrt()[:, None]
    return MixtureParams(Nk / len(X), means, W, sigma2)


def random_params(seed: int) -> MixtureParams:
    g = seeded(seed)
    weights = torch.rand(K, generator=g, dtype=F64) + 0.5
    means = torch.randn(K, D, generator=g, dtype=F64)
    W = torch.randn(K, D, Q, generator=g, dtype=F64)
    return MixtureParams(
        weights / weights.sum(), means, W, torch.rand(K, generator=g, dtype=F64) + 0.2
    )


@pytest.mark.parametrize("explicit_init", [True, False])
def test_without_missing_entries_it_is_the_complete_data_mixture(X, explicit_init):
    def start():
        return {"init": random_params(2)} if explicit_init else {"generator": seeded(1)}

    complete = mppca_em(X, K, Q, max_iter=100, tol=-math.inf, **start())
    missing = mppca_em_missing(X, K, Q, max_iter=100, tol=-math.inf, **start())
    assert complete.log_likelihood[-1] > complete.log_likelihood[0] + 1
    # measured max differences 2.5e-14 (trace) and 1.8e-15 (parameters)
    torch.testing.assert_close(missing.log_likelihood, complete.log_likelihood, rtol=0, atol=1e-10)
    for a, b in zip(missing.params, complete.params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_estimator_runs_the_complete_data_fit(X):
    model = MixturePPCA(K, Q, max_iter=100, tol=-math.inf, seed=1).fit(X)
    expected = mppca_em(X, K, Q, max_iter=100, tol=-math.inf, generator=seeded(1))
    torch.testing.assert_close(model.log_likelihood_, expected.log_likelihood, rtol=0, atol=0)
    for a, b in zip(model.params_, expected.params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_observed_log_likelihood_never_decreases(X_missing):
    # tol=-inf runs on past convergence, where only round-off may lower the trace
    fit = mppca_em_missing(X_missing, K, Q, max_iter=150, tol=-math.inf, generator=seeded(1))
    trace = fit.log_likelihood
    assert len(trace) == 151 and fit.n_iter == 150 and not fit.converged
    assert trace.diff().min() >= -1e-12 * trace.abs().max()  # measured -4.4e-15
    assert trace[-1] > trace[0] + 1  # measured -5.83 -> -4.67 nats per row


def test_one_step_is_the_dense_ghahramani_jordan_update(X_missing):
    rows = X_missing[::9]  # 100 rows, a Python loop each
    start = random_params(3)
    step = mppca_em_missing(rows, K, Q, init=start, max_iter=1, tol=-math.inf, sigma2_floor=0.0)
    expected = dense_em_step(rows, start)
    weights, means, W, sigma2 = step.params
    torch.testing.assert_close(weights, expected.weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(means, expected.means, rtol=0, atol=1e-12)
    torch.testing.assert_close(sigma2, expected.sigma2, rtol=0, atol=1e-12)
    torch.testing.assert_close(covariances(step.params), covariances(expected), rtol=0, atol=1e-12)
    first = torch.stack([dense_conditionals(x, start)[0] for x in rows]).logsumexp(1).mean()
    assert abs(step.log_likelihood[0] - first) < 1e-12


def test_log_prob_and_impute_equal_dense_gaussian_conditioning(X_missing, fit_missing):
    params = fit_missing.params
    rows = X_missing[:60]
    dense = [dense_conditionals(x, params) for x in rows]
    joint = torch.stack([j for j, _, _ in dense])
    torch.testing.assert_close(
        mixture_log_prob(rows, params), joint.logsumexp(1), rtol=0, atol=1e-10
    )
    # E[x_m | x_o] = sum_k p(k | x_o) E[x_m | x_o, k]
    expected = torch.stack([(j.softmax(0)[:, None] * m).sum(0) for j, m, _ in dense])
    torch.testing.assert_close(mixture_impute(rows, params), expected, rtol=0, atol=1e-10)
    observed = ~torch.isnan(X_missing)
    assert torch.equal(mixture_impute(X_missing, params)[observed], X_missing[observed])


def test_fit_ends_at_a_local_maximum(X_missing, fit_missing):
    assert fit_missing.converged and fit_missing.log_likelihood.diff().min() >= -1e-12
    params = [p.clone().requires_grad_() for p in fit_missing.params]
    loglik = mixture_log_prob(X_missing, MixtureParams(*params)).mean()
    grads = torch.autograd.grad(loglik, params)
    # the weights sit on the simplex: at the optimum d/d pi_k = N_k / (N pi_k) = 1 for every k
    torch.testing.assert_close(grads[0], torch.ones(K, dtype=F64), rtol=0, atol=1e-6)
    assert max(g.abs().max().item() for g in grads[1:]) < 1e-5  # measured 1.2e-6 (sigma2)
    assert abs(loglik - fit_missing.log_likelihood[-1]) < 1e-12


@pytest.fixture(scope="module")
def ppca_data() -> torch.Tensor:
    """N=2000 draws of a PPCA (d=10, q=2, sigma=0.5) with 20% of entries missing, as in test_em."""
    g = seeded(1)
    W = torch.randn(10, 2, generator=g, dtype=F64)
    mu = torch.randn(10, generator=g, dtype=F64)
    return hide(ppca_sample(2000, W, mu, 0.25, generator=g), 0.2)


def test_one_component_reaches_the_ppca_missing_data_optimum(ppca_data):
    # the two EMs treat different variables as latent (x_m here, z in ppca_em_missing), so
    # their iterates differ; from the same start they converge to the same maximum
    W = torch.randn(10, 2, generator=seeded(5), dtype=F64)
    mu = torch.nanmean(ppca_data, 0)
    ppca = ppca_em_missing(ppca_data, 2, init=PPCAParams(W, mu, 1.0), max_iter=5000, tol=1e-13)
    start = MixtureParams(torch.ones(1, dtype=F64), mu[None], W[None], torch.ones(1, dtype=F64))
    mixture = mppca_em_missing(ppca_data, 1, 2, init=start, max_iter=5000, tol=1e-13)
    assert ppca.converged and mixture.converged
    assert abs(mixture.log_likelihood[0] - ppca.log_likelihood[0]) < 1e-12  # the same start
    assert mixture.n_iter < ppca.n_iter  # measured 15 against 722
    # measured 4.9e-12 nats per row, 1.3e-6 in C and 1.2e-5 in mu: ppca_em_missing creeps
    # along the flat scale of W, so its parameters are the looser of the two
    assert abs(mixture.log_likelihood[-1] - ppca.log_likelihood[-1]) < 1e-10
    C = ppca.params.W @ ppca.params.W.T + ppca.params.sigma2 * torch.eye(10, dtype=F64)
    torch.testing.assert_close(covariances(mixture.params)[0], C, rtol=0, atol=1e-5)
    torch.testing.assert_close(mixture.params.means[0], ppca.params.mu, rtol=0, atol=1e-4)
    torch.testing.assert_close(mixture.params.sigma2[0], ppca.params.sigma2, rtol=0, atol=1e-8)


def test_one_component_density_and_imputation_are_ppca(ppca_data):
    params = ppca_em_missing(ppca_data, 2, max_iter=50, generator=seeded(6)).params
    single = MixtureParams(
        torch.ones(1, dtype=F64), params.mu[None], params.W[None], params.sigma2[None]
    )
    # p(k=1 | x_o) is exactly 1, so the two share every floating-point operation
    torch.testing.assert_close(
        mixture_impute(ppca_data, single), impute(ppca_data, params), rtol=0, atol=0
    )
    torch.testing.assert_close(
        mixture_log_prob(ppca_data, single), observed_log_prob(ppca_data, params), rtol=0, atol=0
    )


def test_rows_with_nothing_observed(X_missing, fit_missing):
    blank = torch.full((2, D), math.nan, dtype=F64)
    padded = torch.cat([blank[:1], X_missing, blank[1:]])
    fits = [
        mppca_em_missing(data, K, Q, max_iter=20, tol=-math.inf, generator=seeded(6))
        for data in (X_missing, padded)
    ]
    # they carry no information: the fit drops them, as ppca_em_missing does
    for a, b in zip(fits[0].params, fits[1].params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    params = fit_missing.params
    # log p(nothing) = 0, and E[x] = sum_k pi_k mu_k
    torch.testing.assert_close(
        mixture_log_prob(blank, params), torch.zeros(2, dtype=F64), rtol=0, atol=1e-12
    )
    expected = (params.weights[:, None] * params.means).sum(0)
    torch.testing.assert_close(
        mixture_impute(blank, params), expected.expand(2, D), rtol=0, atol=1e-12
    )


def test_estimator_dispatches_on_missing_entries(X_missing):
    model = MixturePPCA(K, Q, max_iter=40, tol=-math.inf, seed=7).fit(X_missing)
    expected = mppca_em_missing(X_missing, K, Q, max_iter=40, tol=-math.inf, generator=seeded(7))
    torch.testing.assert_close(model.log_likelihood_, expected.log_likelihood, rtol=0, atol=0)
    assert model.n_iter_ == 40 and not model.converged_
    assert model.score(X_missing) == pytest.approx(expected.log_likelihood[-1].item(), abs=1e-12)
    torch.testing.assert_close(model.impute(X_missing), mixture_impute(X_missing, expected.params))
    joint = torch.stack([dense_conditionals(x, expected.params)[0] for x in X_missing[:30]])
    torch.testing.assert_close(
        model.predict_proba(X_missing[:30]), joint.softmax(1), rtol=0, atol=1e-10
    )
    assert torch.equal(model.predict(X_missing[:30]), joint.argmax(1))


def test_sigma2_floor_holds_with_missing_entries():
    X = torch.cat([torch.randn(100, 3, generator=seeded(4), dtype=F64), torch.full((1, 3), 50.0)])
    X[0, 0] = X[5, 2] = math.nan
    fit = MixturePPCA(2, 1, sigma2_floor=1e-4).fit(X)
    variance = torch.stack([c[~c.isnan()].var(correction=0) for c in X.T]).mean()
    lone = fit.predict(X[-1:]).item()
    torch.testing.assert_close(fit.sigma2_[lone], 1e-4 * variance, rtol=1e-12, atol=0)
    assert torch.isfinite(fit.log_prob(X)).all() and fit.log_likelihood_.diff().min() >= -1e-12


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(X_missing):
    cpu = mppca_em_missing(X_missing, K, Q, max_iter=20, generator=seeded(8))
    gpu = mppca_em_missing(X_missing.cuda(), K, Q, max_iter=20, generator=seeded(8))
    assert gpu.params.W.device.type == "cuda"
    torch.testing.assert_close(gpu.log_likelihood.cpu(), cpu.log_likelihood, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        mixture_impute(X_missing.cuda(), gpu.params).cpu(),
        mixture_impute(X_missing, cpu.params),
        rtol=0,
        atol=1e-8,
    )
