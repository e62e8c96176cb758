"""A linear-Gaussian model whose y is observed for some rows only (NaN rows elsewhere), written
Pyro's way, ``model(x, y=None)``: the step's loss and the scores against exact answers.

z ~ N(0, 1), x | z ~ N(a z, sx^2), y | z ~ N(z, sy^2). The guide is the exact posterior:
q(z | x, y) where y is given, q(z | x) p(y | z) where it is not, so every log weight is the
exact log p(x, y) or log p(x) of its row and the ELBO has no Monte Carlo noise.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppvae import FitConfig
from ppvae.evaluation.bounds import elbo_terms, log_likelihood
from ppvae.infer.fitting import fit, training_step
from ppvae.infer.loop import epoch_batches

A, SX, SY = 1.5, 0.7, 0.4


def model(x, y=None):
    a = pyro.param("a", torch.tensor(A))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
        pyro.sample("x", dist.Normal(a * z, SX), obs=x)
        pyro.sample("y", dist.Normal(z, SY), obs=y)


def guide(x, y=None):
    a = pyro.param("a", torch.tensor(A))
    precision = 1 + a**2 / SX**2 + (0.0 if y is None else 1 / SY**2)
    mean = (a * x / SX**2 + (0.0 if y is None else y / SY**2)) / precision
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mean, precision**-0.5))
        if y is None:
            pyro.sample("y", dist.Normal(z, SY))


def exact_log_p(x, y):
    """log p(x, y) per row, or log p(x) where y is NaN."""
    cov = torch.tensor([[A**2 + SX**2, A], [A, 1 + SY**2]])
    both = dist.MultivariateNormal(torch.zeros(2), cov).log_prob(
        torch.stack([x, y.nan_to_num()], -1)
    )
    alone = dist.Normal(0.0, math.sqrt(A**2 + SX**2)).log_prob(x)
    return torch.where(y.isnan(), alone, both)


def _data(n=40, labelled=10):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, generator=g)
    x, y = A * z + SX * torch.randn(n, generator=g), z + SY * torch.randn(n, generator=g)
    y[labelled:] = math.nan
    return x, y


CONFIG = FitConfig(epochs=2, batch_size=8, device="cpu", lr=0.01)


def test_each_step_is_the_full_data_objective_with_each_group_scaled_to_its_size():
    """Batch of 8 from 10 labelled and 30 unlabelled rows: B_g = 2 and 6, weights 10/2 and
    30/6; the loss is minus the sum of the rows' exact log-likelihoods so weighted."""
    x, y = _data()
    step = training_step(model, guide, (x, y), CONFIG)
    assert step.layout.per_step == [2, 6]
    _, batches = epoch_batches(step.layout and _rows(x, y), False, CONFIG, 0, step.layout)
    for idx in batches[:3]:
        assert int((~y[idx].isnan()).sum()) == 2  # every batch: 2 labelled rows, 6 not
        log_p = exact_log_p(x[idx], y[idx])
        weights = torch.where(y[idx].isnan(), 30 / 6, 10 / 2)
        loss = step.loss(_rows(x, y)[idx], idx, 40)
        assert loss.item() == pytest.approx(-(weights * log_p).sum().item(), rel=1e-5)


def test_the_elbo_of_the_exact_posterior_is_the_exact_log_likelihood_of_the_whole_data():
    x, y = _data()
    step = training_step(model, guide, (x, y), FitConfig(batch_size=40, device="cpu"))
    _, batches = epoch_batches(_rows(x, y), False, CONFIG, 0, step.layout)
    loss = step.loss(_rows(x, y)[batches[0]], batches[0], 40)
    assert loss.item() == pytest.approx(-exact_log_p(x, y).sum().item(), rel=1e-6)
    for scored in (
        elbo_terms(model, guide, (x, y), analytic=False).elbo,
        log_likelihood(model, guide, (x, y), num_samples=3).log_px,
    ):
        torch.testing.assert_close(scored, exact_log_p(x, y), rtol=0, atol=1e-5)


def test_fit_reports_the_rows_of_each_group_and_resumes_exactly(tmp_path):
    x, y = _data()
    straight = fit(model, guide, {"x": x, "y": y}, CONFIG)
    a = pyro.param("a").item()
    assert straight.history[["batch_rows_all", "batch_rows_no_y"]].values.tolist() == [[2, 6]] * 2
    pyro.clear_param_store()
    path = tmp_path / "c.pt"
    fit(
        model,
        guide,
        {"x": x, "y": y},
        FitConfig(**{**CONFIG.to_dict(), "epochs": 1}),
        checkpoint=path,
    )
    resumed = fit(model, guide, {"x": x, "y": y}, CONFIG, checkpoint=path, resume=True)
    assert pyro.param("a").item() == a
    assert resumed.history.train_elbo.tolist() == straight.history.train_elbo.tolist()


def _rows(x, y):
    from ppvae.data import Rows

    return Rows((x, y))


C, WEIGHT = 0.8, 3.0


def classify(x, y):
    """An auxiliary pair (Pyro's ss-vae ``model_classify``): y | x ~ N(c x, 1), c trained."""
    c = pyro.param("c", torch.tensor(C))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y_aux", dist.Normal(c * x, 1.0), obs=y)


def classify_guide(x, y):
    pass


def test_an_auxiliary_loss_trains_on_the_labelled_rows_scaled_and_weighted():
    x, y = _data()
    step = training_step(model, guide, (x, y), CONFIG, aux=[(classify, classify_guide, WEIGHT)])
    assert "c" in step.names  # one optimizer for the pair and the auxiliary one
    _, batches = epoch_batches(_rows(x, y), False, CONFIG, 0, step.layout)
    idx = batches[0]
    weights = torch.where(y[idx].isnan(), 30 / 6, 10 / 2)
    main = -(weights * exact_log_p(x[idx], y[idx])).sum()
    seen = ~y[idx].isnan()
    aux = -(10 / 2) * dist.Normal(C * x[idx][seen], 1.0).log_prob(y[idx][seen]).sum()
    loss = step.loss(_rows(x, y)[idx], idx, 40)
    assert loss.item() == pytest.approx((main + WEIGHT * aux).item(), rel=1e-5)


def test_a_fit_with_an_auxiliary_loss_resumes_exactly(tmp_path):
    x, y, aux = *_data(), [(classify, classify_guide, WEIGHT)]
    fit(model, guide, (x, y), CONFIG, aux=aux)
    c = pyro.param("c").item()
    pyro.clear_param_store()
    path, one = tmp_path / "c.pt", FitConfig(**{**CONFIG.to_dict(), "epochs": 1})
    fit(model, guide, (x, y), one, aux=aux, checkpoint=path)
    assert pyro.param("c").item() != c
    fit(model, guide, (x, y), CONFIG, aux=aux, checkpoint=path, resume=True)
    assert pyro.param("c").item() == c


class CountingClassify(torch.nn.Module):
    """The auxiliary pair's model as a module with a buffer: how many times it was called."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x, y):
        self.calls += 1
        classify(x, y)


def test_a_resumed_fit_puts_back_the_auxiliary_modules_buffers(tmp_path):
    x, y = _data()
    straight = CountingClassify()
    fit(model, guide, (x, y), CONFIG, aux=[(straight, classify_guide, WEIGHT)])
    pyro.clear_param_store()
    path, one = tmp_path / "c.pt", FitConfig(**{**CONFIG.to_dict(), "epochs": 1})
    fit(model, guide, (x, y), one, aux=[(CountingClassify(), classify_guide, WEIGHT)],
        checkpoint=path)  # fmt: skip
    resumed = CountingClassify()  # a new process: its buffer starts again
    fit(model, guide, (x, y), CONFIG, aux=[(resumed, classify_guide, WEIGHT)], checkpoint=path,
        resume=True)  # fmt: skip
    assert resumed.calls.item() == straight.calls.item() > 0


def test_evaluate_scores_each_group_without_its_unobserved_arguments():
    from ppvae.evaluation.metrics import evaluate

    x, y = _data()
    row = evaluate(model, guide, {"x": x, "y": y}, num_samples=5)
    assert row.log_px.item() == pytest.approx(exact_log_p(x, y).mean().item(), abs=1e-5)
    assert row.active_units.item() == 2  # z and y, latent on the 30 rows without y
    assert "accuracy" not in row  # y is continuous: not a label


def test_resuming_without_the_aux_pairs_the_checkpoint_has_is_one_line(tmp_path):
    from ppvae.errors import CheckpointError

    x, y = _data()
    path, one = tmp_path / "c.pt", FitConfig(**{**CONFIG.to_dict(), "epochs": 1})
    fit(model, guide, (x, y), one, aux=[(CountingClassify(), classify_guide, WEIGHT)],
        checkpoint=path)  # fmt: skip
    with pytest.raises(CheckpointError, match="written with 1 aux pair\\(s\\), this fit has 0"):
        fit(model, guide, (x, y), CONFIG, checkpoint=path, resume=True)
