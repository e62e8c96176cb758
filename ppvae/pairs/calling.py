"""Any Pyro model and guide, called one way: calling conventions and minibatch scaling.

ppvae trains and scores a model and a guide on minibatches ``x`` of B rows out of N. Two calling
conventions are accepted, detected from the callable's signature:

- Pyro's: ``model(x)``, opening ``pyro.plate("data", x.shape[0])`` as Pyro's tutorials do;
- ppvae's: ``model(x, idx=None, num_data=None)``, opening the plate with the full size N and
  the batch's indices (``ppvae.models.sites.data_plate``), so Pyro scales it by N / B itself.

A plate over the examples sized by the batch (Pyro's convention) would make the minibatch ELBO
an estimate of B / N of the full-data ELBO for the local terms, while the global terms keep
their full weight: the wrong objective. :class:`DataPlateScale` gives every site inside such a
plate the weight N / B that a subsampled plate would have given it, so both conventions train
and report the full-data ELBO. Nothing here knows a site's name: sites are found in traces.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ppvae.data.rows import Rows

DEFAULT_PLATE = "data"
"""The name of the plate over examples, unless a config names another."""


def signature_target(fn: Callable) -> Callable:
    """The function whose signature tells the convention: a module's forward, a partial's func."""
    if isinstance(fn, torch.nn.Module):
        return fn.forward
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def accepts_indices(fn: Callable) -> bool:
    """True when ``fn`` takes ``idx`` and ``num_data`` (ppvae's convention), else Pyro's ``fn(x)``.

    Examples
    --------
    >>> accepts_indices(lambda x: None), accepts_indices(lambda x, idx=None, num_data=None: None)
    (False, True)
    """
    try:
        params = inspect.signature(signature_target(fn)).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    return "idx" in params and "num_data" in params


class DataPlateScale(Messenger):
    """Weight N / B for every sample site inside a plate named ``plate`` that covers the batch.

    A plate over the batch's B rows (``pyro.plate(name, len(x))``, also with Pyro's own
    ``subsample_size=b``, which Pyro then scales by B / b) gets the factor N / B; a plate over
    the data set (``pyro.plate(name, N, subsample=idx)``) is left alone: Pyro scales it. A plate
    opened without a size (``pyro.plate(name)``, as Pyro's ss-vae and cvae do) takes its size
    from the batch, so it is scaled as a batch-sized one. Sites
    outside the plate (global latents) keep weight 1.

    Parameters
    ----------
    plate : str
        The name of the plate over examples.
    batch_size, num_data : int
        B, the rows of the minibatch, and N, the examples in the data set.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         return pyro.sample("obs", dist.Normal(0.0, 1.0), obs=x)
    >>> from pyro import poutine
    >>> trace = poutine.trace(DataPlateScale("data", 4, 100)(model)).get_trace(torch.zeros(4))
    >>> trace.nodes["obs"]["scale"]
    25.0
    """

    def __init__(self, plate: str, batch_size: int, num_data: int):
        super().__init__()
        self.plate, self.factor = plate, num_data / batch_size
        self.batch_size = batch_size

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if self.factor == 1.0 or site_is_subsample(msg):
            return
        frame = data_frame(msg, self.plate)
        if frame is not None and batch_sized(frame, self.batch_size):
            msg["scale"] = msg["scale"] * self.factor


def self_subsampled(trace, plate: str) -> int | None:
    """The ``subsample_size`` b with which the pair's own plate ``plate`` draws b of its rows at
    random (Pyro's ``pyro.plate(plate, N, subsample_size=b)`` inside the model), or None."""
    site = trace.nodes.get(plate)
    if site is None or not site_is_subsample(site):
        return None
    # set only by the pair's own subsample_size (a plate given subsample=idx leaves it None);
    # scoring stacks copies of the rows, so any such plate would draw some of them
    return site["fn"].subsample_size


SUBSAMPLED = (
    "the model draws {b} rows of its plate '{plate}' at random itself (subsample_size={b}): "
    "{what} must score every row; remove subsample_size, since fit takes minibatches itself "
    "(FitConfig(batch_size={b}))"
)
"""The one line for a pair that subsamples its data plate where every row must be scored."""


def data_frame(site: dict[str, Any], plate: str):
    """The site's frame of the plate named ``plate``, or None when the site is outside it."""
    return next((f for f in site["cond_indep_stack"] if f.name == plate), None)


def batch_sized(frame, rows: int) -> bool:
    """Whether a plate frame covers the batch's ``rows``: sized by it, or opened without a size
    (``pyro.plate("data")``, which Pyro gives size -1 and broadcasts to the batch)."""
    return frame.full_size in (rows, -1, None)


def batched(fn: Callable, plate: str = DEFAULT_PLATE) -> Callable:
    """``fn`` as a callable ``(x, idx=None, num_data=None)`` whatever its own convention.

    ``idx`` and ``num_data`` reach ``fn`` only if it takes them; with ``num_data`` given, a
    plate ``plate`` sized by the batch is scaled to the data set by :class:`DataPlateScale`.
    Calling the result with ``num_data=None`` scores the batch as it is (evaluation).
    """
    if getattr(fn, "_ppvae_batched", False):
        return fn
    indices = accepts_indices(fn)

    def call(x, idx=None, num_data=None):
        kwargs = {"idx": idx, "num_data": num_data} if indices else {}
        rows = x.shape[0]
        if num_data is None or num_data == rows:
            return _apply(fn, x, kwargs)
        with DataPlateScale(plate, rows, num_data):
            return _apply(fn, x, kwargs)

    call._ppvae_batched = True  # type: ignore[attr-defined]
    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def _apply(fn: Callable, x, kwargs: dict[str, Any]):
    """``fn(x, **kwargs)``; a :class:`~ppvae.data.rows.Rows` is passed as its tensors."""
    if isinstance(x, Rows):
        return x.call(fn, **kwargs)
    return fn(x, **kwargs)


def aside(x: torch.Tensor):
    """A context in which draws from torch's generators (on ``x``'s device) leave the stream
    as it was, so probing a pair does not shift the draws that follow."""
    return torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else [])
