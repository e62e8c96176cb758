"""A training run as one config: data, model, guide, sizes and fit settings, saved as JSON.

``RunConfig`` names every choice by registry key, so ``config.json`` rebuilds the same run, and
:func:`train` writes a run directory: config, history, checkpoint, metrics and pictures.
"""

import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pyro
import torch

from ppvae import distributed
from ppvae.baselines import imputation_rmse
from ppvae.baselines.independent import diverged, divergence_margin
from ppvae.config import (
    ArchConfig,
    ConfigError,
    DataShape,
    JsonConfig,
    atomic_write_text,
    open_regular,
    read_json,
)
from ppvae.data import BINARIZATIONS, DATASETS, Dataset, load_dataset
from ppvae.data.missing import mcar_dataset
from ppvae.errors import (
    CheckpointError,
    DataError,
    DivergenceWarning,
    OutputError,
    PPVAEError,
    first_line,
    shown,
)
from ppvae.evaluation.imputation import impute
from ppvae.evaluation.metrics import (
    baseline_log_px,
    evaluate,
    generate,
    posterior_means,
    reconstruct,
    scored_dims,
)
from ppvae.experiments import plots
from ppvae.guides import GUIDES
from ppvae.infer import checkpoint as ckpt
from ppvae.infer.fitting import FitConfig, FitResult, fit, holding, resolve_device
from ppvae.infer.loop import HISTORY_COLUMNS
from ppvae.infer.resume import KEYS, check_compatible, load_modules
from ppvae.models import MODELS
from ppvae.outputs import Staging, check_output_dir, is_lock_file, resolve_link
from ppvae.pairs import place

CONFIG, HISTORY, CHECKPOINT, METRICS = "config.json", "history.csv", "checkpoint.pt", "metrics.csv"
PICTURES = ("elbo.png", "reconstructions.png", "samples.png", "latent.png")


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


def load_data(run: RunConfig, *, complete: bool = False) -> Dataset:
    """The run's data set, with ``run.missing_rate`` of its entries missing (NaN) unless
    ``complete``."""
    data = load_dataset(
        run.dataset, data_dir=run.data_dir, binarize=run.binarize, seed=run.fit.seed
    )
    if run.missing_rate and not complete:
        return mcar_dataset(data, run.missing_rate, seed=run.fit.seed)
    return data


def build(run: RunConfig, data: Dataset):
    """The model and guide of ``run``, sized for ``data``; seeded by ``run.fit.seed``."""
    torch.manual_seed(run.fit.seed)
    rows = data.train.shape[0]
    shape = DataShape(data.train.shape[1], data.image_shape, rows, missing=run.missing_rate > 0)
    model = MODELS[run.model](run.arch, shape)
    return model, GUIDES[run.guide](run.arch, shape, model)


class RunResult(NamedTuple):
    """A finished (or interrupted) run: the fit, the final metrics and the files written."""

    fit: FitResult
    metrics: pd.DataFrame | None
    files: list[Path]


def _check_new_run(out: Path, overwrite: bool) -> None:
    """A new run goes into an empty or new folder, or replaces a run with --overwrite."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder")
    if (out / CONFIG).exists() or (out / CHECKPOINT).exists():
        if not overwrite:
            raise ConfigError(f"{out} already holds a run; pass --resume or --overwrite")
    elif any(not is_lock_file(p.name) for p in out.iterdir()):
        raise ConfigError(
            f"{out} holds other files and no run: choose an empty or new folder for --out"
        )


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    try:
        atomic_write_text(path, frame.to_csv(index=False))
    except OSError as err:
        raise OutputError(f"cannot write {path}: {first_line(err)}") from err
    return path


def _pictures(result: FitResult, data: Dataset, test: torch.Tensor, out: Path) -> list[Path]:
    """Draw the run's pictures; returns the paths written."""
    plots.elbo_curve(result.history, out / "elbo.png")
    model, guide = result.model, result.guide
    if not getattr(guide, "amortized", True):
        return [out / "elbo.png"]
    if data.image_shape is not None:
        x_hat = reconstruct(model, guide, test[:20])
        plots.reconstructions(test[:20], x_hat, data.image_shape, out / "reconstructions.png")
        samples = generate(model, test[:100])
        plots.image_grid(samples, data.image_shape, out / "samples.png", title="samples")
    z = posterior_means(guide, test)
    if z.shape[-1] == 2:
        plots.latent_scatter(z, data.test_labels, out / "latent.png")
    return [out / n for n in PICTURES if (out / n).exists()]


def train(
    run: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> RunResult:
    """Train ``run`` and write its directory ``out``.

    Files: ``config.json``, ``history.csv`` (rewritten every epoch), ``checkpoint.pt``
    (every epoch and on Ctrl-C), and when training completes ``metrics.csv`` (test ELBO and
    importance-sampled log p(x)), ``elbo.png``, ``reconstructions.png``, ``samples.png``, and
    ``latent.png`` when z is 2-D.

    Everything is checked first (the output folder, the config, the data, the device, the model
    and guide on a batch). A new run is built in a hidden folder beside ``out`` and moved into
    place when its first checkpoint is written, so a failure before that leaves ``out`` as it
    was, and ``overwrite`` replaces an old run only by a new one that has started. With
    ``resume``, ``history.csv`` is rewritten from the checkpoint first. The run starts from an
    empty param store, as a new process would.

    ``out`` is held for the whole run (:class:`~ppvae.outputs.OutputLock`), so another run
    into it is refused before it starts. A symbolic link is followed: the run is written where
    it points. An empty folder that cannot be renamed (a mount point, the current folder) is
    written in place, file by atomic file.

    Under ``torch.distributed`` (``torchrun``) every rank trains and evaluates its share; rank
    0 alone writes the directory.
    """
    out = resolve_link(check_output_dir(out))
    with holding(out, str(out), "wait for that run to finish, or choose another --out"):
        if resume:
            return _resume(run, out, progress)
        return _start(run, out, overwrite, progress)


def _start(run: RunConfig, out: Path, overwrite: bool, progress) -> RunResult:
    _check_new_run(out, overwrite)
    data = load_data(run)
    resolve_device(run.fit.device)
    if not distributed.is_main():
        return _train_quietly(run, data, progress)
    staging = Staging(out, CHECKPOINT)
    try:
        return _train_new(run, data, staging, progress)
    finally:
        staging.discard()  # a no-op once the run has been moved into place


def _train_new(run: RunConfig, data: Dataset, staging: Staging, progress) -> RunResult:
    pyro.clear_param_store()
    model, guide = build(run, data)
    run.save(staging.folder / CONFIG)

    def on_epoch(history: pd.DataFrame) -> None:
        staging.publish()  # the first checkpoint is written: the new run takes --out's place
        _write_csv(history, staging.folder / HISTORY)

    result = fit(
        model,
        guide,
        data,
        run.fit,
        checkpoint=staging,
        progress=progress,
        on_epoch=on_epoch,
        run_info=_run_info(run, data),
    )
    staging.publish()  # stopped by Ctrl-C before the first epoch ended: its checkpoint counts
    return _finish(run, data, result, staging.folder)


def _check_same_run(saved: RunConfig, run: RunConfig, out: Path) -> None:
    """Resume continues the run in ``out`` as it was: only ``fit.epochs`` may differ."""
    old, new = saved.leaves(), run.leaves()
    differ = sorted(k for k in old if k != "fit.epochs" and old[k] != new.get(k))
    if differ:
        changes = ", ".join(f"{k} {new.get(k)!r} (saved {old[k]!r})" for k in differ)
        raise ConfigError(
            f"resume continues the run in {out} as it was, and only fit.epochs may change, "
            f"but {changes}"
        )


MAY_CHANGE = ("fit.epochs", "data_dir")
"""config.json fields that may differ from the checkpoint's: a resume that stopped before it
finished leaves the new epochs in the checkpoint alone, and the data may move to a new folder."""


def _run_info(run: RunConfig, data: Dataset) -> dict:
    """What a run's checkpoint records of the run, in plain values: its config and data sizes."""
    sizes = {"train": list(data.train.shape), "test": list(data.test.shape)}
    return {"config": run.to_dict(), "data": sizes}


def saved_config(out: str | os.PathLike) -> RunConfig:
    """The config of the run in ``out`` (what ``--resume`` continues), once config.json is
    checked against the run config its checkpoint carries (see :func:`load_run`)."""
    out = Path(out)
    for name in (CONFIG, CHECKPOINT):
        if not os.path.lexists(out / name):
            raise ConfigError(f"nothing to resume: {out / name} does not exist")
    return _saved_run(out)[0]


def _saved_run(out: Path) -> tuple[RunConfig, dict]:
    """The run in ``out``: its config, once config.json is checked against the checkpoint's
    record of the run, and the checkpoint."""
    written = read_json(out / CONFIG, what="the run's config")
    saved = ckpt.load(out / CHECKPOINT)
    ckpt.require(saved, KEYS, out / CHECKPOINT)
    info = saved["run"]
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise CheckpointError(
            f"{out / CHECKPOINT} holds no run config: it was written by fit(checkpoint=...), "
            "not ppvae train; resume it with fit(..., resume=True)"
        )
    if not isinstance(written, dict):
        raise ConfigError(f"{out / CONFIG} must hold a JSON object, got {shown(written)}")
    problems = list(_differences(written, info["config"]))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(
            f"{out / CONFIG} does not match the run in {CHECKPOINT}: {problems[0]}{more}; put "
            "config.json back as it was, or train a new run"
        )
    return RunConfig.from_dict(written), saved


def _differences(written: dict, saved: dict, prefix: str = ""):
    """Each way config.json (``written``) differs from the checkpoint's config (``saved``)."""
    for key, value in saved.items():
        name = prefix + key
        if key not in written:
            yield f"{name} is missing (the checkpoint has {shown(value)})"
        elif isinstance(value, dict) and isinstance(written[key], dict):
            yield from _differences(written[key], value, f"{name}.")
        elif name not in MAY_CHANGE and _plain(written[key]) != _plain(value):
            yield f"{name} is {shown(written[key])}, the checkpoint's {shown(value)}"
    for key in sorted(written.keys() - saved.keys()):
        yield f"{prefix}{key} is not in the checkpoint's config"


def _plain(value):
    """A JSON value as the checkpoint holds it (lists as tuples); 1 and True stay apart."""
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return (type(value) is bool, value)


def _check_data(info: dict, data: Dataset, out: Path) -> None:
    """DataError unless the data loaded now has the sizes the run was trained on."""
    sizes = info.get("data") or {}
    for split in ("train", "test"):
        now = list(getattr(data, split).shape)
        if split in sizes and list(sizes[split]) != now:
            raise DataError(
                f"the run in {out} was trained on {split} data of shape {tuple(sizes[split])}, "
                f"but its data set now loads as {tuple(now)}: put the run's data back"
            )


def _train_quietly(run: RunConfig, data: Dataset, progress) -> RunResult:
    """A rank other than 0: the same training and evaluation, nothing written."""
    pyro.clear_param_store()
    model, guide = build(run, data)
    result = fit(model, guide, data, run.fit, progress=False)
    return _finish(run, data, result, None)


def _resume(run: RunConfig, out: Path, progress) -> RunResult:
    if not os.path.lexists(out / CHECKPOINT):
        raise ConfigError(f"nothing to resume: {out / CHECKPOINT} does not exist")
    written, saved = _saved_run(out)
    _check_same_run(written, run, out)
    check_compatible(saved["config"], run.fit, out / CHECKPOINT)
    done = saved["progress"]["epoch"]
    if run.fit.epochs < done:
        raise ConfigError(
            f"epochs={run.fit.epochs} is fewer than the {done} epochs {out} has trained: "
            "resume only extends a run"
        )
    data = load_data(run)
    _check_data(saved["run"], data, out)
    resolve_device(run.fit.device)
    pyro.clear_param_store()
    model, guide = build(run, data)
    main = distributed.is_main()
    if main:
        rows = saved["progress"]["rows"]
        _write_csv(pd.DataFrame(rows, columns=HISTORY_COLUMNS), out / HISTORY)

    def on_epoch(history: pd.DataFrame) -> None:
        (out / METRICS).unlink(missing_ok=True)  # the run moved past them; rewritten at the end
        _write_csv(history, out / HISTORY)

    result = fit(
        model,
        guide,
        data,
        run.fit,
        checkpoint=out / CHECKPOINT,
        resume=True,
        progress=progress if main else False,
        on_epoch=on_epoch if main else None,
        run_info=_run_info(run, data),
    )
    if main:
        run.save(out / CONFIG)  # its epochs, once training has gone past the old ones
    return _finish(run, data, result, out if main else None)


def _finish(run: RunConfig, data: Dataset, result: FitResult, out: Path | None) -> RunResult:
    """Evaluate (every rank, sharded) and write metrics and pictures to ``out`` (rank 0: the
    other ranks pass None)."""
    files = [] if out is None else [out / CONFIG, out / CHECKPOINT, out / HISTORY]
    if result.interrupted:
        return RunResult(result, None, files)
    model, guide = result.model, result.guide
    test = data.test.to(distributed.local_device(resolve_device(run.fit.device)))
    metrics = None
    if getattr(guide, "amortized", True):
        with distributed.scoring_together():  # every rank its share of the test set
            metrics = evaluate(model, guide, test, num_samples=run.eval_samples)
        if run.missing_rate and out is not None:
            metrics["imputation_rmse"] = _imputation_rmse(run, model, guide, test)
        metrics = _mark_divergence(metrics, model, data, test, run.fit.plate)
        if out is not None:
            files.append(_write_csv(metrics, out / METRICS))
    if out is not None:
        files += _pictures(result, data, test, out)
    return RunResult(result, metrics, files)


def _mark_divergence(metrics: pd.DataFrame, model, data: Dataset, test, plate: str):
    """Add ``baseline_log_px`` (the independent-pixel baseline's test log-likelihood, see
    :func:`ppvae.evaluation.metrics.baseline_log_px`) and ``diverged`` to the metrics; warn in
    one line (rank 0) when the run ended far below the baseline."""
    baseline = baseline_log_px(model, data.train, test, plate=plate)
    if baseline is None:
        return metrics.assign(baseline_log_px=math.nan, diverged=False)
    b, log_px = baseline.mean().item(), float(metrics.log_px.iloc[0])
    bad = diverged(log_px, b, scored_dims(test))
    if bad and distributed.is_main():
        warnings.warn(
            f"the run diverged: test log p(x) {log_px:.4g} nats per example, far below the "
            f"{b:.4g} of independent pixels fitted to the training data (margin "
            f"{divergence_margin(b, scored_dims(test)):.4g}); try a lower learning rate",
            DivergenceWarning,
            stacklevel=2,
        )
    return metrics.assign(baseline_log_px=b, diverged=bad)


def _imputation_rmse(run: RunConfig, model, guide, test: torch.Tensor) -> float:
    """RMSE of E[x_miss | x_obs] on the held-out test entries, against their true values."""
    truth = load_data(run, complete=True).test.to(test.device)
    imputed = impute(model, guide, test, num_samples=run.eval_samples).mean
    return imputation_rmse(truth, imputed, test.isnan())


class LoadedRun(NamedTuple):
    """A saved run, back with its trained parameters (see :func:`load_run`).

    Attributes
    ----------
    config : RunConfig
    model, guide
        Built from ``config`` by the registries, holding the checkpoint's parameters (also in
        Pyro's param store, under their names).
    data : Dataset
        The run's data, as :func:`load_data` gives it.
    history : DataFrame
        One row per epoch trained so far.
    """

    config: RunConfig
    model: torch.nn.Module
    guide: torch.nn.Module
    data: Dataset
    history: pd.DataFrame


def load_run(out: str | os.PathLike, *, device: str = "cpu") -> LoadedRun:
    """Load the run saved in ``out`` (``ppvae train --out``): config, model, guide, data, history.

    The model and guide are rebuilt from ``config.json`` and get the parameters of
    ``checkpoint.pt`` (the last finished epoch, or where Ctrl-C stopped), on ``device``::

        run = ppvae.load_run("runs/demo")
        ppvae.evaluate(run.model, run.guide, run.data.test)

    ``config.json`` must match the run config the checkpoint carries, field for field (only
    ``fit.epochs`` and ``data_dir`` may differ), and the data must load with the sizes the run
    was trained on: an edited or incomplete config is refused, never used.

    Raises
    ------
    ConfigError
        When ``out`` holds no run, config.json cannot be read (only a regular file of plain
        JSON is), or it differs from the checkpoint's config (the message names the field).
    CheckpointError
        When the checkpoint cannot be read, is of another format version, holds no run config,
        or was written for another architecture.
    DataError
        When the data set no longer loads with the sizes the run was trained on.
    """
    out = Path(out)
    if not os.path.lexists(out / CHECKPOINT):
        raise ConfigError(f"no run in {out}: {out / CHECKPOINT} does not exist")
    run, saved = _saved_run(out)
    data = load_data(run)
    _check_data(saved["run"], data, out)
    model, guide = build(run, data)
    like = data.train[:2].to(resolve_device(device))
    place(model, guide, data.train[:2], like.device, run.fit.plate)
    try:
        load_modules(saved, model, guide, out / CHECKPOINT)
        ckpt.restore_params(saved["params"], like)
    except PPVAEError:
        raise
    except (ValueError, RuntimeError, KeyError) as err:
        raise ConfigError(f"cannot load the run in {out}: {first_line(err)}") from None
    return LoadedRun(run, model, guide, data, _history(out))


def _history(out: Path) -> pd.DataFrame:
    if not os.path.lexists(out / HISTORY):
        return pd.DataFrame()
    with open_regular(out / HISTORY, what="the run's history") as f:
        try:
            return pd.read_csv(f)
        except ValueError as err:  # pandas' parser errors and bad bytes are ValueErrors
            raise ConfigError(f"cannot read {out / HISTORY}: {first_line(err)}") from None
