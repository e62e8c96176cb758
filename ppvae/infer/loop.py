"""The training loop behind :func:`ppvae.infer.fitting.fit`: a lean optimizer step, epochs of index
batches, finite-loss checks every few steps, Ctrl-C, checkpoints and exact resume.

A step builds the objective's loss from Pyro's traces (:mod:`ppvae.pairs.losses`), backpropagates,
and steps one ``torch.optim.Adam`` over every parameter the pair registers in Pyro's param
store (fused on CUDA, ``foreach`` on the CPU). The step's loss stays on the device: the loop
reads the losses every :data:`CHECK_EVERY` steps and at the end of each epoch, and names the
epoch and step of the first one that is not finite.
"""

import contextlib
import math
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyro
import pyro.ops.jit
import torch

from ppvae import distributed
from ppvae.data import Rows, binarize_sample
from ppvae.errors import TrainingError, first_line  # TrainingError: also importable here
from ppvae.evaluation.bounds import elbo_terms
from ppvae.infer.groups import stratified_batches
from ppvae.infer.step import Step
from ppvae.pairs import aside

CHECK_EVERY = 50
"""Steps between looks at the losses (each look waits for the device)."""


HISTORY_COLUMNS = [
    "epoch",
    "train_elbo",
    "train_objective",
    "test_elbo",
    "test_reconstruction",
    "test_kl",
    "beta",
    "seconds",
]
"""The history's columns, per example in nats. ``train_objective`` is minus the mean training
loss over the epoch's steps (the objective as trained: KL weighted by beta, or the IWAE bound).
``train_elbo`` is the same number when the KL weight is 1 throughout; with ``beta`` != 1 or a KL
warm-up it is the ELBO (beta = 1) of the epoch's last batch, scored after the epoch's steps with
``test_samples`` samples per row (one forward pass, so a weighted run's history still says how
well it models the data)."""


def history_columns(step: Step) -> list[str]:
    """:data:`HISTORY_COLUMNS`, and with groups of rows a ``batch_rows_<group>`` column each."""
    layout = getattr(step, "layout", None)
    return HISTORY_COLUMNS + ([] if layout is None else list(layout.columns))


@dataclass
class Progress:
    """Where training stands; all of it goes into the checkpoint.

    Examples
    --------
    >>> Progress(rows=[])
    Progress(epoch=0, step=0, losses=None, seconds=0.0, rows=[])
    """

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed in the current epoch
    losses: list[float] | None = None  # the current epoch's step losses so far
    seconds: float = 0.0  # time spent in the current epoch before an interruption
    rows: list[dict[str, float]] | None = None


class DeferredInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM sets a flag that the loop reads between steps, so a
    checkpoint is never taken in the middle of an optimizer update. A second signal stops at
    once; under torch.distributed, only one that comes :data:`BURST` seconds after the first
    (torchrun passes a Ctrl-C on to its workers as SIGINT and SIGTERM together, on top of the
    terminal's own SIGINT, and gives them 30 seconds to finish).

    Examples
    --------
    >>> import os, signal
    >>> with DeferredInterrupt().installed() as interrupt:
    ...     os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: noted, not raised
    ...     interrupt.requested
    True
    """

    BURST = 1.0

    def __init__(self, burst: float = 0.0):
        self.requested = False
        self._first = 0.0
        self._burst = burst

    def _handler(self, signum, frame):
        if self.requested and time.monotonic() - self._first >= self._burst:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self._first = True, time.monotonic()

    @contextlib.contextmanager
    def installed(self):
        signals = (signal.SIGINT, signal.SIGTERM)
        try:
            previous = {s: signal.signal(s, self._handler) for s in signals}
        except ValueError:  # not the main thread: leave the signals alone
            yield self
            return
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def epoch_batches(train: torch.Tensor, dynamic: bool, config, epoch: int, layout=None):
    """The epoch's (possibly re-binarized) data and its shuffled batches of indices.

    Both depend only on (seed, epoch), so a resumed run sees the same batches. With a
    ``layout`` (data with unobserved arguments), the batches are stratified by group
    (:func:`ppvae.infer.groups.stratified_batches`).
    """
    g = torch.Generator(device=train.device).manual_seed(config.seed * 1_000_003 + epoch)
    x = _binarized(train, g) if dynamic else train
    n = train.shape[0]
    b = min(config.batch_size, n)
    if layout is not None:
        return x, stratified_batches(layout, n, b, g)
    perm = torch.randperm(n, generator=g, device=train.device)
    return x, perm[: n // b * b].view(n // b, b)


def _binarized(train, g: torch.Generator):
    """Dynamic binarization: of the data, or of the first tensor of several (the image)."""
    if isinstance(train, Rows):
        return train.with_first(binarize_sample(train.first, g))
    return binarize_sample(train, g)


def kl_weight(config, epoch: int, step: int, steps: int) -> float:
    if not config.kl_warmup_epochs:
        return config.beta
    done = (epoch * steps + step + 1) / (config.kl_warmup_epochs * steps)
    return config.beta * min(1.0, done)


def _mean_across_ranks(losses: torch.Tensor) -> torch.Tensor:
    """Each step's loss averaged over the ranks (their per-rank losses on one process)."""
    return distributed.sum_across(losses) / distributed.ranks().world


NO_TEST_ROW = {"test_elbo": math.nan, "test_reconstruction": math.nan, "test_kl": math.nan}


def _refined_terms(model, guide, test: torch.Tensor, config):
    """The test ELBO terms of a non-amortized guide (``amortized = False``), which has no
    parameters for the test rows: its ``refined(model, x, seed=, plate=)`` fits them (psi
    refined with the model fixed, :meth:`ppvae.guides.local.LocalGuide.refined`). Both the
    refinement and the score draw from ``config.seed``, aside from the training stream, so
    every epoch, rank and resumed run refines alike. Without ``refined``: None, and a warning.
    """
    if not hasattr(guide, "refined"):
        warnings.warn(
            f"test_elbo is NaN: the guide ({type(guide).__name__}) is not amortized and has no "
            "refined(model, x) method to fit parameters for the test rows",
            stacklevel=3,
        )
        return None
    idx = torch.arange(test.shape[0], device=test.device)
    with aside(test):
        torch.manual_seed(config.seed)
        refined = guide.refined(model, test, seed=config.seed, plate=config.plate)
        n = config.test_samples
        return elbo_terms(model, refined, test, idx=idx, num_samples=n, plate=config.plate)


def _test_row(model, guide, test, config) -> dict[str, float]:
    """The epoch's test ELBO and its terms; NaN without a test split."""
    if test is None:
        return dict(NO_TEST_ROW)
    if getattr(guide, "amortized", True):
        n = config.test_samples
        terms = elbo_terms(model, guide, test, num_samples=n, plate=config.plate)
    else:
        terms = _refined_terms(model, guide, test, config)
    if terms is None:
        return dict(NO_TEST_ROW)
    return {
        "test_elbo": terms.elbo.mean().item(),
        "test_reconstruction": terms.reconstruction.mean().item(),
        "test_kl": terms.kl.mean().item(),
    }


@dataclass
class Loop:
    """Everything the training loop touches, so that its pieces stay small.

    Examples
    --------
    >>> import dataclasses
    >>> [f.name for f in dataclasses.fields(Loop)][:4]
    ['step', 'model', 'guide', 'train']
    """

    step: Step
    model: Any
    guide: Any
    train: torch.Tensor
    test: torch.Tensor | None
    dynamic: bool
    config: Any
    progress: Progress
    save: Callable[[], bool]
    interrupt: DeferredInterrupt
    bar: Any
    on_epoch: Callable[[pd.DataFrame], None] | None
    saved_epoch: int | None = None  # the epoch whose checkpoint is on disk
    checkpointing: bool = True  # fit was given a checkpoint path

    def run(self) -> bool:
        """Train the remaining epochs; True when stopped by Ctrl-C. Pyro's validation is off
        (it reads values on the host at every site); the pair was checked before."""
        with pyro.validation_enabled(False):
            for epoch in range(self.progress.epoch, self.config.epochs):
                if self._epoch(epoch) or self._stop_requested():
                    return True
        return False

    def _stop_requested(self) -> bool:
        """Ctrl-C was pressed (on any rank: all ranks stop at the same step)."""
        return distributed.any_across(self.interrupt.requested, self.train.device)

    def _epoch(self, epoch: int) -> bool:
        p, n = self.progress, self.train.shape[0]
        layout = self.step.layout
        x, batches = epoch_batches(self.train, self.dynamic, self.config, epoch, layout)
        batches = distributed.shard_batches(batches)  # this rank's share of each batch
        losses = torch.zeros(len(batches), device=self.train.device, dtype=self.train.dtype)
        first, checked = p.step, p.step
        if first:  # resumed mid-epoch: the same sum, in the same order, as without the stop
            losses[:first] = torch.tensor(p.losses, dtype=losses.dtype)
        start = time.perf_counter() - p.seconds
        alone = self.step.world == 1
        for step in range(first, len(batches)):
            self.step.scale.value = kl_weight(self.config, epoch, step, len(batches))
            losses[step] = self._one(epoch, step, x, batches[step], n, losses, checked)
            self.bar.update()
            stop = alone and self.interrupt.requested  # one process: after any step
            if (step + 1) % CHECK_EVERY == 0:  # ranks agree on a stop when they look
                checked, stop_any = self._check(epoch, losses, checked, step + 1)
                stop = stop or stop_any
            if stop:
                self._check(epoch, losses, checked, step + 1)
                p.losses = _mean_across_ranks(losses[: step + 1]).tolist()
                p.step, p.seconds = step + 1, time.perf_counter() - start
                self.save()
                return True
        self._check(epoch, losses, checked, len(batches))  # (a stop is looked at after it)
        total = _mean_across_ranks(losses).sum().item()
        objective = -total / (len(batches) * n)
        row = {"epoch": epoch + 1, "train_elbo": objective, "train_objective": objective}
        if self.step.weighted:
            row["train_elbo"] = self._batch_elbo(x, batches[-1])
        with distributed.scoring_together():  # every rank scores its share of the test set
            row |= _test_row(self.model, self.guide, self.test, self.config)
        row |= {"beta": self.step.scale.value, "seconds": time.perf_counter() - start}
        row |= {} if layout is None else layout.columns  # rows of each group a step saw
        self._finish_epoch(row)
        return False

    def _batch_elbo(self, x: torch.Tensor, idx: torch.Tensor) -> float:
        """The ELBO (beta = 1) per example of the rows ``idx`` of ``x``, averaged across
        ranks (each scores its own share of the batch)."""
        terms = elbo_terms(
            self.model,
            self.guide,
            x[idx],
            idx=idx,
            num_samples=self.config.test_samples,
            plate=self.config.plate,
        )
        return _mean_across_ranks(terms.elbo.mean()[None]).item()

    def _one(self, epoch, step, x, idx, n, losses, checked) -> torch.Tensor:
        try:
            return self.step(x[idx], idx, n)
        except (ValueError, RuntimeError) as err:  # NaN parameters can break a distribution
            if distributed.ranks().world == 1:  # (the other ranks would wait for this one)
                self._check(epoch, losses, checked, step)
            where = self._where(epoch, step)
            raise TrainingError(f"training failed at {where}: {first_line(err)}") from err

    def _check(self, epoch: int, losses: torch.Tensor, start: int, end: int) -> tuple[int, bool]:
        """Raise TrainingError at the first non-finite loss of steps [start, end), and say
        whether Ctrl-C was pressed. Under torch.distributed one collective does both: the
        window and the flag are summed across ranks, so every rank raises (or stops) at the
        same step, and the loss named is the ranks' sum."""
        flag = torch.ones(1) if self.interrupt.requested else torch.zeros(1)
        window = torch.cat([losses[start:end], flag.to(losses)])
        window = distributed.sum_across(window)
        bad = ~torch.isfinite(window[:-1])
        if bad.any():
            step = start + int(bad.nonzero()[0])
            raise TrainingError(
                f"the loss became {window[step - start].item()} at {self._where(epoch, step)}: "
                "a step sent a parameter or a log-density to infinity (a learning rate too "
                "high for this model, or data a likelihood cannot score)",
                every_rank=True,
            )
        return end, bool(window[-1] > 0)

    def _where(self, epoch: int, step: int) -> str:
        where = f"epoch {epoch + 1}, step {step + 1}"
        if not self.checkpointing:
            return where
        if self.saved_epoch:
            return f"{where} (the checkpoint of epoch {self.saved_epoch} is kept)"
        return f"{where} (no checkpoint was written)"

    def _finish_epoch(self, row: dict[str, float]) -> None:
        p = self.progress
        p.rows.append(row)
        p.epoch, p.step, p.losses, p.seconds = row["epoch"], 0, None, 0.0
        if self.save():
            self.saved_epoch = p.epoch
        self.bar.set_postfix(epoch=row["epoch"], test_elbo=f"{row['test_elbo']:.2f}")
        if self.on_epoch is not None:
            self.on_epoch(pd.DataFrame(p.rows, columns=history_columns(self.step)))
