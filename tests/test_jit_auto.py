"""FitConfig(jit=None), auto: fit compiles the loss exactly when the expected number of steps
reaches the break-even and the run is one it can trace safely (a catalogue pair declared
``static_structure``, a compilable objective, one plain tensor), and records what it chose."""

import argparse
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppvae import ArchConfig, DataShape, FitConfig
from ppvae.cli.common import add_fit_args, fit_config, provided
from ppvae.config import ConfigError
from ppvae.guides import GUIDES
from ppvae.infer import step as step_module
from ppvae.infer.fitting import fit, training_step
from ppvae.models import MODELS

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
N, B = 64, 16  # 4 steps an epoch


def catalogue_pair(n: int = N, d: int = 20):
    torch.manual_seed(0)
    arch, shape = ArchConfig(z_dim=2, hidden=(8,)), DataShape(d, None, n)
    model = MODELS["bernoulli"](arch, shape)
    return model, GUIDES["diag"](arch, shape, model), torch.rand(n, d).round()


def chosen(model, guide, data, **fields) -> bool:
    pyro.clear_param_store()
    config = FitConfig(batch_size=B, device="cpu", **fields)
    return training_step(model, guide, data, config).jit


def test_auto_compiles_a_catalogue_pair_from_the_break_even_number_of_steps_on():
    model, guide, x = catalogue_pair()
    least = math.ceil(step_module.JIT_BREAK_EVEN_STEPS / (N // B))  # epochs * 4 >= 500
    assert chosen(model, guide, x, epochs=least) is True
    assert chosen(model, guide, x, epochs=least - 1) is False
    assert chosen(model, guide, x, epochs=least, jit=False) is False  # forced off
    assert chosen(model, guide, x, epochs=1, jit=True) is True  # forced on


@pytest.mark.parametrize(
    "fields", [{"objective": "enum"}, {"kl_warmup_epochs": 1}], ids=["enum", "warmup"]
)
def test_auto_stays_eager_where_the_loss_cannot_be_compiled(fields):
    model, guide, x = catalogue_pair()
    assert chosen(model, guide, x, epochs=1000, **fields) is False


def test_fit_records_the_mode_it_ran_and_both_train_alike(monkeypatch):
    config = FitConfig(epochs=2, batch_size=2, device="cpu", lr=1e-3)  # 8 steps an epoch
    pyro.clear_param_store()
    eager = fit(*catalogue_pair(n=16), config)
    assert eager.config.jit is False and config.jit is None  # 16 steps: too few
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    monkeypatch.setattr(step_module, "JIT_BREAK_EVEN_STEPS", 16)
    pyro.clear_param_store()
    compiled = fit(*catalogue_pair(n=16), config)  # the same start and draws
    assert compiled.config.jit is True
    a, b = eager.history.train_elbo.to_numpy(), compiled.history.train_elbo.to_numpy()
    assert len(a) == 2 and abs(a - b).max() <= 1e-5 * abs(a).max()
    for name, value in pyro.get_param_store().items():
        torch.testing.assert_close(value, params[name], rtol=1e-5, atol=1e-6, msg=name)


def plain_model(x):
    loc = pyro.param("loc", torch.zeros(x.shape[1]))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(loc + z[:, None], 1.0).to_event(1), obs=x)


def plain_guide(x):
    a = pyro.param("a", torch.zeros(()))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(a * x.mean(-1), 1.0))


def test_auto_leaves_a_users_plain_pyro_pair_eager():
    x = torch.randn(N, 5)
    assert chosen(plain_model, plain_guide, x, epochs=1000) is False


def two_model(x, y=None):
    a = pyro.param("a", torch.tensor(1.5))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
        pyro.sample("x", dist.Normal(a * z, 0.7), obs=x)
        pyro.sample("y", dist.Normal(z, 0.4), obs=y)


def two_guide(x, y=None):
    b = pyro.param("b", torch.tensor(0.5))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(b * x, 1.0))
        if y is None:  # what a trace would bake in
            pyro.sample("y", dist.Normal(z, 0.4))


two_model.static_structure = two_guide.static_structure = True  # declared, still refused


def test_auto_leaves_several_tensor_and_partly_observed_data_eager():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, generator=g), torch.randn(N, generator=g)
    assert chosen(two_model, two_guide, (x, y), epochs=1000) is False
    y[N // 4 :] = math.nan  # y observed for a quarter of the rows
    assert chosen(two_model, two_guide, (x, y), epochs=1000) is False
    with pytest.raises(ConfigError, match="jit=True does not trace"):
        chosen(two_model, two_guide, (x, y), epochs=1000, jit=True)


def test_none_true_and_false_round_trip_through_json():
    for jit in (None, True, False):
        assert FitConfig.from_json(FitConfig(jit=jit).to_json()).jit is jit
    assert FitConfig.from_dict({"jit": False}).jit is False  # an old config's false


def test_the_cli_says_auto_unless_told_jit_or_no_jit():
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_fit_args(p)
    for argv, jit in (([], None), (["--jit"], True), (["--no-jit"], False)):
        assert fit_config(p.parse_args(argv)).jit is jit
    assert provided(p, ["--no-jit"]) == {"jit"}  # a resume's override is seen
    assert "auto" in p.format_help()
