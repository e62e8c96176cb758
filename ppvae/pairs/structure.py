"""What a pair samples, read from one trace of each (:class:`Structure`: local and global latents,
observed and enumerated sites, plate nesting), and the parameters it computes with, made to
agree with Pyro's param store before training or scoring (:func:`claim_parameters`,
:func:`place`). Nothing here knows a site's name.
"""

import weakref
from typing import Any, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppvae.pairs.calling import DEFAULT_PLATE, aside, batched, data_frame


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


def observes(site) -> bool:
    """Whether a sample site observes data: observed, and not a ``pyro.deterministic`` record
    (which Pyro also marks observed, though it records a value and scores nothing).

    Examples
    --------
    >>> import pyro.distributions as dist
    >>> def model():
    ...     pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))
    ...     pyro.deterministic("twice", torch.tensor(1.0))
    >>> trace = poutine.trace(model).get_trace()
    >>> observes(trace.nodes["x"]), observes(trace.nodes["twice"])
    (True, False)
    """
    return bool(site["is_observed"]) and not site.get("infer", {}).get("_deterministic")


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
        if name not in skip and observes(site) and data_frame(site, plate) is not None:
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
        observed=tuple(n for n, s in model_sites.items() if observes(s)),
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
