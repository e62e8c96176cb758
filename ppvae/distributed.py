"""Data-parallel training across processes with ``torch.distributed`` (``torchrun``).

When a process group is initialized (by ``torchrun --nproc-per-node N -m ppvae train ...``,
or by the caller before :func:`ppvae.fit`), training is data parallel with DDP's semantics:

- every rank builds the same epoch permutation; each global batch of ``batch_size`` rows is
  cut into ``world`` shards and rank r trains on shard r, so every example is seen once per
  epoch and the global batch is ``batch_size``;
- after each backward pass the gradients of every parameter the step trains are averaged
  across ranks (one all-reduce of a flat buffer), so the ranks keep identical parameters and
  take the step one process with the global batch would take;
- rank r draws its random numbers from ``seed + r``;
- losses are summed across ranks when they are looked at, so every rank sees the same numbers
  and stops (NaN, Ctrl-C) at the same step;
- evaluation inside ``fit`` (and ``ppvae train``) shards the test rows across ranks and gathers
  the per-example results (:func:`scoring_together`); called on its own, it scores locally;
- rank 0 alone writes the checkpoint (with every rank's random state), history and pictures;
- an exception that one rank meets alone inside ``fit`` stops the other ranks within seconds
  (:func:`stopping_together`), not at the backend's timeout (30 minutes for gloo).

On one process, every function here is the identity (or a no-op), so the same code runs.
"""

import contextlib
import contextvars
import itertools
import os
import sys
import threading
import warnings
from typing import NamedTuple

import torch
import torch.distributed as dist

from ppvae.errors import ConfigError, first_line


class Ranks(NamedTuple):
    """This process's rank and the number of processes."""

    rank: int
    world: int


def ranks() -> Ranks:
    """(rank, world size) of the initialized process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks(0, 1)


def is_main() -> bool:
    """True on rank 0 (and on a single process): the one that writes and prints."""
    return ranks().rank == 0


def rank_label() -> str:
    """``"[rank r] "`` under torchrun (read from the environment), else ``""``."""
    return f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def main_process() -> bool:
    """True unless ``torchrun`` started this process as a rank other than 0 (read from the
    environment, so it holds before the process group exists and after it is gone)."""
    return int(os.environ.get("RANK", "0")) == 0


def backend_for(device: torch.device, backend: str = "auto") -> str:
    """``nccl`` for CUDA, ``gloo`` for the CPU, or the one asked for if it is available."""
    chosen = ("nccl" if device.type == "cuda" else "gloo") if backend == "auto" else backend
    available = {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available}
    if chosen not in available or not available[chosen]():
        raise ConfigError(f"the torch.distributed backend '{chosen}' is not available here")
    if chosen == "nccl" and device.type != "cuda":
        raise ConfigError("the nccl backend needs CUDA devices: use --device cuda or gloo")
    return chosen


@contextlib.contextmanager
def from_environment(device: torch.device, backend: str = "auto"):
    """Initialize the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1) for the
    block, and destroy it after; a single process is left alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or (dist.is_available() and dist.is_initialized()):
        if backend != "auto":  # asked for by name: say now if it could not run
            backend_for(device, backend)
        yield ranks()
        return
    name = backend_for(device, backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(name)
    try:
        yield ranks()
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` means this rank's GPU (``LOCAL_RANK``) under torchrun; ``cuda:N`` would put
    every rank on one GPU, and is refused there."""
    if device.type != "cuda" or ranks().world == 1:
        return device
    if device.index is not None:
        raise ConfigError(
            f"device {device} would put every rank on one GPU: under torchrun use --device "
            "cuda (or auto), and each rank takes the GPU of its LOCAL_RANK"
        )
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def warn_if_not_initialized() -> None:
    """Warn when torchrun started several processes but no process group joins them: each
    would train a whole copy of the model on the whole data."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and ranks().world == 1:
        warnings.warn(
            f"torchrun started {world} processes (WORLD_SIZE), but torch.distributed is not "
            "initialized: each trains its own copy. Call torch.distributed.init_process_group() "
            "before fit to train them together.",
            stacklevel=3,
        )


def same_everywhere(value, what: str) -> None:
    """Raise ConfigError on every rank unless every rank has the same ``value`` (picklable)."""
    values = gather_objects(value)
    if any(v != values[0] for v in values):
        shown = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise ConfigError(f"every rank must be given the same {what} ({shown})")


def shard_batches(batches: torch.Tensor) -> torch.Tensor:
    """This rank's columns of each global batch (steps, B): (steps, B / world)."""
    rank, world = ranks()
    if world == 1:
        return batches
    width = batches.shape[1]
    if width % world:
        raise ConfigError(
            f"the world size {world} does not divide the batch size {width}: choose a batch "
            f"size that is a multiple of {world} (each rank trains on batch_size / {world} rows)"
        )
    per_rank = width // world
    return batches[:, rank * per_rank : (rank + 1) * per_rank]


def average_gradients(params: list[torch.Tensor], world: int) -> None:
    """Replace each parameter's gradient by its mean across ranks (one flat all-reduce).

    A parameter that no rank's step reached keeps no gradient (Adam then leaves it alone, as
    on one process); one that some ranks reached counts zero for the others. Only a rank
    whose own step missed a parameter reads the flags on the host.
    """
    if world == 1:
        return
    reached = [p.grad is not None for p in params]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flags = torch.tensor(reached, dtype=grads[0].dtype).to(grads[0].device, non_blocking=True)
    flat = torch.cat([*(g.reshape(-1) for g in grads), flags])
    dist.all_reduce(flat)
    flat /= world
    sizes = [g.numel() for g in grads]
    chunks = flat[: sum(sizes)].split(sizes)
    if not all(reached):
        reached = [bool(f) for f in flat[sum(sizes) :].tolist()]  # reached on any rank
    for p, chunk, any_rank in zip(params, chunks, reached, strict=True):
        p.grad = chunk.view_as(p) if any_rank else None


def broadcast_state(tensors: list[torch.Tensor], modules=()) -> None:
    """Every rank takes rank 0's values of ``tensors`` and of the buffers (batch-norm
    statistics, frozen weights) of ``modules`` (those that are ``torch.nn.Module``)."""
    if ranks().world == 1:
        return
    buffers = [b for m in modules if isinstance(m, torch.nn.Module) for b in m.buffers()]
    with torch.no_grad():
        for t in [*tensors, *buffers]:
            dist.broadcast(t.data, src=0)


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks (a copy; the input is left as it was)."""
    if ranks().world == 1:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def any_across(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is True on any (a collective: every rank must call it)."""
    if ranks().world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


_SCORING_TOGETHER = contextvars.ContextVar("scoring_together", default=False)


@contextlib.contextmanager
def scoring_together():
    """Inside the block, every rank scores its share of the rows and the results are gathered
    (``fit`` and ``ppvae train`` enter it: every rank calls the same evaluations). Outside it,
    scoring is local even under torch.distributed, so ``if rank == 0: evaluate(...)`` works."""
    token = _SCORING_TOGETHER.set(True)
    try:
        yield
    finally:
        _SCORING_TOGETHER.reset(token)


def sharding() -> bool:
    """Whether scoring is split across the ranks here (see :func:`scoring_together`)."""
    return _SCORING_TOGETHER.get() and ranks().world > 1


def shard_rows(n: int) -> slice:
    """This rank's contiguous share of ``n`` rows (all of them unless :func:`sharding`)."""
    if not sharding():
        return slice(0, n)
    rank, world = ranks()
    bounds = [n * r // world for r in range(world + 1)]
    return slice(bounds[rank], bounds[rank + 1])


def gather_rows(part: torch.Tensor, n: int) -> torch.Tensor:
    """The (n, ...) tensor whose rows :func:`shard_rows` split over the ranks, on every rank."""
    rank, world = ranks()
    if not sharding():
        return part
    longest = -(-n // world)
    padded = part.new_zeros((longest, *part.shape[1:]))
    padded[: len(part)] = part
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded)
    sizes = [n * (r + 1) // world - n * r // world for r in range(world)]
    return torch.cat([p[:s] for p, s in zip(pieces, sizes, strict=True)])


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if ranks().world == 1:
        return [obj]
    found = [None] * ranks().world
    dist.all_gather_object(found, obj)
    return found


WATCH_EVERY = 0.5
"""Seconds between a rank's looks, inside ``fit``, for another rank's failure."""

GRACE = 2.0
"""Seconds a rank that saw another's failure gives its own ``fit`` to end by itself first."""

_WATCHED = itertools.count()  # fit calls under torch.distributed: the same count on every rank


def group_store() -> dist.Store:
    """The store of the default process group, which every rank reaches whoever made the group
    (torchrun's TCPStore, a ``file://`` FileStore): the public ``get_group_store``."""
    return dist.group.WORLD.get_group_store()


class Watchdog:
    """A thread that looks for ``key`` in ``store`` every ``every`` seconds: once another rank
    wrote its failure there, it gives this rank ``grace`` seconds to end the block by itself,
    then prints one line on stderr and ends the process with status 2 (a collective waiting
    for a rank that left is blocked in C++, and for gloo nothing called from Python, not even
    ``destroy_process_group`` or ``abort``, makes it return; torchrun ends a failed group's
    processes too).

    Examples
    --------
    >>> watchdog = Watchdog(dist.HashStore(), "failed", rank=0, every=0.01).start()
    >>> watchdog.stop()  # the block ended: the thread is gone, nothing printed
    >>> watchdog.thread.is_alive()
    False
    """

    def __init__(self, store, key: str, rank: int, every: float = WATCH_EVERY, grace=GRACE):
        self.store, self.key, self.rank, self.every, self.grace = store, key, rank, every, grace
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="ppvae-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        """Start watching in a daemon thread; returns the watchdog."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (the block ended) and wait for the thread to end."""
        self.done.set()
        self.thread.join(timeout=2 * self.every + 1)

    def _watch(self) -> None:
        while not self.done.wait(self.every):
            try:
                if not self.store.check([self.key]):
                    continue
                failure = self.store.get(self.key).decode(errors="replace")
            except Exception:  # the store is gone (the rank that hosted it ended)
                return
            if self.done.wait(self.grace):  # this rank's block ended by itself meanwhile
                return
            sys.stdout.flush()
            print(f"ppvae: error: [rank {self.rank}] stopping: {failure}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(2)


@contextlib.contextmanager
def stopping_together():
    """Under torch.distributed, stop every rank when one rank meets an exception alone inside
    the block (``fit`` enters it); on one process, nothing.

    The failing rank writes ``rank k failed: <its one line>`` in the group's store and
    re-raises (its caller sees the real error; its process lives on). Every other rank, which
    would wait in its next collective until the backend's timeout, sees it within
    :data:`WATCH_EVERY` seconds (a :class:`Watchdog`), waits :data:`GRACE` seconds, prints
    ``ppvae: error: [rank r] stopping: rank k failed: ...`` and ends its process with status
    2. An error every rank meets together (a PPVAEError's ``every_rank``) ends nothing.
    """
    rank, world = ranks()
    if world == 1:
        yield
        return
    key, store = f"ppvae/fit-{next(_WATCHED)}/failed", group_store()
    with contextlib.suppress(Exception):  # a TCPStore's clone: a connection for the thread
        store = store.clone()
    watchdog = Watchdog(store, key, rank).start()
    try:
        yield
    except BaseException as err:
        watchdog.stop()
        if not getattr(err, "every_rank", False):
            line = first_line(err)
            if not hasattr(err, "every_rank") and line != type(err).__name__:
                line = f"{type(err).__name__}: {line}"  # not ppvae's own: its type says more
            with contextlib.suppress(Exception):  # a store whose host ended: they end anyway
                group_store().set(key, f"rank {rank} failed: {line}")
        raise
    finally:
        watchdog.stop()
