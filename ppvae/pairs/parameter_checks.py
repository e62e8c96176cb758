"""Checks that a pair's parameters reach Pyro: every trainable tensor it computes with must be
a parameter Pyro sees (registered with ``pyro.module``, ``pyro.param`` or a ``PyroModule``),
or SVI silently never trains it. Used by :func:`ppvae.pairs.checker.problems`.
"""

import torch
from pyro.nn import PyroModule

from ppvae.pairs import param_tensors, sample_sites


def _module_problems(model, guide, seen: set[int]) -> tuple[list[str], set[int]]:
    problems, covered = [], set()
    for who, obj in (("model", model), ("guide", guide)):
        if not isinstance(obj, torch.nn.Module):
            continue
        hidden = [
            (n, p) for n, p in obj.named_parameters() if p.requires_grad and id(p) not in seen
        ]
        if hidden:
            names = ", ".join(n for n, _ in hidden[:4]) + (", ..." if len(hidden) > 4 else "")
            covered |= {id(p) for _, p in hidden}
            fix = (
                "convert its plain submodules with pyro.nn.module.to_pyro_module_"
                if isinstance(obj, PyroModule)
                else f"make the {who} a pyro.nn.PyroModule"
            )
            problems.append(
                f"the {who} has parameters that Pyro never sees ({names}), so SVI would not "
                f"train them: {fix}, or call pyro.module('{who}', self) at the top of its "
                "forward"
            )
    return problems, covered


def _graph_leaves(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors that require grad and that ``tensor`` was computed from."""
    stack, seen, leaves = [tensor.grad_fn], set(), []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if getattr(fn, "variable", None) is not None:
            leaves.append(fn.variable)
        stack.extend(f for f, _ in fn.next_functions)
    return leaves


def _log_density(*traces) -> torch.Tensor | None:
    total = None
    for trace in traces:
        for site in sample_sites(trace).values():
            lp = site["fn"].log_prob(site["value"]).sum()
            total = lp if total is None else total + lp
    return total


def _unseen_problems(traces, seen: set[int], covered: set[int]) -> list[str]:
    """Trainable tensors the pair computes with but never shows Pyro (a network called without
    pyro.module, or one whose name the param store already holds from an earlier model)."""
    try:
        total = _log_density(*traces)
    except (ValueError, RuntimeError):
        return []  # reported by the likelihood check
    if total is None or total.grad_fn is None:
        return []
    leaves = _graph_leaves(total)
    hidden = [t for t in leaves if t.requires_grad and id(t) not in seen | covered]
    if not hidden:
        return []
    shapes = ", ".join(str(tuple(t.shape)) for t in hidden[:4]) + (
        ", ..." if len(hidden) > 4 else ""
    )
    stale = sorted(n for n, t in param_tensors(*traces).items() if id(t) not in map(id, leaves))
    why = (
        f"; the param store already holds {', '.join(stale[:3])} from an earlier model, so Pyro "
        "optimizes those stored tensors instead: call pyro.clear_param_store() before building a "
        "new model"
        if stale
        else ": register each network with pyro.module('name', net) at the top of the model or "
        "guide, or make it a pyro.nn.PyroModule"
    )
    return [
        f"the pair computes with {len(hidden)} trainable tensor(s) that Pyro never sees (shapes "
        f"{shapes}), so SVI would not train them{why}"
    ]


def module_problems(model, guide, seen: set[int]) -> list[str]:
    """The networks' parameters that no call showed Pyro: ``seen`` holds the ids of the
    parameters the traces of every call (each group of rows of partly observed data) held."""
    return _module_problems(model, guide, seen)[0]


def _module_parameters(*objects) -> set[int]:
    return {id(p) for o in objects if isinstance(o, torch.nn.Module) for p in o.parameters()}


def param_problems(model, guide, traces, *, seen_in_all: set[int] | None = None) -> list[str]:
    """Plain-word problems with the parameters of the pair behind ``traces``.

    With ``seen_in_all`` (a set) the traces are one group of rows among several (``fit`` calls
    the pair once per group): the parameters these traces hold are added to it and the networks'
    parameters are not judged here, since a classifier q(y | x) that only the unlabelled rows
    call is still trained; :func:`module_problems` judges them over all groups afterwards.
    """
    seen = {id(t) for t in param_tensors(*traces).values()}
    if seen_in_all is None:
        problems, covered = _module_problems(model, guide, seen)
    else:
        seen_in_all |= seen
        problems, covered = [], _module_parameters(model, guide)
    with torch.enable_grad():
        return problems + _unseen_problems(traces, seen, covered)
