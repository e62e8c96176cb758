"""Missing entries (NaN): the MCAR mask and the checks on masks and data; the masked likelihood
and the MIWAE bound against worked-out answers (the plain ELBO / IWAE with nothing missing, the
exact observed-data PPCA log-likelihood with the exact guide); check, a sync-free step and fit
on digits with a quarter of the pixels missing."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppvae import ArchConfig, DataShape, FitConfig, check, fit
from ppvae.baselines import PPCAParams, observed_log_prob, ppca_log_prob
from ppvae.data import DataError, binarize_sample, load_dataset, validate_data
from ppvae.data.missing import mcar_dataset, mcar_mask, observed, validate_missing, with_missing
from ppvae.evaluation.metrics import elbo_terms, evaluate, log_likelihood
from ppvae.guides import GUIDES
from ppvae.infer.fitting import training_step
from ppvae.models import MODELS, PPCA
from ppvae.models.sites import LATENT, OBS, data_plate
from ppvae.pairs import batched
from ppvae.pairs.checker import ModelGuideError
from ppvae.pairs.objectives import OBJECTIVES
from tests.conftest import assert_steps_never_synchronize, cuda
from tests.test_losses import _forbid_host_reads

NAN = math.nan
N, B, D, Q = 40, 8, 6, 2


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def loss(key, model, guide, args, particles=1):
    fn = OBJECTIVES[key].loss_fn(
        batched(model), batched(guide), num_particles=particles, max_plate_nesting=1, plate="data"
    )
    return fn(*args)


# --- masks and data checks ---------------------------------------------------------------


def test_mcar_mask_observes_an_entry_with_the_worked_out_probability():
    """Each entry is dropped with probability r, then an emptied row gets one entry back: an
    entry is observed with probability (1 - r) + r^D / D = 0.5 + 0.125 / 3 at D = 3, r = 0.5."""
    mask = mcar_mask((100_000, 3), 0.5, seeded(0))
    counts = mask.sum(1).double()
    assert counts.min() == 1  # no row is left with nothing observed
    expected = 0.5 + 0.5**3 / 3
    se = counts.std() / 3 / math.sqrt(len(counts))  # rows are independent, entries are not
    assert abs(counts.mean() / 3 - expected) < 4 * se
    assert torch.equal(mask, mcar_mask((100_000, 3), 0.5, seeded(0)))
    assert mcar_mask((5, 4), 0.0).all() and mcar_mask((50, 1), 0.9, seeded(1)).all()


def test_mcar_dataset_drops_a_quarter_of_digits_and_keeps_the_complete_data_apart():
    data = load_dataset("digits")
    masked = mcar_dataset(data, 0.25, seed=0)
    observed_ = ~masked.train.isnan()
    assert masked.train.isnan().float().mean().item() == pytest.approx(0.25, abs=0.005)
    assert torch.equal(masked.train[observed_], data.train[observed_])
    assert not data.train.isnan().any() and masked.test.isnan().any()


def test_nan_form_round_trip():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, True], [False, True, True]])
    nan_form = with_missing(x, mask)
    filled, back = observed(nan_form)
    assert torch.equal(back, mask)
    assert torch.equal(filled, torch.tensor([[1.0, 0.0, 3.0], [0.0, 5.0, 6.0]]))
    assert torch.equal(validate_missing(x, mask).isnan(), ~mask)


@pytest.mark.parametrize(
    "call, expected",
    [
        (
            lambda x: with_missing(x, torch.ones(3, 2, dtype=torch.bool)),
            r"mask has shape \(3, 2\)",
        ),
        (lambda x: with_missing(x, torch.ones(2, 3)), "boolean tensor.*got torch.float32"),
        (lambda x: with_missing(x, torch.tensor([[True] * 3, [False] * 3])), "1 row with nothing"),
        (lambda x: validate_missing(x.where(x < 4, NAN)), "row 1; drop it"),  # row 1 all NaN
        (  # NaN in x and the mask's gaps together leave row 1 empty
            lambda x: validate_missing(x.where(x < 6, NAN), torch.ones(2, 3).triu(1).bool()),
            "1 row with nothing observed.*row 1",
        ),
        (lambda x: validate_missing(x.where(x != 2, math.inf)), "0 NaN and 1 Inf"),
        (lambda x: mcar_mask(x.shape, 1.0), r"rate must lie in \[0, 1\)"),
    ],
    ids=["shape", "dtype", "empty-row-mask", "empty-row-nan", "nan-and-mask", "inf", "rate"],
)
def test_bad_masks_and_data_get_one_line_errors(call, expected):
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    with pytest.raises(DataError, match=expected) as err:
        call(x)
    assert "\n" not in str(err.value)


def test_validate_data_lets_nan_through_only_when_asked_and_checks_the_observed_entries():
    x = torch.tensor([[0.5, NAN], [NAN, 1.0]])
    validate_data(x, unit_interval=True, missing=True)
    with pytest.raises(DataError, match="2 NaN and 0 Inf.*accepts_missing"):
        validate_data(x)
    with pytest.raises(DataError, match="max 1.5"):
        validate_data(torch.tensor([[0.5, NAN], [NAN, 1.5]]), unit_interval=True, missing=True)


def test_dynamic_binarization_keeps_missing_entries_missing():
    x = torch.tensor([[0.3, NAN, 0.9]]).expand(1000, 3)
    sample = binarize_sample(x, seeded(0))
    assert sample[:, 1].isnan().all()
    assert torch.equal(sample[:, [0, 2]], binarize_sample(x.nan_to_num(0.5), seeded(0))[:, [0, 2]])


# --- the masked likelihood and the MIWAE bound ----------------------------------------------


@pytest.fixture(scope="module")
def ppca() -> tuple[PPCA, PPCAParams]:
    g = seeded(0)
    W = torch.randn(D, Q, generator=g, dtype=torch.float64)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    sigma2 = torch.tensor(0.3, dtype=torch.float64)
    return PPCA(D, Q, missing=True).double().set_params(W, mu, sigma2), PPCAParams(W, mu, sigma2)


@pytest.fixture(scope="module")
def incomplete(ppca) -> torch.Tensor:
    """(N, D) float64 draws from the PPCA, 40% of the entries missing."""
    W, mu, sigma2 = ppca[1]
    g = seeded(1)
    z = torch.randn(N, Q, generator=g, dtype=torch.float64)
    x = z @ W.T + mu + sigma2.sqrt() * torch.randn(N, D, generator=g, dtype=torch.float64)
    return with_missing(x, mcar_mask(x.shape, 0.4, g))


def test_the_likelihood_scores_the_observed_entries_only(ppca, incomplete):
    model, (W, mu, sigma2) = ppca
    trace = pyro.poutine.trace(model).get_trace(incomplete)
    z, site = trace.nodes[LATENT]["value"], trace.nodes[OBS]
    normal = dist.Normal(z @ W.T + mu, sigma2.sqrt(), validate_args=False)
    by_hand = normal.log_prob(incomplete).nan_to_num(0).sum(1)
    torch.testing.assert_close(site["fn"].log_prob(site["value"]), by_hand, rtol=0, atol=1e-12)


def plain_twin(model):
    """The model as Pyro's tutorials write it, with the same decoder and no masking."""

    def plain(x, idx=None, num_data=None):
        with data_plate(x, idx, num_data):
            z = pyro.sample(LATENT, model.prior())
            pyro.sample(OBS, model.decoder(z), obs=x)

    return plain


@pytest.mark.parametrize("likelihood", ["gaussian-learned", "bernoulli"])
@pytest.mark.parametrize("key,particles", [("trace", 1), ("iwae", 1), ("iwae", 5)])
def test_with_nothing_missing_the_masked_objective_is_the_plain_one_exactly(
    likelihood, key, particles
):
    """Value and gradient of the masked pair's loss equal those of the unmasked model, bit for
    bit, on the same draws: the plain ELBO for K = 1 and the IWAE bound for K = 5."""
    arch, shape = ArchConfig(z_dim=Q, hidden=(16,)), DataShape(64, None, N, missing=True)
    torch.manual_seed(0)
    model = MODELS[likelihood](arch, shape)
    guide = GUIDES["masked-diag"](arch, shape, model)
    x = torch.rand(N, 64).round()
    idx = torch.arange(B)
    args = (x[idx], idx, N)
    params = list(model.parameters()) + list(guide.parameters())
    values = []
    for m in (model, plain_twin(model)):
        pyro.set_rng_seed(1)
        value = loss(key, m, guide, args, particles)
        values.append((value, torch.autograd.grad(value, params)))
    (masked, masked_grads), (plain, plain_grads) = values
    assert torch.equal(masked, plain)
    assert all(torch.equal(a, b) for a, b in zip(masked_grads, plain_grads, strict=True))


def test_iwae_with_one_particle_is_the_masked_elbo(ppca, incomplete):
    model, _ = ppca
    guide = GUIDES["masked-diag"](
        ArchConfig(z_dim=Q, hidden=(8,)), DataShape(D, None, N, missing=True)
    ).double()
    idx = torch.arange(B)
    args = (incomplete[idx], idx, N)
    values = []
    for key in ("trace", "iwae"):
        pyro.set_rng_seed(2)
        values.append(loss(key, model, guide, args).item())
    assert values[0] == pytest.approx(values[1], rel=1e-12)


def test_with_the_exact_guide_every_bound_is_the_observed_data_log_likelihood(ppca, incomplete):
    """log p(x_obs, z) - log q(z | x_obs) = log p(x_obs) for every z: the training losses (ELBO
    and MIWAE, scaled to the data set), the per-example ELBO and the importance-sampled log p(x)
    all equal the baselines' exact observed-data log-likelihood."""
    model, params = ppca
    guide = GUIDES["masked-ppca-exact"](
        ArchConfig(z_dim=Q), DataShape(D, None, N, missing=True), model
    )
    exact = observed_log_prob(incomplete, params)
    idx = torch.arange(B)
    args = (incomplete[idx], idx, N)
    for key, k in [("trace", 1), ("iwae", 1), ("iwae", 4)]:
        assert -loss(key, model, guide, args, k).item() == pytest.approx(
            (N / B) * exact[:B].sum().item(), rel=1e-12
        )
    elbo = elbo_terms(model, guide, incomplete, num_samples=3, analytic=False).elbo
    torch.testing.assert_close(elbo, exact, rtol=0, atol=1e-10)
    ll = log_likelihood(model, guide, incomplete, num_samples=10)
    torch.testing.assert_close(ll.log_px, exact, rtol=0, atol=1e-10)
    assert ll.stderr.max() < 1e-6
    row = evaluate(model, guide, incomplete, num_samples=5).iloc[0]
    assert row.log_px == pytest.approx(exact.mean().item(), rel=1e-12)
    observed = (~incomplete.isnan()).sum().item() / N  # bits per observed entry
    assert row.bits_per_dim == pytest.approx(-row.log_px / (observed * math.log(2)), rel=1e-12)


def test_with_nothing_missing_the_observed_data_guide_is_the_exact_posterior(ppca, incomplete):
    model, params = ppca
    complete = incomplete.nan_to_num(0.0)
    guide = GUIDES["masked-ppca-exact"](
        ArchConfig(z_dim=Q), DataShape(D, None, N, missing=True), model
    )
    ll = log_likelihood(model, guide, complete, num_samples=3)
    torch.testing.assert_close(ll.log_px, ppca_log_prob(complete, *params), rtol=0, atol=1e-10)


# --- check, a training step, fit ------------------------------------------------------------


@pytest.mark.parametrize(
    "likelihood,objective",
    [("bernoulli", "iwae"), ("gaussian-learned", "trace"), ("mixture-prior", "enum")],
)
def test_check_passes_for_a_masked_catalogue_pair_on_a_batch_with_nan(likelihood, objective):
    arch, shape = (
        ArchConfig(z_dim=Q, hidden=(8,), components=3),
        DataShape(64, None, N, missing=True),
    )
    model = MODELS[likelihood](arch, shape)
    x = with_missing(torch.rand(N, 64), mcar_mask((N, 64), 0.5, seeded(0)))
    check(model, GUIDES["masked-diag"](arch, shape, model), x, objective=objective)
    with pytest.raises(ModelGuideError, match=r"missing entries, NaN.*GUIDES\['masked-diag'\]"):
        check(model, GUIDES["diag"](arch, shape, model), x, objective=objective)


@pytest.mark.parametrize(
    "model_name,guide_name,objective",
    [("bernoulli", "masked-diag", "iwae"), ("ppca", "masked-ppca-exact", "trace")],
)
def test_a_masked_training_step_never_reads_a_tensor_on_the_host(
    model_name, guide_name, objective, monkeypatch
):
    arch, shape = ArchConfig(z_dim=Q, hidden=(16,)), DataShape(64, None, 200, missing=True)
    model = MODELS[model_name](arch, shape)
    guide = GUIDES[guide_name](arch, shape, model)
    x = with_missing(torch.rand(200, 64).round(), mcar_mask((200, 64), 0.3, seeded(0)))
    # eager: a compiled step's first call traces, and tracing reads values on the host
    config = FitConfig(
        objective=objective, num_particles=3, batch_size=32, device="cpu", jit=False
    )
    step = training_step(model, guide, x, config)
    idx = torch.arange(32)
    with monkeypatch.context() as m:
        _forbid_host_reads(m)
        value = step(x[idx], idx, 200)
    assert torch.isfinite(value)


@cuda
def test_a_masked_training_step_on_cuda_does_not_synchronize():
    arch, shape = ArchConfig(z_dim=Q, hidden=(16,)), DataShape(64, None, 200, missing=True)
    model = MODELS["bernoulli"](arch, shape)
    guide = GUIDES["masked-diag"](arch, shape, model)
    x = with_missing(torch.rand(200, 64).round(), mcar_mask((200, 64), 0.3, seeded(0))).cuda()
    config = FitConfig(objective="iwae", num_particles=3, batch_size=32, device="cuda")
    step = training_step(model, guide, x, config)
    assert_steps_never_synchronize(step, x, batch=32)


def independent_pixels(train: torch.Tensor, test: torch.Tensor) -> float:
    """Mean log-likelihood of the observed test pixels under independent Bernoullis fitted to
    the observed train pixels: what a VAE that ignores its latent (collapsed) would score."""
    p = (train.nan_to_num(0).sum(0) / (~train.isnan()).sum(0)).clamp(1e-3, 1 - 1e-3)
    log_p = torch.where(test == 1, p.log(), (1 - p).log())
    return torch.where(test.isnan(), 0.0, log_p).sum(1).mean().item()


def test_fit_on_digits_with_a_quarter_missing_learns_more_than_the_pixel_marginals():
    """The MIWAE bound (K = 5) on binarized digits with 25% of the pixels missing at random.
    The test ELBO counts the observed pixels only; it rises above that of independent pixels
    (-18.46 nats here), so the latent code is used, from about -33 untrained."""
    data = mcar_dataset(load_dataset("digits", binarize="static"), 0.25, seed=0)
    arch = ArchConfig(z_dim=4, hidden=(64,))
    shape = DataShape(64, data.image_shape, data.train.shape[0], missing=True)
    torch.manual_seed(0)
    model = MODELS["bernoulli"](arch, shape)
    guide = GUIDES["masked-diag"](arch, shape, model)
    start = elbo_terms(model, guide, data.test, num_samples=5).elbo.mean().item()
    config = FitConfig(epochs=15, objective="iwae", num_particles=5, device="cpu")
    history = fit(model, guide, data, config).history
    baseline = independent_pixels(data.train, data.test)
    end = history.test_elbo.iloc[-1]
    assert start < baseline - 10 and end > baseline + 0.5, (start, baseline, end)


def test_fit_rejects_nan_for_a_model_that_does_not_declare_missing_entries():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample(
                "x", dist.Normal(z.sum(-1, keepdim=True).expand(x.shape), 1.0).to_event(1), obs=x
            )

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    x = torch.tensor([[0.5, NAN], [0.1, 0.2]])
    with pytest.raises(DataError, match="training data has 1 NaN.*accepts_missing"):
        fit(model, guide, x, FitConfig(epochs=1, device="cpu"))
