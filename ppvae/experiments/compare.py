"""One table that puts PPCA, its EM fits and VAEs on the same scale: test log p(x) per example.

``compare(config)`` fits, on one dataset and split, every method in :data:`METHODS`:

- ``ppca``: closed-form maximum-likelihood PPCA (Tipping & Bishop 1999);
- ``ppca-em``: the same model fitted by EM from a random start;
- ``mppca``: a mixture of PPCA fitted by EM;
- ``ppca-svi``: the PPCA Pyro model trained by SVI with the *exact* posterior as guide, so the
  ELBO is log p(x) and SVI is maximum likelihood by stochastic gradients (the linear guide is
  the next row's job);
- ``linear-vae``: the PPCA Pyro model with an amortized linear mean-field guide (Lucas et al.
  2019), trained by SVI;
- ``vae``: a nonlinear VAE, an MLP decoder with a learned per-pixel Gaussian likelihood and an
  MLP mean-field guide.

How the numbers are made comparable
-----------------------------------
PPCA is a density on continuous data, so every method is scored as a density on the same
continuous data, and the VAEs use Gaussian likelihoods. Pixel data in [0, 1] with ``L`` grey
levels is uniformly dequantized once, with a seeded generator, before any fitting:
``x = (k + u) / L`` with ``k`` the grey level and ``u ~ U[0, 1)`` (:func:`ppvae.data.dequantize`);
``L = 256`` for (Fashion-)MNIST, ``(x * 255 + u) / 256``, and ``L = 17`` for scikit-learn's
digits, whose pixels are 0..16 (so ``(x * 16 + u) / 17``). Synthetic PPCA data is already
continuous and is used as is. Bits per dimension rescale the density to the integer grid
(:func:`ppvae.evaluation.metrics.bits_per_dim` with ``levels=L``), the usual convention for pixels.

``log_px`` is exact for the PPCA family (closed-form marginal, standard error 0) and
importance-sampled with the guide as proposal for the VAEs
(:func:`ppvae.evaluation.metrics.log_likelihood`,
K = ``eval_samples``), with its Monte Carlo standard error. ``elbo`` is the test ELBO where a
method has one (NaN for the closed form and the EM fits); with the exact posterior it equals
log p(x). ``fit_seconds`` times the fit only, not the evaluation.
"""

import sys
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm

from ppvae.config import ConfigError, JsonConfig
from ppvae.data import DATASETS
from ppvae.evaluation.metrics import bits_per_dim
from ppvae.experiments.compare_labels import (
    COLUMN_NOTES,
    LABEL_METHODS,
    QUADRANT_METHODS,
    compare_labels,
)
from ppvae.experiments.compare_missing import METHODS as MISSING_METHODS
from ppvae.experiments.compare_missing import compare_missing
from ppvae.experiments.methods import METHODS
from ppvae.experiments.rows import (
    Baseline,
    Split,
    fit_table,
    prepare,
    score_row,
)
from ppvae.infer.fitting import resolve_device

#: The columns of ``ppvae compare``'s table, in order.
COLUMNS = [
    "method", "log_px", "log_px_stderr", "estimator", "elbo", "bits_per_dim", "fit_seconds",
    "status",
]  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class CompareConfig(JsonConfig):
    """What to compare on.

    Attributes
    ----------
    dataset, data_dir
        Passed to :func:`ppvae.data.load_dataset`.
    z_dim : int
        Latent dimension q of every method (and of each mixture component).
    components : int
        Components of the mixture of PPCA.
    hidden : tuple of int
        Hidden sizes of the nonlinear VAE's MLPs.
    epochs, batch_size, lr
        SVI settings shared by the three Pyro rows. (A learning rate of 1e-2 speeds up the
        PPCA-model rows but made the nonlinear VAE diverge on full Fashion-MNIST.)
    em_tol, em_max_iter
        Stopping rule of both EM fits (``em_tol`` in nats per example per iteration).
    eval_samples : int
        K, importance samples per test example for the VAEs' log p(x).
    elbo_samples : int
        Monte Carlo samples per test example for the nonlinear VAE's ELBO.
    train_size, test_size : int or None
        Score a seeded random subset of this many rows (None: the whole split).
    seed : int
        Seeds the subsets, the dequantization noise, every initialisation and SVI.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    missing_rate : float
        Share of entries missing completely at random in train and test (0: none). Above 0,
        the table is :mod:`ppvae.experiments.compare_missing`'s: observed-data log-likelihood and
        imputation error of PPCA-EM, the mixture, a MIWAE-trained VAE and mean imputation.
    num_particles : int
        K of the VAE's MIWAE bound when entries are missing.
    labels : int
        Class-balanced training labels (0: none). Above 0, the table is the semi-supervised one
        of :mod:`ppvae.experiments.compare_labels`: M2 and the classifier trained on the labels
        alone (``seed`` also draws the labels; ``components``, ``em_*`` and ``elbo_samples``
        are not used).
    quadrants : int
        Given quadrants, 1 to 3 (0: none). Above 0, the table is the quadrant-completion one
        of :mod:`ppvae.experiments.compare_labels`: the CVAE's conditional log-likelihood, its
        ELBO and the plain network's. At most one of ``missing_rate``, ``labels`` and
        ``quadrants`` is set; with either of the last two, ``device`` is not used (the
        networks train where :mod:`~ppvae.experiments.labelled` and
        :mod:`~ppvae.experiments.conditions` put them).
    methods : tuple of str
        The rows to fit (keys of :data:`ppvae.experiments.methods.METHODS`, or of
        ``compare_missing.METHODS`` when entries are missing, ``compare_labels.LABEL_METHODS``
        or ``QUADRANT_METHODS``); empty: all.

    Examples
    --------
    >>> CompareConfig(z_dim=5, epochs=3).components
    4
    """

    dataset: str = "digits"
    data_dir: str | None = None
    z_dim: int = 10
    components: int = 4
    hidden: tuple[int, ...] = (256,)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 3e-3
    em_tol: float = 1e-7
    em_max_iter: int = 1000
    eval_samples: int = 1000
    elbo_samples: int = 100
    train_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    device: str = "auto"
    missing_rate: float = 0.0
    num_particles: int = 5
    labels: int = 0
    quadrants: int = 0
    methods: tuple[str, ...] = ()

    def __post_init__(self):
        self.check_types()
        if not 0 <= self.missing_rate < 1:
            raise ConfigError(f"missing_rate must be in [0, 1), got {self.missing_rate}")
        _at_least(self, "num_particles", 1)
        _at_least(self, "labels", 0)
        if self.quadrants not in (0, 1, 2, 3):
            raise ConfigError(f"quadrants must be 1, 2 or 3 given quadrants, got {self.quadrants}")
        switches = [
            _SWITCHES[k] for k in ("missing_rate", "labels", "quadrants") if getattr(self, k)
        ]
        if len(switches) > 1:
            raise ConfigError(f"{' and '.join(switches)} make different tables: pass one")
        check_methods(self)

        if self.dataset not in DATASETS:
            choices = ", ".join(DATASETS)
            raise ConfigError(f"unknown dataset '{self.dataset}'; choose one of: {choices}")
        for name in ("z_dim", "components", "epochs", "batch_size", "em_max_iter"):
            _at_least(self, name, 1)
        for name in ("eval_samples", "elbo_samples"):
            _at_least(self, name, 1)
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                _at_least(self, name, 2)
        if not (self.lr > 0 and self.em_tol > 0):
            raise ConfigError(f"lr and em_tol must be > 0, got {self.lr} and {self.em_tol}")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be >= 1, got {self.hidden}")
        resolve_device(self.device, check_available=False)


def _at_least(config, name: str, low: int) -> None:
    if getattr(config, name) < low:
        raise ConfigError(f"{name} must be >= {low}, got {getattr(config, name)}")


_SWITCHES = {"missing_rate": "--missing-rate", "labels": "--labels", "quadrants": "--quadrants"}
_TABLES = {"missing_rate": MISSING_METHODS, "labels": LABEL_METHODS, "quadrants": QUADRANT_METHODS}
_VALUES = {"missing_rate": "R", "labels": "N", "quadrants": "K"}


def check_methods(config: CompareConfig) -> None:
    """Raise ConfigError unless every name in ``config.methods`` is a row of the table that
    ``config`` makes (:data:`METHODS`, or ``compare_missing.METHODS`` with missing entries,
    ``compare_labels.LABEL_METHODS`` with labels, ``QUADRANT_METHODS`` with quadrants)."""
    on = next((k for k in _TABLES if getattr(config, k)), None)
    known = METHODS if on is None else _TABLES[on]
    unknown = [m for m in config.methods if m not in known]
    if not unknown:
        return
    hint = ""
    if on is not None and set(unknown) <= set(METHODS):
        hint = f" (leave out {_SWITCHES[on]} for {', '.join(unknown)})"
    elif other := next((k for k, t in _TABLES.items() if set(unknown) <= set(t)), None):
        use = f"{_SWITCHES[other]} {_VALUES[other]}"
        switch = f"add {use}" if on is None else f"use {use} instead of {_SWITCHES[on]}"
        hint = f" ({switch} for {', '.join(unknown)})"
    choices = ", ".join(known)
    raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from: {choices}{hint}")


def compare(
    config: CompareConfig,
    *,
    split: Split | None = None,
    progress: bool | None = None,
    done: pd.DataFrame | None = None,
    on_row: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Fit the methods of :data:`METHODS` (``config.methods``, all by default) on one dataset
    and score them on the test split; with ``config.missing_rate`` > 0, those of
    :mod:`ppvae.experiments.compare_missing` on the masked split instead, and with
    ``config.labels`` or ``config.quadrants``, those of :mod:`ppvae.experiments.compare_labels`.

    Parameters
    ----------
    config : CompareConfig
    split : Split or Dataset, optional
        The data as :func:`prepare` returns it for ``config`` (prepared here if not given);
        with labels or quadrants, as ``compare_labels.table_data`` returns it.
    progress : bool, optional
        A progress bar over the methods; by default only when stderr is a terminal.
    done : DataFrame, optional
        A table written before for the same config: its ``ok`` and ``diverged`` rows are kept
        and only the others (missing, failed, interrupted) are fitted.
    on_row : callable, optional
        Called with the table so far after every row (the CLI writes it), also after a row
        that fails and on Ctrl-C.

    Returns
    -------
    DataFrame
        One row per method, columns :data:`COLUMNS`: ``log_px``, ``log_px_stderr`` and
        ``elbo`` in nats per test example, ``bits_per_dim`` from ``log_px``, ``fit_seconds``,
        ``status`` (with missing entries, ``compare_missing.COLUMNS``: ``imputation_rmse`` for
        ``elbo`` and ``bits_per_dim``).

    Raises
    ------
    PPVAEError
        The first row that failed, after every other row was fitted (and ``on_row`` called).
    KeyboardInterrupt
        On Ctrl-C, after ``on_row`` was called with the rows fitted and this one interrupted.
    """
    shown = sys.stderr.isatty() if progress is None else progress

    def bar(items):
        for name, method in (progress_bar := tqdm(items, disable=not shown, unit="method")):
            progress_bar.set_postfix_str(name)
            yield name, method

    if config.labels or config.quadrants:
        return compare_labels(config, split, bar, done=done, on_row=on_row)
    split = prepare(config) if split is None else split
    if config.missing_rate > 0:
        return compare_missing(config, split, bar, done=done, on_row=on_row)
    chosen = {k: m for k, m in METHODS.items() if not config.methods or k in config.methods}
    baseline = Baseline.of(split.train, split.test)

    def score(name: str, method: Callable) -> dict:
        row = score_row(name, method, split, config)
        bpd = bits_per_dim(row.log_px, split.train.shape[1], split.levels)
        return {**row._asdict(), "bits_per_dim": bpd, "status": baseline.status(name, row)}

    return fit_table(chosen, score, COLUMNS, bar, done=done, on_row=on_row)


def to_markdown(frame: pd.DataFrame, title: str) -> str:
    """The table as markdown under a caption, with a legend from the methods' docstrings."""
    shown = frame.astype(object).where(frame.notna(), None)  # tabulate prints None as n/a
    table = shown.to_markdown(index=False, floatfmt=".3f", missingval="n/a")

    methods = MISSING_METHODS if "imputation_rmse" in frame else METHODS
    methods = LABEL_METHODS if "accuracy" in frame else methods
    methods = QUADRANT_METHODS if "log_py_x" in frame else methods
    legend = "\n".join(
        f"- `{k}`: {((f.__doc__ or '').strip().splitlines() or [''])[0]}"
        for k, f in methods.items()
        if k in set(frame.method)  # the rows the table has
    )
    if methods in (LABEL_METHODS, QUADRANT_METHODS):  # and what each column is
        notes = [f"- {c}: {COLUMN_NOTES[c]}" for c in frame.columns if c in COLUMN_NOTES]
        legend += "\n\nColumns:\n\n" + "\n".join(notes)
    return f"{title}\n\n{table}\n\n{legend}\n"
