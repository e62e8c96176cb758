"""The VAE model: its prior, its sites, and the data plate's minibatch scaling."""

import math

import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn

from ppvae.baselines import ppca_log_prob
from ppvae.guides import ExactPPCAGuide
from ppvae.models import PPCA, VAE, BernoulliDecoder, data_plate
from ppvae.models.sites import DATA, LATENT, OBS


def test_prior_is_standard_normal_and_sites_are_named_once():
    model = VAE(BernoulliDecoder(nn.Linear(3, 8)), z_dim=3)
    trace = poutine.trace(model).get_trace(torch.rand(4, 8))
    z = trace.nodes[LATENT]
    assert z["value"].shape == (4, 3)
    expected = -0.5 * z["value"].pow(2).sum(-1) - 1.5 * math.log(2 * math.pi)
    assert torch.allclose(z["fn"].log_prob(z["value"]), expected, atol=1e-6)
    assert trace.nodes[OBS]["is_observed"]
    assert [f.name for f in z["cond_indep_stack"]] == [DATA]


def test_minibatch_elbo_is_scaled_to_the_full_data():
    """With the exact PPCA posterior the ELBO is deterministic, so the mean of the scaled
    losses over a partition into minibatches equals the full-data loss exactly."""
    torch.manual_seed(0)
    model = PPCA(x_dim=6, z_dim=2).double()
    guide = ExactPPCAGuide(model)
    x = torch.randn(60, 6, dtype=torch.float64)
    full = Trace_ELBO().loss(model, guide, x)
    assert full == pytest.approx(-ppca_log_prob(x, model.W, model.mu, model.sigma2).sum().item())
    batches = torch.randperm(60).view(5, 12)
    scaled = [Trace_ELBO().loss(model, guide, x[i], i, num_data=60) for i in batches]
    assert sum(scaled) / 5 == pytest.approx(full, rel=1e-12)


def test_data_plate_needs_indices_for_a_minibatch():
    with pytest.raises(ValueError, match="pass idx"):
        data_plate(torch.zeros(4, 2), num_data=10)
    with data_plate(torch.zeros(4, 2), torch.tensor([7, 1, 2, 9]), num_data=10) as ind:
        assert ind.tolist() == [7, 1, 2, 9]
