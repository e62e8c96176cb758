"""Any Pyro model and guide, called one way: calling conventions, minibatch scaling, structure.

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
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

DEFAULT_PLATE = "data"
"""The name of the plate over examples, unless a config names another."""


def _signature_target(fn: Callable) -> Callable:
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
        params = inspect.signature(_signature_target(fn)).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    return "idx" in params and "num_data" in params


class DataPlateScale(Messenger):
    """Weight N / B for every sample site inside a plate named ``plate`` that covers the batch.

    A plate over the batch's B rows (``pyro.plate(name, len(x))``, also with Pyro's own
    ``subsample_size=b``, which Pyro then scales by B / b) gets the factor N / B; a plate over
    the data set (``pyro.plate(name, N, subsample=idx)``) is left alone: Pyro scales it. Sites
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
        if frame is not None and frame.full_size == self.batch_size:
            msg["scale"] = msg["scale"] * self.factor


def data_frame(site: dict[str, Any], plate: str):
    """The site's frame of the plate named ``plate``, or None when the site is outside it."""
    return next((f for f in site["cond_indep_stack"] if f.name == plate), None)


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
            return fn(x, **kwargs)
        with DataPlateScale(plate, rows, num_data):
            return fn(x, **kwargs)

    call._ppvae_batched = True  # type: ignore[attr-defined]
    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


class Structure(NamedTuple):
    """What a model and guide sample, read from one trace of each.

    Attributes
    ----------
    local_latents, global_latents : tuple of str
        The model's latent sites inside / outside the plate over examples.
    observed : tuple of str
        The model's observed sites.
    enumerated : tuple of str
        Latent sites of the model that the guide does not sample and that are marked for
        enumeration (``infer={"enumerate": "parallel"}``).
    max_plate_nesting : int
        How many plate dimensions the pair uses (enumeration and particles go to their left).
    """

    local_latents: tuple[str, ...]
    global_latents: tuple[str, ...]
    observed: tuple[str, ...]
    enumerated: tuple[str, ...]
    max_plate_nesting: int


def sample_sites(trace) -> dict[str, dict[str, Any]]:
    """The sample sites of a trace, without the plates' subsample sites."""
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    }


def observed_site(trace, plate: str = DEFAULT_PLATE, skip=()) -> dict[str, Any] | None:
    """The first observed sample site inside the plate over examples (the data), or None.

    ``skip`` names sites to pass over (those a ``poutine.condition`` made observed)."""
    for name, site in sample_sites(trace).items():
        if name not in skip and site["is_observed"] and data_frame(site, plate) is not None:
            return site
    return None


def plate_nesting(*traces) -> int:
    """The largest number of vectorized plate dimensions any site of ``traces`` sits in."""
    dims = [
        -frame.dim
        for trace in traces
        for site in sample_sites(trace).values()
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def structure(model_trace, guide_trace, plate: str = DEFAULT_PLATE) -> Structure:
    """Classify the model's sites (see :class:`Structure`) from a model and a guide trace."""
    model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
    latent = {n: s for n, s in model_sites.items() if not s["is_observed"]}
    local = tuple(n for n, s in latent.items() if data_frame(s, plate) is not None)
    enumerated = tuple(
        n for n, s in latent.items() if n not in guide_sites and s["infer"].get("enumerate")
    )
    return Structure(
        local_latents=local,
        global_latents=tuple(n for n in latent if n not in local),
        observed=tuple(n for n, s in model_sites.items() if s["is_observed"]),
        enumerated=enumerated,
        max_plate_nesting=plate_nesting(model_trace, guide_trace),
    )


def run_pair(model, guide, x, idx=None, num_data=None, *, enumerate_at: int | None = None):
    """Trace ``guide`` on ``x``, then ``model`` replayed against it; returns (model, guide) traces.

    ``model`` and ``guide`` are called ``(x, idx, num_data)``: pass them through :func:`batched`.
    With ``enumerate_at`` (the max plate nesting), sites marked for parallel enumeration are
    enumerated to the left of the plates, as ``TraceEnum_ELBO`` does.
    """
    if enumerate_at is not None:
        guide = poutine.enum(guide, first_available_dim=-1 - enumerate_at)
    guide_trace = poutine.trace(guide).get_trace(x, idx, num_data)
    replayed = poutine.replay(model, trace=guide_trace)
    if enumerate_at is not None:
        replayed = poutine.enum(replayed)  # keeps allocating to the left of the guide's dims
    model_trace = poutine.trace(replayed).get_trace(x, idx, num_data)
    return model_trace, guide_trace


def aside(x: torch.Tensor):
    """A context in which draws from torch's generators (on ``x``'s device) leave the stream
    as it was, so probing a pair does not shift the draws that follow."""
    return torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else [])


def probe(model, guide, x, idx=None, plate: str = DEFAULT_PLATE) -> Structure:
    """The pair's :class:`Structure`, from one trace on the batch ``x``."""
    with aside(x), poutine.block(), torch.no_grad():
        model_trace, guide_trace = run_pair(model, guide, x, idx)
    return structure(model_trace, guide_trace, plate)


def param_tensors(*traces) -> dict[str, torch.Tensor]:
    """The unconstrained tensors of the param sites of ``traces`` (what an optimizer steps)."""
    found = {}
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] == "param":
                value = site["value"]
                unconstrained = getattr(value, "unconstrained", None)
                found[name] = unconstrained() if unconstrained is not None else value
    return found


_NETWORK_WEIGHTS: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()
"""Every network weight :func:`claim_parameters` has seen, by id, for as long as it lives."""


def _seen(tensor) -> bool:
    return tensor is not None and _NETWORK_WEIGHTS.get(id(tensor)) is tensor


def _own_weights(model, guide, x, idx) -> dict[str, torch.Tensor]:
    """The pair's network weights by param-store name, as the networks hold them now: one
    trace in an empty scope, where ``pyro.module`` and ``PyroModule`` register their own."""
    store = pyro.get_param_store()
    with aside(x), store.scope(), poutine.block():
        traces = run_pair(model, guide, x, idx)
        tensors = param_tensors(*traces).items()
        return {n: t for n, t in tensors if isinstance(t, torch.nn.Parameter)}


def _drop(names) -> list[str]:
    store = pyro.get_param_store()
    for name in names:
        del store[name]
    return list(names)


def claim_parameters(model, guide, x, idx=None) -> list[str]:
    """Make the param store and the pair's networks agree on every weight's tensor.

    Pyro keys parameters by name, so a store entry left by an earlier model under a name the
    pair uses (say ``decoder$$$fc1.weight``) shadows a new network's weights: ``pyro.module``
    hands SVI the stored tensor while the network computes with its own (it never trains), and
    a ``PyroModule`` adopts the old tensor. Here, in order:

    1. an entry that is the weight of *another network ppvae has seen* is removed;
    2. one trace in the store lets Pyro do what it does with what is left (a store loaded with
       ``ParamStoreDict.load`` is adopted by ``pyro.module(..., update_module_params=True)``
       and by ``PyroModule``; free ``pyro.param`` values are created or reused);
    3. an entry the networks still do not compute with is removed, so the next trace
       registers the network's own weight.

    ``model`` and ``guide`` are called ``(x, idx, num_data)``; returns the names dropped.
    """
    try:
        owned = _own_weights(model, guide, x, idx)
        current = pyro.get_param_store().get_state()["params"]
        dropped = _drop(
            [n for n, t in owned.items() if _seen(current.get(n)) and current[n] is not t]
        )
        with aside(x), poutine.block():
            run_pair(model, guide, x, idx)
        owned = _own_weights(model, guide, x, idx)
    except Exception:  # a failing pair is the checker's to report
        return []
    current = pyro.get_param_store().get_state()["params"]
    dropped += _drop([n for n, t in owned.items() if n in current and current[n] is not t])
    for tensor in owned.values():
        _NETWORK_WEIGHTS[id(tensor)] = tensor
    return dropped


def place(
    model, guide, x: torch.Tensor, device: torch.device, plate: str = DEFAULT_PLATE, idx=None
) -> None:
    """The pair's parameters to ``device`` and ``x``'s floating dtype, in place.

    One trace on the batch ``x`` (with its row numbers ``idx``) where it is registers every
    parameter, so values a ``pyro.param`` initializes from the data see this batch, as in a
    plain SVI loop's first step (and drops stale
    param-store entries, :func:`claim_parameters`); modules move with ``.to``, and every other
    param-store tensor the pair uses (``pyro.param``, ``pyro.module`` networks of plain
    functions) has its data replaced, so the tensor Pyro and the networks share stays one.
    """
    calls = batched(model, plate), batched(guide, plate)
    claim_parameters(*calls, x, idx)
    traces = ()
    store = pyro.get_param_store()
    # the pair's networks may still be where they were built (CPU, float32) whatever x is
    for rows in (x, x.to("cpu", torch.get_default_dtype())):
        before = set(store.keys())
        try:
            with aside(x):
                traces = run_pair(*calls, rows, None if idx is None else idx.to(rows.device))
            break
        except Exception:  # a broken pair is reported by the checker, on the device
            for name in set(store.keys()) - before:  # values made for rows that failed
                del store[name]
    for module in (m for m in (model, guide) if isinstance(m, torch.nn.Module)):
        module.to(device=device, dtype=x.dtype)
    with torch.no_grad():
        for tensor in param_tensors(*traces).values():
            dtype = x.dtype if tensor.is_floating_point() else tensor.dtype
            if tensor.device != device or tensor.dtype != dtype:
                tensor.data = tensor.data.to(device, dtype)
