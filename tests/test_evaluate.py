"""Evaluation against closed forms: PPCA's exact log p(x), posterior and KL in float64."""

import importlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppvae.baselines import ppca_log_prob, ppca_posterior
from ppvae.evaluation.metrics import (
    active_units,
    bits_per_dim,
    elbo_terms,
    evaluate,
    log_likelihood,
)
from ppvae.guides import ExactPPCAGuide
from ppvae.models import PPCA
from ppvae.models.sites import LATENT, data_plate
from tests.conftest import cuda

# the module itself: ``ppvae.evaluation.bounds``
evaluation = importlib.import_module("ppvae.evaluation.bounds")

D, Q = 6, 2


@pytest.fixture(scope="module")
def model() -> PPCA:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(D, Q, generator=g, dtype=torch.float64)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    return PPCA(D, Q).double().set_params(W, mu, torch.tensor(0.5, dtype=torch.float64))


@pytest.fixture(scope="module")
def x(model) -> torch.Tensor:
    """(40, D) float64 draws from the model."""
    torch.manual_seed(1)
    with torch.no_grad():
        z = torch.randn(40, Q, dtype=torch.float64)
        return z @ model.W.T + model.mu + model.sigma2.sqrt() * torch.randn(40, D).double()


def exact_log_px(model: PPCA, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ppca_log_prob(x, model.W, model.mu, model.sigma2)


def exact_posterior(model: PPCA, x: torch.Tensor):
    with torch.no_grad():
        return ppca_posterior(x, model.W, model.mu, model.sigma2)


class MismatchedGuide:
    """q(z | x) = N(m + shift * s, diag(inflate * s)^2), with m the exact posterior mean and
    s^2 the diagonal of the exact posterior covariance: a deliberately wrong mean-field guide.

    With q = 2 and ``inflate`` >= sqrt(2), q's covariance dominates the posterior's, so the
    importance weights p(x, z) / q(z | x) are bounded and their variance is finite.
    """

    def __init__(self, model: PPCA, *, shift: float = 0.5, inflate: float = 2.0):
        self.model, self.shift, self.inflate = model, shift, inflate

    def encode(self, x: torch.Tensor) -> dist.Distribution:
        post = exact_posterior(self.model, x)
        s = post.cov.diagonal().sqrt()
        return dist.Normal(post.mean + self.shift * s, self.inflate * s).to_event(1)

    def __call__(self, x, idx=None, num_data=None):
        with data_plate(x, idx, num_data):
            return pyro.sample(LATENT, self.encode(x))


def gaussian_kl_to_standard(mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, cov) || N(0, I)) per row, textbook formula; mean (N, q), cov (..., q, q)."""
    q = mean.shape[-1]
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    return 0.5 * (trace + mean.square().sum(-1) - q - torch.logdet(cov))


def test_importance_sampling_with_a_mismatched_guide_lands_within_three_stderr(model, x):
    ll = log_likelihood(model, MismatchedGuide(model), x, num_samples=1000)
    exact = exact_log_px(model, x)
    stderr_of_mean = ll.stderr.square().sum().sqrt() / len(x)
    assert stderr_of_mean > 0
    assert abs(ll.log_px.mean() - exact.mean()) < 3 * stderr_of_mean


def test_importance_sampled_log_px_rises_with_k_towards_the_exact_value(model, x):
    """E[log mean_K w] increases with K (Burda et al. 2016) and tends to log p(x); at K = 1
    its gap is the mean KL(q || p(z | x)) > 0.

    The gap shrinks like Var[w] / (2 K); averaging over 2000 rows (each example 50 times) and
    a strongly mismatched guide keep that trend some 4 standard errors above the noise even
    between K = 100 and K = 1000.
    """
    guide = MismatchedGuide(model, shift=1.0, inflate=3.0)
    rows = x.repeat(50, 1)
    exact = exact_log_px(model, x).mean().item()
    means = []
    for k in (1, 10, 100, 1000):
        means.append(log_likelihood(model, guide, rows, num_samples=k).log_px.mean().item())
    assert means == sorted(means)
    assert means[0] < exact - 1
    assert means[-1] < exact + 1e-3
    assert abs(means[-1] - exact) < 0.01


def test_stderr_matches_the_spread_of_independent_estimates(model, x):
    """The same example repeated 400 times gives 400 independent estimates of log p(x): their
    standard deviation is what the reported standard error claims (to sampling error)."""
    rows = x[:1].repeat(400, 1)
    ll = log_likelihood(model, MismatchedGuide(model, inflate=1.6), rows, num_samples=20)
    spread = ll.log_px.std().item()
    assert ll.stderr.mean().item() == pytest.approx(spread, rel=0.2)


def test_exact_guide_gives_exact_log_px_with_zero_stderr_chunked_or_not(model, x, monkeypatch):
    """With the exact posterior every importance weight equals p(x), so any chunking must
    return log p(x) itself with standard error 0."""
    guide = ExactPPCAGuide(model)
    exact = exact_log_px(model, x)
    whole = log_likelihood(model, guide, x, num_samples=50)
    monkeypatch.setattr(evaluation, "MAX_ROWS", 7)  # 1 example x 7 samples per chunk
    chunked = log_likelihood(model, guide, x, num_samples=50)
    for ll in (whole, chunked):
        assert torch.allclose(ll.log_px, exact, rtol=0, atol=1e-10)
        assert ll.stderr.max().item() < 1e-6  # sqrt of a round-off-sized relative variance


def test_chunked_and_unchunked_estimates_agree_within_their_errors(model, x, monkeypatch):
    guide = MismatchedGuide(model)
    whole = log_likelihood(model, guide, x, num_samples=100)
    monkeypatch.setattr(evaluation, "MAX_ROWS", 7)
    chunked = log_likelihood(model, guide, x, num_samples=100)
    assert chunked.log_px.shape == whole.log_px.shape == (len(x),)
    se = (whole.stderr.square() + chunked.stderr.square()).sum().sqrt() / len(x)
    assert abs(whole.log_px.mean() - chunked.log_px.mean()) < 3 * se


def test_elbo_terms_of_the_exact_guide_match_the_closed_form(model, x):
    """ELBO = log p(x); KL = KL(p(z | x) || p(z)); reconstruction = log p(x) + KL."""
    guide = ExactPPCAGuide(model)
    exact = exact_log_px(model, x)
    post = exact_posterior(model, x)
    kl = gaussian_kl_to_standard(post.mean, post.cov)
    # Monte Carlo KL: rec - kl = log p(x, z) - log q(z | x) = log p(x) sample by sample
    mc = elbo_terms(model, guide, x, num_samples=3, analytic=False)
    assert torch.allclose(mc.elbo, exact, rtol=0, atol=1e-10)
    analytic = elbo_terms(model, guide, x, num_samples=2000, analytic=True)
    assert torch.allclose(analytic.kl, kl, rtol=0, atol=1e-10)
    # the reconstruction term is still a Monte Carlo average over 2000 draws of z, with a
    # standard error of about 0.03 nats per row here
    assert torch.allclose(analytic.reconstruction, exact + kl, rtol=0, atol=0.2)
    assert analytic.elbo.mean().item() == pytest.approx(exact.mean().item(), abs=0.02)


def test_analytic_and_monte_carlo_kl_agree(model, x):
    q = MismatchedGuide(model).encode(x)
    closed = gaussian_kl_to_standard(q.mean, torch.diag_embed(q.variance))
    analytic = elbo_terms(model, MismatchedGuide(model), x, num_samples=500, analytic=True)
    assert torch.allclose(analytic.kl, closed, rtol=0, atol=1e-10)
    mc = elbo_terms(model, MismatchedGuide(model), x, num_samples=500, analytic=False)
    diff = mc.kl - closed
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(len(x))
    # the ELBO does not depend on how the KL is computed, only the noise does
    assert mc.elbo.mean().item() == pytest.approx(analytic.elbo.mean().item(), abs=0.05)


def test_active_units_of_a_hand_built_encoder():
    """E_q[z | x] = x A with A = diag(1, 0.05, 0.2): variances over the data are var(x_j)
    times a_j^2, i.e. 1 * v, 0.0025 * v and 0.04 * v for columns of sample variance v."""
    n = 10
    signs = torch.tensor([1.0, -1.0]).repeat(n // 2).double()
    x = signs[:, None].expand(n, 3)
    v = n / (n - 1)  # unbiased variance of n alternating +-1
    A = torch.tensor([1.0, 0.05, 0.2], dtype=torch.float64)

    def guide(x, idx=None, num_data=None):
        with data_plate(x, idx, num_data):
            return pyro.sample(LATENT, dist.Normal(x * A, 1.0).to_event(1))

    count, variances = active_units(guide, x)
    assert count == 2
    assert torch.allclose(variances, v * A.square(), rtol=1e-12, atol=0)
    assert active_units(guide, x, threshold=0.05)[0] == 1


def test_bits_per_dim_by_hand():
    # -D ln 2 nats on D dimensions is one bit per dimension
    assert bits_per_dim(-64 * math.log(2), 64) == pytest.approx(1.0, rel=1e-12)
    # on the 256-level integer grid each dimension costs log2(256) = 8 bits more
    assert bits_per_dim(-64 * math.log(2), 64, levels=256) == pytest.approx(9.0, rel=1e-12)
    # digits: 17 grey levels
    expected = (100 + 64 * math.log(17)) / (64 * math.log(2))
    assert bits_per_dim(-100.0, 64, levels=17) == pytest.approx(expected, rel=1e-12)


def test_evaluate_row_with_the_exact_guide(model, x):
    row = evaluate(model, ExactPPCAGuide(model), x, num_samples=20).iloc[0]
    exact = exact_log_px(model, x)
    assert row.log_px == pytest.approx(exact.mean().item(), abs=1e-10)
    assert row.log_px_stderr < 1e-6
    assert row.log_px_sd == pytest.approx(exact.std().item(), rel=1e-8)
    assert row.bits_per_dim == pytest.approx(-row.log_px / (D * math.log(2)), rel=1e-12)
    assert row.active_units == Q


@cuda
def test_on_cuda_the_chunk_size_comes_from_free_memory_and_the_answer_is_unchanged(model, x):
    cuda_model = PPCA(D, Q).double().cuda()
    cuda_model.load_state_dict(model.state_dict())
    guide = ExactPPCAGuide(cuda_model)
    pair = evaluation.scored_pair(cuda_model, guide, x.cuda(), None, "data")
    rows = evaluation._chunk_rows(pair, x.cuda(), None)
    assert evaluation.ROW_LIMITS[0] <= rows <= evaluation.ROW_LIMITS[1]
    ll = log_likelihood(cuda_model, guide, x.cuda(), num_samples=50)
    torch.testing.assert_close(ll.log_px.cpu(), exact_log_px(model, x), rtol=0, atol=1e-10)
