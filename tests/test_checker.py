"""One faulty pair per checker message: each message names the problem and what to change."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppvae import FitConfig, ModelGuideError, check, fit, problems
from ppvae.config import ArchConfig, DataShape
from ppvae.guides import GUIDES
from ppvae.models import MODELS
from ppvae.models.sites import DATA, LATENT, data_plate
from ppvae.objectives import ScoreFunctionLatent

B, D, Q = 10, 64, 2


@pytest.fixture
def model():
    return MODELS["bernoulli"](ArchConfig(z_dim=Q, hidden=(8,)), DataShape(D, None, B))


@pytest.fixture
def x():
    return torch.rand(B, D)


def normal(x, q=Q):
    return dist.Normal(x.new_zeros(x.shape[0], q), 1.0).to_event(1)


def only(found: list[str]) -> str:
    assert len(found) == 1, found
    return found[0]


def test_a_sound_pair_has_no_problems(model, x):
    assert problems(model, GUIDES["diag"](ArchConfig(z_dim=Q), DataShape(D, None, B)), x) == []


def test_guide_site_that_the_model_lacks(model, x):
    def guide(x, idx=None, num_data=None):
        with data_plate(x, idx, num_data):
            pyro.sample(LATENT, normal(x))
            pyro.sample("u", normal(x))

    msg = only(problems(model, guide, x))
    assert "guide samples 'u' but the model has no latent site 'u'" in msg
    assert "rename it to one of the model's latent sites (z) or remove it" in msg


def test_model_latent_site_without_guide_site(model, x):
    def guide(x, idx=None, num_data=None):
        with data_plate(x, idx, num_data):
            pyro.sample("w", normal(x))

    found = problems(model, guide, x)
    assert any("the guide must sample 'z'" in m for m in found), found
    assert any("has no guide site" in m for m in found)


def test_event_shape_mismatch(model, x):
    def bad(x, idx=None, num_data=None):
        with data_plate(x, idx, num_data):
            pyro.sample(LATENT, normal(x, q=3))

    msg = only(problems(model, bad, x))
    assert "event shape (3,) in the guide but (2,) in the model" in msg
    assert "try .to_event(1)" in msg


def test_batch_shape_mismatch(model, x):
    def guide(x, idx=None, num_data=None):
        pyro.sample(LATENT, dist.Normal(x.new_zeros(1, Q), 1.0).to_event(1))

    found = problems(model, guide, x)
    (msg,) = [m for m in found if "batch shape" in m]
    assert f"batch shape (1,) in the guide but ({B},) in the model" in msg
    assert "one row per example in both" in msg


def test_missing_data_plate(model, x):
    def guide(x, idx=None, num_data=None):
        pyro.sample(LATENT, normal(x))

    msg = only(problems(model, guide, x))
    assert "the guide samples 'z' outside the data plate but the model inside it" in msg
    assert "wrap it in `with pyro.plate('data', x.shape[0]):` in both" in msg


def test_plate_data_size_mismatch(model, x):
    def guide(x, idx=None, num_data=None):
        with pyro.plate(DATA, 3 * B, subsample=idx):  # ignores num_data
            pyro.sample(LATENT, normal(x))

    idx = torch.arange(B)
    msg = only(problems(model, guide, x, idx=idx, num_data=2 * B))
    assert f"covers {2 * B} examples in the model but {3 * B} in the guide" in msg
    assert "open the plate with the num_data that fit passes" in msg


def test_plate_size_mismatch(model, x):
    def guide(x, idx=None, num_data=None):
        with pyro.plate(DATA, B, subsample=torch.arange(B // 2)):
            pyro.sample(LATENT, normal(x[: B // 2]))

    found = problems(model, guide, x)
    (msg,) = [m for m in found if "data plate has size" in m]
    assert f"the data plate has size {B} in the model but {B // 2} in the guide" in msg
    assert "pass the same idx and num_data to both" in msg


class ForgetfulGuide(nn.Module):
    """An encoder that never calls pyro.module: its weights are invisible to SVI."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(D, Q)

    def forward(self, x, idx=None, num_data=None):
        with data_plate(x, idx, num_data):
            pyro.sample(LATENT, dist.Normal(self.net(x), 1.0).to_event(1))


def test_unregistered_parameters(model, x):
    msg = only(problems(model, ForgetfulGuide(), x))
    assert "the guide has parameters that Pyro never sees (net.weight, net.bias)" in msg
    assert "pyro.module('guide', self)" in msg


def test_non_reparameterizable_guide_with_a_reparameterized_objective(model, x):
    guide = ScoreFunctionLatent()(GUIDES["diag"](ArchConfig(z_dim=Q), DataShape(D, None, B)))
    msg = only(problems(model, guide, x, objective="trace"))
    assert "cannot be reparameterized, but objective 'trace' assumes it is" in msg
    assert "choose objective 'score' or 'score-baseline'" in msg
    assert problems(model, guide, x, objective="score") == []


def test_a_failing_guide_is_reported_with_the_batch_shape(model, x):
    def guide(x, idx=None, num_data=None):
        raise RuntimeError("boom")

    msg = only(problems(model, guide, x))
    assert msg.startswith(f"the guide failed on a batch of shape {(B, D)}: boom")
    assert "\n" not in msg  # Pyro's trace-shape dump is dropped: one line on the CLI


def test_check_raises_with_every_problem_and_fit_runs_it(model, x):
    def guide(x, idx=None, num_data=None):
        pyro.sample(LATENT, normal(x, q=3))

    with pytest.raises(ModelGuideError, match="event shape .* outside the data plate"):
        check(model, guide, x)
    with pytest.raises(ModelGuideError, match="event shape"):
        fit(model, guide, x, FitConfig(epochs=1, device="cpu"), progress=False)
