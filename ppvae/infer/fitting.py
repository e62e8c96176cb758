"""Training: stochastic variational inference on minibatches, with checkpoints and resume.

``fit(model, guide, data, config)`` runs SVI with Adam and returns a :class:`FitResult`. Batches
are index tensors into data already on the training device; there is no DataLoader.
"""

import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pyro
import torch
from tqdm.auto import tqdm

from ppvae import distributed
from ppvae.config import ConfigError, JsonConfig
from ppvae.data import Dataset, validate_data
from ppvae.errors import OutputError, shown
from ppvae.infer import checkpoint as ckpt
from ppvae.infer.loop import (
    HISTORY_COLUMNS,
    Step,
    TrainingError,
    _DeferredInterrupt,
    _Loop,
    _Progress,
    epoch_batches,
)
from ppvae.infer.resume import restore, state
from ppvae.outputs import OutputLock
from ppvae.pairs import (
    DEFAULT_PLATE,
    batched,
    data_frame,
    param_tensors,
    place,
    probe,
    run_pair,
    sample_sites,
)
from ppvae.pairs.checker import check
from ppvae.pairs.objectives import OBJECTIVES

__all__ = [
    "HISTORY_COLUMNS",
    "FitConfig",
    "FitResult",
    "TrainingError",
    "fit",
    "resolve_device",
    "training_step",
]


@dataclass(frozen=True, kw_only=True)
class FitConfig(JsonConfig):
    """How to train.

    Attributes
    ----------
    epochs, batch_size, lr : int, int, float
        Passes over the data, minibatch size (the last partial batch of each shuffled epoch
        is dropped, so every step has the same shape; under ``torch.distributed`` it is the
        global batch, ``batch_size / world`` rows per rank), Adam's learning rate.
    objective : str
        A key of :data:`ppvae.pairs.objectives.OBJECTIVES`.
    num_particles : int
        Samples of z per example per step (K of the IWAE bound).
    jit : bool
        Compile the training loss with ``torch.jit.trace`` (through ``pyro.ops.jit``): the
        Python work of Pyro's traces is done once, and each step replays the recorded
        operations. Faster than eager on the CPU (``benchmarks/step_time.py``); for the
        objectives whose loss ppvae builds itself (trace, mean-field, iwae, score), without a
        KL warm-up (the weight would be compiled in), on models of static structure.
    beta : float
        Weight of the KL term (beta-VAE; 1 is the ELBO).
    kl_warmup_epochs : int
        Raise the KL weight linearly from 0 to ``beta`` over this many epochs (0: no warm-up).
    test_samples : int
        Monte Carlo samples per example for the test ELBO reported each epoch.
    seed : int
        Seeds Pyro, torch, NumPy and Python, and the per-epoch shuffles.
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    plate : str
        The name of the model's plate over the examples. A plate sized by the batch
        (``pyro.plate("data", x.shape[0])``, as in Pyro's tutorials) is scaled to the data set.

    Examples
    --------
    >>> FitConfig(epochs=2, objective="iwae", num_particles=5).objective
    'iwae'
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 3e-3
    objective: str = "trace"
    num_particles: int = 1
    jit: bool = False
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    test_samples: int = 1
    seed: int = 0
    device: str = "auto"
    plate: str = DEFAULT_PLATE

    def __post_init__(self):
        self.check_types()
        if self.objective not in OBJECTIVES:
            choices = ", ".join(OBJECTIVES)
            name = shown(self.objective)
            raise ConfigError(f"unknown objective {name}; choose one of: {choices}")
        for name in ("epochs", "batch_size", "num_particles", "test_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.beta < 0 or self.kl_warmup_epochs < 0:
            raise ConfigError("beta and kl_warmup_epochs must be >= 0")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.jit and OBJECTIVES[self.objective].lean is None:
            raise ConfigError(
                f"objective '{self.objective}' cannot be compiled (its estimator keeps Python "
                "state between steps); drop --jit"
            )
        if self.jit and self.kl_warmup_epochs:
            raise ConfigError("a compiled loss bakes in the KL weight: drop --jit to warm up")
        resolve_device(self.device, check_available=False)


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes
    ----------
    history : DataFrame
        One row per epoch, columns :data:`HISTORY_COLUMNS`; ELBOs are nats per example.
    model, guide
        The trained model and guide (on the training device).
    config : FitConfig
    interrupted : bool
        True when training stopped early on Ctrl-C (a checkpoint was saved to resume from).
    """

    history: pd.DataFrame
    model: Any
    guide: Any
    config: FitConfig
    interrupted: bool = False


def resolve_device(name: str, *, check_available: bool = True) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; ``cpu``; ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {shown(name)}; choose one of: auto, cpu, cuda, cuda:N")
    try:
        device = torch.device(name)
    except RuntimeError:
        msg = f"unknown device {shown(name)}; choose one of: auto, cpu, cuda, cuda:N"
        raise ConfigError(msg) from None
    if check_available and device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available; use --device cpu")
    return device


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


def _inputs(data: Dataset | torch.Tensor, model):
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
        summary = None if x is None else (tuple(x.shape), f"{x.double().nansum().item():.9g}")
        distributed.same_everywhere(summary, f"{what} (shape, sum)")


def training_step(
    model, guide, train: torch.Tensor, config: FitConfig, *, dynamic: bool = False
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
    train = train.to(device)
    _same_on_every_rank(train, "training data")
    x, batches = epoch_batches(train, dynamic, config, 0)
    batches = distributed.shard_batches(batches)  # this rank's share of each global batch
    batch = (x[batches[0]], batches[0])
    place(model, guide, batch[0], device, config.plate, idx=batch[1])
    n = train.shape[0]
    check(
        model,
        guide,
        batch[0],
        idx=batch[1],
        num_data=n,
        objective=config.objective,
        plate=config.plate,
    )
    structure = probe(*calls, *batch, plate=config.plate)
    traces = run_pair(*calls, *batch)
    _check_objective(config, structure, traces[1])
    nesting = max(1, structure.max_plate_nesting)
    tensors = param_tensors(*traces)
    step = Step(*calls, {k: v for k, v in tensors.items() if v.requires_grad}, config, nesting)
    # every rank starts from rank 0's values, the frozen ones and module buffers included
    distributed.broadcast_state(list(tensors.values()), (model, guide))
    return step


def fit(
    model,
    guide,
    data: Dataset | torch.Tensor,
    config: FitConfig = FitConfig(),
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[pd.DataFrame], None] | None = None,
    run_info: dict[str, Any] | None = None,
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
        is re-binarized every epoch) or a training tensor of shape (N, D).
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
    """
    _check_checkpoint_path(checkpoint)
    path = None if checkpoint is None else os.fspath(checkpoint)  # a Staging's path, shown
    with holding(checkpoint, f"the checkpoint {path}", CHECKPOINT_HINT):
        return _fit(model, guide, data, config, checkpoint, resume, progress, on_epoch, run_info)


CHECKPOINT_HINT = "wait for it to finish, or give this fit another checkpoint path"


def _check_checkpoint_path(checkpoint: str | os.PathLike | None) -> None:
    """Refuse, before any work, a checkpoint path no epoch could be saved to."""
    if checkpoint is None:
        return
    path = Path(os.fspath(checkpoint))
    if path.is_dir():
        raise ConfigError(
            f"checkpoint={checkpoint} is a folder: give a file path, such as "
            f"{path / 'checkpoint.pt'}"
        )
    if not path.absolute().parent.is_dir():
        raise ConfigError(f"checkpoint={checkpoint}: the folder {path.parent} does not exist")


@contextmanager
def holding(target: str | os.PathLike | None, what: str, hint: str = ""):
    """Hold ``target`` against other processes (:class:`~ppvae.outputs.OutputLock`) for the
    block: rank 0 (the one that writes) takes the lock, and under torch.distributed every rank
    learns whether it could, so all refuse together. ``None`` holds nothing."""
    lock = OutputLock(target, what, hint) if target is not None and distributed.is_main() else None
    refusal = None
    try:
        if lock is not None:
            lock.acquire()
    except OutputError as err:
        refusal = str(err)
    refusals = [r for r in distributed.gather_objects(refusal) if r]
    if refusals:
        if lock is not None:
            lock.release()
        raise OutputError(refusals[0], every_rank=True)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _fit(
    model, guide, data, config, checkpoint, resume, progress, on_epoch, run_info
) -> FitResult:
    distributed.warn_if_not_initialized()
    device = distributed.local_device(resolve_device(config.device))
    train, test, dynamic = _inputs(data, model)
    train, test = train.to(device), None if test is None else test.to(device)
    step = training_step(model, guide, train, config, dynamic=dynamic)
    _same_on_every_rank(test, "test data")
    n, b = train.shape[0], min(config.batch_size, train.shape[0])
    pyro.set_rng_seed(config.seed + distributed.ranks().rank)  # each rank its own draws
    status = _Progress(rows=[])
    distributed.same_everywhere(bool(resume), "resume flag")
    if resume:
        if checkpoint is None or not os.path.exists(checkpoint):
            raise ConfigError(f"nothing to resume: no checkpoint at {checkpoint}")
        status = restore(checkpoint, model, guide, step, config, train)

    def save() -> bool:
        """Write the checkpoint (rank 0); gathering the ranks' random states is collective."""
        rank, world = distributed.ranks()
        if checkpoint is None and world == 1:
            return False
        snapshot = state(status, model, guide, step, config, run_info)
        if checkpoint is not None and rank == 0:
            ckpt.save(checkpoint, snapshot)
        return checkpoint is not None

    steps = n // b
    shown = sys.stderr.isatty() if progress is None else progress
    burst = _DeferredInterrupt.BURST if step.world > 1 else 0.0  # torchrun's signals are one
    with (
        _DeferredInterrupt(burst).installed() as interrupt,
        tqdm(
            total=config.epochs * steps,
            initial=status.epoch * steps + status.step,
            disable=not shown,
            unit="step",
            dynamic_ncols=True,
        ) as bar,
    ):
        loop = _Loop(
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
            on_epoch,
        )
        loop.saved_epoch = status.epoch if resume else None
        loop.checkpointing = checkpoint is not None
        stopped = loop.run()
    history = pd.DataFrame(status.rows, columns=HISTORY_COLUMNS)
    return FitResult(history, model, guide, config, interrupted=stopped)
