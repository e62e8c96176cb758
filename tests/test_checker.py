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
from ppvae.pairs.objectives import ScoreFunctionLatent

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


# --- users' own code, written the way Pyro's tutorials write it: model(x), their own names ---


def tutorial_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("latent", normal(x))


def tutorial_model(likelihood):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", normal(x))
            pyro.sample("obs", likelihood(x).to_event(1), obs=x)

    return model


def test_a_tutorial_pair_with_its_own_names_and_a_global_latent_has_no_problems(x):
    def model(x):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))  # global: outside the plate
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", normal(x))
            pyro.sample("obs", dist.Normal(x.new_zeros(D) + shift, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("shift", dist.Normal(0.0, 1.0))
        tutorial_guide(x)

    assert problems(model, guide, x, idx=torch.arange(B), num_data=10 * B) == []


def test_a_network_called_without_pyro_module():
    net = nn.Linear(Q, D)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", normal(x))
            pyro.sample("obs", dist.Normal(net(z), 1.0).to_event(1), obs=x)

    msg = only(problems(model, tutorial_guide, torch.randn(B, D)))
    assert "computes with 2 trainable tensor(s) that Pyro never sees (shapes" in msg
    assert f"({D}, {Q})" in msg and f"({D},)" in msg
    assert "register each network with pyro.module('name', net)" in msg


def test_a_bernoulli_likelihood_on_grey_levels_is_caught_before_training(x):
    model = tutorial_model(lambda x: dist.Bernoulli(probs=torch.full_like(x, 0.5)))
    msg = only(problems(model, tutorial_guide, x))
    assert "cannot score the data at its observed site 'obs' (Bernoulli)" in msg
    assert "binarize the data (--binarize static or dynamic)" in msg
    with pytest.raises(ModelGuideError, match="observed site 'obs'"):
        fit(model, tutorial_guide, x, FitConfig(epochs=1, device="cpu"), progress=False)


def test_a_plate_with_another_name(x):
    def model(x):
        with pyro.plate("examples", x.shape[0]):
            pyro.sample("latent", normal(x))
            pyro.sample("obs", dist.Normal(x, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("examples", x.shape[0]):
            pyro.sample("latent", normal(x))

    msg = only(problems(model, guide, x))
    assert f"opens no plate named 'data' (its plates: 'examples' (size {B}))" in msg
    assert "FitConfig(plate=...)" in msg
    assert problems(model, guide, x, plate="examples") == []


def test_no_plate_at_all(x):
    def model(x):
        pyro.sample("obs", dist.Normal(x, 1.0).to_event(2), obs=x)

    msg = only(problems(model, lambda x: None, x))
    assert "opens no plate over the examples: wrap its per-example sites in" in msg


def test_an_observation_outside_the_plate(x):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", normal(x))
        pyro.sample("obs", dist.Normal(x, 1.0).to_event(2), obs=x)

    msg = only(problems(model, tutorial_guide, x))
    assert "observes 'obs' outside the data plate, so a minibatch is scored as one" in msg


def test_a_plate_that_is_not_the_batch(x):
    def model(x):
        with pyro.plate("data", 2 * x.shape[0]):
            pyro.sample("obs", dist.Normal(0.0, 1.0), obs=x.new_zeros(2 * x.shape[0]))

    msg = only(problems(model, lambda x: None, x))
    assert f"the plate 'data' has size {2 * B} in the model but the batch has {B} rows" in msg


def mixture_model(enumerate):
    infer = {"enumerate": "parallel"} if enumerate else {}

    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(3)), infer=infer)
            z = pyro.sample("latent", dist.Normal(x.new_tensor([-1.0, 0.0, 1.0])[y], 1.0))
            pyro.sample("obs", dist.Normal(z[..., None], 1.0).to_event(1), obs=x)

    return model


def test_a_discrete_latent_the_guide_leaves_out(x):
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0]), 1.0))

    msg = only(problems(mixture_model(False), guide, x))
    assert "latent site 'y' is discrete and the guide does not sample it" in msg
    assert "infer={'enumerate': 'parallel'}) and choose objective 'enum'" in msg
    msg = only(problems(mixture_model(True), guide, x))
    assert "enumerates its discrete latent site 'y', but the objective does not sum" in msg
    assert problems(mixture_model(True), guide, x, objective="enum") == []
