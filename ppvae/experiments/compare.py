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

import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pyro
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ppvae.baselines import EMPPCA, PPCA, MixturePPCA, independent, ppca_log_prob
from ppvae.config import ArchConfig, ConfigError, DataShape, JsonConfig, atomic_write_text
from ppvae.data import DATASETS, dequantize, load_dataset
from ppvae.errors import DivergenceWarning, PPVAEError, TrainingError, first_line
from ppvae.evaluation.metrics import bits_per_dim, elbo_terms, log_likelihood
from ppvae.experiments.outputs import make_dir
from ppvae.guides import GUIDES
from ppvae.infer.fitting import FitConfig, fit, resolve_device
from ppvae.models import MODELS

LEVELS: dict[str, int] = {"digits": 17, "fashion-mnist": 256, "mnist": 256}
"""Grey levels of each pixel dataset; datasets not listed are continuous already."""

COLUMNS = [
    "method", "log_px", "log_px_stderr", "estimator", "elbo", "bits_per_dim", "fit_seconds",
    "status",
]  # fmt: skip

OK, DIVERGED, INTERRUPTED, FAILED = "ok", "diverged", "interrupted", "failed"
"""A row's ``status``: fitted (``ok``), fitted but far below the independent-pixel baseline
(``diverged``, see :func:`ppvae.baselines.independent.diverged`), stopped by Ctrl-C, or
``failed: <the error's first line>``. ``--resume`` keeps the ``ok`` and ``diverged`` rows."""

KEPT = (OK, DIVERGED)


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
    methods : tuple of str
        The rows to fit (keys of :data:`METHODS`, or of ``compare_missing.METHODS`` when
        entries are missing); empty: all.

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
    methods: tuple[str, ...] = ()

    def __post_init__(self):
        self.check_types()
        if not 0 <= self.missing_rate < 1:
            raise ConfigError(f"missing_rate must be in [0, 1), got {self.missing_rate}")
        _at_least(self, "num_particles", 1)
        from ppvae.experiments.compare_missing import (
            METHODS as MISSING_METHODS,  # (it imports this one)
        )

        known = MISSING_METHODS if self.missing_rate else METHODS
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            choices = ", ".join(known)
            other = MISSING_METHODS if known is METHODS else METHODS
            switch = "add --missing-rate R" if known is METHODS else "leave out --missing-rate"
            hint = f" ({switch} for {', '.join(unknown)})" if set(unknown) <= set(other) else ""
            raise ConfigError(
                f"unknown method(s) {', '.join(unknown)}; choose from: {choices}{hint}"
            )
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


def _timed(fn: Callable):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _exact(log_px: Tensor, seconds: float, elbo: float = math.nan) -> Row:
    return Row(log_px.mean().item(), 0.0, "exact", elbo, seconds)


def ppca_closed_form(split: Split, config: CompareConfig) -> Row:
    """PPCA, closed-form maximum likelihood (eigendecomposition of the covariance)."""
    model, seconds = _timed(lambda: PPCA(config.z_dim).fit(split.train))
    return _exact(model.log_prob(split.test), seconds)


def ppca_em(split: Split, config: CompareConfig) -> Row:
    """PPCA fitted by EM from a random start."""
    em = EMPPCA(config.z_dim, max_iter=config.em_max_iter, tol=config.em_tol, seed=config.seed)
    model, seconds = _timed(lambda: em.fit(split.train))
    return _exact(model.log_prob(split.test), seconds)


def mixture_ppca(split: Split, config: CompareConfig) -> Row:
    """Mixture of PPCA (K components of dimension z_dim), EM from a k-means++ start."""
    mixture = MixturePPCA(
        config.components, config.z_dim, max_iter=config.em_max_iter, tol=config.em_tol,
        seed=config.seed,
    )  # fmt: skip
    model, seconds = _timed(lambda: mixture.fit(split.train))
    return _exact(model.log_prob(split.test), seconds)


def _svi(model_key: str, guide_key: str, split, config: CompareConfig, **options):
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
    result, seconds = _timed(
        lambda: fit(model, guide, split.train.float(), fit_config, progress=False)
    )
    if result.interrupted:  # Ctrl-C: stop the comparison rather than score a half-trained row
        raise KeyboardInterrupt
    return model, guide, seconds


@torch.no_grad()
def _analytic_elbo(model, guide, x: Tensor) -> float:
    return model.analytic_elbo(x, guide.encode(x)).mean().item()


def ppca_svi(split: Split, config: CompareConfig) -> Row:
    """The PPCA Pyro model by SVI with the exact posterior guide (ELBO = log p(x))."""
    model, guide, seconds = _svi("ppca", "ppca-exact", split, config)
    if not model.sigma2 > 0:  # a finite loss all the way, but the noise variance underflowed
        raise TrainingError(
            f"training drove sigma2 to {model.sigma2.item():.3g}: the learning rate {config.lr} "
            "is too high for PPCA by SVI"
        )
    with torch.no_grad():
        params = (p.double() for p in (model.W, model.mu, model.sigma2))
        log_px = ppca_log_prob(split.test, *params)
    return _exact(log_px, seconds, elbo=_analytic_elbo(model, guide, split.test.float()))


def _sampled_mean(model, guide, x: Tensor, config: CompareConfig) -> tuple[float, float, str]:
    """The importance-sampled mean log p(x) over the rows of ``x``, its Monte Carlo standard
    error, and the estimator's name."""
    ll = log_likelihood(model, guide, x.float(), num_samples=config.eval_samples)
    stderr = (ll.stderr.double().square().sum().sqrt() / len(ll.stderr)).item()
    return ll.log_px.double().mean().item(), stderr, f"IS K={ll.num_samples}"


def _sampled(model, guide, split: Split, config: CompareConfig, elbo: float, seconds) -> Row:
    return Row(*_sampled_mean(model, guide, split.test, config), elbo, seconds)


def linear_vae(split: Split, config: CompareConfig) -> Row:
    """The PPCA Pyro model with a linear mean-field guide by SVI: the linear VAE."""
    model, guide, seconds = _svi("ppca", "linear", split, config)
    elbo = _analytic_elbo(model, guide, split.test.float())
    return _sampled(model, guide, split, config, elbo, seconds)


def nonlinear_vae(split: Split, config: CompareConfig) -> Row:
    """MLP decoder with a learned per-pixel Gaussian likelihood, MLP mean-field guide."""
    model, guide, seconds = _svi("gaussian-learned", "diag", split, config)
    terms = elbo_terms(model, guide, split.test.float(), num_samples=config.elbo_samples)
    return _sampled(model, guide, split, config, terms.elbo.double().mean().item(), seconds)


METHODS: dict[str, Callable[[Split, CompareConfig], Row]] = {
    "ppca": ppca_closed_form,
    "ppca-em": ppca_em,
    "mppca": mixture_ppca,
    "ppca-svi": ppca_svi,
    "linear-vae": linear_vae,
    "vae": nonlinear_vae,
}


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
    :mod:`ppvae.experiments.compare_missing` on the masked split instead.

    Parameters
    ----------
    config : CompareConfig
    split : Split, optional
        The data as :func:`prepare` returns it for ``config`` (prepared here if not given).
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
    split = prepare(config) if split is None else split
    shown = sys.stderr.isatty() if progress is None else progress

    def bar(items):
        for name, method in (progress_bar := tqdm(items, disable=not shown, unit="method")):
            progress_bar.set_postfix_str(name)
            yield name, method

    if config.missing_rate > 0:
        from ppvae.experiments.compare_missing import compare_missing  # (it imports this module)

        return compare_missing(config, split, bar, done=done, on_row=on_row)
    chosen = {k: m for k, m in METHODS.items() if not config.methods or k in config.methods}
    baseline = Baseline.of(split.train, split.test)

    def score(name: str, method: Callable) -> dict:
        row = _score(name, method, split, config)
        bpd = bits_per_dim(row.log_px, split.train.shape[1], split.levels)
        return {**row._asdict(), "bits_per_dim": bpd, "status": baseline.status(name, row)}

    return fit_table(chosen, score, COLUMNS, bar, done=done, on_row=on_row)


class Baseline(NamedTuple):
    """The diagonal Gaussian's test log-likelihood per example (every pixel independent, its
    training mean and variance), against which a row is said to have diverged."""

    log_px: float
    dims: float

    @classmethod
    def of(cls, train: Tensor, test: Tensor) -> "Baseline":
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
    each row's columns but its name; the machinery of :func:`compare` and
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


def _score(name: str, method: Callable, split: Split, config: CompareConfig) -> Row:
    try:
        return method(split, config)
    except PPVAEError as err:  # say which method, in one line
        raise type(err)(f"{name}: {first_line(err)}") from err
    except ValueError as err:  # a baseline refusing the data, e.g. too few rows per component
        raise ConfigError(f"{name}: {first_line(err)}") from err


def caption(config: CompareConfig, split: Split) -> str:
    """One line stating the data, the dequantization and the settings behind a table."""
    dequant = f"uniformly dequantized ({split.levels} levels)" if split.levels else "continuous"
    missing = (
        f", {config.missing_rate:.0%} of entries missing completely at random (train and "
        f"test), VAE on the MIWAE bound with K={config.num_particles}"
        if config.missing_rate
        else ""
    )
    return (
        f"{config.dataset}, {dequant}{missing}, "
        f"train/test {len(split.train)}/{len(split.test)} rows; "
        f"z_dim={config.z_dim}, mixture K={config.components}, VAE hidden={list(config.hidden)}, "
        f"SVI {config.epochs} epochs (batch {config.batch_size}, lr {config.lr}), "
        f"EM tol {config.em_tol} (at most {config.em_max_iter} iterations), "
        f"IS K={config.eval_samples}, seed {config.seed}. "
        f"log p(x{'_obs' if config.missing_rate else ''}) and ELBO in nats per test example; "
        f"fit_seconds on {split.train.device.type}."
    )


def to_markdown(frame: pd.DataFrame, title: str) -> str:
    """The table as markdown under a caption, with a legend from the methods' docstrings."""
    shown = frame.astype(object).where(frame.notna(), None)  # tabulate prints None as n/a
    table = shown.to_markdown(index=False, floatfmt=".3f", missingval="n/a")
    from ppvae.experiments.compare_missing import METHODS as MISSING_METHODS

    methods = MISSING_METHODS if "imputation_rmse" in frame else METHODS
    legend = "\n".join(
        f"- `{k}`: {((f.__doc__ or '').strip().splitlines() or [''])[0]}"
        for k, f in methods.items()
        if k in set(frame.method)  # the rows the table has
    )
    return f"{title}\n\n{table}\n\n{legend}\n"


def check_stem(stem: str) -> str:
    """Raise ConfigError unless ``stem`` is a plain file name (the folder goes in ``out``)."""
    separators = [sep for sep in (os.sep, os.altsep, "/") if sep]
    if not stem or stem in (".", "..") or any(sep in stem for sep in separators):
        raise ConfigError(
            f"--stem {stem[:80]!r} must be a file name, not a path: put the folder in --out"
        )
    return stem


def table_paths(out: str | Path, stem: str = "compare") -> tuple[Path, Path, Path]:
    """``<out>/<stem>.csv``, ``.md`` and ``.json`` (the config that made the table)."""
    out = Path(out)
    return tuple(out / f"{check_stem(stem)}{ext}" for ext in (".csv", ".md", ".json"))


def write(
    frame: pd.DataFrame,
    out: str | Path,
    title: str,
    stem: str = "compare",
    config: CompareConfig | None = None,
) -> list[Path]:
    """Write ``<out>/<stem>.csv`` and ``<out>/<stem>.md`` atomically, and with ``config``
    ``<out>/<stem>.json`` (what :func:`resume_table` checks); returns their paths."""
    csv, md, saved = table_paths(out, stem)
    texts = {csv: frame.to_csv(index=False), md: to_markdown(frame, title)}
    if config is not None:
        texts[saved] = config.to_json() + "\n"
    make_dir(Path(out))
    for path, text in texts.items():
        atomic_write_text(path, text)
    return list(texts)


def resume_table(out: str | Path, stem: str, config: CompareConfig) -> pd.DataFrame:
    """The table saved in ``out`` under ``stem`` (by :func:`write` with its config), to pass
    to :func:`compare` as ``done``.

    Raises
    ------
    ConfigError
        When there is no such table, it cannot be read, or it was made with other settings
        (the message names them).
    """
    csv, _, saved = table_paths(out, stem)
    for path in (saved, csv):
        if not path.is_file():
            raise ConfigError(f"nothing to resume: {path} does not exist")
    old, new = CompareConfig.load(saved).leaves(), config.leaves()
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        changes = ", ".join(f"{k} {new.get(k)!r} (saved {old.get(k)!r})" for k in differ)
        raise ConfigError(
            f"--resume continues the table {csv} with its saved settings, but {changes}"[:300]
        )
    try:
        done = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {csv}: {first_line(err)}") from None
    if not {"method", "status"} <= set(done.columns):
        raise ConfigError(f"{csv} has no method and status columns: not a table to resume")
    return done
