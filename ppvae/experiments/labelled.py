"""Semi-supervised learning with the M2 VAE: its training, the classifier trained on the labels
alone, and the three numbers of the accuracy table.

For one dataset, a number of class-balanced labels and a label draw
(:func:`ppvae.data.labels.with_labels`), :func:`m2_row` gives:

- ``m2_accuracy``: test accuracy of M2's classifier q(y | x) (its most probable class);
- ``classifier_accuracy``: test accuracy of the same network (M2's q(y | x) MLP) trained by
  cross-entropy on the labelled rows alone, for epochs * ceil(N / B) steps (M2's fit takes
  epochs * (N // B): the labels-only network gets up to one more step an epoch);
- ``log_px``: M2's test log p(x) per example in nats, y summed out exactly,
  ``log sum_y p(x, y)``, each p(x, y) importance-sampled with q(z | x, y) (K = ``eval_samples``),
  with its standard error (delta method over the ten independent estimates).

Training follows Pyro's ``ss_vae_M2.py``: the full-data objective is the labelled ELBO
``log p(x, y) >= ...`` on the labelled rows, the unlabelled ELBO with y enumerated
(``TraceEnum_ELBO``) on the others, plus ``aux_weight`` times the classifier's log q(y | x) on
the labelled rows (Kingma et al.'s auxiliary loss, Pyro's ``aux_loss_multiplier`` = 46). It
is one :func:`~ppvae.infer.fitting.fit` call, ``fit(model, guide, (x, y), aux=...)``: each
step's batch holds labelled and unlabelled rows in proportion, each group scaled by
N_group / B_group (:mod:`ppvae.infer.groups`), so the loss is that full-data objective, one
optimizer for all of it.
"""

import math
import time
from dataclasses import dataclass

import pyro
import torch
from torch import nn

from ppvae.config import ArchConfig, ConfigError, DataShape, JsonConfig
from ppvae.data import Dataset, load_dataset, one_hot, with_labels
from ppvae.errors import DataError
from ppvae.evaluation.bounds import log_likelihood
from ppvae.experiments.conditions import subset
from ppvae.guides import GUIDES, classifier_pair
from ppvae.infer.fitting import FitConfig, fit
from ppvae.models import MODELS
from ppvae.nets import MLP


@dataclass(frozen=True, kw_only=True)
class LabelsConfig(JsonConfig):
    """Sizes of one M2 table cell.

    Attributes
    ----------
    z_dim, hidden
        Latent size and hidden sizes of M2's three MLPs (Pyro's example: 50, (500,)).
    epochs, batch_size, lr
        Passes over all training rows, labelled or not; Adam's learning rate.
    aux_weight : float
        Weight of the auxiliary classification loss (Pyro's ``aux_loss_multiplier``).
    eval_samples : int
        K per class for the importance-sampled log p(x).
    train_size, test_size : int or None
        Seeded subsets of the rows (None: all); labels are drawn from the training subset.
    seed : int
        Seeds the subsets and the training (not the label draw, see ``m2_row``).

    Examples
    --------
    >>> LabelsConfig(epochs=2).aux_weight
    46.0
    """

    z_dim: int = 50
    hidden: tuple[int, ...] = (500,)
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    aux_weight: float = 46.0
    eval_samples: int = 100
    train_size: int | None = None
    test_size: int | None = None
    seed: int = 0

    def __post_init__(self):
        self.check_types()
        for name in ("z_dim", "epochs", "batch_size", "eval_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


def labelled_data(dataset: str, n_labels: int, draw: int, config: LabelsConfig, data_dir=None):
    """The dataset (subsampled as ``config`` says) with ``n_labels`` class-balanced labels,
    the ``draw``-th label draw."""
    data = load_dataset(dataset, data_dir=data_dir)
    if data.train_labels is None or data.test_labels is None:
        raise DataError(
            f"{dataset} has no class labels: labels need a labelled dataset (digits, "
            "fashion-mnist, mnist)"
        )
    rows = subset(data.train, config.train_size, config.seed)
    test_rows = subset(data.test, config.test_size, config.seed + 1)
    data = data._replace(
        train=data.train[rows], train_labels=data.train_labels[rows],
        test=data.test[test_rows], test_labels=data.test_labels[test_rows],
    )  # fmt: skip
    return with_labels(data, n_labels, seed=draw)


def train_m2(data: Dataset, config: LabelsConfig):
    """M2 and its guide trained on ``data.train = (x, y)`` (NaN rows of y: unlabelled) by one
    :func:`~ppvae.infer.fitting.fit` call with the auxiliary classifier pair; returns
    (model, guide, seconds)."""
    pyro.clear_param_store()
    x, y = data.train
    arch = ArchConfig(z_dim=config.z_dim, hidden=config.hidden)
    shape = DataShape(x.shape[1], data.image_shape, len(x), classes=y.shape[1])
    torch.manual_seed(config.seed)
    model = MODELS["m2"](arch, shape)
    guide = GUIDES["m2"](arch, shape, model)
    settings = FitConfig(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
        objective="enum", device="cpu",
    )  # fmt: skip
    aux = [(*classifier_pair(guide), config.aux_weight)]
    start = time.perf_counter()
    if fit(model, guide, (x, y), settings, progress=False, aux=aux).interrupted:
        raise KeyboardInterrupt  # fit stopped on Ctrl-C: the half-trained M2 is no result
    return model, guide, time.perf_counter() - start


def train_classifier(data: Dataset, config: LabelsConfig) -> nn.Module:
    """M2's q(y | x) network trained by cross-entropy on the labelled rows alone, for
    ``epochs * ceil(N / B)`` Adam steps of batches of labelled rows: M2's ``fit`` takes
    ``epochs * (N // B)``, so this network gets up to one more step an epoch, never fewer."""
    torch.manual_seed(config.seed)
    x, y = data.train
    labelled = ~y.isnan().any(1)
    xl, labels = x[labelled], y[labelled].argmax(1)
    net = MLP(x.shape[1], y.shape[1], hidden=config.hidden)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    steps = config.epochs * math.ceil(len(x) / config.batch_size)
    for _ in range(steps):
        idx = torch.randint(len(xl), (min(config.batch_size, len(xl)),), generator=generator)
        loss = nn.functional.cross_entropy(net(xl[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


def accuracy(classify, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the rows of ``x`` whose ``classify(x)`` (int classes) equals ``labels``."""
    with torch.no_grad():
        return (classify(x) == labels).double().mean().item()


def log_px_summed(model, guide, x: torch.Tensor, classes: int, num_samples: int):
    """Mean test log p(x) = log sum_y p(x, y) per example and its standard error: each of the C
    terms is importance-sampled (q(z | x, y), K = ``num_samples``), independently, so the
    variance of the sum is the sum of the variances (delta method to the log)."""
    logs, stderrs = [], []

    for c in range(classes):
        y = one_hot(torch.full((len(x),), c, dtype=torch.int64), classes).to(x)
        ll = log_likelihood(model, guide, (x, y), num_samples=num_samples)
        logs.append(ll.log_px.double())
        stderrs.append(ll.stderr.double())
    logs, stderrs = torch.stack(logs), torch.stack(stderrs)  # (C, N)
    log_px = logs.logsumexp(0)
    stderr = (2 * (logs - log_px) + 2 * stderrs.log()).logsumexp(0).exp().sqrt()
    return log_px.mean().item(), (stderr.square().sum().sqrt() / len(x)).item()


def m2_row(dataset: str, n_labels: int, draw: int, config: LabelsConfig, data_dir=None) -> dict:
    """One cell of the M2 table: M2 and the labels-only classifier on one label draw."""
    data = labelled_data(dataset, n_labels, draw, config, data_dir)
    model, guide, seconds = train_m2(data, config)
    classifier = train_classifier(data, config)
    x_test, y_test = data.test
    log_px, log_px_se = log_px_summed(model, guide, x_test, y_test.shape[1], config.eval_samples)
    return {
        "dataset": dataset, "labels": n_labels, "draw": draw,
        "m2_accuracy": accuracy(guide.classify, x_test, data.test_labels),
        "classifier_accuracy": accuracy(lambda v: classifier(v).argmax(1), x_test,
                                        data.test_labels),
        "log_px": log_px, "log_px_se": log_px_se, "fit_seconds": seconds,
    }  # fmt: skip
