"""ppvae: variational autoencoders as Pyro models and guides, with PPCA as the oracle.

The Python API in brief::

    import ppvae
    from ppvae import ArchConfig, DataShape, FitConfig, fit, evaluate, load_dataset
    from ppvae.models import MODELS
    from ppvae.guides import GUIDES

    ppvae.seed(0)  # before building: the networks' first weights are drawn here
    data = load_dataset("digits")
    shape = DataShape(data.train.shape[1], data.image_shape, data.train.shape[0])
    model = MODELS["bernoulli"](ArchConfig(z_dim=2), shape)
    guide = GUIDES["diag"](ArchConfig(z_dim=2), shape, model)
    result = fit(model, guide, data, FitConfig(epochs=10))
    print(evaluate(model, guide, data.test))
"""

from importlib import metadata as _metadata

import ppvae.threads  # noqa: F401  (first: before anything loads torch's OpenMP)
from ppvae.config import ArchConfig, ConfigError, DataShape
from ppvae.data import DataError, Dataset, load_dataset
from ppvae.evaluation.bounds import elbo_terms, log_likelihood
from ppvae.evaluation.metrics import evaluate
from ppvae.experiments.run_config import RunConfig
from ppvae.experiments.saved_runs import LoadedRun, load_run
from ppvae.infer.fitting import FitConfig, FitResult, TrainingError, fit
from ppvae.pairs.checker import ModelGuideError, check, problems
from ppvae.pairs.diagram import render
from ppvae.seeding import seed

try:  # the installed distribution's version, so `ppvae --version` says what pip installed
    __version__ = _metadata.version("ppvae")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "ArchConfig",
    "ConfigError",
    "DataError",
    "DataShape",
    "Dataset",
    "FitConfig",
    "FitResult",
    "LoadedRun",
    "ModelGuideError",
    "RunConfig",
    "TrainingError",
    "check",
    "elbo_terms",
    "evaluate",
    "fit",
    "load_dataset",
    "load_run",
    "log_likelihood",
    "problems",
    "render",
    "seed",
]
