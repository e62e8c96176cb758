"""EM for PPCA reaches the closed-form optimum; missing-data EM is exact EM on observed entries."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from ppvae.baselines import (
    EMPPCA,
    PPCAParams,
    impute,
    ppca_em,
    ppca_em_missing,
    ppca_log_prob,
    ppca_mle,
    ppca_sample,
)

F64 = torch.float64
D, Q, N = 10, 2, 2000


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def projector(W: torch.Tensor) -> torch.Tensor:
    return W @ torch.linalg.solve(W.T @ W, W.T)


def cov(params: PPCAParams) -> torch.Tensor:
    return params.W @ params.W.T + params.sigma2 * torch.eye(D, dtype=F64)


@pytest.fixture(scope="module")
def X() -> torch.Tensor:
    """N=2000 draws of a PPCA with d=10, q=2 and sigma=0.5."""
    g = seeded(1)
    W = torch.randn(D, Q, generator=g, dtype=F64)
    mu = torch.randn(D, generator=g, dtype=F64)
    return ppca_sample(N, W, mu, 0.25, generator=g)


@pytest.fixture(scope="module")
def X_missing(X) -> torch.Tensor:
    """X with 20% of its entries missing completely at random."""
    return X.masked_fill(torch.rand(N, D, generator=seeded(0)) < 0.2, math.nan)


@pytest.fixture(scope="module")
def mle(X) -> PPCAParams:
    return ppca_mle(X, Q)


@pytest.fixture(scope="module")
def em(X):
    return ppca_em(X, Q, max_iter=3000, tol=1e-12, generator=seeded(0))


@pytest.fixture(scope="module")
def em_missing(X_missing):
    return ppca_em_missing(X_missing, Q, max_iter=3000, tol=1e-12, generator=seeded(0))


def dense_observed_log_prob(X: torch.Tensor, W, mu, sigma2) -> torch.Tensor:
    """Per-row log N(x_O; mu_O, C_OO), densely: the missing block of C is replaced by I and
    the residual there by 0, which adds exactly log N(0; 0, 1) per missing entry."""
    observed = ~torch.isnan(X)
    O = observed.to(F64)
    C = W @ W.T + sigma2 * torch.eye(X.shape[1], dtype=F64)
    C_padded = O[:, :, None] * C * O[:, None, :] + torch.diag_embed(1 - O)
    r = torch.where(observed, X - mu, 0.0)
    padded = MultivariateNormal(torch.zeros_like(mu), C_padded).log_prob(r)
    return padded + 0.5 * (1 - O).sum(1) * math.log(2 * math.pi)


def test_em_reaches_the_closed_form_log_likelihood(X, mle, em):
    closed = ppca_log_prob(X, *mle).mean().item()
    gap = closed - em.log_likelihood[-1].item()
    assert em.converged and em.n_iter == len(em.log_likelihood) - 1
    assert -1e-12 < gap < 1e-8  # measured 2.9e-11 after 492 iterations


def test_em_trace_is_monotone(em):
    assert em.log_likelihood.diff().min() >= -1e-12


def test_em_subspace_and_covariance_equal_the_closed_form(mle, em):
    torch.testing.assert_close(projector(em.params.W), projector(mle.W), rtol=0, atol=1e-10)
    # the scale of W within the subspace converges slowest (the log-likelihood is flat there):
    # measured max |C_em - C_mle| = 1.4e-4 and |sigma2_em - sigma2_mle| = 3e-9
    torch.testing.assert_close(cov(em.params), cov(mle), rtol=0, atol=1e-3)
    torch.testing.assert_close(em.params.sigma2, mle.sigma2, rtol=0, atol=1e-7)
    torch.testing.assert_close(em.params.mu, mle.mu, rtol=0, atol=1e-14)


def test_em_trace_is_the_log_likelihood_of_each_iterate(X):
    # init.mu is not used: complete-data EM keeps mu at the sample mean
    init = PPCAParams(torch.randn(D, Q, generator=seeded(2), dtype=F64), torch.zeros(D), 2.0)
    start = ppca_em(X, Q, init=init, max_iter=0)
    assert start.n_iter == 0 and not start.converged
    expected = ppca_log_prob(X, init.W, X.mean(0), init.sigma2).mean()
    assert abs(start.log_likelihood[0] - expected) < 1e-10
    later = ppca_em(X, Q, init=init, max_iter=7, tol=-math.inf)
    assert later.n_iter == 7 and len(later.log_likelihood) == 8
    assert abs(later.log_likelihood[-1] - ppca_log_prob(X, *later.params).mean()) < 1e-10


@pytest.mark.parametrize("explicit_init", [True, False])
def test_missing_em_without_nan_is_complete_em(X, explicit_init):
    init = PPCAParams(torch.randn(D, Q, generator=seeded(3), dtype=F64), X.mean(0), 1.0)

    def start():
        return {"init": init} if explicit_init else {"generator": seeded(4)}

    complete = ppca_em(X, Q, max_iter=50, tol=-math.inf, **start())
    missing = ppca_em_missing(X, Q, max_iter=50, tol=-math.inf, **start())
    for a, b in zip(complete.params, missing.params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    torch.testing.assert_close(complete.log_likelihood, missing.log_likelihood, rtol=0, atol=1e-10)


def test_missing_em_trace_is_monotone(em_missing):
    assert em_missing.converged
    assert em_missing.log_likelihood.diff().min() >= -1e-12


def test_missing_em_subspace_is_close_to_the_complete_data_mle(mle, em_missing):
    distance = torch.linalg.matrix_norm(projector(em_missing.params.W) - projector(mle.W))
    # measured 0.0109 here and 0.0066 to 0.0136 over 8 missingness masks
    assert distance < 0.03


def test_missing_em_log_likelihood_equals_dense_per_row_computation(X_missing, em_missing):
    W, mu, sigma2 = em_missing.params
    C = cov(em_missing.params)
    rows = X_missing[:200]
    brute = []
    for x in rows:
        o = ~torch.isnan(x)
        brute.append(MultivariateNormal(mu[o], C[o][:, o]).log_prob(x[o]))
    model = EMPPCA.from_params(W, mu, sigma2)
    torch.testing.assert_close(model.log_prob(rows), torch.stack(brute), rtol=0, atol=1e-10)
    dense = dense_observed_log_prob(X_missing, W, mu, sigma2).mean()
    assert abs(dense - em_missing.log_likelihood[-1]) < 1e-9


def test_missing_em_ends_at_a_local_maximum(X_missing, em_missing):
    params = [p.clone().requires_grad_() for p in em_missing.params]
    loglik = dense_observed_log_prob(X_missing, *params).mean()
    grads = torch.autograd.grad(loglik, params)
    assert max(g.abs().max().item() for g in grads) < 1e-5  # measured 8.7e-7
    g = seeded(5)
    for _ in range(10):
        moved = [p.detach() + 1e-2 * torch.randn(p.shape, generator=g, dtype=F64) for p in params]
        assert dense_observed_log_prob(X_missing, *moved).mean() < loglik


def test_impute_is_the_conditional_gaussian_mean(X_missing, em_missing):
    params = em_missing.params
    C = cov(params)
    filled = impute(X_missing, params)
    observed = ~torch.isnan(X_missing)
    assert torch.equal(filled[observed], X_missing[observed])
    rows = (~observed).any(1).nonzero().flatten()[:20]
    for n in rows:
        o, m = observed[n], ~observed[n]
        x_o = X_missing[n, o]
        expected = params.mu[m] + C[m][:, o] @ torch.linalg.solve(C[o][:, o], x_o - params.mu[o])
        torch.testing.assert_close(filled[n, m], expected, rtol=0, atol=1e-10)
    all_missing = torch.full((1, D), math.nan, dtype=F64)
    torch.testing.assert_close(impute(all_missing, params)[0], params.mu, rtol=0, atol=0)


def test_rows_with_nothing_observed_are_dropped(X_missing):
    blank = torch.full((2, D), math.nan, dtype=F64)
    padded = torch.cat([blank[:1], X_missing, blank[1:]])
    fits = [
        ppca_em_missing(data, Q, max_iter=20, tol=-math.inf, generator=seeded(6))
        for data in (X_missing, padded)
    ]
    for a, b in zip(fits[0].params, fits[1].params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(fits[0].log_likelihood, fits[1].log_likelihood, rtol=0, atol=1e-12)


def test_columns_observed_fewer_than_twice_are_named(X_missing):
    data = X_missing[:50].clone()
    data[1:, 3] = math.nan
    data[:, 7] = math.nan
    with pytest.raises(ValueError, match=r"columns \[3, 7\]"):
        ppca_em_missing(data, Q)


def test_complete_em_rejects_nan(X_missing):
    with pytest.raises(ValueError, match="ppca_em_missing"):
        ppca_em(X_missing, Q)


def test_estimator_dispatches_on_missing_entries(X, X_missing):
    complete = EMPPCA(Q, max_iter=30, tol=-math.inf, seed=7).fit(X)
    expected = ppca_em(X, Q, max_iter=30, tol=-math.inf, generator=seeded(7))
    torch.testing.assert_close(complete.log_likelihood_, expected.log_likelihood)
    torch.testing.assert_close(complete.W_, expected.params.W)
    assert complete.n_iter_ == 30 and not complete.converged_
    model = EMPPCA(Q, max_iter=30, tol=-math.inf, seed=7).fit(X_missing)
    expected = ppca_em_missing(X_missing, Q, max_iter=30, tol=-math.inf, generator=seeded(7))
    torch.testing.assert_close(model.log_likelihood_, expected.log_likelihood)
    assert model.score(X_missing) == pytest.approx(expected.log_likelihood[-1].item(), abs=1e-12)
    torch.testing.assert_close(model.impute(X_missing), impute(X_missing, expected.params))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(X, X_missing):
    for fit, data in ((ppca_em, X), (ppca_em_missing, X_missing)):
        cpu = fit(data, Q, max_iter=20, tol=-math.inf, generator=seeded(8))
        gpu = fit(data.cuda(), Q, max_iter=20, tol=-math.inf, generator=seeded(8))
        assert gpu.params.W.device.type == "cuda"
        torch.testing.assert_close(
            gpu.log_likelihood.cpu(), cpu.log_likelihood, rtol=0, atol=1e-10
        )
        torch.testing.assert_close(gpu.params.W.cpu(), cpu.params.W, rtol=0, atol=1e-10)
