"""The sync-free training losses against Pyro's own estimators, value and gradient, on the
same draws; the IWAE's minibatch scaling against a hand computation; and a step that never
reads a tensor on the host."""

import math

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from torch import nn

from ppvae import ArchConfig, DataShape, FitConfig
from ppvae.guides import GUIDES
from ppvae.guides.amortized import AmortizedGuide, DiagonalNormalHead
from ppvae.infer.fitting import training_step
from ppvae.models import MODELS, PPCA
from ppvae.pairs import batched
from ppvae.pairs.objectives import OBJECTIVES
from tests.conftest import assert_steps_never_synchronize, cuda

N, B = 40, 8


def make_pair():
    """PPCA (D=3, q=2) with a deliberately poor linear guide, float64; a minibatch of B rows."""
    torch.manual_seed(1)
    model = PPCA(x_dim=3, z_dim=2, sigma=0.7).double()
    guide = AmortizedGuide(nn.Linear(3, 4), DiagonalNormalHead(2)).double()
    x = torch.randn(N, 3, dtype=torch.float64)
    return model, guide, x


def ours(key, model, guide, args, particles=1):
    loss_fn = OBJECTIVES[key].loss_fn(
        batched(model), batched(guide), num_particles=particles, max_plate_nesting=1, plate="data"
    )
    return loss_fn(*args)


def grads(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize(
    "key,pyro_elbo,particles",
    [
        ("trace", Trace_ELBO, 1),
        ("trace", Trace_ELBO, 3),
        ("mean-field", TraceMeanField_ELBO, 1),
        ("score", Trace_ELBO, 1),
        ("score-baseline", TraceGraph_ELBO, 1),
    ],
)
def test_value_and_gradient_equal_pyros_estimator(key, pyro_elbo, particles):
    """On a minibatch scaled to the data set (idx, num_data), with the same random draws."""
    model, guide, x = make_pair()
    idx = torch.arange(B)
    args = (x[idx], idx, N)
    params = list(guide.parameters()) + list(model.parameters())
    pyro.set_rng_seed(3)
    loss = ours(key, model, guide, args, particles)
    mine = grads(loss, params)
    pyro.clear_param_store()  # a decaying-average baseline lives there: start both alike
    pyro.set_rng_seed(3)
    wrapped = OBJECTIVES[key].wrap_guide(guide)
    elbo = pyro_elbo(
        num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1
    )
    reference = (
        elbo.differentiable_loss(model, wrapped, *args) if key != "score-baseline" else None
    )
    if reference is None:
        value, surrogate = elbo._loss_and_surrogate_loss(model, wrapped, args, {})
        reference = surrogate + (-value - surrogate).detach()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    for a, b in zip(mine, grads(reference, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_iwae_equals_renyi_without_subsampling_and_scales_after_the_log_mean_exp():
    """Pyro's RenyiELBO takes log-mean-exp of scaled log weights; on the full data (scale 1)
    ours must equal it. On a minibatch the bound is s * sum_n log mean_k w_nk, by hand."""
    model, guide, x = make_pair()
    k = 5
    pyro.set_rng_seed(4)
    loss = ours("iwae", model, guide, (x, None, None), particles=k)
    pyro.set_rng_seed(4)
    renyi = RenyiELBO(alpha=0.0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    assert loss.item() == pytest.approx(renyi.loss(model, guide, x), rel=1e-12)

    idx = torch.arange(B)
    pyro.set_rng_seed(5)
    loss = ours("iwae", model, guide, (x[idx], idx, N), particles=k)
    pyro.set_rng_seed(5)  # the same draws, scored by hand
    z = guide.encode(x[idx]).rsample((k,))  # (k, B, q), the guide's one draw of the batch
    log_w = (
        model.decoder(z).log_prob(x[idx])
        + model.prior().log_prob(z)
        - guide.encode(x[idx]).log_prob(z)
    )
    expected = (N / B) * (log_w.logsumexp(0) - math.log(k)).sum()
    assert -loss.item() == pytest.approx(expected.item(), rel=1e-10)


def _forbid_host_reads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a training step read a tensor's value on the host")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize(
    "model_name,guide_name,objective",
    [
        ("bernoulli", "diag", "trace"),
        ("bernoulli", "diag", "mean-field"),
        ("bernoulli", "diag", "iwae"),
        ("bernoulli", "diag", "score"),
        ("bernoulli", "full-cov", "trace"),
        ("bernoulli", "flow", "trace"),
        ("gaussian-learned", "low-rank", "mean-field"),
        ("ppca", "ppca-exact", "trace"),
        ("ppca", "linear", "mean-field"),
    ],
)
def test_a_training_step_never_reads_a_tensor_on_the_host(
    model_name, guide_name, objective, monkeypatch
):
    arch, shape = ArchConfig(z_dim=2, hidden=(16,)), DataShape(64, None, 200)
    model = MODELS[model_name](arch, shape)
    guide = GUIDES[guide_name](arch, shape, model)
    x = torch.rand(200, 64).round()
    # eager: a compiled step's first call traces, and tracing reads values on the host
    config = FitConfig(
        objective=objective, num_particles=3, batch_size=32, device="cpu", jit=False
    )
    step = training_step(model, guide, x, config)
    params = list(model.parameters()) + list(guide.parameters())
    before = [p.detach().clone() for p in params]
    idx = torch.arange(32)
    with monkeypatch.context() as m:
        _forbid_host_reads(m)
        loss = step(x[idx], idx, 200)
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, params, strict=True))


@cuda
def test_a_training_step_on_cuda_does_not_synchronize():
    arch, shape = ArchConfig(z_dim=2, hidden=(16,)), DataShape(64, None, 200)
    model = MODELS["bernoulli"](arch, shape)
    guide = GUIDES["diag"](arch, shape, model)
    x = torch.rand(200, 64, device="cuda").round()
    step = training_step(model, guide, x, FitConfig(batch_size=32, device="cuda"))
    assert_steps_never_synchronize(step, x, batch=32)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("objective", ["trace", "mean-field", "iwae", "score"])
def test_a_compiled_loss_replays_the_eager_one_on_the_same_draws(objective):
    """jit compiles the traces' arithmetic once; each call draws anew, and with the same
    random state it gives the eager value to float precision."""
    model, guide, x = make_pair()
    idx = torch.arange(B)
    losses = []
    for jit in (False, True):
        pyro.clear_param_store()
        config = FitConfig(
            objective=objective, num_particles=2, batch_size=B, jit=jit, device="cpu"
        )
        step = training_step(model, guide, x, config)
        step.loss(x[idx], idx, N)  # the first call compiles (tracing draws numbers too)
        values = []
        for seed in (5, 6, 5):  # a fresh draw each call, the same for the same seed
            pyro.set_rng_seed(seed)
            values.append(step.loss(x[idx], idx, N).item())
        losses.append(values)
    eager, compiled = losses
    assert compiled[0] != compiled[1] and compiled[0] == pytest.approx(compiled[2], rel=1e-12)
    assert compiled == pytest.approx(eager, rel=1e-10)
