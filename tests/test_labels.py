"""A label argument (Pyro's ss-vae ``model(xs, ys=None)``), found from traces: ``evaluate``
adds log p(x) with the label summed out and the accuracy of q(y | x), checked against a
two-class Gaussian mixture whose exact posterior is the guide."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppvae.data import Rows
from ppvae.evaluation.labels import label_argument
from ppvae.evaluation.metrics import evaluate

PI, MU = torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.0], [1.0, 0.5]])


def model(xs, ys=None):
    with pyro.plate("data"):
        ys = pyro.sample("y", dist.OneHotCategorical(PI.expand(xs.shape[0], 2)), obs=ys)
        pyro.sample("x", dist.Normal(ys @ MU, 1.0).to_event(1), obs=xs)


def posterior(xs):
    joint = PI.log() + dist.Normal(MU, 1.0).to_event(1).log_prob(xs[:, None, :])
    return joint.softmax(-1), joint.logsumexp(-1)


def guide(xs, ys=None):
    with pyro.plate("data"):
        if ys is None:
            pyro.sample("y", dist.OneHotCategorical(posterior(xs)[0]))


def test_a_label_is_found_from_traces_and_scored_exactly():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(200, generator=g) < PI[1]).long()
    x = MU[y] + torch.randn(200, 2, generator=g)
    ys = torch.nn.functional.one_hot(y, 2).float()
    assert label_argument(model, guide, Rows((x, ys))) == ((True, False), "y")
    row = evaluate(model, guide, (x, ys), num_samples=20)
    probs, log_px = posterior(x)
    assert row.log_px_unlabelled.item() == pytest.approx(log_px.mean().item(), abs=1e-5)
    assert row.accuracy.item() == pytest.approx((probs.argmax(-1) == y).double().mean().item())
    exact_joint = (PI[y].log() + dist.Normal(MU[y], 1.0).log_prob(x).sum(-1)).mean()
    assert row.log_px.item() == pytest.approx(exact_joint.item(), abs=1e-5)  # log p(x, y)
