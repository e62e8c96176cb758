"""``check(model, guide, batch)``: does this model and guide pair up? Plain-word answers.

Pyro reports a mismatched pair late and obscurely (a broadcasting error deep in an ELBO, or
parameters that silently never train). :func:`check` runs one trace of each on a batch and
explains each problem with what to change. :func:`~ppvae.infer.fitting.fit` runs it before
training. Any Pyro pair can be checked, in either calling convention (:mod:`ppvae.pairs`);
sites are read from the traces, and the one convention is a plate over the examples
(``"data"`` unless ``plate`` names another).
"""

from typing import Any

import pyro
import torch
from pyro import poutine

from ppvae.data import Rows, as_rows
from ppvae.errors import ModelGuideError, first_line  # ModelGuideError: also importable here
from ppvae.pairs import (
    DEFAULT_PLATE,
    SUBSAMPLED,
    aside,
    batch_sized,
    batched,
    claim_parameters,
    data_frame,
    observes,
    sample_sites,
    self_subsampled,
)
from ppvae.pairs.arguments import by_group, has_nan, signature_problems, unobserved_problems
from ppvae.pairs.objectives import OBJECTIVES
from ppvae.pairs.parameter_checks import module_problems, param_problems


def _hint(message: str, x: torch.Tensor, who: str, stale: str) -> str:
    """What commonly lies behind a failure's message, in a few words (the first that fits)."""
    if "dtype" in message or "scalar type" in message:
        return (
            f" (the data is {x.dtype}: convert it to the dtype of the pair's parameters; fit "
            "converts a pair to its training data's dtype)"
        )
    if stale:
        return f" ({stale}: call pyro.clear_param_store() first)"
    if who == "guide" and has_nan(x):
        return MISSING_HINT
    return ""


def _stale_entries(fn, args) -> str:
    """Why the param store is to blame for ``fn`` failing, or "" when it is not (``fn`` fails
    in an empty store too, or the store was empty); names the entries of another shape."""
    store = pyro.get_param_store()
    if not len(store):
        return ""
    saved = store.get_state()
    store.clear()
    try:
        with aside(args[0]), poutine.block(), torch.no_grad():
            fn(*args)
        fresh = {name: tuple(store[name].shape) for name in store.keys()}
    except Exception:  # it fails without the old entries too: they are not the cause
        return ""
    finally:
        store.clear()
        store.set_state(saved)
    old = {name: tuple(store[name].shape) for name in store.keys()}
    named = [
        f"'{name}' of shape {old[name]} where this pair creates {shape}"
        for name, shape in fresh.items()
        if name in old and old[name] != shape
    ][:3]
    if not named:
        return "the param store holds values from an earlier run, and without them this works"
    return f"the param store holds {', '.join(named)}, from an earlier run"


def _run(fn, who: str, args):
    try:
        return poutine.trace(fn).get_trace(*args), None
    except Exception as err:  # any failure of user code becomes a readable problem
        line, x = first_line(err), args[0]
        hint = _hint(line, x, who, _stale_entries(fn, args))
        return None, f"the {who} failed on a batch of shape {tuple(x.shape)}: {line}{hint}"


def _is_discrete(site) -> bool:
    return bool(getattr(site["fn"].support, "is_discrete", False))


def _unguided_problem(name: str, site, enumerates: bool) -> str:
    if not _is_discrete(site):
        return (
            f"the model's latent site '{name}' has no guide site: the guide must sample '{name}'"
        )
    if not site["infer"].get("enumerate"):
        return (
            f"the model's latent site '{name}' is discrete and the guide does not sample it: "
            f"sum it out by enumeration; mark it pyro.sample('{name}', ..., "
            "infer={'enumerate': 'parallel'}) and choose objective 'enum'"
        )
    if not enumerates:
        return (
            f"the model enumerates its discrete latent site '{name}', but the objective does "
            "not sum it out: choose objective 'enum' (TraceEnum_ELBO)"
        )
    return ""


def _site_problems(model_sites, guide_sites, objective: str | None) -> list[str]:
    latent = {n: s for n, s in model_sites.items() if not s["is_observed"]}
    # an AutoGuide's auxiliary sites (say mu_unconstrained) have no model site by design
    guide_sites = {n: s for n, s in guide_sites.items() if not s["infer"].get("is_auxiliary")}
    problems = [
        f"the guide samples '{n}' but the model has no latent site '{n}': rename it to one of "
        f"the model's latent sites ({', '.join(sorted(latent)) or 'none'}) or remove it"
        for n in sorted(set(guide_sites) - set(latent))
    ]
    enumerates = objective is None or OBJECTIVES[objective].enumerates
    problems += [
        _unguided_problem(n, latent[n], enumerates) for n in sorted(set(latent) - set(guide_sites))
    ]
    return [p for p in problems if p]


def _shape_problems(model_sites, guide_sites) -> list[str]:
    problems = []
    for name in sorted(set(model_sites) & set(guide_sites)):
        p, q = model_sites[name]["fn"], guide_sites[name]["fn"]
        if p.event_shape != q.event_shape:
            hint = f".to_event({len(p.event_shape)})" if len(p.event_shape) else "no .to_event"
            problems.append(
                f"site '{name}' has event shape {tuple(q.event_shape)} in the guide but "
                f"{tuple(p.event_shape)} in the model: give the guide's distribution the model's "
                f"event shape (batch dims are examples; try {hint})"
            )
        elif p.batch_shape != q.batch_shape:
            problems.append(
                f"site '{name}' has batch shape {tuple(q.batch_shape)} in the guide but "
                f"{tuple(p.batch_shape)} in the model: one row per example in both, inside the "
                "data plate"
            )
    return problems


def _plate_names(sites) -> dict[str, int]:
    return {f.name: f.size for s in sites.values() for f in s["cond_indep_stack"]}


def _missing_plate_problems(model_sites, plate: str) -> list[str]:
    plates = _plate_names(model_sites)
    if plate in plates:
        return []
    if not plates:
        return [
            f"the model opens no plate over the examples: wrap its per-example sites in "
            f"`with pyro.plate('{plate}', x.shape[0]):`"
        ]
    named = ", ".join(f"'{n}' (size {s})" for n, s in plates.items())
    return [
        f"the model opens no plate named '{plate}' (its plates: {named}): name the plate over "
        f"the examples '{plate}', or pass its name (FitConfig(plate=...), "
        "evaluate(..., plate=...))"
    ]


def _placement_problems(model_sites, guide_sites, plate: str) -> list[str]:
    problems = [
        f"the model observes '{n}' outside the data plate, so a minibatch is scored as one "
        f"example and is not scaled to the data set: observe it inside "
        f"`with pyro.plate('{plate}', x.shape[0]):`"
        for n, s in model_sites.items()
        if observes(s) and data_frame(s, plate) is None
    ]
    for name in sorted(set(model_sites) & set(guide_sites)):
        in_model = data_frame(model_sites[name], plate) is not None
        if in_model != (data_frame(guide_sites[name], plate) is not None):
            who, other = ("guide", "model") if in_model else ("model", "guide")
            problems.append(
                f"the {who} samples '{name}' outside the data plate but the {other} inside it, "
                f"so their log-densities are scaled differently: wrap it in "
                f"`with pyro.plate('{plate}', x.shape[0]):` in both (ppvae's own "
                "models use `with data_plate(x, idx, num_data):`)"
            )
    return problems


def _covered(frame, rows: int, num_data: int | None) -> int:
    """How many examples a plate frame stands for once ppvae has scaled it."""
    if frame.full_size == frame.size and batch_sized(frame, rows) and num_data is not None:
        return num_data
    return rows if frame.size == -1 else frame.full_size or frame.size


def _size_problems(model_sites, guide_sites, plate: str, rows: int, num_data) -> list[str]:
    problems = []
    for name in sorted(set(model_sites) & set(guide_sites)):
        m, g = data_frame(model_sites[name], plate), data_frame(guide_sites[name], plate)
        if m is None or g is None:
            continue
        if m.size != g.size:
            return [
                f"site '{name}': the data plate has size {m.size} in the model but {g.size} in "
                "the guide: pass the same idx and num_data to both"
            ]
        m_full, g_full = _covered(m, rows, num_data), _covered(g, rows, num_data)
        if m_full != g_full:
            return [
                f"site '{name}': the data plate covers {m_full} examples in the model but "
                f"{g_full} in the guide, so their log-densities are scaled differently: open "
                "the plate with the num_data that fit passes, e.g. `with data_plate(x, idx, "
                "num_data):`, or size it by the batch, `pyro.plate('data', x.shape[0])`"
            ]
    for site in model_sites.values():
        frame = data_frame(site, plate)
        if frame is not None and frame.size == frame.full_size and not batch_sized(frame, rows):
            return [
                f"the plate '{plate}' has size {frame.size} in the model but the batch has "
                f"{rows} rows: size it by the batch, `pyro.plate('{plate}', x.shape[0])`"
            ]
    return problems


def _likelihood_problems(model_sites) -> list[str]:
    problems = []
    for name, site in model_sites.items():
        if not site["is_observed"]:
            continue
        try:
            site["fn"].log_prob(site["value"])
        except (ValueError, RuntimeError) as err:
            fn = type(getattr(site["fn"], "base_dist", site["fn"])).__name__
            problems.append(
                f"the model cannot score the data at its observed site '{name}' ({fn}): "
                f"{first_line(err)}. For grey levels in [0, 1] binarize the data "
                "(--binarize static or dynamic), or choose a likelihood whose support holds "
                "them (ContinuousBernoulli, a Gaussian)"
            )
    return problems


MISSING_HINT = (
    " (the batch has missing entries, NaN: the guide must read them, e.g. an encoder of the "
    "zero-filled data and its mask, GUIDES['masked-diag'])"
)


def _draw_problems(guide_sites, x: torch.Tensor) -> list[str]:
    hint = MISSING_HINT if has_nan(x) else ""
    return [
        f"the guide's draw at '{n}' is not finite on this batch{hint}"
        for n, s in guide_sites.items()
        if torch.is_floating_point(s["value"]) and not bool(s["value"].isfinite().all())
    ]


def _reparam_problems(guide_sites, objective: str | None) -> list[str]:
    if objective is None or not OBJECTIVES[objective].reparameterized:
        return []
    return [
        f"the guide's distribution at '{n}' ({type(s['fn']).__name__}) cannot be "
        f"reparameterized, but objective '{objective}' assumes it is: its gradient would "
        "silently become a score-function estimate; choose objective 'score' or "
        "'score-baseline', or a distribution with rsample"
        for n, s in guide_sites.items()
        if not s["fn"].has_rsample and not _is_discrete(s)
    ]


def problems(
    model,
    guide,
    x: torch.Tensor,
    *,
    idx: torch.Tensor | None = None,
    num_data: int | None = None,
    objective: str | None = "trace",
    plate: str = DEFAULT_PLATE,
    _seen_in_all: set[int] | None = None,
) -> list[str]:
    """Everything that stops ``model`` and ``guide`` from training together on batch ``x``.

    ``objective`` None checks the pair for scoring (``evaluate``): enumerated discrete latents
    and guides that cannot be reparameterized are fine there.

    The model and guide may be written ``f(x)`` (Pyro's) or ``f(x, idx=None, num_data=None)``
    (ppvae's, :mod:`ppvae.pairs`). Tracing them registers their parameters in Pyro's param
    store, as the first SVI step would.

    Returns
    -------
    list of str
        One sentence per problem, each saying what to change; empty when the pair is sound.
    """
    x = as_rows(x, "data")
    if isinstance(x, Rows):
        found = signature_problems(model, guide, x)
        seen: set[int] = set()  # the parameters the calls of all groups show Pyro
        options = {"num_data": num_data, "objective": objective, "plate": plate}
        found = found or by_group(problems, model, guide, x, idx, options | {"_seen_in_all": seen})
        if found is not None:  # networks judged over all groups (scoring trains none)
            return found or (module_problems(model, guide, seen) if objective else [])
    args = (x, idx, num_data)
    calls = batched(model, plate), batched(guide, plate)
    claim_parameters(*calls, x, idx)
    guide_trace, guide_error = _run(calls[1], "guide", args)
    model_trace, model_error = _run(calls[0], "model", args)
    if guide_error or model_error:
        return [e for e in (guide_error, model_error) if e]
    model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
    found = _missing_plate_problems(model_sites, plate) or unobserved_problems(
        model, model_sites, x, plate
    )
    if found:
        return found + _likelihood_problems(model_sites)
    seen_in_all = set() if objective is None else _seen_in_all  # scoring trains no network
    b = self_subsampled(model_trace, plate)
    if objective is None and b is not None:  # scoring: every row, once
        return [SUBSAMPLED.format(b=b, plate=plate, what="scoring (evaluate, log_likelihood)")]
    return (
        _draw_problems(guide_sites, x)
        + _site_problems(model_sites, guide_sites, objective)
        + _shape_problems(model_sites, guide_sites)
        + _placement_problems(model_sites, guide_sites, plate)
        + _size_problems(model_sites, guide_sites, plate, x.shape[0], num_data)
        + _likelihood_problems(model_sites)
        + param_problems(model, guide, (model_trace, guide_trace), seen_in_all=seen_in_all)
        + _reparam_problems(guide_sites, objective)
    )


def check(model, guide, x: torch.Tensor, **kwargs: Any) -> None:
    """Raise :class:`ModelGuideError` listing every problem :func:`problems` finds.

    Examples
    --------
    >>> from ppvae.config import ArchConfig, DataShape
    >>> from ppvae.guides import GUIDES
    >>> from ppvae.models import MODELS
    >>> shape = DataShape(x_dim=64, image_shape=None, num_data=10)
    >>> model = MODELS["bernoulli"](ArchConfig(), shape)
    >>> check(model, GUIDES["diag"](ArchConfig(), shape), torch.rand(10, 64))
    >>> check(model, GUIDES["diag"](ArchConfig(z_dim=3), shape), torch.rand(10, 64))
    Traceback (most recent call last):
    ...
    ppvae.errors.ModelGuideError: site 'z' has event shape (3,) in the guide but (2,) ...
    """
    found = problems(model, guide, x, **kwargs)
    if found:
        raise ModelGuideError("; ".join(found))
