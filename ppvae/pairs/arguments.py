"""Checks of the data a pair is called with (:mod:`ppvae.data.rows`): can the model and guide
take its tensors, and does the model observe something inside the plate over examples (a
``model(x, y=None)`` called without ``y`` samples what it should observe, and would train
silently on nothing)."""

import inspect

from ppvae.data import Rows
from ppvae.data.rows import signature_problem
from ppvae.pairs.calling import accepts_indices, signature_target
from ppvae.pairs.structure import observes


def has_nan(x) -> bool:
    """Whether the data (a tensor, or every tensor of a Rows) has a NaN entry."""
    tensors = x.tensors if isinstance(x, Rows) else [x]
    return any(t.is_floating_point() and bool(t.isnan().any()) for t in tensors)


def signature_problems(model, guide, x: Rows) -> list[str]:
    """The model or guide cannot take the data's tensors (or None for unobserved ones)."""
    optional = tuple(bool(c) for c in x.unobserved().any(0).tolist())
    found = []
    for who, fn in (("model", model), ("guide", guide)):
        problem = _index_problem(fn, x) or signature_problem(signature_target(fn), x, optional)
        if problem:
            found.append(f"the {who}'s signature does not fit the data: {problem}")
    return found


def _index_problem(fn, x: Rows) -> str:
    """A tensor of the data would land in ``idx`` or ``num_data``, which ppvae's convention
    ``f(..., idx=None, num_data=None)`` fills itself; "" when none does."""
    if not accepts_indices(fn):
        return ""
    clash = [k for k in x.kwargs if k in ("idx", "num_data")]
    if clash:
        return f"the data's key '{clash[0]}' is ppvae's own argument {clash[0]}: rename it"
    params = inspect.signature(signature_target(fn)).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):  # f(*data, idx=None, ...)
        return ""
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes = positional[: positional.index("idx")] if "idx" in positional else positional
    if len(x.args) <= len(takes):
        return ""
    return (
        f"it takes {len(takes)} tensor(s) ({', '.join(takes)}) before ppvae's idx and "
        f"num_data, but the data is {len(x.args)} tensors: pass a model and guide that take "
        "every tensor (e.g. the m2 or cvae pair)"
    )


def _none_arguments(model, x) -> list[str]:
    """The model's arguments that this call left as None (not given, or given as None)."""
    try:
        params = list(inspect.signature(signature_target(model)).parameters.values())
    except (TypeError, ValueError):
        return []
    given = x if isinstance(x, Rows) else Rows((x,))
    bound = dict(zip((p.name for p in params), given.args, strict=False))  # extra: defaults
    bound |= given.kwargs
    return [
        p.name
        for p in params
        if p.name not in ("idx", "num_data") and p.default is None and bound.get(p.name) is None
    ]


def unobserved_problems(model, model_sites, x, plate: str) -> list[str]:
    """No observed site inside the data plate: the pair would learn nothing from the data."""
    if any(observes(s) for s in model_sites.values()):  # (outside: placement's to say)
        return []
    names = _none_arguments(model, x)
    which = (
        f"its argument {', '.join(repr(n) for n in names)} arrived as None, so it samples what "
        f"it should observe: pass the data, e.g. fit(model, guide, (x, {names[0]}))"
        if names
        else "pass the data it observes as an argument"
    )
    return [f"the model observes nothing inside the plate '{plate}': {which}"]


def by_group(problems, model, guide, x: Rows, idx, options) -> list[str] | None:
    """``problems`` of each group of rows of partly observed data, called as ``fit`` calls it
    (its unobserved arguments None), or None when every argument of every row is observed."""
    groups = x.groups()
    if all(all(g.present) for g in groups):
        return None
    found = []
    for g in groups:
        sub = None if idx is None else idx[g.rows.to(idx.device)]
        rows = x[g.rows.to(x.device)].present(g.present)
        found += problems(model, guide, rows, idx=sub, **options)
    return list(dict.fromkeys(found))
