"""One optimizer step of :func:`~ppvae.infer.fitting.fit`: the objective's loss built from Pyro's
traces (:mod:`ppvae.pairs.losses`), backward, and one fused Adam over every parameter, with no
host synchronization; optionally the loss compiled once with ``torch.jit.trace``."""

import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.ops.jit
import torch
from pyro.infer.util import is_validation_enabled

from ppvae import distributed
from ppvae.config import ConfigError
from ppvae.pairs.objectives import OBJECTIVES, LatentScale


def _compiled(loss: Callable) -> Callable:
    """``loss(x, idx, num_data)`` traced once by ``torch.jit.trace`` (``pyro.ops.jit``, which
    passes the param store's tensors in as inputs), then replayed: random draws stay random.

    Tracing runs the loss twice more, on a forked random state: every call, the first too,
    draws from the generator what one eager call would, so a resumed run (which compiles
    mid-stream) draws what the uninterrupted one did."""
    compiled = pyro.ops.jit.trace(
        lambda x, idx, num_data=None: loss(x, idx, num_data), ignore_warnings=True
    )
    traced = set()

    def call(x, idx, num_data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit's deprecation
            if num_data not in traced:  # pyro.ops.jit traces anew for each num_data
                with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
                    compiled(x, idx, num_data=num_data)
                traced.add(num_data)
            return compiled(x, idx, num_data=num_data)

    return call


JIT_BREAK_EVEN_STEPS = 500
"""The fewest expected steps (``epochs * (N // batch_size)``) at which ``FitConfig(jit=None)``
compiles the loss. Measured for a 784-400-50 VAE at batch 128 on one CPU thread
(``benchmarks/results/step_time_cpu.md``): the trace costs 0.1-0.8 s once and saves 1.3-2.2 ms
of CPU a step, so it pays back after 65-380 steps, by run and load; 500 is above all of them."""


def resolves_to_jit(config, model, guide, rows: int, *, plain: bool) -> bool:
    """What ``config.jit`` means for this run: True or False as given; None (auto) is True
    when the run is long enough to pay the trace back (``JIT_BREAK_EVEN_STEPS`` expected
    steps over ``config.epochs`` in all, so a resume decides as the first start did), the model
    and guide declare ``static_structure = True`` (the catalogue's VAEs and amortized guides:
    a trace records one path, and a pair whose path depends on the data would replay the wrong
    one), the objective compiles, there is no KL warm-up, and ``plain``: one tensor with every
    argument observed, no auxiliary pairs, one process, on the CPU (the break-even was measured
    there; under torch.distributed and on CUDA auto stays eager, untested there)."""
    if config.jit is not None:
        return config.jit
    steps = config.epochs * (rows // max(1, min(config.batch_size, rows)))
    return bool(
        plain
        and steps >= JIT_BREAK_EVEN_STEPS
        and all(getattr(f, "static_structure", False) is True for f in (model, guide))
        and OBJECTIVES[config.objective].lean is not None
        and not config.kl_warmup_epochs
    )


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """One Adam over all parameters, with torch's fused kernel where the parameters allow it
    (CPU and CUDA floating point, torch >= 2.4: 2.5x faster than the per-tensor loop on the
    CPU for a 784-400-50 VAE), else the multi-tensor ``foreach`` one."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or an unsupported dtype
        return torch.optim.Adam(params, lr=lr, foreach=True)


class Step:
    """One optimizer step of an objective on a minibatch, with no host synchronization.

    Parameters
    ----------
    model, guide
        Called ``(x, idx, num_data)`` (see :func:`ppvae.pairs.batched`).
    params : dict of str to Tensor
        The parameters to train, by param-store name (their order fixes the optimizer's).
    config : FitConfig
    max_plate_nesting : int

    Calling it with ``(x, idx, num_data)`` returns the step's loss, detached, on the device.
    ``scale.value`` is the KL weight of the next step.

    Examples
    --------
    >>> from ppvae import ArchConfig, DataShape, FitConfig
    >>> from ppvae.guides import GUIDES
    >>> from ppvae.models import MODELS
    >>> from ppvae.infer.fitting import training_step
    >>> shape = DataShape(x_dim=64, image_shape=None, num_data=100)
    >>> model = MODELS["bernoulli"](ArchConfig(hidden=(8,)), shape)
    >>> guide = GUIDES["diag"](ArchConfig(hidden=(8,)), shape, model)
    >>> x = torch.rand(100, 64)
    >>> step = training_step(model, guide, x, FitConfig(batch_size=10, device="cpu"))
    >>> loss = step(x[:10], torch.arange(10), 100)  # a tensor, still on the device
    >>> loss.shape, len(step.names)
    (torch.Size([]), 8)
    """

    def __init__(self, model, guide, params: dict[str, torch.Tensor], config, max_plate_nesting):
        self.scale = LatentScale(config.beta)
        if config.beta != 1.0 or config.kl_warmup_epochs:  # else it never changes a thing
            model, guide = self.scale(model), self.scale(guide)
        self.loss = OBJECTIVES[config.objective].loss_fn(
            model,
            guide,
            num_particles=config.num_particles,
            max_plate_nesting=max_plate_nesting,
            plate=config.plate,
        )
        if config.jit:
            self.loss = _compiled(self.loss)
        self.names = sorted(params)
        self.params = [params[n] for n in self.names]
        self.optim = _adam(self.params, config.lr)
        self.world = distributed.ranks().world
        self.weighted = config.beta != 1.0 or bool(config.kl_warmup_epochs)  # not the ELBO

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, num_data: int) -> torch.Tensor:
        if is_validation_enabled():  # validation checks values on the host
            with pyro.validation_enabled(False):
                loss = self.loss(x, idx, num_data)
        else:
            loss = self.loss(x, idx, num_data)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.params, self.world)  # a no-op on one process
        self.optim.step()
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state with the parameter names it belongs to, for a checkpoint."""
        return {"names": self.names, "state": self.optim.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s ``saved``; a checkpoint of other parameters raises
        :class:`~ppvae.config.ConfigError`."""
        if saved["names"] != self.names:
            raise ConfigError(
                "the checkpoint's optimizer was written for other parameters "
                f"({len(saved['names'])} names against {len(self.names)}): not this pair"
            )
        self.optim.load_state_dict(saved["state"])
