"""Refinement: per-datapoint variational parameters fitted from a guide's output, and the
amortization gap they measure. Works for any guide of local latent sites.

The refined guide keeps the guide's family at every local latent site and frees its
parameters row by row:

- a guide with an encoder ``net`` and a distribution ``head`` (ppvae's amortized guides, the
  flow included) frees the head's raw parameters h_n = net(x_n), so a flow keeps its
  transforms and frees its context;
- a per-datapoint guide (``amortized = False``, such as
  :class:`~ppvae.guides.local.LocalGuide`) has no parameters for new rows: it offers
  ``start(x)``, raw parameters for its ``head`` at its sample site ``site``, and those are
  freed (its own trained rows are left alone);
- any other guide (a Pyro-tutorial ``guide(x)``, say) frees the distribution's own parameters
  at each site (``loc`` and ``scale`` of a Normal, ``loc`` and ``scale_tril`` of a
  MultivariateNormal, ...), unconstrained through ``torch.distributions.transform_to``.
"""

from collections.abc import Callable
from typing import NamedTuple

import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, TraceMeanField_ELBO
from torch.distributions import transform_to

from ppvae.data import as_rows
from ppvae.evaluation.metrics import elbo_terms
from ppvae.pairs import DEFAULT_PLATE, aside, batched, data_frame, sample_sites
from ppvae.pairs.scoring import scored_pair

PARAMETERS = {
    dist.MultivariateNormal: ("loc", "scale_tril"),
    dist.LowRankMultivariateNormal: ("loc", "cov_factor", "cov_diag"),
}
"""The parameters freed for distributions that store several equivalent ones."""


class _Site(NamedTuple):
    """One latent site of a refined guide: free (N, ...) tensors and the law they give."""

    name: str
    free: list[torch.Tensor]
    law: Callable[[list[torch.Tensor]], dist.Distribution]


class FreeGuide:
    """q(z_n) with free parameters for every row n of a fixed set of examples.

    Called ``(x, idx=None, num_data=None)``: ``idx`` (default all rows) picks the rows, each
    site is sampled inside ``pyro.plate(plate, num_data or len(idx), subsample=idx)``, the
    plate the catalogue models open. Build one from a guide's
    output with :func:`free_guide`.

    Examples
    --------
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x[:, :2], 1.0).to_event(1))
    >>> local = free_guide(guide, torch.zeros(5, 3))
    >>> [tuple(t.shape) for t in local.params()]  # loc and unconstrained scale, per row
    [(5, 2), (5, 2)]
    >>> local(torch.zeros(2, 3), idx=torch.tensor([0, 4])).shape
    torch.Size([2, 2])
    """

    amortized = False

    def __init__(self, sites: list[_Site], num_rows: int, plate: str = DEFAULT_PLATE):
        self.sites, self.num_rows, self.plate = sites, num_rows, plate
        for tensor in self.params():
            tensor.requires_grad_()

    def params(self) -> list[torch.Tensor]:
        return [t for site in self.sites for t in site.free]

    def __call__(self, *data, idx=None, num_data=None, **named):
        # data: the model's arguments (one tensor, or several: ppvae.data.Rows), unread here
        device = next(t for t in (*data, *named.values()) if t is not None).device
        rows = torch.arange(self.num_rows, device=device) if idx is None else idx
        # sized as the model's data plate is (the batch, or num_data), so any subset of rows
        # (a probe, a chunk of an evaluation) scales both alike
        size = rows.shape[0] if num_data is None else num_data
        with pyro.plate(self.plate, size, subsample=rows):
            values = [pyro.sample(s.name, s.law([t[rows] for t in s.free])) for s in self.sites]
        return values[-1] if len(values) == 1 else values


def _head_site(guide, name: str, x: torch.Tensor) -> _Site:
    with torch.no_grad():
        h = guide.net(x).detach()
    return _Site(name, [h], lambda free: guide.head(free[0]))


def _start_site(guide, x: torch.Tensor) -> _Site:
    """A per-datapoint guide's site for new rows: its ``start(x)`` through its ``head``."""
    with torch.no_grad():
        h = guide.start(x).detach()
    return _Site(guide.site, [h], lambda free: guide.head(free[0]))


def _family_site(name: str, fn: dist.Distribution, rows: int) -> _Site:
    inner, ndims = fn, 0
    while isinstance(inner, dist.Independent):
        ndims, inner = ndims + inner.reinterpreted_batch_ndims, inner.base_dist
    names = PARAMETERS.get(type(inner)) or [k for k in inner.arg_constraints if k in vars(inner)]
    if not names or fn.batch_shape != (rows,):
        raise ValueError(
            f"cannot refine site '{name}': its {type(fn).__name__} has no parameters of its own "
            f"with one row per example (batch shape {tuple(fn.batch_shape)}); give the guide an "
            "encoder `net` and a distribution `head` (ppvae.guides.AmortizedGuide)"
        )
    constraints = [inner.arg_constraints[k] for k in names]
    pairs = list(zip(names, constraints, strict=True))
    free = [transform_to(c).inv(getattr(inner, k)).detach() for k, c in pairs]

    def law(values):
        kwargs = {k: transform_to(c)(v) for (k, c), v in zip(pairs, values, strict=True)}
        d = type(inner)(**kwargs, validate_args=False)
        return d.to_event(ndims) if ndims else d

    return _Site(name, free, law)


def free_guide(guide, x: torch.Tensor, plate: str = DEFAULT_PLATE) -> FreeGuide:
    """The guide's output on ``x`` as per-datapoint parameters (see the module's notes).

    Raises
    ------
    ValueError
        When the guide samples a global latent site, or a site's law cannot be refined.
    """
    if not getattr(guide, "amortized", True) and hasattr(guide, "start"):
        return FreeGuide([_start_site(guide, x)], x.shape[0], plate)
    with torch.no_grad():
        trace = poutine.trace(batched(guide, plate)).get_trace(x, None, None)
    sites = []
    for name, site in sample_sites(trace).items():
        if data_frame(site, plate) is None:
            raise ValueError(
                f"cannot refine the global latent site '{name}': refine fits local ones"
            )
        if hasattr(guide, "net") and hasattr(guide, "head"):
            sites.append(_head_site(guide, name, x))
        else:
            sites.append(_family_site(name, site["fn"], x.shape[0]))
    return FreeGuide(sites, x.shape[0], plate)


class Refinement(NamedTuple):
    """What :func:`refine` returns.

    Attributes
    ----------
    guide : FreeGuide
        Per-datapoint parameters for the rows of ``x``, the best ones found for each row; call
        it with ``idx`` (row numbers of ``x``).
    amortized_elbo, refined_elbo : Tensor, shape (N,)
        Per-example ELBO (nats) of the guide's output and of ``guide``, from the same
        evaluation with common random numbers, so ``refined_elbo >= amortized_elbo`` row by row.
    """

    guide: FreeGuide
    amortized_elbo: torch.Tensor
    refined_elbo: torch.Tensor


def _crn_elbo(model, guide: FreeGuide, x, num_samples: int, seed: int) -> torch.Tensor:
    """Per-example ELBO with the random numbers fixed by ``seed`` (common random numbers)."""
    with aside(x):  # the draws are this seed's, and the stream after is as it was
        torch.manual_seed(seed)
        idx = torch.arange(x.shape[0], device=x.device)
        return elbo_terms(
            model, guide, x, idx=idx, num_samples=num_samples, plate=guide.plate
        ).elbo


def _step(loss_fn, model, local: FreeGuide, x: torch.Tensor, optim) -> None:
    """One Adam step on the free parameters only (autograd.grad leaves the model's ``.grad``
    untouched, so nothing else moves or accumulates)."""
    params = local.params()
    loss = loss_fn.differentiable_loss(model, batched(local, local.plate), x, None, None)
    for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
        p.grad = g
    optim.step()


def _snapshot(local: FreeGuide) -> list[torch.Tensor]:
    return [p.detach().clone() for p in local.params()]


def _keep_best(model, local, x, best, best_elbo, eval_samples: int, seed: int):
    elbo = _crn_elbo(model, local, x, eval_samples, seed)
    better = elbo > best_elbo
    kept = [
        torch.where(better.reshape(-1, *[1] * (p.dim() - 1)), p.detach(), b)
        for p, b in zip(local.params(), best, strict=True)
    ]
    return kept, torch.where(better, elbo, best_elbo)


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
    plate: str = DEFAULT_PLATE,
) -> Refinement:
    """Optimize per-datapoint variational parameters for ``x``, starting from the guide's.

    The model (and an amortized guide's head: a flow's transforms, say) stays fixed; only the
    per-row parameters move, by Adam on the ELBO (``TraceMeanField_ELBO``: the analytic KL
    where it exists; ``TraceEnum_ELBO`` when the model enumerates discrete latents).

    Parameters
    ----------
    model, guide : callables, ``f(x)`` (Pyro's convention) or ``f(x, idx=None, num_data=None)``
        The trained pair; the guide's local latent sites are refined (see the module's notes).
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
    plate : str
        The name of the plate over examples.

    Returns
    -------
    Refinement

    Notes
    -----
    Refinement never lowers the ELBO: every ``eval_every`` steps each row's ELBO is evaluated
    with the same ``eval_samples`` base draws (common random numbers, seeded by ``seed``), and
    each row keeps the parameters with the highest value so far, starting from the guide's.
    The reported ELBOs are these evaluations; being a maximum over checkpoints, the refined one
    is optimistic by at most the Monte Carlo noise of one evaluation, which ``eval_samples``
    shrinks (and the analytic KL removes from the KL term).
    """
    x = as_rows(x, "data")  # a tuple or dict of tensors: the model's arguments (Rows)
    local = free_guide(guide, x, plate)
    best = _snapshot(local)
    amortized = best_elbo = _crn_elbo(model, local, x, eval_samples, seed)
    every = eval_every or max(1, steps // 10)
    optim = torch.optim.Adam(local.params(), lr=lr)
    structure = scored_pair(model, local, x, None, plate).structure
    nesting = max(1, structure.max_plate_nesting)
    options = {"num_particles": num_particles, "vectorize_particles": True}
    loss_fn = (  # a model's enumerated discrete latents are summed out
        TraceEnum_ELBO(max_plate_nesting=nesting, **options)
        if structure.enumerated
        else TraceMeanField_ELBO(max_plate_nesting=nesting, **options)
    )
    scored = batched(model, plate)
    for step in range(1, steps + 1):
        _step(loss_fn, scored, local, x, optim)
        if step % every == 0 or step == steps:
            best, best_elbo = _keep_best(model, local, x, best, best_elbo, eval_samples, seed)
    with torch.no_grad():
        for p, b in zip(local.params(), best, strict=True):
            p.copy_(b)
    return Refinement(local, amortized, best_elbo)


def amortization_gap(model, guide, x: torch.Tensor, *, steps: int, **options) -> pd.DataFrame:
    """The amortization gap on ``x``: refined ELBO minus amortized ELBO, per example mean.

    Parameters
    ----------
    model, guide, x, steps
        As in :func:`refine`.
    **options
        Passed to :func:`refine` (``lr``, ``num_particles``, ``eval_samples``, ``plate``, ...).

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
    seed, samples = options.get("seed", 0) + 1, options.get("eval_samples", 100)
    start = free_guide(guide, x, result.guide.plate)
    amortized = _crn_elbo(model, start, x, samples, seed)
    refined = _crn_elbo(model, result.guide, x, samples, seed)
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
