"""Quadrant completion with Pyro's conditional VAE: the plain network first, then the CVAE on
top of it, and the three numbers of the likelihood table.

For one dataset and a number of given quadrants (:func:`ppvae.data.labels.quadrants`),
:func:`cvae_row` gives, per test example in nats:

- ``cvae_log_lik``: the CVAE's conditional log-likelihood log p(y | x) of the hidden pixels,
  importance-sampled with q(z | x, y) as proposal (K = ``eval_samples``), with its standard
  error;
- ``baseline_log_lik``: the plain network's Bernoulli log-likelihood of the hidden pixels (its
  output is a product of independent Bernoullis, so this is exact);
- ``cvae_neg_elbo``: the CVAE's negative ELBO, the number Pyro's example prints as "negative
  conditional log-likelihood"; it is an upper bound on -log p(y | x), off by the KL from
  q(z | x, y) to the true posterior.
"""

import time
from dataclasses import dataclass

import pyro
import torch

from ppvae.config import ArchConfig, ConfigError, DataShape, JsonConfig
from ppvae.data import Dataset, load_dataset, quadrants
from ppvae.evaluation.bounds import elbo_terms, log_likelihood
from ppvae.guides import GUIDES
from ppvae.infer.fitting import FitConfig, fit
from ppvae.models import MODELS
from ppvae.models.cvae import BaselineNet, masked_bernoulli_log_prob


@dataclass(frozen=True, kw_only=True)
class ConditionsConfig(JsonConfig):
    """Sizes of one CVAE table cell.

    Attributes
    ----------
    z_dim, hidden
        Latent size and hidden sizes of every network (Pyro's example: 200, (500, 500)).
    epochs, baseline_epochs, batch_size, lr
        Training of the CVAE (by ``fit``) and of the plain network (Adam on its masked
        cross-entropy), as Pyro's example but without early stopping.
    eval_samples, elbo_samples : int
        K of the importance-sampled log p(y | x); samples of the ELBO per test example.
    train_size, test_size : int or None
        Seeded subsets of the rows (None: all).
    seed : int

    Examples
    --------
    >>> ConditionsConfig(epochs=2).hidden
    (500, 500)
    """

    z_dim: int = 200
    hidden: tuple[int, ...] = (500, 500)
    epochs: int = 10
    baseline_epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    eval_samples: int = 100
    elbo_samples: int = 10
    train_size: int | None = None
    test_size: int | None = None
    seed: int = 0

    def __post_init__(self):
        self.check_types()
        for name in ("z_dim", "epochs", "baseline_epochs", "batch_size", "eval_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


def subset(x: torch.Tensor, size: int | None, seed: int) -> torch.Tensor:
    """Row numbers of a seeded random subset of ``size`` of the rows of ``x`` (all: None)."""
    n = len(x)
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def train_baseline(
    net: BaselineNet, inputs, outputs, *, epochs: int, batch_size: int, lr: float, seed: int
) -> BaselineNet:
    """Train the plain network as Pyro's ``baseline.train``: Adam on the cross-entropy of the
    hidden pixels (:func:`~ppvae.models.cvae.masked_bernoulli_log_prob`), per example."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(inputs), generator=generator).split(batch_size):
            loss = -masked_bernoulli_log_prob(net(inputs[idx]), outputs[idx]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


def completion_data(dataset: str, given: int, config: ConditionsConfig, data_dir=None):
    """The quadrant-completion Dataset for ``dataset`` with ``given`` quadrants, subsampled."""
    data = quadrants(load_dataset(dataset, data_dir=data_dir), given)
    rows = subset(data.train[0], config.train_size, config.seed)
    test_rows = subset(data.test[0], config.test_size, config.seed + 1)
    return data._replace(
        train=tuple(t[rows] for t in data.train), test=tuple(t[test_rows] for t in data.test)
    )


def train_cvae(data: Dataset, config: ConditionsConfig):
    """The plain network, then the CVAE built on it and trained by one ``fit`` call;
    returns (model, guide, baseline, seconds)."""
    start = time.perf_counter()
    pyro.clear_param_store()
    torch.manual_seed(config.seed)
    inputs, outputs = data.train
    arch = ArchConfig(z_dim=config.z_dim, hidden=config.hidden)
    shape = DataShape(inputs.shape[1], data.image_shape, len(inputs))
    baseline = train_baseline(
        BaselineNet(shape.x_dim, config.hidden), inputs, outputs, epochs=config.baseline_epochs,
        batch_size=config.batch_size, lr=config.lr, seed=config.seed,
    )  # fmt: skip
    model = MODELS["cvae"](arch, shape)
    model.load_baseline(baseline)
    guide = GUIDES["cvae"](arch, shape, model)
    settings = FitConfig(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed
    )
    if fit(model, guide, data.train, settings, progress=False).interrupted:
        raise KeyboardInterrupt  # fit stopped on Ctrl-C: the half-trained CVAE is no result
    return model, guide, baseline, time.perf_counter() - start


@torch.no_grad()
def score_cvae(model, guide, baseline: BaselineNet, test, config: ConditionsConfig) -> dict:
    """The table's numbers on the test pairs ``(inputs, outputs)``, per example in nats."""
    inputs, outputs = test
    ll = log_likelihood(model, guide, test, num_samples=config.eval_samples)
    terms = elbo_terms(model, guide, test, num_samples=config.elbo_samples)
    plain = masked_bernoulli_log_prob(baseline(inputs), outputs).double()
    return {
        "cvae_log_lik": ll.log_px.double().mean().item(),
        "cvae_log_lik_se": (ll.stderr.double().square().sum().sqrt() / len(ll.stderr)).item(),
        "baseline_log_lik": plain.mean().item(),
        "baseline_log_lik_se": (plain.std() / len(plain) ** 0.5).item(),
        "cvae_neg_elbo": -terms.elbo.double().mean().item(),
    }


def cvae_row(dataset: str, given: int, config: ConditionsConfig, data_dir=None) -> dict:
    """One cell of the CVAE table: train both networks and score them."""
    data = completion_data(dataset, given, config, data_dir)
    model, guide, baseline, seconds = train_cvae(data, config)
    scores = score_cvae(model, guide, baseline, data.test, config)
    return {"dataset": dataset, "quadrants": given, **scores, "fit_seconds": seconds}
