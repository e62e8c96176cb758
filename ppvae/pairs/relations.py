"""A model's or a guide's relations (what is computed from what) in the format of Pyro's
:func:`pyro.infer.inspect.get_model_relations`, with its networks and data arguments as nodes
(read by :mod:`ppvae.pairs.tracking`), for :mod:`ppvae.pairs.diagram` to draw.

Nothing here knows a site's name.
"""

from collections import defaultdict
from collections.abc import Callable

import pyro
import torch

from ppvae.pairs.tracking import (
    DATA_PREFIX,
    NETWORK_PREFIX,
    TrackNetworks,
    roots,
    trace_relations,
)


def network_name(module: torch.nn.Module, roots, params: dict[str, torch.Tensor]) -> str:
    """A network's name: its attribute path in the model or guide (``decoder``), else the name
    it was registered under (``pyro.module("decoder", net)``, a ``PyroModule``'s name), else its
    class's name."""
    for root in roots:
        path = next((p for p, m in root.named_modules() if m is module and p), None)
        if path is not None:
            return path
    by_tensor = {id(value): site for site, value in params.items()}
    for rel, tensor in module.named_parameters():
        site = by_tensor.get(id(tensor), "").replace("$$$", ".")
        if site.endswith(rel) and site != rel:
            return site[: -len(rel)].rstrip(".")
    return getattr(module, "_pyro_name", "") or type(module).__name__


def _networks(fn: Callable, tracker: TrackNetworks) -> dict[str, tuple[str, str, frozenset]]:
    """``net:<id>`` -> (node name, class name, provenance of its inputs) for every outermost
    network call. Calls of one module are one node, and so are the calls of a network's own
    submodules made outside it (a flow's transforms, called when its distribution samples)."""
    modules = {id(c.module): c.module for c in tracker.calls if c.outermost()}

    def owner(module: torch.nn.Module) -> torch.nn.Module:
        outer = [m for m in modules.values() if m is not module and _contains(m, module)]
        return owner(outer[0]) if outer else module

    found: dict[int, frozenset] = {}
    for call in (c for c in tracker.calls if c.outermost()):
        key = id(owner(call.module))
        found[key] = found.get(key, frozenset()) | call.inputs
    names, taken = {}, set()
    for key in found:
        name = network_name(modules[key], roots(fn), tracker.params)
        names[key] = next(
            _numbered(name, k) for k in range(1, 99) if _numbered(name, k) not in taken
        )
        taken.add(names[key])
    return {
        f"{NETWORK_PREFIX}{key}": (
            NETWORK_PREFIX + names[id(owner(module))],
            type(owner(module)).__name__,
            found.get(key, frozenset()),
        )
        for key, module in modules.items()
    }


def _contains(outer: torch.nn.Module, inner: torch.nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def _numbered(name: str, k: int) -> str:
    return name if k == 1 else f"{name} ({k})"


def dist_name(fn) -> str:
    """The name of a site's distribution, seen through ``Independent``, expansion and masking
    (as :func:`pyro.infer.inspect.render_model` shows it)."""
    while isinstance(
        fn,
        (
            pyro.distributions.Independent,
            pyro.distributions.ExpandedDistribution,
            pyro.distributions.MaskedDistribution,
        ),
    ):
        fn = fn.base_dist
    return type(fn).__name__


def get_relations(fn: Callable, args: tuple = (), kwargs: dict | None = None) -> dict:
    """The relations of ``fn``'s sites, networks, data arguments and parameters, in the format
    of :func:`pyro.infer.inspect.get_model_relations` (so
    :func:`~pyro.infer.inspect.generate_graph_specification` lays them out), where
    ``sample_sample`` also has a key for each network (``net:decoder``) and each data argument
    (``data:x``), whose ``sample_dist`` is None; ``observed`` lists the data arguments too, and
    ``networks`` maps each network to its class's name.

    Examples
    --------
    >>> import pyro.distributions as dist
    >>> from torch import nn
    >>> net = nn.Linear(3, 2)
    >>> def guide(x):
    ...     pyro.module("encoder", net)
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("z", dist.Normal(net(x), 1.0).to_event(1))
    >>> r = get_relations(guide, (torch.zeros(4, 3),))
    >>> r["sample_sample"]
    {'z': ['net:encoder'], 'net:encoder': ['data:x'], 'data:x': []}
    >>> r["plate_sample"], r["networks"]
    ({'data': ['data:x', 'z']}, {'net:encoder': 'Linear'})
    """
    trace, tracker, provenance = trace_relations(fn, args, kwargs or {})
    networks = _networks(fn, tracker)
    sites = {n: s for n, s in trace.nodes.items() if n in provenance}
    params = set(tracker.params)

    names = {token: node for token, (node, _, _) in networks.items()}
    order = _order(sites)

    def upstream(tokens: frozenset) -> tuple[list[str], list[str]]:
        nodes = {names.get(t, t) for t in tokens}
        drawn = [
            n for n in nodes if n in sites or n in names.values() or n.startswith(DATA_PREFIX)
        ]
        return sorted(drawn, key=order), sorted(n for n in nodes if n in params)

    relations = defaultdict(dict)
    for name, site in sites.items():
        tokens = provenance[name] - {name} - tracker.observes.get(name, frozenset())
        relations["sample_sample"][name], relations["sample_param"][name] = upstream(tokens)
        relations["sample_dist"][name] = dist_name(site["fn"])
    inputs = defaultdict(frozenset)
    for node, _, tokens in networks.values():
        inputs[node] |= tokens
    for node, tokens in inputs.items():
        ups, ps = upstream(tokens)
        # a site the network feeds is not also its input (a flow scores z through its
        # transforms): the arrow goes from the network to the site
        fed = {s for s in sites if node in relations["sample_sample"][s]}
        relations["sample_sample"][node] = [u for u in ups if u != node and u not in fed]
        relations["sample_param"][node], relations["sample_dist"][node] = ps, None
    return _finish(relations, sites, trace, networks)


def _order(sites):
    """Sort key: data arguments, then sites in the order they were sampled, then networks."""
    place = {name: i for i, name in enumerate(sites)}

    def key(node: str):
        if node.startswith(DATA_PREFIX):
            return (0, 0, node)
        return (1, place[node], node) if node in place else (2, 0, node)

    return key


def _finish(relations: dict, sites: dict, trace, networks: dict) -> dict:
    """Add the data arguments (each in the plates of all the sites it reaches), the plates,
    the parameters' constraints and the observed nodes to ``relations``."""
    edges = relations["sample_sample"]
    data = sorted({n for ups in edges.values() for n in ups if n.startswith(DATA_PREFIX)})
    plates = defaultdict(list)
    for node in data:
        edges[node], relations["sample_param"][node] = [], []
        relations["sample_dist"][node] = None
        for plate in _shared_plates(node, edges, sites):
            plates[plate].append(node)
    for name, site in sites.items():
        for frame in site["cond_indep_stack"]:
            plates[frame.name].append(name)
    used = sorted({p for ps in relations["sample_param"].values() for p in ps})
    return {
        **relations,
        "sample_sample": dict(edges),
        "param_constraint": {p: _constraint(trace, p) for p in used},
        "plate_sample": dict(plates),
        "observed": data + [n for n, s in sites.items() if s["is_observed"]],
        "networks": {node: kind for node, kind, _ in networks.values()},
    }


def _constraint(trace, param: str) -> str:
    """The constraint of ``param`` as Pyro shows it; ``Real()`` for a module's own parameter,
    which makes no param site (see :mod:`ppvae.pairs.tracking`)."""
    site = trace.nodes.get(param)
    return str(site["kwargs"]["constraint"]) if site else "Real()"


def _shared_plates(node: str, edges: dict, sites: dict) -> list[str]:
    """The plates that every sample site ``node`` reaches (through networks) sits in."""
    reached, frontier = set(), [node]
    while frontier:
        source = frontier.pop()
        for target, ups in edges.items():
            if source in ups and target not in reached:
                reached.add(target)
                if target not in sites:
                    frontier.append(target)
    stacks = [[f.name for f in sites[n]["cond_indep_stack"]] for n in reached if n in sites]
    if not stacks:
        return []
    return [p for p in stacks[0] if all(p in s for s in stacks[1:])]
