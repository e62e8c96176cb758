"""Data whose arguments are observed for some examples only: one step over every group.

A float tensor of :class:`~ppvae.data.Rows` whose row is all NaN is not observed for that
example (a label, say). The examples fall into groups by which arguments they have observed
(:meth:`~ppvae.data.Rows.groups`); group g has N_g of the N examples. Each step calls the
pair once per group, on that group's rows with the unobserved arguments ``None`` (a Pyro-style
``model(xs, ys=None)`` then treats ``ys`` as latent), and sums the losses:

- **batches, stratified:** a batch of B rows takes B_g = max(1, round(B N_g / N)) rows of every
  group g, the next ones in the group's own shuffled order (reshuffled when it runs out), so
  no step leaves a group out; there are N // B steps an epoch, and every order depends only on
  (seed, epoch), so a resumed run sees the same batches;
- **scaling:** group g's call is scaled to its N_g examples (``num_data=N_g``: its rows weigh
  N_g / B_g, :class:`~ppvae.pairs.DataPlateScale`), and sites outside the data plate (global
  latents) weigh 1 / G in each of the G calls, so the summed loss is an unbiased estimate of
  minus the full-data ELBO: sum_g E[local terms of g] + E[log p(theta) - log q(theta)];
- one optimizer, one history (with a ``batch_rows_<group>`` column per group: B_g) and one
  checkpoint cover it all;
- under torchrun each B_g is a multiple of the number of ranks, and every rank's share of a
  batch holds B_g / world rows of each group; a rank scales them by N_g world / B_g, and
  averaging the ranks' gradients gives the weights N_g / B_g of one process.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ppvae.config import ConfigError
from ppvae.data import Group, Rows
from ppvae.pairs import batched, data_frame, param_tensors, place, run_pair
from ppvae.pairs.checker import check
from ppvae.pairs.objectives import OBJECTIVES


class Layout(NamedTuple):
    """The groups of a training set and how many rows of each a batch takes.

    Attributes
    ----------
    groups : list of Group
    per_step : list of int
        B_g, the rows of group g in every (global) batch.
    world : int
        The ranks that share each batch (torchrun): each B_g is a multiple of it, and each
        rank's share of a batch holds B_g / world rows of every group, one group after another.
    """

    groups: list[Group]
    per_step: list[int]
    world: int = 1

    @property
    def columns(self) -> dict[str, int]:
        """The history's ``batch_rows_<label>`` columns: B_g for each group."""
        return {
            f"batch_rows_{g.label}": b for g, b in zip(self.groups, self.per_step, strict=True)
        }

    def parts(self, x, idx: torch.Tensor) -> list[tuple[Any, torch.Tensor, int]]:
        """(rows with unobserved arguments None, their indices, N_g) for each group of a batch
        laid out by :func:`stratified_batches`."""
        found, start = [], 0
        for group, b in zip(self.groups, self.per_step, strict=True):
            cols = slice(start, start + b // self.world)  # this rank's share
            found.append((x[cols].present(group.present), idx[cols], len(group.rows)))
            start += b // self.world
        return found


def layout_for(train, batch_size: int, world: int = 1) -> Layout | None:
    """The train set's :class:`Layout`, or None when every argument of every row is observed.
    Under torchrun each B_g is rounded to a multiple of the ``world`` ranks."""
    if not isinstance(train, Rows):
        return None
    groups = train.groups()
    if all(all(g.present) for g in groups):
        return None
    n, b = len(train), min(batch_size, len(train))
    per = [world * max(1, round(b * len(g.rows) / n / world)) for g in groups]
    return Layout(groups, per, world)


def stratified_batches(layout: Layout, n: int, b: int, g: torch.Generator) -> torch.Tensor:
    """(n // b, sum B_g) row numbers: each batch takes the next B_g rows of every group's own
    shuffled order, which restarts (reshuffled) whenever it runs out."""
    steps, columns = n // b, []
    for group, per in zip(layout.groups, layout.per_step, strict=True):
        size, need = len(group.rows), steps * per
        rounds = -(-need // size)
        order = torch.cat(
            [torch.randperm(size, generator=g, device=g.device) for _ in range(rounds)]
        )
        columns.append(group.rows.to(order.device)[order[:need]].view(steps, per))
    # each rank's share (torchrun cuts a batch into equal column blocks) holds every group
    shares = [c.chunk(layout.world, 1) for c in columns]
    return torch.cat([share[r] for r in range(layout.world) for share in shares], 1)


class OutsidePlateScale(Messenger):
    """Weight ``factor`` for every sample site outside the plate ``plate`` (global latents).

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> from pyro import poutine
    >>> def model():
    ...     pyro.sample("w", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", 3):
    ...         pyro.sample("x", dist.Normal(0.0, 1.0))
    >>> trace = poutine.trace(OutsidePlateScale("data", 0.5)(model)).get_trace()
    >>> trace.nodes["w"]["scale"], trace.nodes["x"]["scale"]
    (0.5, 1.0)
    """

    def __init__(self, plate: str, factor: float):
        super().__init__()
        self.plate, self.factor = plate, factor

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if not site_is_subsample(msg) and data_frame(msg, self.plate) is None:
            msg["scale"] = msg["scale"] * self.factor


def combined_loss(
    loss: Callable, layout: Layout | None, plate: str, aux: list[tuple[Callable, float]] = ()
) -> Callable:
    """``loss(x, idx, num_data)`` summed over the groups of the batch (see the module's notes),
    plus ``weight * aux_loss`` for each auxiliary loss on the rows that have every argument
    observed, scaled to their number (:func:`~ppvae.infer.fitting.fit`'s ``aux``)."""
    share = 1.0 if layout is None else 1.0 / len(layout.groups)

    def call(x, idx, num_data):
        parts = [(x, idx, num_data)] if layout is None else layout.parts(x, idx)
        complete = [True] if layout is None else [all(g.present) for g in layout.groups]
        total = 0.0
        with OutsidePlateScale(plate, share):
            for rows, sub, n_g in parts:
                total = total + loss(rows, sub, n_g)
        for aux_loss, weight in aux:
            for (rows, sub, n_g), whole in zip(parts, complete, strict=True):
                if whole:
                    total = total + weight * aux_loss(rows, sub, n_g)
        return total

    return call


def check_supported(layout: Layout | None, config) -> None:
    """Partly observed data trains without jit: say so in one line."""
    if layout is None:
        return
    if config.jit:
        raise ConfigError("jit=True does not trace data with unobserved arguments: set jit=False")


def aux_losses(aux, layout: Layout | None, parts: list, config, device, nesting: int):
    """(losses with their weights, the auxiliary pairs' parameters) for ``fit``'s ``aux``:
    each pair placed, checked and traced on the first batch's rows that have every argument
    observed, as the main pair is; its loss is the ELBO (``trace``)."""
    if layout is not None:
        parts = [p for p, g in zip(parts, layout.groups, strict=True) if all(g.present)]
    if aux and not parts:
        raise ConfigError("aux pairs train on rows with every argument observed: there are none")
    losses, tensors = [], {}
    for entry in aux:
        if not (isinstance(entry, tuple | list) and len(entry) == 3):
            raise ConfigError(f"aux takes (model, guide, weight) triples, got {entry!r}")
        model, guide, weight = entry
        calls = batched(model, config.plate), batched(guide, config.plate)
        for rows, idx, n in parts:
            place(model, guide, rows, device, config.plate, idx=idx)
            check(model, guide, rows, idx=idx, num_data=n, objective="trace", plate=config.plate)
            tensors |= param_tensors(*run_pair(*calls, rows, idx))
        options = {"num_particles": 1, "max_plate_nesting": nesting, "plate": config.plate}
        losses.append((OBJECTIVES["trace"].loss_fn(*calls, **options), float(weight)))
    return losses, tensors
