"""Per-datapoint guides: row-wise gradients, refinement of a guide's output, how fit scores
a guide with no parameters for the test rows, and the param store hint."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from ppvae import (
    ArchConfig,
    DataShape,
    FitConfig,
    ModelGuideError,
    check,
    evaluate,
    fit,
    load_dataset,
)
from ppvae.evaluation.metrics import elbo_terms
from ppvae.guides import GUIDES
from ppvae.guides.amortized import DiagonalNormalHead
from ppvae.guides.local import LocalGuide
from ppvae.guides.refine import amortization_gap, refine
from ppvae.models import MODELS
from tests.test_user_pairs import TutorialVAE


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


@pytest.mark.parametrize("rows", [1, 65, 200, 360])
def test_refinement_takes_any_number_of_rows(trained, rows):
    """Past the 64 rows the pair is probed on (notebook 03 failed at 200): refinement starts
    from exactly the encoder's ELBO, row for row, and the gap is computed for every row."""
    model, guides, _ = trained
    x = load_dataset("digits", binarize="static").test[:rows]
    result = refine(model, guides["diag"], x, steps=2, eval_samples=5)
    torch.manual_seed(0)
    torch.testing.assert_close(
        result.amortized_elbo, elbo_terms(model, guides["diag"], x, num_samples=5).elbo
    )
    gap = amortization_gap(model, guides["diag"], x, steps=2, eval_samples=5).iloc[0]
    assert gap.num_examples == len(x) and gap.gap == pytest.approx(
        gap.refined_elbo - gap.amortized_elbo, abs=1e-5
    )


@pytest.fixture(scope="module")
def tutorial():
    """Pyro's tutorial VAE (model(x), guide(x), its own site names) trained 5 epochs."""
    data = load_dataset("digits", binarize="static")
    torch.manual_seed(0)
    vae = TutorialVAE(z_dim=4, hidden_dim=32)
    fit(vae.model, vae.guide, data, FitConfig(epochs=5, device="cpu"), progress=False)
    return vae, data.test[:40]


def test_a_users_guide_is_refined_in_its_own_family(tutorial):
    """The tutorial guide's Normal(loc, scale) at 'latent' is freed row by row: refinement
    starts from exactly the guide's ELBO (same draws) and never lowers any row's."""
    vae, x = tutorial
    result = refine(vae.model, vae.guide, x, steps=30, eval_samples=20, eval_every=5)
    assert [site.name for site in result.guide.sites] == ["latent"]
    torch.manual_seed(0)
    encoder = elbo_terms(vae.model, vae.guide, x, num_samples=20).elbo
    torch.testing.assert_close(result.amortized_elbo, encoder)
    assert (result.refined_elbo >= result.amortized_elbo).all()
    assert (result.refined_elbo > result.amortized_elbo).float().mean() > 0.5
    gap = amortization_gap(vae.model, vae.guide, x, steps=60, eval_samples=50).iloc[0]
    assert gap.gap > 3 * gap.gap_stderr > 0


def test_a_guide_without_parameters_of_its_own_cannot_be_refined():
    flow = dist.TransformedDistribution(
        dist.Normal(torch.zeros(5, 2), 1.0).to_event(1), [dist.transforms.ExpTransform()]
    )

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", flow)

    with pytest.raises(ValueError, match="cannot refine site 'z': its TransformedDistribution"):
        refine(None, guide, torch.zeros(5, 64), steps=1)


def test_a_global_latent_is_not_refined():
    def guide(x):
        pyro.sample("shift", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="cannot refine the global latent site 'shift'"):
        refine(None, guide, torch.zeros(5, 64), steps=1)


@pytest.fixture(scope="module")
def local_fit():
    """GUIDES["local"] fitted 2 epochs on digits as the README builds it (a tiny net, 20
    refinement steps, 100 test rows), and its history."""
    full = load_dataset("digits", binarize="static")
    data = full._replace(test=full.test[:100], test_labels=None)
    arch = ArchConfig(z_dim=2, hidden=(16,))
    shape = DataShape(64, data.image_shape, data.train.shape[0])
    model = MODELS["bernoulli"](arch, shape)
    guide = GUIDES["local"](arch, shape, model)
    guide.refine_steps = 20
    config = FitConfig(epochs=2, batch_size=256, device="cpu", seed=3)
    history = fit(model, guide, data, config, progress=False).history
    return model, guide, data.test, config, history


def test_fit_scores_a_local_guide_by_refining_psi_on_the_test_rows(local_fit):
    """The test ELBO of a guide with no parameters for the test rows is the ELBO once psi is
    refined on them (the model fixed): exactly what refine gives from the same seed."""
    model, guide, test, config, history = local_fit
    assert history.test_elbo.notna().all() and (history.test_elbo < 0).all()
    torch.manual_seed(config.seed)  # as fit does, aside from its training draws
    result = refine(model, guide, test, steps=20, lr=0.05, eval_samples=10, seed=config.seed)
    idx = torch.arange(len(test))
    terms = elbo_terms(model, result.guide, test, idx=idx, num_samples=1)
    last = history.iloc[-1]
    assert last.test_elbo == terms.elbo.mean().item()
    assert last.test_kl == terms.kl.mean().item()
    # and it agrees with refine's own (10-draw, best-checkpoint) estimate within the noise
    gap = terms.elbo - result.refined_elbo
    assert abs(gap.mean()) < 4 * gap.std() / len(test) ** 0.5
    # refinement did something: it ends above its start (psi = 0) row for row
    assert (result.refined_elbo >= result.amortized_elbo).all()
    assert result.refined_elbo.mean() > result.amortized_elbo.mean() + 0.1


def test_a_per_datapoint_guide_that_cannot_refine_says_so():
    """Not amortized, and no refined(): NaN in the history, with one warning line saying why."""

    x = load_dataset("digits", binarize="static")
    data = x._replace(test=x.test[:20])
    shape = DataShape(64, None, len(data.train))
    model = MODELS["bernoulli"](ArchConfig(z_dim=2, hidden=(8,)), shape)
    local = LocalGuide(DiagonalNormalHead(2), len(data.train))

    def guide(x, idx=None, num_data=None):
        return local(x, idx, num_data)

    guide.amortized = False
    config = FitConfig(epochs=1, batch_size=512, device="cpu")
    with pytest.warns(UserWarning, match=r"test_elbo is NaN: the guide \(function\) is not amort"):
        history = fit(model, guide, data, config, progress=False).history
    assert history.test_elbo.isna().all()


def _linear_pair(rows: int, z_dim: int):
    """A model whose weight W (rows, 64) is a pyro.param, and a guide with z of z_dim."""

    def model(x):
        W = pyro.param("W", torch.zeros(rows, 64))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(len(x), z_dim), 1.0).to_event(1))

    return model, guide


def test_no_param_store_hint_when_the_pair_fails_on_its_own():
    """Right after clear_param_store, a pair that is wrong by itself (W has 3 rows, z has 2)
    gets no "clear the param store" hint, though its own W is in the store by then."""
    pyro.clear_param_store()
    with pytest.raises(ModelGuideError) as err:
        check(*_linear_pair(3, 2), torch.rand(10, 64))
    assert "cannot be multiplied" in str(err.value)
    assert "param store" not in str(err.value) and "W" in pyro.get_param_store()


def test_the_hint_names_a_stale_entry_and_leaves_the_store_as_it_was():
    """A W of 2 rows left by an earlier pair breaks a pair that creates W with 4: the hint
    names it with both shapes; the store still holds the old W afterwards."""
    check(*_linear_pair(2, 2), torch.rand(10, 64))
    with pytest.raises(ModelGuideError, match=r"cannot be multiplied") as err:
        check(*_linear_pair(4, 4), torch.rand(10, 64))
    assert str(err.value).endswith(
        "(the param store holds 'W' of shape (2, 64) where this pair creates (4, 64), from an "
        "earlier run: call pyro.clear_param_store() first)"
    )
    assert pyro.get_param_store()["W"].shape == (2, 64)


def test_evaluate_with_idx_counts_active_units_over_the_rows_given():
    """A per-datapoint guide scored on training rows by idx: active_units is kept, and is the
    number of coordinates of E_q[z] = mu_n whose variance over those rows exceeds 0.01."""
    x = load_dataset("digits", binarize="static").train[:50]
    model = MODELS["bernoulli"](ArchConfig(z_dim=3, hidden=(8,)), DataShape(64, None, 50))
    init = torch.zeros(50, 6)
    init[:, 0] = torch.linspace(-1, 1, 50)  # variance 0.35 over all rows
    init[:25, 1] = 0.5  # varies only across the first half
    guide = LocalGuide(DiagonalNormalHead(3), 50, init=init)
    idx = torch.arange(25, 50)  # second half: coordinate 1 is constant there
    row = evaluate(model, guide, x[idx], idx=idx, num_samples=10).iloc[0]
    assert row.active_units == 1
    row = evaluate(model, guide, x, idx=torch.arange(50), num_samples=10).iloc[0]
    assert row.active_units == 2


def test_a_run_folder_scores_a_local_guide_on_refined_test_rows(tmp_path):
    """``ppvae train --guide local`` writes metrics.csv (it has no encoder for the test rows:
    their psi are refined with the model fixed), not nothing: a finite ELBO below the
    importance-sampled log p(x) of the same refined guide, and the history's last test ELBO,
    scored the same way, within Monte Carlo noise of it."""
    from ppvae.experiments.run import RunConfig, train

    run = RunConfig(
        guide="local", arch=ArchConfig(z_dim=2, hidden=(16,)), eval_samples=50,
        fit=FitConfig(epochs=2, device="cpu"),
    )  # fmt: skip
    result = train(run, tmp_path / "run", progress=False)
    metrics = result.metrics.iloc[0]
    assert (tmp_path / "run" / "metrics.csv").is_file()
    assert (
        math.isfinite(metrics.elbo) and metrics.elbo <= metrics.log_px + 4 * metrics.log_px_stderr
    )
    last = result.fit.history.test_elbo.iloc[-1]
    assert abs(last - metrics.elbo) < 0.5
