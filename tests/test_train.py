"""fit: learning, exact resume, Ctrl-C, NaN stops, atomic checkpoints, data checks, devices."""

import pyro
import pytest
import torch

from ppvae.config import ArchConfig, ConfigError, DataShape
from ppvae.data import DataError, load_dataset
from ppvae.evaluation.metrics import elbo_terms
from ppvae.guides import GUIDES
from ppvae.infer import checkpoint as ckpt
from ppvae.infer.fitting import FitConfig, TrainingError, fit
from ppvae.infer.loop import Step
from ppvae.models import MODELS
from tests.conftest import cuda, steps_then_sigint

ARCH = ArchConfig(z_dim=2, hidden=(32,))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def dynamic_digits():
    return load_dataset("digits", binarize="dynamic")


def pair(data, model="bernoulli", guide="diag", seed=0):
    torch.manual_seed(seed)
    shape = DataShape(data.train.shape[1], data.image_shape, data.train.shape[0])
    m = MODELS[model](ARCH, shape)
    return m, GUIDES[guide](ARCH, shape, m)


def params(*modules):
    return {
        f"{i}.{k}": v.detach().clone()
        for i, m in enumerate(modules)
        for k, v in m.state_dict().items()
    }


def test_training_raises_the_test_elbo(digits):
    model, guide = pair(digits)
    start = elbo_terms(model, guide, digits.test, num_samples=20).elbo.mean().item()
    result = fit(model, guide, digits, FitConfig(epochs=15, batch_size=64, lr=3e-3))
    end = result.history.test_elbo.iloc[-1]
    # an untrained decoder scores about -44 nats per digit; a trained one about -26
    assert end > start + 10, (start, end)
    assert list(result.history.epoch) == list(range(1, 16))
    assert (result.history.seconds > 0).all()


@pytest.mark.parametrize("objective", ["trace", "score-baseline"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(
    objective, dynamic_digits, tmp_path, monkeypatch
):
    config = FitConfig(epochs=3, batch_size=128, lr=3e-3, objective=objective, seed=3)
    model, guide = pair(dynamic_digits)
    straight = fit(model, guide, dynamic_digits, config, checkpoint=tmp_path / "a.pt")
    expected = params(model, guide)

    # Ctrl-C in the middle of epoch 2 (11 steps per epoch), then resume with fresh objects;
    # the store is cleared as a new process would find it (the baseline lives there)
    path = tmp_path / "b.pt"
    pyro.clear_param_store()
    with monkeypatch.context() as m:
        steps_then_sigint(m, after=15)
        model, guide = pair(dynamic_digits)
        stopped = fit(model, guide, dynamic_digits, config, checkpoint=path)
    assert stopped.interrupted
    assert ckpt.load(path)["progress"]["epoch"] == 1
    assert ckpt.load(path)["progress"]["step"] == 4

    pyro.clear_param_store()
    model, guide = pair(dynamic_digits, seed=99)  # a different init, overwritten by the resume
    resumed = fit(model, guide, dynamic_digits, config, checkpoint=path, resume=True)
    assert not resumed.interrupted
    got = params(model, guide)
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    cols = ["train_elbo", "test_elbo", "test_kl"]
    assert resumed.history[cols].equals(straight.history[cols])


def test_resume_extends_a_finished_run(digits, tmp_path):
    config = FitConfig(epochs=4, batch_size=256, seed=1)
    model, guide = pair(digits)
    fit(model, guide, digits, config)
    expected = params(model, guide)

    path = tmp_path / "c.pt"
    model, guide = pair(digits)
    fit(model, guide, digits, FitConfig(epochs=2, batch_size=256, seed=1), checkpoint=path)
    model, guide = pair(digits, seed=5)
    result = fit(model, guide, digits, config, checkpoint=path, resume=True)
    assert len(result.history) == 4
    assert all(torch.equal(v, expected[k]) for k, v in params(model, guide).items())


def test_resume_refuses_other_settings(digits, tmp_path):
    path = tmp_path / "d.pt"
    model, guide = pair(digits)
    fit(model, guide, digits, FitConfig(epochs=1, batch_size=256), checkpoint=path)
    with pytest.raises(ConfigError, match="different settings: lr"):
        fit(
            model,
            guide,
            digits,
            FitConfig(epochs=2, batch_size=256, lr=0.1),
            checkpoint=path,
            resume=True,
        )
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(
            model, guide, digits, FitConfig(epochs=2), checkpoint=tmp_path / "none.pt", resume=True
        )


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(
    digits, tmp_path, monkeypatch
):
    path = tmp_path / "e.pt"
    model, guide = pair(digits)
    calls = {"n": 0}
    step = Step.__call__

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5 + 3:  # 5 full batches of 256 per epoch: epoch 2, step 3
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Step, "__call__", poisoned)
    with pytest.raises(TrainingError, match="epoch 2, step 3"):
        fit(model, guide, digits, FitConfig(epochs=3, batch_size=256), checkpoint=path)
    saved = ckpt.load(path)
    assert saved["progress"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.pt"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "f.pt"
    ckpt.save(path, {"value": torch.arange(3)})

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(path, {"value": torch.arange(5)})
    assert torch.equal(ckpt.load(path)["value"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["f.pt"]


@pytest.mark.parametrize(
    "bad,message",
    [
        (lambda x: x.clone().index_fill_(0, torch.tensor([3]), float("nan")), "NaN"),
        (lambda x: x.clone().index_fill_(0, torch.tensor([3]), float("inf")), "Inf"),
        (lambda x: x * 2.0, r"\[0, 1\]"),
        (lambda x: x.reshape(-1, 8, 8), "2-D|\\(N, D\\)"),
    ],
)
def test_bad_training_data_is_rejected(digits, bad, message):
    model, guide = pair(digits)
    with pytest.raises(DataError, match=message):
        fit(model, guide, bad(digits.train), FitConfig(epochs=1))


def test_gaussian_models_accept_data_outside_the_unit_interval(digits):
    model, guide = pair(digits, model="gaussian")
    result = fit(model, guide, digits.train * 16.0, FitConfig(epochs=1, batch_size=256))
    assert result.history.train_elbo.notna().all()


def test_progress_bar_only_on_request(digits, capsys):
    model, guide = pair(digits)
    fit(model, guide, digits, FitConfig(epochs=1, batch_size=512))  # stderr is not a terminal
    assert capsys.readouterr().err == ""
    fit(model, guide, digits, FitConfig(epochs=1, batch_size=512), progress=True)
    assert "step" in capsys.readouterr().err


def test_kl_warmup_raises_the_weight_linearly(digits):
    model, guide = pair(digits)
    history = fit(
        model, guide, digits, FitConfig(epochs=4, batch_size=256, kl_warmup_epochs=2, beta=0.5)
    ).history
    assert history.beta.tolist() == pytest.approx([0.25, 0.5, 0.5, 0.5])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"device": "tpu"}, "unknown device"),
        ({"objective": "elbo2"}, "choose one of: trace, mean-field"),
        ({"epochs": 0}, "epochs must be >= 1"),
    ],
)
def test_bad_fit_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FitConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda(digits):
    model, guide = pair(digits)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        fit(model, guide, digits, FitConfig(epochs=1, device="cuda"))


@cuda
def test_fit_on_cuda_matches_the_cpu_objective(digits):
    model, guide = pair(digits)
    result = fit(model, guide, digits, FitConfig(epochs=2, batch_size=256, device="cuda"))
    assert next(model.parameters()).device.type == "cuda"
    assert result.history.test_elbo.notna().all()
    # the same parameters score the same test ELBO on either device (one sample, seeded)
    on_gpu = elbo_terms(model, guide, digits.test.cuda(), num_samples=200).elbo.mean().item()
    on_cpu = elbo_terms(model.cpu(), guide.cpu(), digits.test, num_samples=200).elbo.mean().item()
    assert on_gpu == pytest.approx(on_cpu, abs=0.1)


def test_resume_in_another_dtype_keeps_every_parameter_a_trainable_leaf(digits, tmp_path):
    """The GPU resume bug in miniature: a checkpoint written in float32 resumed on float64
    data (as a CPU checkpoint is resumed on CUDA). Converting the saved tensors with ``.to``
    makes non-leaf tensors that Adam refuses; the values must be copied into the parameters
    the pair already trains, pyro.param and pyro.module alike."""
    net = torch.nn.Linear(2, 64)

    def model(x):
        pyro.module("decoder", net)
        shift = pyro.param("shift", lambda: torch.zeros(64, dtype=x.dtype))
        with pyro.plate("data", x.shape[0]):
            prior = pyro.distributions.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            logits = net(z) + shift
            pyro.sample("x", pyro.distributions.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", lambda: torch.zeros(2, dtype=x.dtype))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(loc, 1.0).expand([len(x), 2]).to_event(1))

    binary = load_dataset("digits", binarize="static")
    config = FitConfig(epochs=1, batch_size=256, device="cpu")
    fit(model, guide, binary.train, config, checkpoint=tmp_path / "f.pt")
    saved = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    pyro.clear_param_store()
    with torch.no_grad():
        net.weight.zero_()  # other values, overwritten by the resume
    longer = FitConfig(epochs=2, batch_size=256, device="cpu")
    fit(model, guide, binary.train.double(), longer, checkpoint=tmp_path / "f.pt", resume=True)
    store = pyro.get_param_store()
    for name in saved:
        value = store.get_state()["params"][name]
        assert value.is_leaf and value.requires_grad and value.dtype == torch.float64, name
        assert not torch.equal(store[name].detach().float(), saved[name])  # it trained on
    assert store["decoder$$$weight"] is net.weight
