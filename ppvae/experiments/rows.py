"""One row of a comparison table: the data every row sees, fitting and scoring a row, and the
table's machinery (what a failed, interrupted or diverged row leaves, and what ``--resume``
keeps). Shared by :mod:`ppvae.experiments.compare` and :mod:`ppvae.experiments.compare_missing`.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd
import pyro
import torch
from torch import Tensor

from ppvae.baselines import independent
from ppvae.config import ArchConfig, ConfigError, DataShape
from ppvae.data import dequantize, load_dataset
from ppvae.errors import DivergenceWarning, PPVAEError, first_line
from ppvae.evaluation.bounds import log_likelihood
from ppvae.guides import GUIDES
from ppvae.infer.fitting import FitConfig, fit, resolve_device
from ppvae.models import MODELS

if TYPE_CHECKING:  # (compare imports this module)
    from ppvae.experiments.compare import CompareConfig

LEVELS: dict[str, int] = {"digits": 17, "fashion-mnist": 256, "mnist": 256}
"""Grey levels of each pixel dataset; datasets not listed are continuous already."""


OK, DIVERGED, INTERRUPTED, FAILED = "ok", "diverged", "interrupted", "failed"
"""A row's ``status``: fitted (``ok``), fitted but far below the independent-pixel baseline
(``diverged``, see :func:`ppvae.baselines.independent.diverged`), stopped by Ctrl-C, or
``failed: <the error's first line>``. ``--resume`` keeps the ``ok`` and ``diverged`` rows."""


KEPT = (OK, DIVERGED)


class Split(NamedTuple):
    """The continuous train and test data every method sees.

    Attributes
    ----------
    train, test : Tensor
        (N, D) and (M, D) float64 on the comparison's device.
    levels : int or None
        Grey levels undone by the dequantization (None for continuous data).
    image_shape : tuple of int or None
    """

    train: Tensor
    test: Tensor
    levels: int | None
    image_shape: tuple[int, ...] | None


class Row(NamedTuple):
    """One method's scores on the test split, per example in nats."""

    log_px: float
    log_px_stderr: float
    estimator: str
    elbo: float
    fit_seconds: float


def _subset(x: Tensor, size: int | None, generator: torch.Generator) -> Tensor:
    if size is None or size >= len(x):
        return x
    return x[torch.randperm(len(x), generator=generator)[:size]]


def prepare(config: CompareConfig) -> Split:
    """Load, subsample and dequantize the data; raise ConfigError if ``z_dim`` does not fit."""
    data = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    g = torch.Generator().manual_seed(config.seed)
    train = _subset(data.train, config.train_size, g)
    test = _subset(data.test, config.test_size, g)
    levels = LEVELS.get(config.dataset)
    if levels is not None:
        train, test = (dequantize(x.double(), g, levels) for x in (train, test))
    if not config.z_dim < train.shape[1]:
        dim = train.shape[1]
        raise ConfigError(f"z_dim must be < the data dimension {dim}, got {config.z_dim}")
    if not config.z_dim < len(train):
        raise ConfigError(f"z_dim must be < the number of training rows {len(train)}")
    device = resolve_device(config.device)
    return Split(train.double().to(device), test.double().to(device), levels, data.image_shape)


_ROW_CALLBACKS: ContextVar[tuple] = ContextVar("row_callbacks", default=())
"""Callbacks (:mod:`ppvae.infer.callbacks`) given to the fit of every SVI row, set by
:func:`row_callbacks` (``ppvae compare --tensorboard/--mlflow``: each row's epochs)."""


@contextlib.contextmanager
def row_callbacks(callbacks):
    """Give ``callbacks`` to the fit of every SVI row of the tables made in the block."""
    token = _ROW_CALLBACKS.set(tuple(callbacks))
    try:
        yield
    finally:
        _ROW_CALLBACKS.reset(token)


def timed(fn: Callable):
    """``fn()`` and the seconds it took, as ``(result, seconds)``."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def svi(model_key: str, guide_key: str, split, config: CompareConfig, **options):
    """Build a model and guide by registry key and train them by SVI on the float32 data
    (from an empty param store: each row is a fresh fit); ``options`` go to the FitConfig.
    With missing entries (NaN) in ``split.train``, the model leaves them out."""
    pyro.clear_param_store()
    torch.manual_seed(config.seed)
    arch = ArchConfig(z_dim=config.z_dim, hidden=config.hidden)
    missing = bool(split.train.isnan().any())
    shape = DataShape(split.train.shape[1], split.image_shape, len(split.train), missing=missing)
    model = MODELS[model_key](arch, shape)
    guide = GUIDES[guide_key](arch, shape, model)
    fit_config = FitConfig(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
        device=str(split.train.device), **options,
    )  # fmt: skip
    result, seconds = timed(
        lambda: fit(
            model,
            guide,
            split.train.float(),
            fit_config,
            progress=False,
            callbacks=list(_ROW_CALLBACKS.get()),
        )
    )
    if result.interrupted:  # Ctrl-C: stop the comparison rather than score a half-trained row
        raise KeyboardInterrupt
    return model, guide, seconds


def sampled_mean(model, guide, x: Tensor, config: CompareConfig) -> tuple[float, float, str]:
    """The importance-sampled mean log p(x) over the rows of ``x``, its Monte Carlo standard
    error, and the estimator's name."""
    ll = log_likelihood(model, guide, x.float(), num_samples=config.eval_samples)
    stderr = (ll.stderr.double().square().sum().sqrt() / len(ll.stderr)).item()
    return ll.log_px.double().mean().item(), stderr, f"IS K={ll.num_samples}"


def score_row(name: str, method: Callable, split: Split, config: CompareConfig) -> Row:
    """``method(split, config)``; its ppvae error, if any, names the method ``name``."""
    try:
        return method(split, config)
    except PPVAEError as err:  # say which method, in one line
        raise type(err)(f"{name}: {first_line(err)}") from err
    except ValueError as err:  # a baseline refusing the data, e.g. too few rows per component
        raise ConfigError(f"{name}: {first_line(err)}") from err


class Baseline(NamedTuple):
    """The diagonal Gaussian's test log-likelihood per example (every pixel independent, its
    training mean and variance), against which a row is said to have diverged."""

    log_px: float
    dims: float

    @classmethod
    def of(cls, train: Tensor, test: Tensor) -> Baseline:
        """From the (possibly masked: NaN) train and test splits."""
        dims = (~test.isnan()).sum(1).double().mean().item()
        return cls(independent.gaussian_log_prob(train, test).mean().item(), dims)

    def status(self, name: str, row) -> str:
        """``diverged`` (with a one-line warning) or ``ok``."""
        if not independent.diverged(row.log_px, self.log_px, self.dims):
            return OK
        margin = independent.divergence_margin(self.log_px, self.dims)
        warnings.warn(
            f"{name} diverged: test log p(x) {row.log_px:.4g} nats per example, far below "
            f"the {self.log_px:.4g} of independent Gaussian pixels (margin {margin:.4g})",
            DivergenceWarning,
            stacklevel=2,
        )
        return DIVERGED


def fit_table(
    chosen: dict[str, Callable],
    score: Callable[[str, Callable], dict],
    columns: list[str],
    bar=iter,
    *,
    done: pd.DataFrame | None = None,
    on_row: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """The table of the methods ``chosen`` (name to method), ``score(name, method)`` giving
    each row's columns but its name; the machinery of
    :func:`~ppvae.experiments.compare.compare` and
    :func:`ppvae.experiments.compare_missing.compare_missing`.

    The kept rows of ``done`` are not fitted again. A row that raises is noted
    ``failed: ...`` and the others are fitted; the first failure is raised at the end. On
    Ctrl-C the row is noted ``interrupted`` and KeyboardInterrupt raised. ``on_row`` sees the
    table after every row, so what was fitted is written whatever happens next.
    """
    rows = _kept_rows(done, chosen)
    failure = None

    def table() -> pd.DataFrame:
        return pd.DataFrame([rows[k] for k in chosen if k in rows], columns=columns)

    for name, method in bar([(k, m) for k, m in chosen.items() if k not in rows]):
        try:
            rows[name] = {"method": name, **score(name, method)}
        except KeyboardInterrupt:
            rows[name] = {"method": name, "status": INTERRUPTED}
            if on_row is not None:
                on_row(table())
            raise
        except Exception as err:  # noted in the table, raised once the other rows are in
            why = first_line(err).removeprefix(f"{name}: ")  # (the row names the method)
            rows[name] = {"method": name, "status": f"{FAILED}: {why}"}
            failure = failure or err
        if on_row is not None:
            on_row(table())
    if failure is not None:
        raise failure
    return table()


def _kept_rows(done: pd.DataFrame | None, chosen) -> dict[str, dict]:
    if done is None:
        return {}
    kept = done[done.status.isin(KEPT) & done.method.isin(list(chosen))]
    return {row["method"]: row for row in kept.to_dict("records")}
