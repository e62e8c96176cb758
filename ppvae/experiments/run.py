"""``ppvae train``'s run folder: :func:`train` writes config, history, checkpoint, metrics and
pictures, new or resumed, with the folder held against other runs and swapped in whole (see
:mod:`ppvae.outputs`); the config is a :class:`~ppvae.experiments.run_config.RunConfig`.
"""

import math
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pyro
import torch

from ppvae import distributed
from ppvae.baselines import imputation_rmse
from ppvae.baselines.independent import diverged, divergence_margin
from ppvae.config import (
    ConfigError,
    atomic_write_text,
)
from ppvae.data import Dataset
from ppvae.errors import (
    DivergenceWarning,
    OutputError,
    first_line,
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
from ppvae.experiments.run_config import (
    CHECKPOINT,
    CONFIG,
    HISTORY,
    METRICS,
    PICTURES,
    RunConfig,
    build,
    load_data,
)
from ppvae.experiments.run_diagram import diagram
from ppvae.experiments.run_extras import auxiliary, pretrained
from ppvae.experiments.saved_runs import (
    check_data,
    check_same_run,
    run_info,
    saved_run,
)
from ppvae.infer.callbacks import Callback, CallbackList
from ppvae.infer.fitting import FitResult, fit, resolve_device
from ppvae.infer.holding import holding
from ppvae.infer.loop import HISTORY_COLUMNS
from ppvae.infer.resume import check_compatible
from ppvae.outputs import Staging, check_output_dir, is_lock_file, resolve_link

DIAGRAM = "model.svg"
"""The pair drawn (:func:`ppvae.render`), written into a new run's folder."""


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
    z = posterior_means(guide, test)
    if data.image_shape is not None:
        x_hat = reconstruct(model, guide, test[:20])
        plots.reconstructions(test[:20], x_hat, data.image_shape, out / "reconstructions.png")
        samples = generate(model, test[:100])
        title = "samples from the prior: E[x | z], z ~ p(z)"
        plots.image_grid(samples, data.image_shape, out / "samples.png", title=title)
        if z.shape[-1] >= 1:  # a latent per example to walk between
            plots.interpolation(
                model, guide, test[:8], data.image_shape, out / "interpolation.png"
            )
        if z.shape[-1] >= 2:
            plots.latent_grid(model, guide, test, data.image_shape, out / "latent_grid.png")
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
    callbacks: list[Callback] | None = None,
) -> RunResult:
    """Train ``run`` and write its directory ``out``.

    Files: ``config.json``, ``history.csv`` (rewritten every epoch), ``checkpoint.pt``
    (every epoch and on Ctrl-C), and when training completes ``metrics.csv`` (test ELBO and
    importance-sampled log p(x)), ``elbo.png``, ``reconstructions.png``, ``samples.png``,
    ``interpolation.png`` (four pairs of test images), ``latent_grid.png`` (decoded over the
    first two latent dimensions) and ``latent.png`` when z is 2-D. A new run also has
    ``model.svg``, the model and guide drawn (:func:`ppvae.render`; without Graphviz's ``dot``
    a warning says so, and training goes on).

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

    ``callbacks`` (:mod:`ppvae.infer.callbacks`, such as the trackers of
    :mod:`ppvae.experiments.trackers`) see the training as ``fit``'s do, and its end once the
    folder is written, with the folder (rank 0 alone).
    """
    hooks = CallbackList(callbacks or (), outputs_follow=True)
    out = resolve_link(check_output_dir(out))
    with holding(out, str(out), "wait for that run to finish, or choose another --out"):
        if resume:
            return _resume(run, out, progress, hooks)
        return _start(run, out, overwrite, progress, hooks)


def _start(run: RunConfig, out: Path, overwrite: bool, progress, hooks) -> RunResult:
    _check_new_run(out, overwrite)
    data = load_data(run)
    resolve_device(run.fit.device)
    if not distributed.is_main():
        return _train_quietly(run, data, progress)
    staging = Staging(out, CHECKPOINT)
    try:
        return _train_new(run, data, staging, progress, hooks)
    finally:
        staging.discard()  # a no-op once the run has been moved into place


def _train_new(run: RunConfig, data: Dataset, staging: Staging, progress, hooks) -> RunResult:
    pyro.clear_param_store()
    model, guide = build(run, data)
    model = pretrained(run, data, model)
    run.save(staging.folder / CONFIG)
    diagram(model, guide, data.train, staging.folder / DIAGRAM)

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
        run_info=run_info(run, data),
        callbacks=hooks,
        aux=auxiliary(guide),
    )
    staging.publish()  # stopped by Ctrl-C before the first epoch ended: its checkpoint counts
    done = _finish(run, data, result, staging.folder)
    hooks.end(result, staging.folder, outputs=True)
    return done


def _train_quietly(run: RunConfig, data: Dataset, progress) -> RunResult:
    """A rank other than 0: the same training and evaluation, nothing written."""
    pyro.clear_param_store()
    model, guide = build(run, data)
    model = pretrained(run, data, model)
    result = fit(model, guide, data, run.fit, progress=False, aux=auxiliary(guide))
    return _finish(run, data, result, None)


def _resume(run: RunConfig, out: Path, progress, hooks) -> RunResult:
    if not os.path.lexists(out / CHECKPOINT):
        raise ConfigError(f"nothing to resume: {out / CHECKPOINT} does not exist")
    written, saved = saved_run(out)
    check_same_run(written, run, out)
    check_compatible(saved["config"], run.fit, out / CHECKPOINT)
    done = saved["progress"]["epoch"]
    if run.fit.epochs < done:
        raise ConfigError(
            f"epochs={run.fit.epochs} is fewer than the {done} epochs {out} has trained: "
            "resume only extends a run"
        )
    data = load_data(run)
    check_data(saved["run"], data, out)
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
        run_info=run_info(run, data),
        callbacks=hooks,
        aux=auxiliary(guide),
    )
    if main:
        run.save(out / CONFIG)  # its epochs, once training has gone past the old ones
    done = _finish(run, data, result, out if main else None)
    if main:
        hooks.end(result, out, outputs=True)
    return done


def _finish(run: RunConfig, data: Dataset, result: FitResult, out: Path | None) -> RunResult:
    """Evaluate (every rank, sharded) and write metrics and pictures to ``out`` (rank 0: the
    other ranks pass None)."""
    files = [] if out is None else [out / CONFIG, out / CHECKPOINT, out / HISTORY]
    if out is not None and (out / DIAGRAM).exists():
        files.append(out / DIAGRAM)
    if result.interrupted:
        return RunResult(result, None, files)
    model, guide = result.model, result.guide
    device = distributed.local_device(resolve_device(run.fit.device))
    if isinstance(data.test, tuple):  # labels or conditions: the scores of the pair, no pictures
        return _finish_more_than_x(run, data, result, out, files, device)
    test = data.test.to(device)
    metrics, idx = None, None
    if not getattr(guide, "amortized", True) and hasattr(guide, "refined"):
        # a per-datapoint guide has no parameters for the test rows: fit them, model fixed
        guide = guide.refined(model, test, seed=run.fit.seed, plate=run.fit.plate)
        idx = torch.arange(len(test), device=test.device)
    if getattr(guide, "amortized", True) or idx is not None:
        with distributed.scoring_together():  # every rank its share of the test set
            metrics = evaluate(model, guide, test, num_samples=run.eval_samples, idx=idx)
        if run.missing_rate and out is not None and idx is None:
            metrics["imputation_rmse"] = _imputation_rmse(run, model, guide, test)
        metrics = _mark_divergence(metrics, model, data, test, run.fit.plate)
        if out is not None:
            files.append(_write_csv(metrics, out / METRICS))
    if out is not None:
        files += _pictures(result, data, test, out)
    return RunResult(result, metrics, files)


def _finish_more_than_x(run, data: Dataset, result: FitResult, out, files, device):
    """Metrics of a pair that takes (x, y): ``evaluate`` on the test tuple (for a conditional
    model its log p(y | x); for M2 log p(x, y), log p(x) and the accuracy of q(y | x))."""
    test = tuple(t.to(device) for t in data.test)
    with distributed.scoring_together():
        metrics = evaluate(result.model, result.guide, test, num_samples=run.eval_samples)
    if out is not None:
        files.append(_write_csv(metrics, out / METRICS))
        plots.elbo_curve(result.history, out / "elbo.png")
        files.append(out / "elbo.png")
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
