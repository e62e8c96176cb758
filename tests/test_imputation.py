"""Imputation against the exact PPCA conditional: the importance-weighted mean converges to it
within its standard error, SIR draws have its mean and covariance, the exact guide has uniform
weights; blocks of samples merge exactly; a fitted PPCA imputes exactly with the same call."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppvae.baselines import EMPPCA, PPCAParams, impute_samples
from ppvae.baselines import PPCA as ClosedFormPPCA
from ppvae.baselines import impute as exact_impute
from ppvae.baselines.missing import observed_posterior
from ppvae.config import ArchConfig, ConfigError, DataShape
from ppvae.data import DataError, load_dataset
from ppvae.data.missing import mcar_mask, observed, with_missing
from ppvae.evaluation.imputation import Imputation, _Block, _merge, impute
from ppvae.guides import GUIDES
from ppvae.models import MODELS, PPCA
from ppvae.models.sites import LATENT, data_plate
from tests.baselines.test_missing import dense_conditional

F64 = torch.float64
D, Q = 6, 2


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ppca() -> tuple[PPCA, PPCAParams]:
    g = seeded(0)
    W = torch.randn(D, Q, generator=g, dtype=F64)
    mu = torch.randn(D, generator=g, dtype=F64)
    sigma2 = torch.tensor(0.3, dtype=F64)
    return PPCA(D, Q, missing=True).double().set_params(W, mu, sigma2), PPCAParams(W, mu, sigma2)


@pytest.fixture(scope="module")
def rows(ppca) -> torch.Tensor:
    """(20, D) float64 draws from the PPCA, half of the entries missing."""
    W, mu, sigma2 = ppca[1]
    g = seeded(1)
    z = torch.randn(20, Q, generator=g, dtype=F64)
    x = z @ W.T + mu + sigma2.sqrt() * torch.randn(20, D, generator=g, dtype=F64)
    return with_missing(x, mcar_mask(x.shape, 0.5, g))


class OffGuide(torch.nn.Module):
    """The exact observed-data posterior shifted by 0.2 and with 1.5 times its covariance: a
    proposal whose importance weights are far from uniform (an ESS of 35% to 80% of K)."""

    def __init__(self, model: PPCA):
        super().__init__()
        object.__setattr__(self, "model", model)

    def forward(self, x, idx=None, num_data=None):
        m = self.model
        filled, mask = observed(x - m.mu)
        post = observed_posterior(filled, mask.to(x.dtype), m.W, m.sigma2)
        q = dist.MultivariateNormal(post.mean + 0.2, covariance_matrix=1.5 * post.cov)
        with data_plate(x, idx, num_data):
            pyro.sample(LATENT, q)


def test_the_weighted_mean_converges_to_the_exact_conditional_within_its_stderr(ppca, rows):
    """Error / stderr behaves like a standard normal at every K, and the error falls like
    1 / sqrt(K): 100 times the samples, about a tenth of the error (5 to 17 times less over
    seeds, with 60 entries)."""
    model, params = ppca
    exact = exact_impute(rows, params)
    missing = rows.isnan()
    errors = []
    for k in (100, 10_000):
        result = impute(model, OffGuide(model), rows, num_samples=k, generator=seeded(k))
        error = (result.mean - exact)[missing]
        z = error / result.stderr[missing]
        assert 0.3 < z.square().mean() < 2.5, (k, z)  # about 1; 60 entries
        assert (result.ess < 0.9 * k).all() and (result.ess > 0.2 * k).all()
        errors.append(error.square().mean().sqrt().item())
    assert errors[1] < errors[0] / 4 and errors[1] < 0.03, errors


def test_the_exact_guide_gives_uniform_weights(ppca, rows):
    model, params = ppca
    guide = GUIDES["masked-ppca-exact"](
        ArchConfig(z_dim=Q), DataShape(D, None, 20, missing=True), model
    )
    result = impute(model, guide, rows, num_samples=500, generator=seeded(0))
    torch.testing.assert_close(result.ess, torch.full((20,), 500.0, dtype=F64))
    z = ((result.mean - exact_impute(rows, params)) / result.stderr)[rows.isnan()]
    assert z.square().mean() < 2.5


def test_multiple_imputations_draw_from_the_exact_conditional(ppca, rows):
    """SIR with a poor proposal and K = 4000: the M = 4000 draws of a row's missing block have
    the conditional mean and covariance of the Gaussian, within sampling error."""
    model, params = ppca
    x = rows[:2]
    result = impute(
        model, OffGuide(model), x, num_samples=4000, multiple=4000, generator=seeded(3)
    )
    observed_ = ~x.isnan()
    assert torch.equal(result.samples[:, observed_], x[observed_].expand(4000, -1))
    for i in range(2):
        m = x[i].isnan()
        mean, cov = dense_conditional(x[i], params)
        draws = result.samples[:, i, m]
        z = (draws.mean(0) - mean) / (cov.diagonal() / 4000).sqrt()
        assert z.abs().max() < 4.5
        torch.testing.assert_close(
            torch.cov(draws.T).reshape(cov.shape), cov, rtol=0, atol=0.1 * cov.max().item()
        )


def block(log_w: torch.Tensor, f: torch.Tensor) -> _Block:
    """A block's summary computed straight from its definition."""
    w = log_w.softmax(0)
    mean = (w[..., None] * f).sum(0)
    w2 = w.square()[..., None]
    dev = f - mean
    return _Block(
        log_w.logsumexp(0), mean, w2.sum(0)[..., 0], (w2 * dev).sum(0), (w2 * dev**2).sum(0), {}
    )


def test_blocks_of_samples_merge_into_the_summary_of_all_of_them():
    g = seeded(4)
    log_w = 3 * torch.randn(30, 5, generator=g, dtype=F64)
    f = torch.randn(30, 5, 4, generator=g, dtype=F64)
    whole = block(log_w, f)
    parts = [block(log_w[a:b], f[a:b]) for a, b in ((0, 7), (7, 8), (8, 30))]
    _, mean, sq, quad = _merge(parts)
    torch.testing.assert_close(mean, whole.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(sq, whole.sq, rtol=0, atol=1e-12)
    torch.testing.assert_close(quad, whole.quad, rtol=0, atol=1e-12)


def test_blocks_and_chunks_of_rows_give_the_same_answer_within_its_stderr(ppca, rows, monkeypatch):
    model, params = ppca
    exact = exact_impute(rows, params)
    monkeypatch.setattr(
        "ppvae.evaluation.imputation.MAX_ROWS", 64
    )  # blocks of 16 samples for 4 rows
    result = impute(model, OffGuide(model), rows, num_samples=200, multiple=2, generator=seeded(5))
    assert result.samples.shape == (2, 20, D)
    z = ((result.mean - exact) / result.stderr)[rows.isnan()]
    assert 0.3 < z.square().mean() < 2.5


@pytest.fixture(scope="module")
def digits_pair():
    data = load_dataset("digits", binarize="static")
    arch, shape = ArchConfig(z_dim=2, hidden=(16,)), DataShape(64, (1, 8, 8), 100, missing=True)
    torch.manual_seed(0)
    model = MODELS["bernoulli"](arch, shape)
    x = with_missing(data.test[:10], mcar_mask((10, 64), 0.3, seeded(0)))
    return model, GUIDES["masked-diag"](arch, shape, model), x


def test_observed_entries_stay_and_a_generator_makes_it_reproducible(digits_pair):
    model, guide, x = digits_pair
    before = torch.get_rng_state()
    first = impute(model, guide, x, num_samples=20, multiple=3, generator=seeded(0))
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is left alone
    again = impute(model, guide, x, num_samples=20, multiple=3, generator=seeded(0))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    observed_ = ~x.isnan()
    assert torch.equal(first.mean[observed_], x[observed_])
    assert torch.equal(first.stderr[observed_], torch.zeros(int(observed_.sum())))
    assert first.samples.shape == (3, 10, 64) and first.ess.shape == (10,)
    missing = first.samples[:, ~observed_]
    assert ((missing == 0) | (missing == 1)).all()  # Bernoulli draws
    assert (first.mean >= 0).all() and (first.mean <= 1).all()


def test_an_explicit_mask_is_the_nan_form(digits_pair):
    model, guide, x = digits_pair
    complete = x.nan_to_num(0.0)
    by_mask = impute(model, guide, complete, ~x.isnan(), num_samples=5, generator=seeded(1))
    by_nan = impute(model, guide, x, num_samples=5, generator=seeded(1))
    assert torch.equal(by_mask.mean, by_nan.mean)


def test_a_fitted_ppca_imputes_exactly_with_the_same_call(rows):
    fitted = EMPPCA(n_components=Q, max_iter=20).fit(rows)
    result = impute(fitted, None, rows, multiple=3, generator=seeded(0))
    assert isinstance(result, Imputation)
    assert torch.equal(result.mean, fitted.impute(rows))
    assert torch.equal(result.samples, impute_samples(rows, fitted.params_, 3, seeded(0)))
    assert torch.isinf(result.ess).all() and (result.stderr == 0).all()
    assert impute(fitted, None, rows).samples.shape == (0, 20, D)
    with pytest.raises(ConfigError, match="pass guide=None"):
        impute(
            fitted, GUIDES["masked-diag"](ArchConfig(), DataShape(D, None, 20, missing=True)), rows
        )


@pytest.mark.parametrize(
    "mask, expected",
    [
        (torch.ones(10, 63, dtype=torch.bool), r"mask has shape \(10, 63\)"),
        (torch.ones(10, 64), "boolean tensor"),
        (torch.ones(10, 64, dtype=torch.bool).index_fill(0, torch.tensor([4]), False), "row 4"),
    ],
    ids=["shape", "dtype", "empty-row"],
)
def test_bad_masks_get_one_line_errors_from_both_methods(digits_pair, rows, mask, expected):
    model, guide, x = digits_pair
    g = seeded(6)
    fitted = ClosedFormPPCA.from_params(
        torch.randn(64, 1, generator=g, dtype=F64), torch.zeros(64), 0.5
    )
    for call in (lambda: impute(model, guide, x, mask), lambda: impute(fitted, None, x, mask)):
        with pytest.raises(DataError, match=expected) as err:
            call()
        assert "\n" not in str(err.value)


def test_counts_are_checked(digits_pair):
    model, guide, x = digits_pair
    with pytest.raises(ConfigError, match="num_samples >= 1"):
        impute(model, guide, x, num_samples=0)
    assert math.isfinite(impute(model, guide, x, num_samples=1).mean.sum().item())
