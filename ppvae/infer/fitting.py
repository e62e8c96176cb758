"""Training: stochastic variational inference on minibatches, with checkpoints and resume.

``fit(model, guide, data, config)`` runs SVI with Adam and returns a :class:`FitResult`. Batches
are index tensors into data already on the training device; there is no DataLoader.
"""

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

import pandas as pd
import pyro
import torch
from tqdm.auto import tqdm

from ppvae import distributed
from ppvae.config import ConfigError
from ppvae.data import Dataset, Rows, as_rows, validate_data
from ppvae.errors import ModelGuideError
from ppvae.infer import checkpoint as ckpt
from ppvae.infer.callbacks import Callback, CallbackList, TrainingStart
from ppvae.infer.groups import aux_losses, check_supported, combined_loss, layout_for
from ppvae.infer.holding import CHECKPOINT_HINT, check_checkpoint_path, holding
from ppvae.infer.loop import (
    HISTORY_COLUMNS,
    DeferredInterrupt,
    Loop,
    Progress,
    Step,
    TrainingError,
    epoch_batches,
    history_columns,
)
from ppvae.infer.resume import restore, state
from ppvae.infer.settings import FitConfig, FitResult, resolve_device
from ppvae.infer.step import resolves_to_jit
from ppvae.pairs import (
    SUBSAMPLED,
    batched,
    data_frame,
    param_tensors,
    place,
    probe,
    run_pair,
    sample_sites,
    self_subsampled,
)
from ppvae.pairs.checker import check
from ppvae.pairs.parameter_checks import module_problems

__all__ = [
    "HISTORY_COLUMNS",
    "FitConfig",
    "FitResult",
    "TrainingError",
    "fit",
    "resolve_device",
    "training_step",
]


def _check_objective(config: FitConfig, structure, guide_trace) -> None:
    """The per-example IWAE needs every latent site, the guide's too, inside the plate."""
    if config.objective != "iwae":
        return
    outside = [
        n for n, s in sample_sites(guide_trace).items() if data_frame(s, config.plate) is None
    ]
    names = ", ".join(dict.fromkeys((*structure.global_latents, *outside)))
    if names:
        raise ConfigError(
            f"objective 'iwae' bounds each example's likelihood, but the pair has global "
            f"latent sites ({names}) outside the plate '{config.plate}': choose 'trace'"
        )


def _inputs(data, model):
    """(train, test or None, dynamic), validated where they are, before anything moves."""
    train, test, dynamic = (
        (data.train, data.test, data.dynamic) if isinstance(data, Dataset) else (data, None, False)
    )
    unit = getattr(model, "requires_unit_interval", False)
    missing = getattr(model, "accepts_missing", False)  # NaN = a missing entry
    train = validate_data(train, unit_interval=unit, missing=missing, what="training data")
    if test is not None:
        test = validate_data(test, unit_interval=unit, missing=missing, what="test data")
    return train, test, dynamic


def _same_on_every_rank(x: torch.Tensor | None, what: str) -> None:
    """Under torch.distributed, ConfigError on every rank unless all were given the same
    ``x`` (as far as its shape and sum tell)."""
    if distributed.ranks().world > 1:
        tensors = [] if x is None else x.tensors if isinstance(x, Rows) else [x]
        total = sum(t.double().nansum().item() for t in tensors)
        summary = None if x is None else (tuple(x.shape), f"{total:.9g}")
        distributed.same_everywhere(summary, f"{what} (shape, sum)")


def training_step(
    model, guide, train: torch.Tensor, config: FitConfig, *, dynamic: bool = False, aux=()
) -> Step:
    """The optimizer step that :func:`fit` takes, ready for ``step(x, idx, num_data)``.

    On the first batch of the first epoch (binarized if ``dynamic``), as a plain SVI loop's
    first step would see it: moves the pair's parameters to the device
    (:func:`ppvae.pairs.place`), checks the pair (:func:`ppvae.pairs.checker.check`) and collects
    the parameters it registers in Pyro's param store. ``benchmarks/step_time.py`` times
    exactly this step.
    """
    device = distributed.local_device(resolve_device(config.device))
    calls = batched(model, config.plate), batched(guide, config.plate)
    train = as_rows(train, "training data").to(device)  # a tuple or dict: several tensors
    _same_on_every_rank(train, "training data")
    world = distributed.ranks().world
    layout = layout_for(train, config.batch_size, world)  # None unless arguments are unobserved
    check_supported(layout, config)
    plain = isinstance(train, torch.Tensor) and layout is None and not aux and world == 1
    plain = plain and device.type == "cpu"  # where the break-even was measured
    jit = resolves_to_jit(config, model, guide, train.shape[0], plain=plain)
    config = dataclasses.replace(config, jit=jit)  # auto decided, once
    x, batches = epoch_batches(train, dynamic, config, 0, layout)
    batches = distributed.shard_batches(batches)  # this rank's share of each global batch
    parts = [(x[batches[0]], batches[0], train.shape[0])]
    if layout is not None:
        parts = layout.parts(*parts[0][:2])
    nesting, tensors, subsampled = 1, {}, None
    grouped = {"_seen_in_all": set()} if len(parts) > 1 or aux else {}  # judged over all
    for rows, idx, n in parts:  # each group of rows, called as its steps call it
        place(model, guide, rows, device, config.plate, idx=idx)
        options = {"idx": idx, "num_data": n, "objective": config.objective} | grouped
        check(model, guide, rows, plate=config.plate, **options)
        structure = probe(*calls, rows, idx, plate=config.plate)
        traces = run_pair(*calls, rows, idx)
        _check_objective(config, structure, traces[1])
        nesting = max(nesting, structure.max_plate_nesting)
        tensors |= param_tensors(*traces)
        subsampled = subsampled or self_subsampled(traces[0], config.plate)  # Pyro's own
    extra, aux_tensors = aux_losses(aux, layout, parts, config, device, nesting)
    tensors = aux_tensors | tensors
    if grouped:  # a q(y | x) that only unlabelled rows (or an aux pair) call still trains
        seen = grouped["_seen_in_all"] | {id(t) for t in tensors.values()}
        if found := module_problems(model, guide, seen):
            raise ModelGuideError("; ".join(found))
    step = Step(*calls, {k: v for k, v in tensors.items() if v.requires_grad}, config, nesting)
    step.subsampled, step.layout, step.jit = subsampled, layout, jit
    step.weighted = step.weighted or bool(extra)  # train_objective is not the pair's ELBO
    if layout is not None or extra:
        step.loss = combined_loss(step.loss, layout, config.plate, extra)
    # every rank starts from rank 0's values, the frozen ones and module buffers included
    distributed.broadcast_state(list(tensors.values()), (model, guide))
    return step


def fit(
    model,
    guide,
    data: Dataset | torch.Tensor | tuple | dict,
    config: FitConfig = FitConfig(),
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[pd.DataFrame], None] | None = None,
    run_info: dict[str, Any] | None = None,
    aux: list[tuple[Any, Any, float]] = (),
    callbacks: list[Callback] | CallbackList | None = None,
) -> FitResult:
    """Train ``model`` and ``guide`` by SVI on ``data``.

    Parameters
    ----------
    model, guide
        Any Pyro model and guide with matching sample sites, written ``f(x)`` as in Pyro's
        tutorials or ``f(x, idx=None, num_data=None)`` as ppvae's own (:mod:`ppvae.pairs`),
        with a plate over the examples named ``config.plate``. Like a plain SVI loop, training
        leaves every parameter in Pyro's param store (``pyro.param`` values, ``pyro.module``
        networks, ``PyroModule`` weights) and the networks hold their trained weights; a store
        entry left under the same name by an earlier model is replaced by the pair's own.
    data : Dataset or Tensor
        A :class:`~ppvae.data.Dataset` (the test split is evaluated every epoch; a dynamic one
        is re-binarized every epoch) or a training tensor of shape (N, D). Data that is more
        than one tensor (:mod:`ppvae.data.rows`), here or as a Dataset's train and test: a
        tuple of tensors, passed as ``model(*batch)``, or a dict of tensors, passed as
        ``model(**batch)``; every tensor has one row per example, and a float tensor's row that
        is all NaN is not observed for that example (the pair is called with None there).
    config : FitConfig
    checkpoint : path, optional
        Written atomically after every epoch and on Ctrl-C (by rank 0 under
        ``torch.distributed``; every rank reads it to resume).
    resume : bool
        Continue from ``checkpoint``. On the CPU with the same seed, an interrupted and resumed
        run ends with exactly the parameters of an uninterrupted one.
    progress : bool, optional
        Show a progress bar; by default only when stderr is a terminal.
    on_epoch : callable, optional
        Called with the history so far after every epoch (the CLI writes ``history.csv``).
    run_info : dict, optional
        Plain values (JSON-able) stored in every checkpoint under ``run``: ``ppvae train``
        records its whole run config and data sizes, which ``load_run`` and ``--resume``
        check the run folder against.
    aux : list of (model, guide, weight)
        Auxiliary pairs trained in the same step, with the same optimizer, on the rows that
        have every argument observed, each ELBO scaled to those rows' number and weighted
        (Pyro's ss-vae ``model_classify``/``guide_classify``; their parameters are in the
        checkpoint's param store and optimizer). ``train_objective`` then includes them, and
        ``train_elbo`` is the main pair's ELBO of the epoch's last batch.
    callbacks : list of Callback, optional
        Told of the start (with ``config`` and ``run_info``), each epoch's history row, each
        checkpoint and the end (:mod:`ppvae.infer.callbacks`), on rank 0 alone; one that
        raises is a warning line and is not called again. What they keep under
        ``run_info["trackers"]`` goes into every checkpoint and comes back on resume.

    Returns
    -------
    FitResult

    Raises
    ------
    TrainingError
        When the loss becomes NaN or infinite; the message names the epoch and step, and the
        checkpoint of the last good epoch is left as it was.
    ModelGuideError
        When the model and guide do not pair up (see :func:`ppvae.pairs.checker.check`).
    DataError
        When the data has Inf, NaN (unless the model has ``accepts_missing``; then a row
        with nothing observed), the wrong rank, or values outside [0, 1] for a Bernoulli-type
        likelihood.
    ConfigError
        When ``checkpoint`` is a folder, or in a folder that does not exist.
    OutputError
        When another process is writing ``checkpoint`` (another ``fit`` or ``ppvae train``).

    Notes
    -----
    Under ``torch.distributed``, an exception that one rank meets alone (a step that fails on
    its batch, an error in ``on_epoch``, its own Ctrl-C) is raised on that rank as usual, and
    its process lives on; the other ranks would wait for it in their next collective until the
    backend's timeout (30 minutes for gloo), and no call from Python can free them. So every
    rank watches the process group's store while it is in ``fit``: within about 3 seconds each
    other rank prints ``ppvae: error: [rank r] stopping: rank k failed: <its error>`` on stderr
    and **ends its process** with exit status 2, as torchrun ends a failed group's processes.
    Errors that every rank meets together (mismatched data, a non-finite loss) are raised on
    every rank and end no process (see :func:`ppvae.distributed.stopping_together`).
    """
    check_checkpoint_path(checkpoint)
    path = None if checkpoint is None else os.fspath(checkpoint)  # a Staging's path, shown
    with (
        distributed.stopping_together(),  # one rank's error ends the ranks waiting for it
        holding(checkpoint, f"the checkpoint {path}", CHECKPOINT_HINT),
    ):
        hooks = CallbackList.of(callbacks if distributed.is_main() else None)
        if hooks:  # (a copy: what the callbacks keep in it is the checkpoint's)
            run_info = dict(run_info or {})
        args = (checkpoint, resume, progress, on_epoch, run_info, aux, hooks)
        return _fit(model, guide, data, config, *args)


def _fit(
    model, guide, data, config, checkpoint, resume, progress, on_epoch, run_info, aux, hooks
) -> FitResult:
    distributed.warn_if_not_initialized()
    device = distributed.local_device(resolve_device(config.device))
    train, test, dynamic = _inputs(data, model)
    train, test = train.to(device), None if test is None else test.to(device)
    step = training_step(model, guide, train, config, dynamic=dynamic, aux=aux)
    if test is not None and step.subsampled is not None:
        what = "the test ELBO of every epoch"
        raise ModelGuideError(SUBSAMPLED.format(b=step.subsampled, plate=config.plate, what=what))
    _same_on_every_rank(test, "test data")
    n, b = train.shape[0], min(config.batch_size, train.shape[0])
    pyro.set_rng_seed(config.seed + distributed.ranks().rank)  # each rank its own draws
    status = Progress(rows=[])
    distributed.same_everywhere(bool(resume), "resume flag")
    if resume:
        if checkpoint is None or not os.path.exists(checkpoint):
            raise ConfigError(f"nothing to resume: no checkpoint at {checkpoint}")
        status = restore(checkpoint, model, guide, step, config, train, run_info, aux)
    hooks.start(TrainingStart(config, run_info, _history(status, step), bool(resume)))

    def save() -> bool:
        """Write the checkpoint (rank 0); gathering the ranks' random states is collective."""
        rank, world = distributed.ranks()
        if checkpoint is None and world == 1:
            return False
        snapshot = state(status, model, guide, step, config, run_info, aux)
        if checkpoint is not None and rank == 0:
            ckpt.save(checkpoint, snapshot)
            hooks.checkpoint(checkpoint)
        return checkpoint is not None

    steps = n // b
    shown = sys.stderr.isatty() if progress is None else progress
    burst = DeferredInterrupt.BURST if step.world > 1 else 0.0  # torchrun's signals are one
    with (
        DeferredInterrupt(burst).installed() as interrupt,
        tqdm(
            total=config.epochs * steps,
            initial=status.epoch * steps + status.step,
            disable=not shown,
            unit="step",
            dynamic_ncols=True,
        ) as bar,
    ):
        loop = Loop(
            step,
            model,
            guide,
            train,
            test,
            dynamic,
            config,
            status,
            save,
            interrupt,
            bar,
            _both(on_epoch, hooks.epoch if hooks else None),
        )
        loop.saved_epoch = status.epoch if resume else None
        loop.checkpointing = checkpoint is not None
        try:
            stopped = loop.run()
        except Exception as err:  # the trackers mark their run failed; fit still raises
            hooks.failed(err)
            raise
    ran = dataclasses.replace(config, jit=step.jit)  # the mode that ran, auto resolved
    result = FitResult(_history(status, step), model, guide, ran, interrupted=stopped)
    hooks.end(result)
    return result


def _history(status: Progress, step) -> pd.DataFrame:
    return pd.DataFrame(status.rows, columns=history_columns(step))


def _both(first, then):
    """``on_epoch`` and the callbacks' epoch hook, as one (None when neither is given)."""
    if first is None or then is None:
        return first or then
    return lambda history: (first(history), then(history))
