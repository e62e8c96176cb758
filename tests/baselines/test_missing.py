"""Multiple imputation draws from the exact conditional Gaussian; mean imputation and RMSE."""

import math

import numpy as np
import pytest
import torch

from ppvae.baselines import (
    PPCAParams,
    imputation_rmse,
    impute,
    impute_samples,
    mean_impute,
    observed_column_means,
    ppca_sample,
)

F64 = torch.float64
D, Q = 6, 2


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def params() -> PPCAParams:
    g = seeded(0)
    W = torch.randn(D, Q, generator=g, dtype=F64)
    return PPCAParams(W, torch.randn(D, generator=g, dtype=F64), torch.tensor(0.3, dtype=F64))


def dense_conditional(x: torch.Tensor, params: PPCAParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of x_m given x_o by Gaussian conditioning on C = W W^T + sigma2 I."""
    W, mu, sigma2 = params
    C = W @ W.T + sigma2 * torch.eye(len(mu), dtype=F64)
    o, m = ~torch.isnan(x), torch.isnan(x)
    gain = C[m][:, o] @ torch.linalg.inv(C[o][:, o])
    return mu[m] + gain @ (x[o] - mu[o]), C[m][:, m] - gain @ C[o][:, m]


@pytest.fixture(scope="module")
def rows(params) -> torch.Tensor:
    """Three rows: two with a few missing entries, one with nothing observed."""
    X = ppca_sample(3, *params, generator=seeded(1))
    X[0, [1, 4]] = math.nan
    X[1, [0, 2, 3, 5]] = math.nan
    X[2] = math.nan
    return X


@pytest.fixture(scope="module")
def draws(rows, params) -> torch.Tensor:
    return impute_samples(rows, params, 100_000, generator=seeded(2))


def test_draws_keep_observed_entries_and_are_reproducible(rows, params, draws):
    observed = ~torch.isnan(rows)
    assert draws.shape == (100_000, 3, D)
    assert torch.equal(draws[:, observed], rows[observed].expand(100_000, -1))
    again = impute_samples(rows, params, 5, generator=seeded(2))
    assert torch.equal(again, impute_samples(rows, params, 5, generator=seeded(2)))


def test_sample_mean_of_draws_is_the_conditional_mean(rows, params, draws):
    n = len(draws)
    mean = impute(rows, params)
    for i, x in enumerate(rows):
        m = torch.isnan(x)
        dense_mean, dense_cov = dense_conditional(x, params)
        torch.testing.assert_close(mean[i, m], dense_mean, rtol=0, atol=1e-12)
        z = (draws[:, i, m].mean(0) - mean[i, m]) / (dense_cov.diagonal() / n).sqrt()
        assert z.abs().max() < 4.5  # a z-test per entry; 12 entries


@pytest.mark.parametrize("i", [0, 1, 2])
def test_sample_covariance_of_draws_is_the_conditional_covariance(rows, params, draws, i):
    W, _, sigma2 = params
    x = rows[i]
    o, m = ~torch.isnan(x), torch.isnan(x)
    # the closed form W_m (sigma2 M^-1) W_m^T + sigma2 I with M = W_o^T W_o + sigma2 I ...
    M = W[o].T @ W[o] + sigma2 * torch.eye(Q, dtype=F64)
    closed = W[m] @ (sigma2 * torch.linalg.inv(M)) @ W[m].T + sigma2 * torch.eye(
        int(m.sum()), dtype=F64
    )
    # ... is the Schur complement C_mm - C_mo C_oo^-1 C_om
    torch.testing.assert_close(closed, dense_conditional(x, params)[1], rtol=0, atol=1e-12)
    n = len(draws)
    sample = torch.cov(draws[:, i, m].T, correction=0)
    # standard error of a Gaussian sample covariance entry
    se = ((closed.diagonal()[:, None] * closed.diagonal()[None] + closed.square()) / n).sqrt()
    assert ((sample - closed).abs() / se).max() < 4.5


def test_mean_imputation_by_hand():
    X_train = torch.tensor([[1.0, math.nan], [3.0, 4.0], [math.nan, 8.0]])
    X_true = torch.tensor([[1.0, 5.0], [3.0, 4.0], [0.0, 8.0]])
    filled = mean_impute(X_train)
    torch.testing.assert_close(
        filled, torch.tensor([[1.0, 6.0], [3.0, 4.0], [2.0, 8.0]], dtype=F64)
    )
    # errors 5 - 6 and 0 - 2 on the two held-out entries
    assert imputation_rmse(X_true, filled, torch.isnan(X_train)) == pytest.approx(
        math.sqrt(2.5), abs=1e-15
    )
    other = torch.tensor([[math.nan, math.nan], [7.0, math.nan]])
    torch.testing.assert_close(
        mean_impute(X_train, other), torch.tensor([[2.0, 6.0], [7.0, 6.0]], dtype=F64)
    )


def test_mean_imputation_rmse_equals_numpy():
    rng = np.random.default_rng(3)
    X_true = rng.normal(size=(500, 8)) * rng.uniform(0.5, 3, size=8) + rng.normal(size=8) * 5
    hidden = rng.uniform(size=X_true.shape) < 0.3
    X_train = np.where(hidden, np.nan, X_true)
    expected = np.sqrt(np.mean((X_true - np.nanmean(X_train, axis=0))[hidden] ** 2))
    rmse = imputation_rmse(X_true, mean_impute(X_train), hidden)
    assert rmse == pytest.approx(expected, rel=1e-13)
    torch.testing.assert_close(
        observed_column_means(X_train),
        torch.as_tensor(np.nanmean(X_train, axis=0)),
        rtol=1e-14,
        atol=0,
    )


def test_ppca_imputation_error_matches_its_conditional_variance():
    g = seeded(4)
    W, mu = torch.randn(10, 2, generator=g, dtype=F64), torch.randn(10, generator=g, dtype=F64)
    params = PPCAParams(W, mu, torch.tensor(0.25, dtype=F64))
    X = ppca_sample(4000, *params, generator=g)
    hidden = torch.rand(X.shape, generator=g, dtype=F64) < 0.2
    X_missing = X.masked_fill(hidden, math.nan)
    squared = (impute(X_missing, params) - X)[hidden].square()
    # with the true parameters E[(x_m - E[x_m | x_o])^2] is the conditional variance
    variance = torch.cat([dense_conditional(x, params)[1].diagonal() for x in X_missing])
    z = (squared.mean() - variance.mean()) / (squared.std() / len(squared) ** 0.5)
    assert abs(z) < 4.5  # measured z = -0.10: 0.3606 against 0.3613
    rmse = imputation_rmse(X, impute(X_missing, params), hidden)
    floor = imputation_rmse(X, mean_impute(X_missing), hidden)
    assert rmse == pytest.approx(squared.mean().sqrt().item(), rel=1e-12)
    assert rmse < 0.6 * floor  # measured 0.600 against 1.228
