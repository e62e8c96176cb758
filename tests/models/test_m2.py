"""The M2 model and guide (models/m2.py, guides/m2.py) against hand-computed answers."""

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from ppvae import FitConfig, fit
from ppvae.errors import ModelGuideError
from ppvae.guides.amortized import positive
from ppvae.guides.m2 import M2Guide, classifier_pair
from ppvae.models.m2 import M2, joined
from ppvae.nets import MLP
from ppvae.pairs.checker import check

D, C, Q = 6, 3, 2


def pair():
    return M2(D, C, Q, hidden=(8,)), M2Guide(D, C, Q, hidden=(8,))


def test_the_auxiliary_pair_is_the_cross_entropy_of_q_y_given_x():
    _, guide = pair()
    x, labels = torch.rand(5, D).round(), torch.tensor([0, 2, 1, 1, 0])
    model_classify, guide_classify = classifier_pair(guide)
    y = F.one_hot(labels, C).float()
    loss = Trace_ELBO().differentiable_loss(model_classify, guide_classify, x, y)
    expected = F.cross_entropy(guide.encoder_y(x), labels, reduction="sum")
    assert torch.allclose(loss, expected)


def _log_joint(model, guide, x, y, z):
    """log p(x, y, z) - log q(z | x, y), per row, by hand from the networks."""
    loc, rho = guide.encoder_z(joined(x, y)).split(Q, -1)
    log_q = dist.Normal(loc, positive(rho)).log_prob(z).sum(-1)
    log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - torch.log(torch.tensor(float(C)))
    logits = model.decoder(joined(z, y))
    log_px = dist.Bernoulli(logits=logits).log_prob(x).sum(-1)
    return log_p + log_px - log_q


def test_the_unlabelled_bound_sums_y_out_exactly():
    """TraceEnum_ELBO on unlabelled rows equals sum_y q(y|x) [log p(x,y,z_y) - log q(z_y|x,y)
    - log q(y|x)], with the same draws z_y (one per class, from the same random numbers)."""
    model, guide = pair()
    x = torch.rand(4, D).round()
    pyro.set_rng_seed(1)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)
    pyro.set_rng_seed(1)
    eps = torch.randn(C, 4, Q)
    ys = torch.eye(C).reshape(C, 1, C).expand(C, 4, C)
    loc, rho = guide.encoder_z(joined(x, ys)).split(Q, -1)
    z = loc + positive(rho) * eps
    log_q_y = guide.encoder_y(x).log_softmax(-1).T  # (C, B)
    bound = (log_q_y.exp() * (_log_joint(model, guide, x, ys, z) - log_q_y)).sum()
    assert torch.allclose(loss, -bound, rtol=1e-5)


def test_a_labelled_row_observes_y_and_the_guide_leaves_q_y_alone():
    model, guide = pair()
    x, y = torch.rand(3, D).round(), torch.eye(C)
    guide_trace = pyro.poutine.trace(guide).get_trace(x, y)
    assert "y" not in guide_trace.nodes
    trace = pyro.poutine.trace(pyro.poutine.replay(model, guide_trace)).get_trace(x, y)
    assert trace.nodes["y"]["is_observed"] and torch.equal(trace.nodes["y"]["value"], y)
    z = guide_trace.nodes["z"]["value"]
    trace.compute_log_prob()
    by_hand = -torch.log(torch.tensor(float(C))) + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    by_hand = by_hand + dist.Bernoulli(logits=model.decoder(joined(z, y))).log_prob(x).sum(-1)
    total = sum(trace.nodes[n]["log_prob"] for n in ("z", "y", "x"))
    assert torch.allclose(total, by_hand, atol=1e-5)


def _partly_labelled(n=12):
    x, y = torch.rand(n, D).round(), torch.eye(C)[torch.arange(n) % C]
    y[n // 3 :] = float("nan")  # a third labelled
    return x, y


class _SpareGuide(M2Guide):
    """M2's guide with a network that no row's call uses."""

    def __init__(self):
        super().__init__(D, C, Q, hidden=(8,))
        self.spare = MLP(D, 2, hidden=(4,))


def test_the_checker_judges_q_y_over_all_groups_of_rows():
    """q(y | x) is called by the unlabelled rows only: checked group by group it would look
    unused on the labelled rows; over both groups (as fit trains them) it is used."""
    pyro.clear_param_store()
    model, guide = pair()
    check(model, guide, _partly_labelled(), objective="enum")
    result = fit(
        model, guide, _partly_labelled(), FitConfig(epochs=1, batch_size=12, objective="enum")
    )
    assert result.history.shape[0] == 1
    pyro.clear_param_store()
    spare = _SpareGuide()
    with pytest.raises(ModelGuideError, match=r"never sees \(spare\.0\.weight"):
        check(M2(D, C, Q, hidden=(8,)), spare, _partly_labelled(), objective="enum")
    with pytest.raises(ModelGuideError, match=r"never sees \(spare\.0\.weight"):
        fit(
            M2(D, C, Q, hidden=(8,)),
            spare,
            _partly_labelled(),
            FitConfig(epochs=1, objective="enum"),
        )


@pytest.mark.slow
def test_m2_beats_the_classifier_trained_on_the_labels_alone():
    """Digits, 10 labels per class, the benchmark's digits sizes (Pyro's M2 trained by one fit
    call with its auxiliary classifier): M2's q(y|x) is more accurate than the same network
    trained on the 100 labels alone, for as many steps, at the same seed. All label draws and
    label counts: benchmarks/results/m2_labels_and_conditions.md."""
    from ppvae.experiments.labelled import (
        LabelsConfig,
        accuracy,
        labelled_data,
        train_classifier,
        train_m2,
    )  # fmt: skip

    config = LabelsConfig(z_dim=2, hidden=(256,), epochs=100, eval_samples=1)
    data = labelled_data("digits", 100, 0, config)
    _, guide, _ = train_m2(data, config)
    classifier = train_classifier(data, config)
    x, _ = data.test
    m2 = accuracy(guide.classify, x, data.test_labels)
    alone = accuracy(lambda v: classifier(v).argmax(1), x, data.test_labels)
    assert m2 > alone


def test_every_row_labelled_trains_q_y_through_the_auxiliary_pair():
    """With every label given, only the auxiliary pair calls q(y | x): fit judges the networks
    with it (without it, q(y | x) would never train and is refused)."""
    pyro.clear_param_store()
    model, guide = pair()
    x, y = torch.rand(12, D).round(), torch.eye(C)[torch.arange(12) % C]
    before = guide.encoder_y(x).detach()
    config = FitConfig(epochs=2, batch_size=6, objective="enum")
    fit(model, guide, (x, y), config, aux=[(*classifier_pair(guide), 46.0)])
    assert not torch.allclose(guide.encoder_y(x), before)  # the classifier trained
    pyro.clear_param_store()
    with pytest.raises(ModelGuideError, match=r"never sees \(encoder_y"):
        fit(*pair(), (x, y), config)
