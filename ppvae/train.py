"""Training: stochastic variational inference on minibatches, with checkpoints and resume.

``fit(model, guide, data, config)`` runs SVI with Adam and returns a :class:`FitResult`. Batches
are index tensors into data already on the training device; there is no DataLoader.
"""

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import pandas as pd
import pyro
import pyro.optim
import torch
from pyro.infer import SVI
from tqdm.auto import tqdm

from ppvae import checkpoint as ckpt
from ppvae.checker import check
from ppvae.config import ConfigError, JsonConfig
from ppvae.data import Dataset, binarize_sample, validate_data
from ppvae.evaluate import elbo_terms
from ppvae.objectives import OBJECTIVES, LatentScale
from ppvae.pairs import DEFAULT_PLATE, Structure, batched, place, probe

HISTORY_COLUMNS = [
    "epoch",
    "train_elbo",
    "test_elbo",
    "test_reconstruction",
    "test_kl",
    "beta",
    "seconds",
]


@dataclass(frozen=True, kw_only=True)
class FitConfig(JsonConfig):
    """How to train.

    Attributes
    ----------
    epochs, batch_size, lr : int, int, float
        Passes over the data, minibatch size (the last partial batch of each shuffled epoch
        is dropped, so every step has the same shape), Adam's learning rate.
    objective : str
        A key of :data:`ppvae.objectives.OBJECTIVES`.
    num_particles : int
        Samples of z per example per step (K of the IWAE bound).
    jit : bool
        Use the compiled (``Jit*``) variant of the objective.
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
        if self.objective not in OBJECTIVES:
            choices = ", ".join(OBJECTIVES)
            raise ConfigError(f"unknown objective '{self.objective}'; choose one of: {choices}")
        for name in ("epochs", "batch_size", "num_particles", "test_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.beta < 0 or self.kl_warmup_epochs < 0:
            raise ConfigError("beta and kl_warmup_epochs must be >= 0")
        if self.jit and self.kl_warmup_epochs:
            raise ConfigError("a compiled objective bakes in the KL weight: drop --jit to warm up")
        if self.jit and OBJECTIVES[self.objective].jit_elbo is None:
            raise ConfigError(f"objective '{self.objective}' has no JIT variant; drop --jit")
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


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message names the epoch and step."""


def resolve_device(name: str, *, check_available: bool = True) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; ``cpu``; ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device '{name}'; choose one of: auto, cpu, cuda, cuda:N")
    try:
        device = torch.device(name)
    except RuntimeError:
        msg = f"unknown device '{name}'; choose one of: auto, cpu, cuda, cuda:N"
        raise ConfigError(msg) from None
    if check_available and device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available; use --device cpu")
    return device


@dataclass
class _Progress:
    """Where training stands; all of it goes into the checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed in the current epoch
    loss_sum: float = 0.0  # sum of the current epoch's step losses
    seconds: float = 0.0  # time spent in the current epoch before an interruption
    rows: list[dict[str, float]] | None = None


class _DeferredInterrupt:
    """Ctrl-C sets a flag that the loop reads between steps, so a checkpoint is never taken
    in the middle of an optimizer update. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self):
        try:
            previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def _inputs(data: Dataset | torch.Tensor, model):
    """(train, test or None, dynamic), validated where they are, before anything moves."""
    train, test, dynamic = (
        (data.train, data.test, data.dynamic) if isinstance(data, Dataset) else (data, None, False)
    )
    unit = getattr(model, "requires_unit_interval", False)
    validate_data(train, unit_interval=unit, what="training data")
    if test is not None:
        validate_data(test, unit_interval=unit, what="test data")
    return train, test, dynamic


def _svi(calls, optim, config: FitConfig, structure: Structure) -> tuple[SVI, LatentScale]:
    objective = OBJECTIVES[config.objective]
    scale = LatentScale(config.beta)
    nesting = max(1, structure.max_plate_nesting)
    elbo = objective.build(config.num_particles, config.jit, max_plate_nesting=nesting)
    model, guide = calls
    return SVI(scale(model), scale(objective.wrap_guide(guide)), optim, loss=elbo), scale


def _epoch_batches(train: torch.Tensor, dynamic: bool, config: FitConfig, epoch: int):
    """The epoch's (possibly re-binarized) data and its shuffled batches of indices.

    Both depend only on (seed, epoch), so a resumed run sees the same batches.
    """
    g = torch.Generator(device=train.device).manual_seed(config.seed * 1_000_003 + epoch)
    x = binarize_sample(train, g) if dynamic else train
    n = train.shape[0]
    b = min(config.batch_size, n)
    perm = torch.randperm(n, generator=g, device=train.device)
    return x, perm[: n // b * b].view(n // b, b)


def _kl_weight(config: FitConfig, epoch: int, step: int, steps: int) -> float:
    if not config.kl_warmup_epochs:
        return config.beta
    done = (epoch * steps + step + 1) / (config.kl_warmup_epochs * steps)
    return config.beta * min(1.0, done)


def _state(progress: _Progress, model, guide, optim, config: FitConfig) -> dict[str, Any]:
    return {
        "progress": vars(progress),
        "config": config.to_dict(),
        "model": model.state_dict() if isinstance(model, torch.nn.Module) else None,
        "guide": guide.state_dict() if isinstance(guide, torch.nn.Module) else None,
        "params": pyro.get_param_store().get_state(),
        "optim": optim.get_state(),
        "rng": ckpt.rng_state(),
    }


def _check_compatible(saved: dict[str, Any], config: FitConfig, path) -> None:
    current = config.to_dict()
    differ = sorted(k for k, v in saved.items() if k != "epochs" and current.get(k) != v)
    if differ:
        raise ConfigError(f"{path} was written with different settings: {', '.join(differ)}")


def _restore(path, model, guide, optim, config, like: torch.Tensor) -> _Progress:
    """Put a checkpoint back: module buffers by ``load_state_dict``, every parameter by copying
    into the tensor the param store already holds (so the networks registered with
    ``pyro.module`` or as ``PyroModule`` train the restored values), on ``like``'s device."""
    saved = ckpt.load(path)
    _check_compatible(saved["config"], config, path)
    for obj, key in ((model, "model"), (guide, "guide")):
        if isinstance(obj, torch.nn.Module) and saved.get(key) is not None:
            obj.load_state_dict(saved[key])
    ckpt.restore_params(saved["params"], like)
    optim.set_state(saved["optim"])
    ckpt.set_rng_state(saved["rng"])
    return _Progress(**saved["progress"])


def _test_row(model, guide, test, config) -> dict[str, float]:
    if test is None or not getattr(guide, "amortized", True):
        return {"test_elbo": math.nan, "test_reconstruction": math.nan, "test_kl": math.nan}
    terms = elbo_terms(model, guide, test, num_samples=config.test_samples, plate=config.plate)
    return {
        "test_elbo": terms.elbo.mean().item(),
        "test_reconstruction": terms.reconstruction.mean().item(),
        "test_kl": terms.kl.mean().item(),
    }


@dataclass
class _Loop:
    """Everything the training loop touches, so that its pieces stay small."""

    svi: SVI
    scale: LatentScale
    model: Any
    guide: Any
    train: torch.Tensor
    test: torch.Tensor | None
    dynamic: bool
    config: FitConfig
    progress: _Progress
    save: Callable[[], None]
    interrupt: _DeferredInterrupt
    bar: Any
    on_epoch: Callable[[pd.DataFrame], None] | None

    def run(self) -> bool:
        """Train the remaining epochs; True when stopped by Ctrl-C."""
        for epoch in range(self.progress.epoch, self.config.epochs):
            if self._epoch(epoch) or self.interrupt.requested:
                return True
        return False

    def _epoch(self, epoch: int) -> bool:
        p, n = self.progress, self.train.shape[0]
        x, batches = _epoch_batches(self.train, self.dynamic, self.config, epoch)
        start = time.perf_counter() - p.seconds
        for step in range(p.step, len(batches)):
            self.scale.value = _kl_weight(self.config, epoch, step, len(batches))
            loss = self.svi.step(x[batches[step]], batches[step], num_data=n)
            if not math.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}; "
                    "the last good checkpoint is kept; try a smaller learning rate"
                )
            p.loss_sum, p.step = p.loss_sum + loss, step + 1
            self.bar.update()
            if self.interrupt.requested:
                p.seconds = time.perf_counter() - start
                self.save()
                return True
        row = {"epoch": epoch + 1, "train_elbo": -p.loss_sum / (len(batches) * n)}
        row |= _test_row(self.model, self.guide, self.test, self.config)
        row |= {"beta": self.scale.value, "seconds": time.perf_counter() - start}
        self._finish_epoch(row)
        return False

    def _finish_epoch(self, row: dict[str, float]) -> None:
        p = self.progress
        p.rows.append(row)
        p.epoch, p.step, p.loss_sum, p.seconds = row["epoch"], 0, 0.0, 0.0
        self.save()
        self.bar.set_postfix(epoch=row["epoch"], test_elbo=f"{row['test_elbo']:.2f}")
        if self.on_epoch is not None:
            self.on_epoch(pd.DataFrame(p.rows, columns=HISTORY_COLUMNS))


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
        Written atomically after every epoch and on Ctrl-C.
    resume : bool
        Continue from ``checkpoint``. On the CPU with the same seed, an interrupted and resumed
        run ends with exactly the parameters of an uninterrupted one.
    progress : bool, optional
        Show a progress bar; by default only when stderr is a terminal.
    on_epoch : callable, optional
        Called with the history so far after every epoch (the CLI writes ``history.csv``).

    Returns
    -------
    FitResult

    Raises
    ------
    TrainingError
        When the loss becomes NaN or infinite; the message names the epoch and step, and the
        checkpoint of the last good epoch is left as it was.
    ModelGuideError
        When the model and guide do not pair up (see :func:`ppvae.checker.check`).
    DataError
        When the data has NaN/Inf, the wrong rank, or values outside [0, 1] for a
        Bernoulli-type likelihood.
    """
    device = resolve_device(config.device)
    train, test, dynamic = _inputs(data, model)
    calls = batched(model, config.plate), batched(guide, config.plate)
    place(model, guide, train, device, config.plate)
    train, test = train.to(device), None if test is None else test.to(device)
    n, b = train.shape[0], min(config.batch_size, train.shape[0])
    batch = (train[:b], torch.arange(b, device=device))
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
    pyro.set_rng_seed(config.seed)
    optim = pyro.optim.Adam({"lr": config.lr})
    state = _Progress(rows=[])
    if resume:
        if checkpoint is None or not os.path.exists(checkpoint):
            raise ConfigError(f"nothing to resume: no checkpoint at {checkpoint}")
        state = _restore(checkpoint, model, guide, optim, config, train)
    svi, scale = _svi(calls, optim, config, structure)

    def save():
        if checkpoint is not None:
            ckpt.save(checkpoint, _state(state, model, guide, optim, config))

    steps = n // b
    shown = sys.stderr.isatty() if progress is None else progress
    with (
        _DeferredInterrupt().installed() as interrupt,
        tqdm(
            total=config.epochs * steps,
            initial=state.epoch * steps + state.step,
            disable=not shown,
            unit="step",
            dynamic_ncols=True,
        ) as bar,
    ):
        loop = _Loop(
            svi,
            scale,
            model,
            guide,
            train,
            test,
            dynamic,
            config,
            state,
            save,
            interrupt,
            bar,
            on_epoch,
        )
        stopped = loop.run()
    history = pd.DataFrame(state.rows, columns=HISTORY_COLUMNS)
    return FitResult(history, model, guide, config, interrupted=stopped)
