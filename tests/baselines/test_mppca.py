"""Mixture of PPCA: monotone EM, exact densities, recovery of separated clusters, K=1 is PPCA."""

import math

import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch.distributions import MultivariateNormal

from ppvae.baselines import MixturePPCA, NotFittedError, ppca_log_prob, ppca_mle, ppca_sample

F64 = torch.float64
K, D, Q, PER = 3, 5, 1, 300
TRUE_MEANS = 10 * torch.eye(D, dtype=F64)[:K]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clusters(spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """PER rows from each of K PPCAs (q=1, sigma=0.3) around ``spread * TRUE_MEANS``."""
    g = seeded(0)
    parts = [
        ppca_sample(PER, torch.randn(D, Q, generator=g, dtype=F64), spread * mu, 0.09, g)
        for mu in TRUE_MEANS
    ]
    return torch.cat(parts), torch.arange(K).repeat_interleave(PER)


@pytest.fixture(scope="module")
def data():
    return clusters()


@pytest.fixture(scope="module")
def model(data):
    return MixturePPCA(K, Q, seed=0).fit(data[0])


def dense_log_joint(model: MixturePPCA, X: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(D, dtype=F64)
    return torch.stack(
        [
            model.weights_[k].log()
            + MultivariateNormal(
                model.means_[k], model.W_[k] @ model.W_[k].T + model.sigma2_[k] * eye
            ).log_prob(X)
            for k in range(len(model.weights_))
        ],
        dim=1,
    )


def test_recovers_well_separated_clusters(data, model):
    X, labels = data
    predicted = model.predict(X)
    assert adjusted_rand_score(labels.numpy(), predicted.numpy()) == 1.0
    # responsibilities are one-hot to round-off, so each component is the closed-form PPCA
    # of its own cluster
    for k in range(K):
        rows = X[predicted == k]
        W, mu, sigma2 = ppca_mle(rows, Q)
        torch.testing.assert_close(model.means_[k], mu, rtol=0, atol=1e-10)
        torch.testing.assert_close(model.sigma2_[k], sigma2, rtol=0, atol=1e-10)
        torch.testing.assert_close(model.W_[k] @ model.W_[k].T, W @ W.T, rtol=0, atol=1e-10)
        truth = TRUE_MEANS[labels[predicted == k][0]]
        assert (model.means_[k] - truth).abs().max() < 0.5  # 5 standard errors
    torch.testing.assert_close(model.weights_, torch.full((K,), 1 / K, dtype=F64))


def test_log_likelihood_trace_is_monotone():
    X, _ = clusters(spread=0.05)  # overlapping clusters: EM needs tens of iterations
    # tol=-inf runs on past convergence, where only round-off may lower the trace
    fit = MixturePPCA(K, Q, max_iter=100, tol=-math.inf, seed=1).fit(X)
    trace = fit.log_likelihood_
    assert len(trace) == 101 and fit.n_iter_ == 100 and not fit.converged_
    assert trace.diff().min() >= -1e-12 * trace.abs().max()
    assert trace[-1] > trace[0] + 1


def test_densities_equal_a_dense_mixture(data, model):
    X = data[0][::7] + torch.randn(len(data[0][::7]), D, generator=seeded(2), dtype=F64)
    joint = dense_log_joint(model, X)
    torch.testing.assert_close(model.log_prob(X), joint.logsumexp(1), rtol=0, atol=1e-10)
    torch.testing.assert_close(model.predict_proba(X), joint.softmax(1), rtol=0, atol=1e-10)
    assert torch.equal(model.predict(X), joint.argmax(1))
    assert model.score(X) == pytest.approx(joint.logsumexp(1).mean().item(), abs=1e-10)


def test_one_component_is_closed_form_ppca(data):
    X = data[0]
    fit = MixturePPCA(1, 2).fit(X)
    W, mu, sigma2 = ppca_mle(X, 2)
    assert abs(fit.log_likelihood_[-1] - ppca_log_prob(X, W, mu, sigma2).mean()) < 1e-8
    torch.testing.assert_close(fit.W_[0] @ fit.W_[0].T, W @ W.T, rtol=0, atol=1e-10)
    assert fit.converged_ and fit.n_iter_ == 1


def test_sample_shapes_and_label_frequencies(model):
    n = 30_000
    X, labels = model.sample(n, generator=seeded(3))
    assert X.shape == (n, D) and labels.shape == (n,)
    freq = torch.bincount(labels, minlength=K).to(F64) / n
    se = (model.weights_ * (1 - model.weights_) / n).sqrt()
    assert ((freq - model.weights_).abs() < 5 * se).all()
    for k in range(K):
        assert (X[labels == k].mean(0) - model.means_[k]).abs().max() < 0.1
    again = model.sample(n, generator=seeded(3))
    assert torch.equal(again.labels, labels) and torch.equal(again.X, X)


def test_sigma2_floor_keeps_a_single_point_component_finite():
    X = torch.cat([torch.randn(100, 3, generator=seeded(4), dtype=F64), torch.full((1, 3), 50.0)])
    fit = MixturePPCA(2, 1, sigma2_floor=1e-4).fit(X)
    floor = 1e-4 * X.var(0, correction=0).mean()
    lone = fit.predict(X[-1:]).item()
    assert fit.sigma2_[lone] == floor
    assert torch.isfinite(fit.log_prob(X)).all() and fit.log_likelihood_.diff().min() >= -1e-12


def test_fit_is_deterministic_and_n_init_keeps_the_best():
    X, _ = clusters(spread=0.1)
    fits = [MixturePPCA(K, Q, max_iter=50, seed=5, n_init=n).fit(X) for n in (1, 1, 4)]
    assert torch.equal(fits[0].log_likelihood_, fits[1].log_likelihood_)
    # the first of the n_init initialisations is the n_init=1 one
    assert fits[2].log_likelihood_[-1] >= fits[0].log_likelihood_[-1]


def test_errors():
    with pytest.raises(NotFittedError, match="not fitted"):
        MixturePPCA(2, 1).predict(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="n_clusters"):
        MixturePPCA(5, 1).fit(torch.randn(4, 3, generator=seeded(6)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(data):
    X = data[0]
    cpu = MixturePPCA(K, Q, max_iter=20).fit(X)
    gpu = MixturePPCA(K, Q, max_iter=20, device="cuda").fit(X)
    assert gpu.means_.device.type == "cuda"
    torch.testing.assert_close(gpu.log_likelihood_.cpu(), cpu.log_likelihood_, rtol=0, atol=1e-10)
    torch.testing.assert_close(gpu.log_prob(X).cpu(), cpu.log_prob(X), rtol=0, atol=1e-10)
