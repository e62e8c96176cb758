"""Users' own Pyro code through fit, evaluate, resume and Predictive, checked against closed forms.

The pairs here are written the way Pyro's tutorials write them: ``model(x)``, their own site
names, ``pyro.module`` and ``pyro.param``, a plate sized by the batch, global latents.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn
from torch.distributions import constraints

from ppvae import (
    FitConfig,
    ModelGuideError,
    elbo_terms,
    evaluate,
    fit,
    load_dataset,
    log_likelihood,
)
from ppvae.config import ArchConfig, DataShape
from ppvae.guides import GUIDES
from ppvae.guides.refine import refine
from ppvae.infer.loop import epoch_batches
from ppvae.models import MODELS
from ppvae.pairs import batched
from tests.conftest import steps_then_sigint

LOG_2PI = math.log(2 * math.pi)


class TutorialVAE(nn.Module):
    """Pyro's ``examples/vae/vae.py`` with 784 pixels changed to ``d``, nothing else."""

    def __init__(self, d=64, z_dim=2, hidden_dim=64, learn_sigma=False):
        super().__init__()
        self.d, self.z_dim, self.learn_sigma = d, z_dim, learn_sigma
        self.encoder = nn.Sequential(nn.Linear(d, hidden_dim), nn.Softplus())
        self.fc21, self.fc22 = nn.Linear(hidden_dim, z_dim), nn.Linear(hidden_dim, z_dim)
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, d)
        )

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            if self.learn_sigma:
                sigma = pyro.param("sigma", x.new_ones(()), constraint=constraints.positive)
                obs = dist.Normal(self.decoder(z), sigma)
            else:
                obs = dist.Bernoulli(logits=self.decoder(z), validate_args=False)
            pyro.sample("obs", obs.to_event(1), obs=x.reshape(-1, self.d))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        pyro.module("fc21", self.fc21)
        pyro.module("fc22", self.fc22)
        with pyro.plate("data", x.shape[0]):
            hidden = self.encoder(x)
            z_loc, z_scale = self.fc21(hidden), torch.exp(self.fc22(hidden))
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_a_tutorial_pair_trains_on_the_full_data_elbo(digits):
    torch.manual_seed(0)
    vae = TutorialVAE()
    result = fit(vae.model, vae.guide, digits, FitConfig(epochs=15, device="cpu"))
    last = result.history.iloc[-1]
    # a minibatch ELBO left unscaled reads about -1.2 nats per digit (B / N of the truth)
    assert -35 < last.train_elbo < -20, last
    assert abs(last.train_elbo - last.test_elbo) < 3, last
    # an independent per-example evaluation agrees with the reported training objective
    test = evaluate(vae.model, vae.guide, digits.test, num_samples=100).iloc[0]
    assert test.elbo == pytest.approx(last.test_elbo, abs=0.5)
    assert test.log_px > test.elbo
    assert sorted(pyro.get_param_store().keys())[0] == "decoder$$$0.bias"


def test_a_batch_sized_plate_is_scaled_to_the_data_set():
    """A PPCA model written Pyro's way, with its exact posterior as guide: the ELBO is then
    deterministic, so the mean of the minibatch losses over a partition must equal the
    full-data loss, and that must equal minus the closed-form log-likelihood."""
    torch.manual_seed(0)
    d, q, n = 5, 2, 60
    W, mu, s2 = torch.randn(d, q).double(), torch.randn(d).double(), torch.tensor(0.3).double()
    C = W @ W.T + s2 * torch.eye(d, dtype=torch.float64)
    M = W.T @ W + s2 * torch.eye(q, dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("f", dist.Normal(x.new_zeros(x.shape[0], q), 1.0).to_event(1))
            pyro.sample("y", dist.Normal(z @ W.T + mu, s2.sqrt()).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            mean = torch.linalg.solve(M, W.T @ (x - mu).T).T
            pyro.sample("f", dist.MultivariateNormal(mean, s2 * torch.linalg.inv(M)))

    x = torch.randn(n, d, dtype=torch.float64)
    exact = dist.MultivariateNormal(mu, C).log_prob(x).sum().item()
    m, g = batched(model), batched(guide)
    full = Trace_ELBO().loss(m, g, x, None)
    assert full == pytest.approx(-exact, rel=1e-12)
    batches = torch.randperm(n).view(5, 12)
    losses = [Trace_ELBO().loss(m, g, x[i], i, num_data=n) for i in batches]
    assert sum(losses) / 5 == pytest.approx(full, rel=1e-12)


def factor_analysis(d, q):
    """A textbook factor-analysis model with pyro.param W, mu, psi and a linear encoder."""
    encoder = nn.Linear(d, 2 * q)

    def model(x):
        W = pyro.param("W", lambda: 0.1 * torch.randn(d, q, dtype=x.dtype))
        mu = pyro.param("mu", lambda: torch.zeros(d, dtype=x.dtype))
        psi = pyro.param(
            "psi", lambda: torch.ones(d, dtype=x.dtype), constraint=constraints.positive
        )
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("factors", dist.Normal(x.new_zeros(x.shape[0], q), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(z @ W.T + mu, psi.sqrt()).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, rho = encoder(x).split(q, -1)
            pyro.sample("factors", dist.Normal(loc, nn.functional.softplus(rho)).to_event(1))

    return model, guide


def test_factor_analysis_params_live_in_the_store_and_score_exactly():
    """After fit, W, mu and psi are read from Pyro's param store; the importance-sampled
    log p(x) of the trained pair lies within 3 standard errors of the exact Gaussian
    log-likelihood N(x; mu, W W^T + diag(psi)) at those values."""
    g = torch.Generator().manual_seed(0)
    d, q, n = 8, 2, 1500
    W = torch.randn(d, q, generator=g)
    x = torch.randn(n, q, generator=g) @ W.T + 0.5 * torch.randn(n, d, generator=g)
    train, test = x[:1000], x[1000:]
    torch.manual_seed(0)
    model, guide = factor_analysis(d, q)
    fit(model, guide, train, FitConfig(epochs=60, batch_size=100, lr=2e-2, device="cpu"))
    store = pyro.get_param_store()
    W_, mu_, psi_ = (store[k].detach() for k in ("W", "mu", "psi"))
    exact = dist.MultivariateNormal(mu_, W_ @ W_.T + torch.diag(psi_)).log_prob(test)
    ll = log_likelihood(model, guide, test, num_samples=2000)
    se = ll.stderr.square().sum().sqrt() / len(test)
    assert abs(ll.log_px.mean() - exact.mean()) < 3 * se, (ll.log_px.mean(), exact.mean(), se)
    # and training found the generating model's fit: better than the initial W = 0.1 randn
    assert psi_.mean().item() == pytest.approx(0.25, rel=0.25)


def _store_values():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_resume_restores_pyro_module_networks_and_pyro_params(digits, tmp_path, monkeypatch):
    """An interrupted and resumed run of a plain-function pair (pyro.module networks and a
    pyro.param) ends with exactly the values of an uninterrupted one, starting the resumed
    run from a new object with other weights, in a cleared store (a new process)."""
    config = FitConfig(epochs=3, batch_size=128, seed=2, device="cpu")
    torch.manual_seed(0)
    vae = TutorialVAE(learn_sigma=True)
    fit(vae.model, vae.guide, digits, config, checkpoint=tmp_path / "a.pt")
    expected = _store_values()
    assert "sigma" in expected and "decoder$$$0.weight" in expected

    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = TutorialVAE(learn_sigma=True)
    with monkeypatch.context() as m:
        steps_then_sigint(m, after=15)
        assert fit(vae.model, vae.guide, digits, config, checkpoint=tmp_path / "b.pt").interrupted

    pyro.clear_param_store()
    torch.manual_seed(99)
    vae = TutorialVAE(learn_sigma=True)
    fit(vae.model, vae.guide, digits, config, checkpoint=tmp_path / "b.pt", resume=True)
    got = _store_values()
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    # the networks compute with the restored tensors themselves
    assert pyro.get_param_store()["decoder$$$0.weight"] is vae.decoder[0].weight


def test_a_second_model_under_the_same_names_trains_its_own_weights(digits):
    """An earlier model's entries in the param store must not shadow a new network's weights
    (Pyro would hand SVI the stored tensors and leave the network's own untouched)."""
    first = TutorialVAE()
    fit(first.model, first.guide, digits, FitConfig(epochs=1, device="cpu"))
    second = TutorialVAE()
    before = second.decoder[0].weight.detach().clone()
    fit(second.model, second.guide, digits, FitConfig(epochs=1, device="cpu"))
    assert not torch.equal(second.decoder[0].weight, before)
    assert pyro.get_param_store()["decoder$$$0.weight"] is second.decoder[0].weight


def test_predictive_samples_the_prior_and_the_posterior_predictive(digits):
    shape = DataShape(64, digits.image_shape, digits.train.shape[0])
    arch = ArchConfig(z_dim=2, hidden=(16,))
    model = MODELS["bernoulli"](arch, shape)
    guide = GUIDES["diag"](arch, shape, model)
    prior = Predictive(model, num_samples=3)(None)
    assert prior["z"].shape == (3, 1, 2) and prior["x"].shape == (3, 1, 64)
    prior = Predictive(model, num_samples=3)(None, batch_size=5)
    assert prior["x"].shape == (3, 5, 64)
    assert set(prior["x"].unique().tolist()) <= {0.0, 1.0}  # Bernoulli draws
    x = digits.test[:7]
    posterior = Predictive(poutine.uncondition(model), guide=guide, num_samples=4)(x)
    assert posterior["x"].shape == (4, 7, 64)
    assert not torch.equal(posterior["x"][0], x)  # drawn, not the observation


def test_global_latents_give_the_posterior_predictive_log_likelihood():
    """mu ~ N(0, I) is global, z_n ~ N(0, I) local, x_n = mu + a z_n + sigma eps. With
    q(mu) = N(m, v I) and the exact local posterior q(z_n | x_n, mu), each importance weight is
    p(x_n | mu_k): log p(x) must match log N(x_n; m, (a^2 + sigma^2 + v) I), and the
    per-example ELBO -d/2 log(2 pi c) - (|x - m|^2 + d v) / (2 c), c = a^2 + sigma^2."""
    d, a, sigma, v = 3, 1.5, 0.5, 0.2
    c = a * a + sigma * sigma
    m = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(d), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(mu + a * z, sigma).to_event(1), obs=x)

    def guide(x):
        mu = pyro.sample("mu", dist.Normal(m, math.sqrt(v)).to_event(1))
        with pyro.plate("data", x.shape[0]):
            loc = a * (x - mu) / c
            pyro.sample("z", dist.Normal(loc, sigma / math.sqrt(c)).to_event(1))

    x = torch.randn(20, d, dtype=torch.float64) * 2
    exact = dist.Normal(m, math.sqrt(c + v)).to_event(1).log_prob(x)
    ll = log_likelihood(model, guide, x, num_samples=1000)
    assert (ll.log_px - exact).abs().max() < 4 * ll.stderr.max(), ll.log_px - exact
    k = 1000
    elbo = elbo_terms(model, guide, x, num_samples=k, analytic=False).elbo
    r2 = (x - m).square().sum(-1)
    expected = -0.5 * d * math.log(2 * math.pi * c) - (r2 + d * v) / (2 * c)
    # with the Monte Carlo KL the local terms are exactly log p(x | mu); over mu ~ q,
    # Var |x - mu|^2 = 4 v |x - m|^2 + 2 d v^2
    se = (4 * v * r2 + 2 * d * v * v).sqrt() / (2 * c) / math.sqrt(k)
    assert ((elbo - expected).abs() < 4 * se).all(), (elbo - expected) / se


# --- what a new user's code hit (each test would have caught it) ---


def test_a_store_loaded_from_disk_is_scored_not_thrown_away(digits, tmp_path):
    """Pyro's way to load trained networks: ``ParamStoreDict.load`` then ``pyro.module(...,
    update_module_params=True)``. evaluate must score the loaded values and leave them."""

    class Loading(TutorialVAE):
        def model(self, x):
            pyro.module("decoder", self.decoder, update_module_params=True)
            super().model(x)

    torch.manual_seed(0)
    trained = Loading()
    fit(trained.model, trained.guide, digits, FitConfig(epochs=5, device="cpu"))
    torch.manual_seed(1)
    reference = evaluate(trained.model, trained.guide, digits.test, num_samples=50).iloc[0]
    pyro.get_param_store().save(tmp_path / "store.pt")

    pyro.clear_param_store()
    fresh = Loading()
    fresh.guide = trained.guide  # the encoder is not what is being loaded here
    pyro.get_param_store().load(tmp_path / "store.pt")
    torch.manual_seed(1)
    loaded = evaluate(fresh.model, fresh.guide, digits.test, num_samples=50).iloc[0]
    assert loaded.log_px == pytest.approx(reference.log_px, abs=1e-6)
    assert torch.equal(fresh.decoder[0].weight, trained.decoder[0].weight)


def test_evaluate_refuses_a_guide_that_does_not_match(digits):
    vae = TutorialVAE()

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))

    with pytest.raises(ModelGuideError, match="the guide samples 'z' but the model has no"):
        evaluate(vae.model, guide, digits.test)


def test_pyros_own_subsampling_idiom_is_scaled_to_the_data_set():
    """``pyro.plate("data", len(x), subsample_size=b)`` inside a model that fit gives batches
    of B rows out of N: Pyro weights the b rows by B / b, ppvae by N / B more."""

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x), subsample_size=8) as ind:
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=x[ind, 0])

    trace = poutine.trace(batched(model)).get_trace(torch.randn(32, 1), None, 1000)
    assert trace.nodes["obs"]["scale"] == pytest.approx(1000 / 8)
    assert trace.nodes["mu"]["scale"] == 1.0


def test_global_latents_with_an_autoguide(digits):
    """Only a global latent: mu ~ N(0, I), x_n ~ N(mu, I), guide AutoNormal. The predictive
    log p(x) is E_q[N(x; mu, I)] = N(x; m, (1 + s^2) I) for q = N(m, s^2), exactly."""
    x = torch.randn(300, 3) + torch.tensor([1.0, -2.0, 0.5])

    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=x)

    guide = AutoNormal(model)
    fit(model, guide, x, FitConfig(epochs=30, batch_size=100, lr=0.05, device="cpu"))
    m, s = guide.locs.mu.detach(), guide.scales.mu.detach()
    exact = dist.Normal(m, (1 + s**2).sqrt()).to_event(1).log_prob(x)
    ll = log_likelihood(model, guide, x, num_samples=500)
    assert ((ll.log_px - exact).abs() < 4 * ll.stderr + 1e-6).all()
    row = evaluate(model, guide, x, num_samples=50).iloc[0]
    assert row.active_units == 0 and row.kl == 0.0


def test_a_model_whose_only_latent_is_enumerated():
    """A mixture of two Bernoulli images, no guide sites: log p(x) is exact with one sample."""
    probs = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.7, 0.3]])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(weights),
                            infer={"enumerate": "parallel"})  # fmt: skip
            pyro.sample("obs", dist.Bernoulli(probs[y]).to_event(1), obs=x)

    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    weights = torch.tensor([0.3, 0.7])
    exact = torch.stack(
        [weights[k].log() + dist.Bernoulli(probs[k]).to_event(1).log_prob(x) for k in range(2)]
    ).logsumexp(0)
    ll = log_likelihood(model, lambda x: None, x, num_samples=1)
    torch.testing.assert_close(ll.log_px, exact)
    assert evaluate(model, lambda x: None, x, num_samples=1).iloc[0].active_units == 0


def test_refine_a_mixture_prior_model(digits):
    arch = ArchConfig(z_dim=2, hidden=(16,), components=3)
    shape = DataShape(64, digits.image_shape, digits.train.shape[0])
    model = MODELS["mixture-prior"](arch, shape)
    guide = GUIDES["diag"](arch, shape, model)
    result = refine(model, guide, digits.test[:20], steps=10, eval_samples=10)
    assert (result.refined_elbo >= result.amortized_elbo).all()


def test_dynamic_binarization_with_a_validated_bernoulli(digits):
    """The check runs on the first batch as training sees it: binarized."""

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    decoder = nn.Linear(2, 64)
    dynamic = load_dataset("digits", binarize="dynamic")
    result = fit(model, TutorialVAE().guide, dynamic, FitConfig(epochs=1, device="cpu"))
    assert len(result.history) == 1


def test_a_data_dependent_initialisation_sees_the_first_minibatch(digits):
    def model(x):
        mu = pyro.param("mu", lambda: x.mean(0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=x)

    config = FitConfig(epochs=1, batch_size=64, lr=1e-12, device="cpu")
    fit(model, lambda x: None, digits.train, config)
    x, batches = epoch_batches(digits.train, False, config, 0)
    torch.testing.assert_close(pyro.param("mu").detach(), x[batches[0]].mean(0), atol=1e-6, rtol=0)


def test_evaluating_float32_data_after_training_in_float64_says_what_to_do(digits):
    vae = TutorialVAE()
    fit(vae.model, vae.guide, digits.train.double(), FitConfig(epochs=1, device="cpu"))
    with pytest.raises(ModelGuideError, match="the data is torch.float32: convert it"):
        evaluate(vae.model, vae.guide, digits.test)
