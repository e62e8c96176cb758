"""What :func:`~ppvae.infer.fitting.fit` is told and what it returns: :class:`FitConfig`,
:class:`FitResult` and the training device."""

from dataclasses import dataclass
from typing import Any, NamedTuple

import pandas as pd
import torch

from ppvae.config import ConfigError, JsonConfig
from ppvae.errors import shown
from ppvae.pairs import (
    DEFAULT_PLATE,
)
from ppvae.pairs.objectives import OBJECTIVES


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
    jit : bool or None
        Compile the training loss with ``torch.jit.trace`` (through ``pyro.ops.jit``): the
        Python work of Pyro's traces is done once, and each step replays the recorded
        operations (11-15% less CPU time a step for a 784-400-50 VAE at batch 128, none at
        1024: ``benchmarks/results/step_time_cpu.md``; the same loss and gradients as eager to
        float32 rounding; its first call traces, 0.1-0.8 s). None (the default) is auto:
        jit when ``epochs * (N // batch_size)`` reaches
        ``ppvae.infer.step.JIT_BREAK_EVEN_STEPS`` (500) and model and guide declare
        ``static_structure = True`` (the catalogue's VAEs and amortized guides), on plain
        tensor data, on the CPU, one process, else eager;
        decided once per ``fit`` (:func:`~ppvae.infer.step.resolves_to_jit`), and
        ``FitResult.config.jit`` says which ran. True forces it (a trace records one path, so
        a pair whose structure depends on the data replays the wrong one without an error),
        False forces eager. Only the objectives whose loss ppvae builds itself compile (trace,
        mean-field, iwae, score), without a KL warm-up (the weight would be compiled in).
        (Measured and not offered: ``torch.compile`` of the whole step, oneDNN's matmul and
        transposed weights, none faster than eager here.)
    beta : float
        Weight of the KL term (beta-VAE; 1 is the ELBO).
    kl_warmup_epochs : int
        Raise the KL weight linearly from 0 to ``beta`` over this many epochs (0: no warm-up).
    test_samples : int
        Monte Carlo samples per example for the test ELBO reported each epoch. A guide with no
        encoder (``amortized = False``, such as ``GUIDES["local"]``) has no parameters for
        the test rows: each epoch its ``refined(model, x)`` fits them first, with the model
        fixed (:meth:`~ppvae.guides.local.LocalGuide.refined`: ``refine_steps`` Adam steps,
        100 by default, from ``seed``); one without ``refined`` reports NaN, with a warning.
    seed : int
        What ``fit`` draws itself: when it starts (after the pair is checked), it seeds
        Pyro's, torch's, NumPy's and Python's generators with ``seed + rank`` (the draws of
        z in training); the per-epoch shuffles and dynamic binarization come from
        ``(seed, epoch)``, and the test scores of a non-amortized guide from ``seed``. It does
        not reach the networks' initial weights, drawn when the model and guide were built:
        call :func:`ppvae.seed` before building them for a bit-identical run.
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    plate : str
        The name of the model's plate over the examples. A plate sized by the batch
        (``pyro.plate("data", x.shape[0])``, as in Pyro's tutorials) is scaled to the data set.

    Notes
    -----
    On the CPU, threads are torch's own (``torch.set_num_threads``, one per core by default);
    on a machine other processes load, fewer threads are faster, and ``import ppvae`` before
    torch makes idle OpenMP threads sleep instead of spin (:mod:`ppvae.threads`), without
    which two threads on a loaded two-core machine ran 16x slower.

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
    jit: bool | None = None
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
        The config as run: ``jit`` is True or False, auto resolved.
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
