"""What a model or a guide computes from what, read from one trace with Pyro's provenance
tracking, as :func:`pyro.infer.inspect.get_model_relations` reads it, plus what that leaves out:

- each network as one node: a module call that has parameters and samples nothing (the
  outermost such call, so ``decoder`` rather than its layers), found by torch's module hooks
  whatever the network is called and however it is registered (``PyroModule``,
  ``pyro.module``, or neither). Its output's provenance is replaced by the network alone, as
  Pyro replaces a sample's by the site alone, so ``z -> decoder -> x`` and not ``z -> x``;
- the data arguments: a tensor the pair is called with that a site depends on (the ``x`` an
  amortized guide encodes) is a node, unless a site merely observes it.

Nothing here knows a site's name.
"""

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.inspect import is_sample_site
from pyro.nn import PyroModule
from pyro.ops.provenance import (
    ProvenanceTensor,
    detach_provenance,
    get_provenance,
)
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)

DATA_PREFIX = "data:"
"""Node names of the data arguments: ``data:x`` for the argument ``x``."""

NETWORK_PREFIX = "net:"
"""Node names of the networks: ``net:decoder``."""


_SHAPE_ONLY = frozenset(
    {
        torch.Tensor.new_zeros,
        torch.Tensor.new_ones,
        torch.Tensor.new_empty,
        torch.Tensor.new_full,
        torch.Tensor.new_tensor,
        torch.zeros_like,
        torch.ones_like,
        torch.empty_like,
        torch.full_like,
    }
)
"""Functions whose result does not depend on the values of the tensors they are given."""


class Tracked(ProvenanceTensor):
    """A :class:`~pyro.ops.provenance.ProvenanceTensor` that gives no provenance to what is
    made from its shape alone (``x.new_zeros(B, q)``, as Pyro's VAE tutorial makes the prior's
    mean), so a prior is not drawn as depending on the data.

    Examples
    --------
    >>> x = Tracked(torch.ones(2, 3), frozenset({"data:x"}))
    >>> get_provenance(2 * x), get_provenance(x.new_zeros(2, 1))
    (frozenset({'data:x'}), frozenset())
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _SHAPE_ONLY:
            args, kwargs = detach_provenance([args, kwargs or {}])
            return func(*args, **kwargs)
        return super().__torch_function__(func, types, args, kwargs)


def track(value, provenance: frozenset):
    """``value`` (tensors, plain tuples, lists and dicts of them, distributions) with the
    provenance of every tensor in it replaced by ``provenance``."""
    if isinstance(value, torch.Tensor):
        return Tracked(detach_provenance(value), provenance)
    if type(value) in (tuple, list):
        return type(value)(track(v, provenance) for v in value)
    if type(value) is dict:
        return {k: track(v, provenance) for k, v in value.items()}
    if isinstance(value, torch.distributions.Distribution):
        for key, part in list(vars(value).items()):
            if isinstance(part, (torch.Tensor, torch.distributions.Distribution)):
                setattr(value, key, track(part, provenance))
    return value


class _Call:
    """One module call seen by the hooks."""

    def __init__(self, module: torch.nn.Module, parent: "_Call | None", inputs: frozenset):
        self.module, self.parent, self.inputs = module, parent, inputs
        self.sampled = False

    def is_network(self) -> bool:
        """Has parameters and sampled nothing."""
        return not self.sampled and next(self.module.parameters(), None) is not None

    def outermost(self) -> bool:
        parent = self.parent
        while parent is not None:
            if parent.is_network():
                return False
            parent = parent.parent
        return self.is_network()


class TrackNetworks(Messenger):
    """Pyro's provenance tracking (each sample's and param's value carries its own name), with
    every network's output carrying ``net:<id>`` (see the module's docstring).

    The calls are recorded in ``calls``; ``observes[name]`` is the provenance of what the
    observed site ``name`` observes (the data arguments it is given).

    Examples
    --------
    >>> import pyro.distributions as dist
    >>> net = torch.nn.Linear(3, 2)
    >>> def guide(x):
    ...     pyro.sample("z", dist.Normal(net(x), 1.0).to_event(1))
    >>> x = Tracked(torch.zeros(3), frozenset({"data:x"}))
    >>> with TrackNetworks() as tracker:
    ...     trace = poutine.trace(guide).get_trace(x)
    >>> [type(call.module).__name__ for call in tracker.calls], tracker.calls[0].inputs
    (['Linear'], frozenset({'data:x'}))
    >>> get_provenance(trace.nodes["z"]["fn"].mean) == {f"net:{id(net)}"}
    True
    """

    def __init__(self):
        super().__init__()
        self.calls: list[_Call] = []
        self.open: list[_Call] = []
        self.observes: dict[str, frozenset] = {}
        self.params: dict[str, torch.Tensor] = {}
        self._hooks = []

    def __enter__(self):
        self._hooks = [
            register_module_forward_pre_hook(self._pre_hook),
            register_module_forward_hook(self._post_hook),
        ]
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        return super().__exit__(*exc)

    def _pre_hook(self, module, args):
        call = _Call(module, self.open[-1] if self.open else None, get_provenance(args))
        self.calls.append(call)
        self.open.append(call)

    def _post_hook(self, module, args, output):
        call = self.open.pop()
        if call.is_network():
            return track(output, frozenset({f"{NETWORK_PREFIX}{id(module)}"}))
        return None

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if site_is_subsample(msg):
            return
        for call in self.open:
            call.sampled = True
        if msg["is_observed"]:
            self.observes[msg["name"]] = get_provenance(msg["value"])

    def _pyro_post_sample(self, msg: dict[str, Any]) -> None:
        if is_sample_site(msg):
            msg["value"] = track(msg["value"], frozenset({msg["name"]}))

    def _pyro_post_param(self, msg: dict[str, Any]) -> None:
        value = detach_provenance(msg["value"])
        self.params[msg["name"]] = value
        msg["value"] = track(value, frozenset({msg["name"]}))


def _arguments(fn: Callable, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with each tensor in them (also inside a tuple or dict) tracked
    as ``data:<name>``, ``<name>`` the parameter of ``fn`` it is bound to."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        bound = inspect.signature(target).bind(*args, **kwargs)
    except (TypeError, ValueError):  # no signature, or one that does not say: name by place
        named = {f"arg{i}": a for i, a in enumerate(args)}
        tracked = {n: track(a, frozenset({DATA_PREFIX + n})) for n, a in named.items()}
        kwargs = {n: track(a, frozenset({DATA_PREFIX + n})) for n, a in kwargs.items()}
        return tuple(tracked.values()), kwargs
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            value = tuple(
                track(v, frozenset({f"{DATA_PREFIX}{name}[{i}]"})) for i, v in enumerate(value)
            )
        elif kind is inspect.Parameter.VAR_KEYWORD:
            value = {k: track(v, frozenset({DATA_PREFIX + k})) for k, v in value.items()}
        else:
            value = track(value, frozenset({DATA_PREFIX + name}))
        bound.arguments[name] = value
    return bound.args, bound.kwargs


def _devices(args: tuple, kwargs: dict) -> list[torch.device]:
    """The CUDA devices of the tensors among ``args`` and ``kwargs`` (for ``fork_rng``)."""
    found = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    return sorted({t.device for t in found if t.device.type == "cuda"}, key=str)


def trace_relations(fn: Callable, args: tuple, kwargs: dict):
    """One trace of ``fn(*args, **kwargs)`` under :class:`TrackNetworks`, with no effect on the
    param store or on torch's random streams; returns the trace, the tracker and the
    provenance of each sample site's log-density (computed with the hooks still on, so a
    network a distribution calls when scored is found too)."""
    store = pyro.get_param_store()
    tracker = TrackNetworks()
    with (
        torch.random.fork_rng(devices=_devices(args, kwargs)),
        torch.no_grad(),
        pyro.validation_enabled(False),
        store.scope(store.get_state()),
        tracker,
        _tracked_parameters(roots(fn), tracker),
    ):
        args, kwargs = _arguments(fn, args, kwargs)
        trace = poutine.trace(fn).get_trace(*args, **kwargs)
        provenance = {
            name: get_provenance(site["fn"].log_prob(site["value"]))
            for name, site in trace.nodes.items()
            if is_sample_site(site)
        }
    return trace, tracker, provenance


def roots(fn: Callable) -> list[torch.nn.Module]:
    """The modules a model or guide ``fn`` is: ``fn`` itself, or the object whose method it is
    (a tutorial's ``vae.model``), also behind ``functools.partial``."""
    fn = getattr(fn, "func", fn)
    found = (fn, getattr(fn, "__self__", None))
    return [m for m in found if isinstance(m, torch.nn.Module)]


@contextmanager
def _tracked_parameters(modules, tracker: TrackNetworks) -> Iterator[None]:
    """For the ``with`` block, the plain ``nn.Parameter`` s of every ``PyroModule`` in
    ``modules`` carry their param-store names (``guide.local``): a ``PyroModule`` hands out
    the parameter itself, not the value its ``pyro.param`` statement returns, so Pyro's
    tracking loses them."""
    swapped = [
        (module, name, value)
        for root in modules
        for module in root.modules()
        if isinstance(module, PyroModule)
        for name, value in module._parameters.items()
        if isinstance(value, torch.nn.Parameter) and not name.endswith("_unconstrained")
    ]
    try:
        for module, name, value in swapped:
            full = f"{module._pyro_name}.{name}" if module._pyro_name else name
            tracker.params[full] = value
            module._parameters[name] = track(value, frozenset({full}))
        yield
    finally:
        for module, name, value in swapped:
            module._parameters[name] = value
