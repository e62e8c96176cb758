"""Data as a tuple or a dict of tensors (``model(*batch)``, ``model(**batch)``): the same numbers
as the packed-tensor workaround (one tensor [x | y] and a wrapper that unpacks it), to 1e-6."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppvae import FitConfig
from ppvae.data import DataError, Dataset, Rows
from ppvae.errors import ModelGuideError
from ppvae.evaluation.bounds import log_likelihood
from ppvae.evaluation.metrics import evaluate
from ppvae.infer.fitting import fit
from ppvae.pairs.checker import check


def model(x, y=None):
    w = pyro.param("w", torch.zeros(3))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        return pyro.sample("y", dist.Normal(x @ w + z, 1.0), obs=y)


def guide(x, y=None):
    a = pyro.param("a", torch.zeros(()))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(a * y, 1.0))


def packed_model(d):
    return model(d[:, :3], d[:, 3])


def packed_guide(d):
    return guide(d[:, :3], d[:, 3])


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([1.0, -1.0, 0.5]) + torch.randn(n, generator=g)


def _split(form):
    (x, y), (u, v) = _data(), _data(20, seed=1)
    forms = {
        "tuple": ((x, y), (u, v)),
        "dict": ({"x": x, "y": y}, {"x": u, "y": v}),
        "packed": (torch.cat([x, y[:, None]], 1), torch.cat([u, v[:, None]], 1)),
    }
    train, test = forms[form]
    return Dataset("toy", train, test, None)


PAIRS = {"tuple": (model, guide), "dict": (model, guide), "packed": (packed_model, packed_guide)}
CONFIG = FitConfig(epochs=3, batch_size=10, device="cpu", lr=0.05, test_samples=4)


def _trained(form, config=CONFIG, **kwargs):
    pyro.clear_param_store()
    result = fit(*PAIRS[form], _split(form), config, **kwargs)
    return result, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_fit_on_several_tensors_equals_the_packed_workaround(form):
    packed, packed_params = _trained("packed")
    result, params = _trained(form)
    for name, value in packed_params.items():
        torch.testing.assert_close(params[name], value, rtol=0, atol=1e-6)
    cols = ["train_elbo", "test_elbo", "test_reconstruction", "test_kl"]
    assert result.history[cols].to_numpy() == pytest.approx(
        packed.history[cols].to_numpy(), abs=1e-6
    )


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_evaluate_and_log_likelihood_on_several_tensors_equal_the_packed_ones(form):
    _trained("packed")
    data = _split(form)
    pyro.set_rng_seed(3)
    packed = evaluate(packed_model, packed_guide, _split("packed").test, num_samples=50)
    pyro.set_rng_seed(3)
    row = evaluate(model, guide, data.test, num_samples=50)
    for col in ("elbo", "reconstruction", "kl", "log_px", "log_px_stderr", "active_units"):
        assert row[col].item() == pytest.approx(packed[col].item(), abs=1e-6), col
    pyro.set_rng_seed(4)
    one = log_likelihood(model, guide, data.test, num_samples=30).log_px
    pyro.set_rng_seed(4)
    two = log_likelihood(packed_model, packed_guide, _split("packed").test, num_samples=30)
    torch.testing.assert_close(one, two.log_px, rtol=0, atol=1e-6)


def test_a_resumed_fit_on_a_tuple_ends_where_an_uninterrupted_one_does(tmp_path):
    path = tmp_path / "checkpoint.pt"
    _, straight = _trained("tuple")
    _trained("tuple", FitConfig(**{**CONFIG.to_dict(), "epochs": 1}), checkpoint=path)
    resumed, params = _trained("tuple", checkpoint=path, resume=True)
    assert len(resumed.history) == 3
    for name, value in straight.items():
        torch.testing.assert_close(params[name], value, rtol=0, atol=1e-6)


def test_rows_index_move_and_repeat_every_tensor_along_the_examples():
    rows = Rows((torch.arange(6.0).view(3, 2),), {"y": torch.tensor([0, 1, 2])})
    picked = rows[torch.tensor([2, 0])].repeat(2)
    assert picked.args[0].tolist() == [[4.0, 5.0], [0.0, 1.0]] * 2
    assert picked.kwargs["y"].tolist() == [2, 0, 2, 0]
    moved = rows.to("cpu", torch.float64)  # a dtype applies to floating tensors only
    assert moved.args[0].dtype == torch.float64 and moved.kwargs["y"].dtype == torch.int64


def test_tensors_of_different_lengths_are_one_line():
    x, y = _data()
    with pytest.raises(DataError, match=r"same number of rows .*argument 0: 40, argument 1: 39"):
        fit(model, guide, (x, y[:-1]), CONFIG)


def test_an_argument_the_signature_cannot_take_is_one_line():
    x, y = _data()
    with pytest.raises(ModelGuideError, match="model's signature does not fit the data: .*'z'"):
        check(model, guide, {"x": x, "z": y})


def test_dynamic_binarization_redraws_only_the_first_tensor():
    from ppvae.data import binarize_sample
    from ppvae.infer.loop import epoch_batches

    x, y = torch.rand(12, 3), torch.randn(12)
    rows = Rows((x, y))
    binarized, _ = epoch_batches(rows, True, CONFIG, 0)
    g = torch.Generator().manual_seed(CONFIG.seed * 1_000_003)
    assert torch.equal(binarized.args[0], binarize_sample(x, g))
    assert binarized.args[1] is y


def test_refine_on_a_tuple_equals_refine_on_the_packed_tensor():
    from ppvae.guides.refine import refine

    (x, y), packed = _data(), _split("packed").train
    _trained("packed")
    found = []
    for pair, data in (((packed_model, packed_guide), packed), ((model, guide), (x, y))):
        torch.manual_seed(5)
        found.append(refine(*pair, data, steps=20, eval_samples=10, seed=1))
    for one, two in zip(*found, strict=True):
        if torch.is_tensor(one):
            torch.testing.assert_close(one, two, rtol=0, atol=1e-6)
    assert (found[1].refined_elbo >= found[1].amortized_elbo).all()
