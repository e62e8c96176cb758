"""The CVAE (models/cvae.py, guides/cvae.py) against hand-computed answers, and the plain
network it builds on staying as it was trained."""

import pyro
import pytest
import torch
import torch.nn.functional as F

from ppvae import FitConfig, fit
from ppvae.data import load_dataset, quadrants
from ppvae.guides.cvae import CVAEGuide
from ppvae.models.cvae import CVAE, BaselineNet, masked_bernoulli_log_prob

D, Q = 64, 2


@pytest.fixture(scope="module")
def completion():
    data = quadrants(load_dataset("digits"), 1)
    return data._replace(train=tuple(t[:200] for t in data.train))


def pair():
    model = CVAE(D, Q, BaselineNet(D, hidden=(8,)), hidden=(8,))
    return model, CVAEGuide(model, D, Q, hidden=(8,))


def test_the_plain_likelihood_is_minus_pyros_masked_bce(completion):
    inputs, outputs = completion.train
    probs = BaselineNet(D, hidden=(8,))(inputs)
    hidden = outputs != -1  # Pyro's MaskedBCELoss, per row
    bce = torch.stack([F.binary_cross_entropy(p[h], o[h], reduction="sum")
                       for p, o, h in zip(probs, outputs, hidden, strict=True)])  # fmt: skip
    assert torch.allclose(masked_bernoulli_log_prob(probs, outputs), -bce, atol=1e-5)


def test_the_model_scores_exactly_the_hidden_pixels(completion):
    model, guide = pair()
    inputs, outputs = (t[:5] for t in completion.train)
    guide_trace = pyro.poutine.trace(guide).get_trace(inputs, outputs)
    trace = pyro.poutine.trace(pyro.poutine.replay(model, guide_trace)).get_trace(inputs, outputs)
    trace.compute_log_prob()
    probs = torch.sigmoid(model.generation_net(guide_trace.nodes["z"]["value"]))
    expected = masked_bernoulli_log_prob(probs, outputs)
    assert torch.allclose(trace.nodes["y"]["log_prob"], expected, atol=1e-5)
    # 48 hidden pixels with one given quadrant of 8x8
    assert int((outputs != -1).sum(1).unique()) == 48


def test_fit_leaves_the_plain_network_as_trained(completion):
    model, guide = pair()
    trained = BaselineNet(D, hidden=(8,))
    model.load_baseline(trained)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = trained.state_dict()
    assert all(torch.equal(before[f"baseline_net.{k}"], v) for k, v in weights.items())
    small = tuple(t[:20] for t in completion.train)
    fit(model, guide, completion._replace(test=small), FitConfig(epochs=1))
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and not any(k.startswith("baseline_net") for k in moved)
    assert not any("baseline" in name for name in pyro.get_param_store().keys())


def test_without_y_the_guide_is_the_prior_network(completion):
    model, guide = pair()
    inputs = completion.train[0][:4]
    trace = pyro.poutine.trace(guide).get_trace(inputs)
    prior = model.prior(inputs)
    assert torch.allclose(trace.nodes["z"]["fn"].mean, prior.mean)
    completions = pyro.infer.Predictive(model, guide=guide, num_samples=3)(inputs)["y"]
    assert completions.shape == (3, 4, D) and ((completions >= 0) & (completions <= 1)).all()
