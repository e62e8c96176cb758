"""Pairs that used to train or score silently wrong, or fail with a raw torch error: each is now
refused in one line, or taken as Pyro means it."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppvae import FitConfig
from ppvae.data import Dataset
from ppvae.errors import ModelGuideError
from ppvae.evaluation.bounds import elbo_terms, log_likelihood
from ppvae.infer.fitting import fit
from ppvae.pairs import batched
from ppvae.pairs.checker import check
from ppvae.pairs.losses import lean_loss

CONFIG = FitConfig(epochs=2, batch_size=10, device="cpu", lr=0.05, test_samples=2)


def regression(x, y=None):
    """Pyro's regression tutorial, in short: y observed only when it is given."""
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)


def regression_guide(x, y=None):
    loc = pyro.param("loc", torch.zeros(2))
    pyro.sample("w", dist.Normal(loc, 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(0.0, 1.0))  # what an AutoGuide does with a latent y


def test_a_model_whose_observation_arrived_as_none_is_refused_naming_it():
    x = torch.randn(20, 2)
    with pytest.raises(ModelGuideError) as err:
        fit(regression, regression_guide, x, CONFIG)
    assert str(err.value) == (
        "the model observes nothing inside the plate 'data': its argument 'y' arrived as "
        "None, so it samples what it should observe: pass the data, e.g. fit(model, guide, "
        "(x, y))"
    )


class Completion(torch.nn.Module):
    """Pyro's cvae example in short: a frozen plain network guesses the hidden pixels, and
    without ``ys`` the model only records its prediction with ``pyro.deterministic``."""

    def __init__(self):
        super().__init__()
        self.baseline = torch.nn.Linear(3, 3)
        self.prior = torch.nn.Linear(3, 2)
        self.recognition = torch.nn.Linear(4, 2)

    def model(self, xs, ys=None):
        pyro.module("completion", self)
        with pyro.plate("data"):
            with torch.no_grad():
                guess = self.baseline(xs)
            z = pyro.sample("z", dist.Normal(self.prior(guess), 1.0).to_event(1))
            if ys is not None:
                pyro.sample("y", dist.Normal(z.sum(-1), 1.0), obs=ys)
            else:
                pyro.deterministic("y", z.sum(-1).detach())

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                loc = self.prior(self.baseline(xs))
            else:
                loc = self.recognition(torch.cat([xs, ys[:, None]], -1))
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))


def test_a_recorded_prediction_is_not_an_observation():
    """Called with xs alone, the cvae's only 'observed' site is a pyro.deterministic record:
    it used to train (an ELBO of exactly 0) and move the frozen plain network's weights."""
    pyro.clear_param_store()
    pair, xs = Completion(), torch.randn(20, 3)
    before = pair.baseline.weight.detach().clone()
    with pytest.raises(ModelGuideError, match="its argument 'ys' arrived as None"):
        fit(pair.model, pair.guide, xs, CONFIG)
    assert torch.equal(pair.baseline.weight, before)
    fit(pair.model, pair.guide, (xs, torch.randn(20)), CONFIG)  # with ys: it trains
    assert torch.equal(pair.baseline.weight, before)  # and the plain network stays frozen


def unsized(x):
    with pyro.plate("data"):  # Pyro's ss-vae and cvae: the size comes from the batch
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])


def unsized_guide(x):
    with pyro.plate("data"):
        pyro.sample("z", dist.Normal(x[:, 0] / 2, math.sqrt(0.5)))


def test_an_unsized_data_plate_takes_its_size_from_the_batch():
    """Scaled by N / B like a batch-sized plate: with the exact posterior guide, the training
    loss of one batch is -N / B times its rows' exact log-likelihood (x ~ N(0, 2))."""
    x = torch.randn(40, 1)
    check(unsized, unsized_guide, x[:10], num_data=40)
    loss = lean_loss(
        "trace", batched(unsized), batched(unsized_guide), num_particles=1, nesting=1, plate="data"
    )
    exact = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x[:10, 0]).sum()
    assert loss(x[:10], None, 40).item() == pytest.approx(-4 * exact.item(), rel=1e-5)


def subsampled(x):
    m = pyro.param("m", torch.zeros(()))
    with pyro.plate("data", x.shape[0], subsample_size=5) as ind:
        z = pyro.sample("z", dist.Normal(m + x.new_zeros(len(ind)), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[ind, 0])


def subsampled_guide(x):
    with pyro.plate("data", x.shape[0], subsample_size=5) as ind:
        pyro.sample("z", dist.Normal(x[ind, 0] / 2, math.sqrt(0.5)))


def test_a_plate_the_model_subsamples_itself_is_refused_for_scoring_in_one_line():
    x, line = torch.randn(30, 1), "the model draws 5 rows of its plate 'data' at random itself"
    for score in (log_likelihood, elbo_terms):
        with pytest.raises(ModelGuideError, match=line + r" \(subsample_size=5\): scoring"):
            score(subsampled, subsampled_guide, x)
    with pytest.raises(ModelGuideError, match=line + ".*: the test ELBO of every epoch"):
        fit(subsampled, subsampled_guide, Dataset("d", x, x[:20], None), CONFIG)
    assert len(fit(subsampled, subsampled_guide, x, CONFIG).history) == 2  # trains as before


def test_check_calls_each_group_of_partly_observed_data_as_fit_does():
    """Rows whose y is NaN are checked with y=None: there the regression observes nothing."""
    x, y = torch.randn(20, 2), torch.randn(20)

    def guide(x, y=None):
        regression_guide(x, y) if y is None else pyro.sample(
            "w", dist.Normal(torch.zeros(2), 1).to_event(1)
        )

    check(regression, guide, (x, y))  # y observed everywhere: sound
    y[5:] = math.nan
    with pytest.raises(ModelGuideError, match="observes nothing .* argument 'y' arrived as None"):
        check(regression, guide, (x, y))


def test_a_guide_that_takes_x_alone_is_refused_on_two_tensors():
    """ppvae's own guides are f(x, idx=None, num_data=None): a second tensor would land in idx
    (it used to fail with "got multiple values for argument 'idx'")."""
    from ppvae.config import ArchConfig, DataShape
    from ppvae.guides import GUIDES
    from ppvae.models import MODELS

    shape = DataShape(6, None, 20, classes=3)
    model = MODELS["m2"](ArchConfig(hidden=(8,)), shape)
    guide = GUIDES["diag"](ArchConfig(hidden=(8,)), shape, model)
    x, y = torch.rand(20, 6).round(), torch.eye(3)[torch.arange(20) % 3]
    with pytest.raises(ModelGuideError) as err:
        fit(model, guide, (x, y), FitConfig(epochs=1, objective="enum"))
    assert str(err.value).startswith(
        "the guide's signature does not fit the data: it takes 1 tensor(s) (x) before ppvae's "
        "idx and num_data, but the data is 2 tensors"
    )
    with pytest.raises(ModelGuideError, match="the data's key 'idx' is ppvae's own argument"):
        check(model, guide, {"x": x, "idx": y})


def test_a_pyro_model_may_name_its_own_argument_idx():
    """Only ppvae's convention (idx and num_data both) fills idx itself: a Pyro model(x, idx)
    takes the data's second tensor there, as Pyro would call it."""

    def model(x, idx):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(idx, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, idx):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 1.0))

    check(model, guide, (torch.randn(20), torch.arange(20.0)))


def test_a_global_deterministic_record_is_not_an_observation_outside_the_plate():
    """pyro.deterministic("twice", 2 * mu) outside the plate records a value: the checker
    neither calls it an observation outside the data plate nor takes it for the data."""

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.deterministic("twice", 2 * mu)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    pyro.clear_param_store()
    check(model, guide, torch.randn(10))
