"""One test over every model x guide pair in the registries (the Zuko pattern).

Each pair must have matching sample sites and shapes, a finite ELBO, a gradient on every
parameter, and train for a few SVI steps with a finite loss.
"""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI

from ppvae import check
from ppvae.config import ArchConfig, DataShape
from ppvae.data import load_dataset
from ppvae.guides import GUIDES
from ppvae.models import MODELS
from ppvae.models.sites import LATENT, OBS
from ppvae.pairs.objectives import OBJECTIVES

EXACT_ONLY_WITH = {"ppca-exact": {"ppca"}, "masked-ppca-exact": {"ppca"}}
CONV = {"bernoulli", "gaussian", "gaussian-learned", "continuous-bernoulli"}
GUIDE_CONV = {"diag", "full-cov", "low-rank", "flow", "masked-diag"}
OBJECTIVE = {"mixture-prior": "enum"}  # its discrete component is summed out
TWO_TENSORS = {"m2", "cvae"}  # model(xs, ys=None): tests/models/test_m2.py, test_cvae.py


def elbo(model_name):
    return OBJECTIVES[OBJECTIVE.get(model_name, "trace")].build()


def _pairs():
    for model in MODELS:
        for guide in GUIDES:
            if model in TWO_TENSORS or guide in TWO_TENSORS:
                continue
            if model in EXACT_ONLY_WITH.get(guide, {model}):
                yield model, guide, False
                if model in CONV and guide in GUIDE_CONV:
                    yield model, guide, True


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def build(model_name, guide_name, conv, data):
    arch = ArchConfig(z_dim=3, hidden=(32,), conv=conv, rank=2, flows=2, context_dim=4)
    shape = DataShape(data.train.shape[1], data.image_shape, data.train.shape[0])
    model = MODELS[model_name](arch, shape)
    return model, GUIDES[guide_name](arch, shape, model)


def _params(*modules):
    return [(n, p) for m in modules for n, p in m.named_parameters()]


@pytest.mark.parametrize("model_name,guide_name,conv", list(_pairs()))
def test_pair(model_name, guide_name, conv, digits):
    model, guide = build(model_name, guide_name, conv, digits)
    n, b = digits.train.shape[0], 16
    idx = torch.arange(5, 5 + b)
    x = digits.train[idx]
    check(model, guide, x, idx=idx, num_data=n, objective=OBJECTIVE.get(model_name, "trace"))

    guide_trace = poutine.trace(guide).get_trace(x, idx, num_data=n)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, idx, n)
    assert guide_trace.nodes[LATENT]["value"].shape == (b, 3)
    assert model_trace.nodes[LATENT]["value"] is guide_trace.nodes[LATENT]["value"]
    assert model_trace.nodes[OBS]["fn"].event_shape == (x.shape[1],)
    # the data plate scales the minibatch to the data set
    assert model_trace.nodes[OBS]["scale"] == pytest.approx(n / b)

    loss = elbo(model_name).differentiable_loss(model, guide, x, idx, num_data=n)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in _params(model, guide):
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient on {name}"


@pytest.mark.parametrize("model_name,guide_name,conv", list(_pairs()))
def test_pair_trains(model_name, guide_name, conv, digits):
    model, guide = build(model_name, guide_name, conv, digits)
    n = digits.train.shape[0]
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo(model_name))
    before = {k: v.detach().clone() for k, v in _params(model, guide)}
    for step in range(3):
        idx = torch.arange(step * 16, (step + 1) * 16)
        assert math.isfinite(svi.step(digits.train[idx], idx, num_data=n))
    moved = [k for k, v in _params(model, guide) if not torch.equal(v, before[k])]
    assert sorted(moved) == sorted(before), "every parameter is updated by SVI"
