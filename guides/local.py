"""Per-datapoint (non-amortized) guides, and refinement of an amortized guide's output."""

import contextlib
from typing import NamedTuple

import pandas as pd
import pyro
import torch
from pyro.infer import TraceMeanField_ELBO
from pyro.nn import PyroModule
from torch import nn

from ppvae.evaluate import elbo_terms
from ppvae.models.sites import LATENT, data_plate


class LocalGuide(PyroModule):
    """q(z_n) = head(h_n) with free parameters h_n for every training example n.

    Parameters
    ----------
    head : nn.Module
        Raw parameters to a distribution over z (for example
        :class:`~ppvae.guides.amortized.DiagonalNormalHead`); it has a ``param_dim``.
    num_data : int
        N, the number of examples with their own parameters.
    init : Tensor, shape (N, head.param_dim), optional
        Starting parameters, for example an amortized encoder's output (see :func:`refine`).
        Defaults to zeros.

    Notes
    -----
    .. math::

        q(z_n; \\psi_n) = \\mathrm{head}(\\psi_n), \\qquad n = 1, \\dots, N,

    indexed by the data plate's subsample, so a minibatch updates only its own rows' gradient.
    Nothing is shared between examples: the best ELBO per example, with no amortization gap,
    at the price of N * P parameters and no way to encode a new x without optimizing.

    Examples
    --------
    >>> from ppvae.guides.amortized import DiagonalNormalHead
    >>> guide = LocalGuide(DiagonalNormalHead(2), num_data=100)
    >>> guide(torch.zeros(8, 64), idx=torch.arange(8), num_data=100).shape
    torch.Size([8, 2])
    """

    amortized = False
    """No encoder: it cannot score examples it was not fitted to (see :func:`refine`)."""

    def __init__(
        self,
        head: nn.Module,
        num_data: int,
        *,
        init: torch.Tensor | None = None,
        name: str = "guide",
    ):
        super().__init__(name)
        self.head = head
        if init is None:
            init = torch.zeros(num_data, head.param_dim)
        if init.shape != (num_data, head.param_dim):
            raise ValueError(
                f"init must have shape {(num_data, head.param_dim)}, got {init.shape}"
            )
        self.local = nn.Parameter(init.detach().clone())

    def forward(
        self, x: torch.Tensor, idx: torch.Tensor | None = None, num_data: int | None = None
    ) -> torch.Tensor:
        if idx is None and x.shape[0] != self.local.shape[0]:
            raise ValueError(
                f"a per-datapoint guide with {self.local.shape[0]} rows got {x.shape[0]} "
                "examples and no idx: pass idx, the examples' row numbers"
            )
        with data_plate(x, idx, num_data) as ind:
            return pyro.sample(LATENT, self.head(self.local[ind]))


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Switch off gradients of every parameter of ``modules`` inside the block."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class Refinement(NamedTuple):
    """What :func:`refine` returns.

    Attributes
    ----------
    guide : LocalGuide
        Per-datapoint parameters for the rows of ``x``, the best ones found for each row.
    amortized_elbo, refined_elbo : Tensor, shape (N,)
        Per-example ELBO (nats) of the encoder's output and of ``guide``, from the same
        evaluation with common random numbers, so ``refined_elbo >= amortized_elbo`` row by row.
    """

    guide: LocalGuide
    amortized_elbo: torch.Tensor
    refined_elbo: torch.Tensor


def _raw_params(guide, x: torch.Tensor) -> torch.Tensor:
    """The encoder's raw head parameters h = net(x), shape (N, head.param_dim)."""
    if not (hasattr(guide, "net") and hasattr(guide, "head")):
        raise ValueError(
            f"refine needs an amortized guide with a net and a head, got {type(guide).__name__}"
        )
    with torch.no_grad():
        return guide.net(x).detach()


def _crn_elbo(model, guide, x: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """Per-example ELBO with the random numbers fixed by ``seed`` (common random numbers)."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        idx = torch.arange(x.shape[0], device=x.device)
        return elbo_terms(model, guide, x, idx=idx, num_samples=num_samples).elbo


def _step(loss_fn, model, local: LocalGuide, x: torch.Tensor, optim) -> None:
    """One Adam step on the local parameters only (autograd.grad leaves the model's and the
    encoder's ``.grad`` untouched, so nothing else moves or accumulates)."""
    with pyro.get_param_store().scope():
        loss = loss_fn.differentiable_loss(model, local, x)
    (local.local.grad,) = torch.autograd.grad(loss, [local.local])
    optim.step()


def refine(
    model,
    guide,
    x: torch.Tensor,
    *,
    steps: int,
    lr: float = 1e-2,
    num_particles: int = 1,
    eval_samples: int = 100,
    eval_every: int | None = None,
    seed: int = 0,
) -> Refinement:
    """Optimize per-datapoint variational parameters for ``x``, starting from the encoder.

    The model and the guide's head (the flow's transforms, say) stay fixed; only the raw
    head parameters h_n (mean, scale, and for a flow head its context) of each row move, by
    Adam on the ELBO (``TraceMeanField_ELBO``: the analytic KL where it exists).

    Parameters
    ----------
    model : callable
        The trained model, ``model(x, idx=None, num_data=None)``.
    guide : AmortizedGuide
        Its encoder output ``guide.net(x)`` is the starting point.
    x : Tensor, shape (N, D)
        Held-out examples.
    steps : int
        Optimizer steps; each uses the whole of ``x``.
    lr, num_particles : float, int
        Adam's learning rate; samples of z per example per step.
    eval_samples : int
        Samples of z per example in each checkpoint evaluation.
    eval_every : int, optional
        Steps between checkpoint evaluations (default: ``max(1, steps // 10)``).
    seed : int
        Fixes the common random numbers of every checkpoint evaluation.

    Returns
    -------
    Refinement

    Notes
    -----
    Refinement never lowers the ELBO: every ``eval_every`` steps each row's ELBO is evaluated
    with the same ``eval_samples`` base draws (common random numbers, seeded by ``seed``), and
    each row keeps the parameters with the highest value so far, starting from the encoder's.
    The reported ELBOs are these evaluations; being a maximum over checkpoints, the refined one
    is optimistic by at most the Monte Carlo noise of one evaluation, which ``eval_samples``
    shrinks (and the analytic KL removes from the KL term).
    """
    init = _raw_params(guide, x)
    local = LocalGuide(guide.head, x.shape[0], init=init).to(device=x.device, dtype=x.dtype)
    best = init.clone()
    amortized = best_elbo = _crn_elbo(model, local, x, eval_samples, seed)
    every = eval_every or max(1, steps // 10)
    optim = torch.optim.Adam([local.local], lr=lr)
    loss_fn = TraceMeanField_ELBO(
        num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
    )
    for step in range(1, steps + 1):
        _step(loss_fn, model, local, x, optim)
        if step % every == 0 or step == steps:
            best, best_elbo = _keep_best(model, local, x, best, best_elbo, eval_samples, seed)
    local.local.data.copy_(best)
    return Refinement(local, amortized, best_elbo)


def _keep_best(model, local, x, best, best_elbo, eval_samples: int, seed: int):
    elbo = _crn_elbo(model, local, x, eval_samples, seed)
    better = elbo > best_elbo
    best = torch.where(better[:, None], local.local.detach(), best)
    return best, torch.where(better, elbo, best_elbo)


def amortization_gap(model, guide, x: torch.Tensor, *, steps: int, **options) -> pd.DataFrame:
    """The amortization gap on ``x``: refined ELBO minus amortized ELBO, per example mean.

    Parameters
    ----------
    model, guide, x, steps
        As in :func:`refine`.
    **options
        Passed to :func:`refine` (``lr``, ``num_particles``, ``eval_samples``, ...).

    Returns
    -------
    DataFrame
        One row: ``amortized_elbo``, ``refined_elbo``, ``gap`` and ``gap_stderr`` (spread of
        the per-example gaps over examples / sqrt(N)), in nats per example, with
        ``num_examples`` and ``steps``.

    Notes
    -----
    The reported ELBOs are not the ones :func:`refine` selected its checkpoints on (their
    maximum is biased upwards): both guides are re-evaluated on fresh draws, shared between
    the two (common random numbers), so the gap is unbiased and its noise small.
    """
    result = refine(model, guide, x, steps=steps, **options)
    amortized, refined = _fresh_elbos(model, guide, x, result.guide, options)
    gap = refined - amortized
    n = x.shape[0]
    row = {
        "amortized_elbo": amortized.mean().item(),
        "refined_elbo": refined.mean().item(),
        "gap": gap.mean().item(),
        "gap_stderr": (gap.std() / n**0.5).item() if n > 1 else float("nan"),
        "num_examples": n,
        "steps": steps,
    }
    return pd.DataFrame([row])


def _fresh_elbos(model, guide, x: torch.Tensor, refined: LocalGuide, options: dict):
    """Per-example ELBO of the encoder's output and of ``refined`` on draws that played no
    part in the refinement (seed + 1), common to both."""
    seed, samples = options.get("seed", 0) + 1, options.get("eval_samples", 100)
    start = LocalGuide(guide.head, x.shape[0], init=_raw_params(guide, x))
    start = start.to(device=x.device, dtype=x.dtype)
    return _crn_elbo(model, start, x, samples, seed), _crn_elbo(model, refined, x, samples, seed)
