"""Per-datapoint guides: row-wise gradients, and refinement of an amortized guide."""

import pytest
import torch
from pyro.infer import Trace_ELBO

from ppvae import ArchConfig, DataShape, FitConfig, fit, load_dataset
from ppvae.evaluate import elbo_terms
from ppvae.guides import GUIDES
from ppvae.guides.amortized import DiagonalNormalHead
from ppvae.guides.local import LocalGuide, amortization_gap, refine
from ppvae.models import MODELS


def test_a_minibatch_moves_only_its_own_rows():
    model = MODELS["bernoulli"](ArchConfig(z_dim=2, hidden=(8,)), DataShape(64, None, 20))
    guide = LocalGuide(DiagonalNormalHead(2), num_data=20)
    idx = torch.tensor([3, 7, 11])
    x = torch.rand(20, 64).round()
    Trace_ELBO().differentiable_loss(model, guide, x[idx], idx, num_data=20).backward()
    grad = guide.local.grad
    touched = grad.abs().sum(1) > 0
    assert touched.nonzero().flatten().tolist() == idx.tolist()


@pytest.fixture(scope="module")
def trained():
    """A digits VAE trained for 3 epochs, and 40 held-out examples."""
    data = load_dataset("digits", binarize="static")
    arch = ArchConfig(z_dim=4, hidden=(32,), context_dim=4)
    shape = DataShape(64, data.image_shape, data.train.shape[0])
    model = MODELS["bernoulli"](arch, shape)
    guides = {}
    for name in ("diag", "flow"):
        guide = GUIDES[name](arch, shape, model)
        fit(model, guide, data, FitConfig(epochs=3, device="cpu"), progress=False)
        guides[name] = guide
    return model, guides, data.test[:40]


@pytest.mark.parametrize("name", ["diag", "flow"])
def test_refinement_never_lowers_any_examples_elbo(trained, name):
    model, guides, x = trained
    result = refine(model, guides[name], x, steps=30, eval_samples=20, eval_every=5)
    assert (result.refined_elbo >= result.amortized_elbo).all()
    assert (result.refined_elbo > result.amortized_elbo).float().mean() > 0.5
    # the amortized ELBO is the encoder's, evaluated the same way (same seed, same draws)
    torch.manual_seed(0)
    encoder = elbo_terms(model, guides[name], x, num_samples=20).elbo
    torch.testing.assert_close(result.amortized_elbo, encoder)
    # the guide returned holds each row's best parameters
    torch.manual_seed(0)
    idx = torch.arange(len(x))
    kept = elbo_terms(model, result.guide, x, idx=idx, num_samples=20).elbo
    torch.testing.assert_close(kept, result.refined_elbo)


def test_amortization_gap_is_positive_beyond_noise(trained):
    model, guides, x = trained
    gap = amortization_gap(model, guides["diag"], x, steps=60, eval_samples=50).iloc[0]
    assert gap.gap == pytest.approx(gap.refined_elbo - gap.amortized_elbo, abs=1e-5)
    assert gap.gap > 3 * gap.gap_stderr > 0
    # an independent evaluation with fresh draws agrees that refinement helped
    result = refine(model, guides["diag"], x, steps=60, eval_samples=50)
    idx = torch.arange(len(x))
    torch.manual_seed(123)
    fresh_refined = elbo_terms(model, result.guide, x, idx=idx, num_samples=200).elbo
    fresh_amortized = elbo_terms(model, guides["diag"], x, num_samples=200).elbo
    assert (fresh_refined - fresh_amortized).mean() > 0


def test_refine_needs_an_encoder():
    guide = LocalGuide(DiagonalNormalHead(2), num_data=5)
    with pytest.raises(ValueError, match="amortized guide with a net and a head"):
        refine(None, guide, torch.zeros(5, 64), steps=1)
