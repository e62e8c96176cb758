"""Every mode of fit's step (FitConfig: eager, jit) against eager: the same loss and gradients
on the same draws to float32 rounding, no host reads in a step, and an exact resume."""

import pyro
import pytest
import torch

from ppvae import ArchConfig, DataShape, FitConfig
from ppvae.data import load_dataset
from ppvae.guides import GUIDES
from ppvae.infer import checkpoint as ckpt
from ppvae.infer.fitting import fit, training_step
from ppvae.models import MODELS
from tests.conftest import steps_then_sigint

# each mode as FitConfig fields; {} is the default, auto
MODES = {"eager": {"jit": False}, "jit": {"jit": True}, "auto": {}}
FAST = ["jit"]
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def float32_pair(n: int = 64, d: int = 20, seed: int = 0):
    torch.manual_seed(seed)
    arch, shape = ArchConfig(z_dim=3, hidden=(16,)), DataShape(d, None, n)
    model = MODELS["bernoulli"](arch, shape)
    return model, GUIDES["diag"](arch, shape, model), torch.rand(n, d).round()


def loss_and_grads(mode: str, seed: int = 5):
    """The step's loss and its gradients on the first batch, after a first (compiling) call,
    drawn from ``seed``."""
    pyro.clear_param_store()
    model, guide, x = float32_pair()
    config = FitConfig(batch_size=16, device="cpu", **MODES[mode])
    step = training_step(model, guide, x, config)
    idx = torch.arange(16)
    step.loss(x[idx], idx, len(x))  # the first call of a compiled loss traces it
    pyro.set_rng_seed(seed)
    loss = step.loss(x[idx], idx, len(x))
    return loss.detach(), torch.autograd.grad(loss, step.params), step.names


@pytest.mark.parametrize("mode", FAST)
def test_a_fast_mode_gives_the_eager_loss_and_gradients_to_float32_rounding(mode):
    eager_loss, eager_grads, names = loss_and_grads("eager")
    loss, grads, fast_names = loss_and_grads(mode)
    assert fast_names == names and loss.dtype == torch.float32
    torch.testing.assert_close(loss, eager_loss)  # float32's default: rtol 1.3e-6
    for name, g, e in zip(names, grads, eager_grads, strict=True):
        assert g.abs().max() > 0, name  # a gradient that is there, not two zeros
        torch.testing.assert_close(g, e, rtol=1.3e-6, atol=1e-5, msg=name)
    other_draw, _, _ = loss_and_grads(mode, seed=6)
    assert not torch.equal(other_draw, loss)  # each call draws anew


def _forbid_host_reads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a training step read a tensor's value on the host")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize("mode", MODES)
def test_no_mode_reads_a_tensor_on_the_host_in_a_step(mode, monkeypatch):
    model, guide, x = float32_pair()
    step = training_step(model, guide, x, FitConfig(batch_size=16, device="cpu", **MODES[mode]))
    idx = torch.arange(16)
    step(x[idx], idx, len(x))  # a compiled loss traces on its first call
    before = [p.detach().clone() for p in step.params]
    with monkeypatch.context() as m:
        _forbid_host_reads(m)
        loss = step(x[idx + 16], idx + 16, len(x))
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, step.params, strict=True))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", binarize="dynamic")


def digits_pair(data, seed=0):
    torch.manual_seed(seed)
    shape = DataShape(data.train.shape[1], data.image_shape, data.train.shape[0])
    arch = ArchConfig(z_dim=2, hidden=(16,))
    m = MODELS["bernoulli"](arch, shape)
    return m, GUIDES["diag"](arch, shape, m)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_resumes_to_the_uninterrupted_result(mode, digits, tmp_path, monkeypatch):
    config = FitConfig(epochs=2, batch_size=256, lr=3e-3, seed=3, device="cpu", **MODES[mode])
    # auto: a break-even of the run's 10 steps, so it compiles, and decides so again on resume
    monkeypatch.setattr("ppvae.infer.step.JIT_BREAK_EVEN_STEPS", 10)
    pyro.clear_param_store()
    model, guide = digits_pair(digits)
    fit(model, guide, digits, config)
    expected = {k: v.clone() for k, v in pyro.get_param_store().items()}

    path = tmp_path / "b.pt"  # Ctrl-C in epoch 2 (5 steps an epoch), then fresh objects resume
    pyro.clear_param_store()
    with monkeypatch.context() as m:
        steps_then_sigint(m, after=7)
        model, guide = digits_pair(digits)
        assert fit(model, guide, digits, config, checkpoint=path).interrupted
    assert ckpt.load(path)["progress"]["epoch"] == 1
    pyro.clear_param_store()
    model, guide = digits_pair(digits, seed=99)  # another init, overwritten by the resume
    resumed = fit(model, guide, digits, config, checkpoint=path, resume=True)
    assert not resumed.interrupted and resumed.config.jit is (mode != "eager")
    got = dict(pyro.get_param_store().items())
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
