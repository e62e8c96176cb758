"""Closed-form PPCA against scikit-learn, dense Gaussian algebra and the MLE's own identities."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from torch.distributions import MultivariateNormal

from ppvae.baselines import (
    PPCA,
    NotFittedError,
    PPCAParams,
    ppca_log_prob,
    ppca_mle,
    ppca_posterior,
    ppca_sample,
)

F64 = torch.float64
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """The 1797 x 64 digits, scaled to [0, 1]; three pixels are constant zero."""
    return torch.as_tensor(load_digits().data / 16)


def random_params(d: int, q: int, seed: int) -> PPCAParams:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, q, generator=g, dtype=F64)
    mu = torch.randn(d, generator=g, dtype=F64)
    return PPCAParams(W, mu, torch.tensor(0.3, dtype=F64))


def dense_cov(params: PPCAParams) -> torch.Tensor:
    W, _, sigma2 = params
    return W @ W.T + sigma2 * torch.eye(W.shape[0], dtype=F64)


def synthetic(N: int = 500, d: int = 7, q: int = 3, seed: int = 0) -> torch.Tensor:
    return ppca_sample(N, *random_params(d, q, seed), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("q", [2, 5, 10, 20, 40])
def test_score_equals_sklearn_pca_score(digits, q):
    N, d = digits.shape
    ours = PPCA(q).fit(digits).score(digits)
    X = digits.numpy()
    sklearn_score = PCA(n_components=q, svd_solver="full").fit(X).score(X)
    # sklearn's C is N/(N-1) times the MLE's, and tr(C^-1 S) = d at the MLE, so its mean
    # log-likelihood differs by -d/2 [ln(N/(N-1)) + (N-1)/N - 1]
    correction = -0.5 * d * (math.log(N / (N - 1)) - 1 / N)
    assert abs(ours + correction - sklearn_score) < 1e-9
    # the correction is exactly the N/(N-1) rescaling of C
    W, mu, sigma2 = ppca_mle(digits, q)
    c = N / (N - 1)
    rescaled = ppca_log_prob(digits, W * math.sqrt(c), mu, sigma2 * c).mean().item()
    assert abs(rescaled - sklearn_score) < 1e-9


def test_log_prob_equals_dense_multivariate_normal():
    params = random_params(7, 3, seed=0)
    X = 2 * torch.randn(50, 7, generator=torch.Generator().manual_seed(1), dtype=F64)
    dense = MultivariateNormal(params.mu, dense_cov(params)).log_prob(X)
    torch.testing.assert_close(ppca_log_prob(X, *params), dense, rtol=0, atol=1e-10)


def test_log_prob_broadcasts_over_batched_params():
    batch = [random_params(5, 2, seed=k) for k in range(4)]
    W, mu, sigma2 = (torch.stack(p) for p in zip(*batch, strict=True))
    X = torch.randn(30, 5, generator=torch.Generator().manual_seed(9), dtype=F64)
    expected = torch.stack([MultivariateNormal(p.mu, dense_cov(p)).log_prob(X) for p in batch])
    torch.testing.assert_close(ppca_log_prob(X, W, mu, sigma2), expected, rtol=0, atol=1e-10)


def test_log_prob_is_invariant_to_rotating_W():
    W, mu, sigma2 = random_params(6, 3, seed=2)
    R, _ = torch.linalg.qr(
        torch.randn(3, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    )
    X = synthetic(d=6, seed=4)
    torch.testing.assert_close(
        ppca_log_prob(X, W @ R, mu, sigma2), ppca_log_prob(X, W, mu, sigma2), rtol=0, atol=1e-12
    )


def test_posterior_equals_joint_gaussian_conditioning():
    params = random_params(7, 3, seed=5)
    W, mu, _ = params
    X = synthetic(N=20, seed=6)
    C = dense_cov(params)
    # (z, x) is jointly Gaussian with Cov(z, x) = W^T, so E[z|x] = W^T C^-1 (x - mu)
    mean = torch.linalg.solve(C, (X - mu).T).T @ W
    cov = torch.eye(3, dtype=F64) - W.T @ torch.linalg.solve(C, W)
    post = ppca_posterior(X, *params)
    torch.testing.assert_close(post.mean, mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(post.cov, cov, rtol=0, atol=1e-10)


@pytest.mark.parametrize("q", [3, 40])
def test_mle_log_likelihood_matches_closed_form(digits, q):
    N, d = digits.shape
    Xc = digits - digits.mean(0)
    lam = torch.linalg.eigvalsh(Xc.T @ Xc / N).flip(0).clamp_min(0)
    sigma2 = lam[q:].mean()
    closed = -0.5 * (d * math.log(2 * math.pi) + lam[:q].log().sum() + (d - q) * sigma2.log() + d)
    params = ppca_mle(digits, q)
    torch.testing.assert_close(params.sigma2, sigma2, rtol=1e-12, atol=0)
    assert abs(ppca_log_prob(digits, *params).mean() - closed) < 1e-10


def test_mle_structure(digits):
    q = 10
    W, mu, sigma2 = ppca_mle(digits, q)
    Xc = digits - digits.mean(0)
    lam = torch.linalg.eigvalsh(Xc.T @ Xc / len(digits)).flip(0)
    WtW = W.T @ W
    torch.testing.assert_close(WtW, torch.diag(lam[:q] - sigma2), rtol=0, atol=1e-12)
    torch.testing.assert_close(mu, digits.mean(0), rtol=0, atol=0)
    top = W.abs().argmax(0)
    assert (W[top, torch.arange(q)] > 0).all()


def test_mle_is_a_stationary_point():
    X = synthetic()
    params = [p.clone().requires_grad_() for p in ppca_mle(X, 3)]
    W, mu, sigma2 = params
    dense = MultivariateNormal(mu, W @ W.T + sigma2 * torch.eye(7, dtype=F64))
    grads = torch.autograd.grad(dense.log_prob(X).mean(), params)
    assert max(g.abs().max().item() for g in grads) < 1e-10


def test_sample_mean_and_covariance_match_the_model():
    params = random_params(4, 2, seed=7)
    n = 200_000
    X = ppca_sample(n, *params, generator=torch.Generator().manual_seed(8))
    C = dense_cov(params)
    # standard errors of a sample mean and of a Gaussian sample covariance entry
    se_mean = (C.diagonal() / n).sqrt()
    se_cov = ((C.diagonal()[:, None] * C.diagonal()[None] + C.square()) / n).sqrt()
    assert X.shape == (n, 4)
    assert ((X.mean(0) - params.mu).abs() < 5 * se_mean).all()
    assert ((torch.cov(X.T, correction=0) - C).abs() < 5 * se_cov).all()


def test_estimator_methods_agree_with_the_functions():
    X = synthetic()
    model = PPCA(3).fit(X.numpy())
    params = ppca_mle(X, 3)
    for fitted, expected in zip(model.params_, params, strict=True):
        torch.testing.assert_close(fitted, expected, rtol=0, atol=0)
    post = ppca_posterior(X, *params)
    torch.testing.assert_close(model.transform(X), post.mean)
    torch.testing.assert_close(model.reconstruct(X), post.mean @ params.W.T + params.mu)
    assert model.score(X) == pytest.approx(ppca_log_prob(X, *params).mean().item(), abs=1e-12)
    clone = PPCA.from_params(*params)
    torch.testing.assert_close(clone.log_prob(X), model.log_prob(X), rtol=0, atol=0)
    draws = [model.sample(5, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    assert draws[0].shape == (5, 7)
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)


def test_inputs_are_converted_to_float64():
    X = synthetic().to(torch.float32)
    model = PPCA(2).fit(X)
    assert model.W_.dtype == F64 and model.sigma2_.shape == ()
    assert model.log_prob(X).dtype == F64


@pytest.mark.parametrize(
    ("X", "q", "match"),
    [
        (np.ones(10), 1, "2-D"),
        (np.ones((1, 5)), 1, "at least 2 rows"),
        (np.random.default_rng(0).normal(size=(20, 5)), 5, "1 <= q < d"),
        (np.random.default_rng(0).normal(size=(20, 5)), 0, "1 <= q < d"),
        (np.array([[0.0, 1.0, np.nan], [1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]), 1, "ppca_em_missing"),
        (np.array([[0.0, 1.0, np.inf], [1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]), 1, "infinite"),
        (np.outer(np.arange(10.0), [1.0, 2.0, 3.0]), 1, "sigma2 is 0"),
    ],
)
def test_bad_inputs_raise_clear_errors(X, q, match):
    with pytest.raises(ValueError, match=match):
        ppca_mle(X, q)


def test_methods_before_fit_raise():
    model = PPCA(2)
    with pytest.raises(NotFittedError, match="not fitted"):
        model.transform(torch.zeros(3, 4))
    assert not hasattr(model, "W_")


@pytest.mark.cuda
@no_cuda
def test_cuda_matches_cpu():
    X = synthetic()
    cpu = PPCA(3).fit(X)
    gpu = PPCA(3, device="cuda").fit(X)
    assert gpu.W_.device.type == "cuda"
    torch.testing.assert_close(gpu.log_prob(X.cuda()).cpu(), cpu.log_prob(X), rtol=0, atol=1e-10)
