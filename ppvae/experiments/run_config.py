"""A training run as one config: data, model, guide, sizes and fit settings, saved as JSON.

``RunConfig`` names every choice by registry key, so ``config.json`` rebuilds the same run
(:func:`build`), and the files of a run folder have fixed names.
"""

from dataclasses import dataclass, field, replace

import torch

from ppvae.config import (
    ArchConfig,
    ConfigError,
    DataShape,
    JsonConfig,
)
from ppvae.data import BINARIZATIONS, DATASETS, Dataset, load_dataset, quadrants, with_labels
from ppvae.data.missing import mcar_dataset
from ppvae.errors import (
    shown,
)
from ppvae.guides import GUIDES
from ppvae.infer.fitting import FitConfig
from ppvae.models import MODELS

CONFIG, HISTORY, CHECKPOINT, METRICS = "config.json", "history.csv", "checkpoint.pt", "metrics.csv"


PICTURES = (
    "elbo.png",
    "reconstructions.png",
    "samples.png",
    "interpolation.png",
    "latent_grid.png",
    "latent.png",
)


def _choose(kind: str, name: str, registry) -> None:
    if name not in registry:
        raise ConfigError(f"unknown {kind} {shown(name)}; choose one of: {', '.join(registry)}")


@dataclass(frozen=True, kw_only=True)
class RunConfig(JsonConfig):
    """Everything that defines a training run.

    Attributes
    ----------
    dataset, binarize, data_dir
        Passed to :func:`ppvae.data.load_dataset` (binarization is seeded by ``fit.seed``).
    model, guide : str
        Keys of :data:`ppvae.models.MODELS` and :data:`ppvae.guides.GUIDES`.
    arch : ArchConfig
    fit : FitConfig
    eval_samples : int
        K, importance samples per test example for log p(x) at the end of training.
    missing_rate : float
        Share of the entries of train and test made missing completely at random (seeded by
        ``fit.seed``): the model leaves them out of its likelihood, and the metrics add the
        imputation error on the held-out test entries.
    labels : int or None
        Class-balanced training labels for the ``m2`` model (the other rows' labels hidden,
        drawn with ``fit.seed``), see :func:`ppvae.data.with_labels`; needed by ``m2`` only.
    quadrants : int or None
        Given quadrants (1, 2 or 3) for the ``cvae`` model, which completes the others, see
        :func:`ppvae.data.quadrants`; needed by ``cvae`` only.

    Examples
    --------
    >>> run = RunConfig(guide="flow", arch=ArchConfig(z_dim=4))
    >>> RunConfig.from_json(run.to_json()) == run
    True
    """

    dataset: str = "digits"
    binarize: str = "none"
    data_dir: str | None = None
    model: str = "bernoulli"
    guide: str = "diag"
    arch: ArchConfig = field(default_factory=ArchConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    eval_samples: int = 1000
    missing_rate: float = 0.0
    labels: int | None = None
    quadrants: int | None = None

    def replace_epochs(self, epochs: int) -> "RunConfig":
        """This run with ``fit.epochs`` set to ``epochs`` (to extend it)."""
        return replace(self, fit=replace(self.fit, epochs=epochs))

    def __post_init__(self):
        self.check_types()
        _choose("dataset", self.dataset, DATASETS)
        _choose("binarization", self.binarize, BINARIZATIONS)
        _choose("model", self.model, MODELS)
        _choose("guide", self.guide, GUIDES)
        if not 0 <= self.missing_rate < 1:
            raise ConfigError(f"missing_rate must be in [0, 1), got {self.missing_rate}")
        if self.eval_samples < 1:
            raise ConfigError(f"eval_samples must be >= 1, got {self.eval_samples}")
        _check_more_than_x(self)


NEEDS = {"m2": "labels", "cvae": "quadrants"}
"""The models that take more than x, and the setting that makes their data."""


def _check_more_than_x(run: RunConfig) -> None:
    """m2 needs --labels, cvae --quadrants (1-3), and no other model takes either."""
    for model, setting in NEEDS.items():
        flag = f"--{setting}"
        if run.model == model and getattr(run, setting) is None:
            raise ConfigError(f"--model {model} needs {flag} N")
        if run.model != model and getattr(run, setting) is not None:
            raise ConfigError(f"{flag} is for --model {model}, not {run.model}")
    if run.quadrants is not None and run.quadrants not in (1, 2, 3):
        raise ConfigError(f"--quadrants must be 1, 2 or 3 given quadrants, got {run.quadrants}")
    if run.labels is not None and run.labels < 1:
        raise ConfigError(f"--labels must be >= 1, got {run.labels}")
    if run.model in NEEDS and run.missing_rate:
        raise ConfigError(f"--missing-rate is not for --model {run.model}")


def load_data(run: RunConfig, *, complete: bool = False) -> Dataset:
    """The run's data set, with ``run.missing_rate`` of its entries missing (NaN) unless
    ``complete``."""
    data = load_dataset(
        run.dataset, data_dir=run.data_dir, binarize=run.binarize, seed=run.fit.seed
    )
    if run.missing_rate and not complete:
        return mcar_dataset(data, run.missing_rate, seed=run.fit.seed)
    if run.labels is not None:
        return with_labels(data, run.labels, seed=run.fit.seed)
    if run.quadrants is not None:
        return quadrants(data, run.quadrants)
    return data


def build(run: RunConfig, data: Dataset):
    """The model and guide of ``run``, sized for ``data``; seeded by ``run.fit.seed``."""
    torch.manual_seed(run.fit.seed)
    x = data.train[0] if isinstance(data.train, tuple) else data.train
    classes = data.train[1].shape[1] if run.labels is not None else None
    shape = DataShape(
        x.shape[1], data.image_shape, x.shape[0], missing=run.missing_rate > 0, classes=classes
    )
    model = MODELS[run.model](run.arch, shape)
    return model, GUIDES[run.guide](run.arch, shape, model)
