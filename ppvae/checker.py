"""``check(model, guide, batch)``: does this model and guide pair up? Plain-word answers.

Pyro reports a mismatched pair late and obscurely (a broadcasting error deep in an ELBO, or
parameters that silently never train). :func:`check` runs one trace of each on a batch and
explains each problem with what to change. :func:`~ppvae.train.fit` runs it before training.
"""

from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppvae.models.sites import DATA
from ppvae.objectives import OBJECTIVES


class ModelGuideError(ValueError):
    """The model and guide cannot be trained together; the message lists what to change."""


def _sample_sites(trace) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in trace.nodes.items()
        if s["type"] == "sample" and not site_is_subsample(s)
    }


def _run(fn, who: str, args, kwargs):
    try:
        with pyro.get_param_store().scope():
            return poutine.trace(fn).get_trace(*args, **kwargs), None
    except Exception as err:  # any failure of user code becomes a readable problem
        # Pyro appends a multi-line dump of trace shapes; the first line says what went wrong
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return None, f"the {who} failed on a batch of shape {tuple(args[0].shape)}: {first}"


def _site_problems(model_sites, guide_sites) -> list[str]:
    latent = {n for n, s in model_sites.items() if not s["is_observed"]}
    problems = [
        f"the guide samples '{n}' but the model has no latent site '{n}': rename it to one of "
        f"the model's latent sites ({', '.join(sorted(latent)) or 'none'}) or remove it"
        for n in sorted(set(guide_sites) - latent)
    ]
    problems += [
        f"the model's latent site '{n}' has no guide site: the guide must sample '{n}' "
        "(import the name from ppvae.models.sites instead of retyping it)"
        for n in sorted(latent - set(guide_sites))
    ]
    return problems


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


def _plate(site):
    return next((f for f in site["cond_indep_stack"] if f.name == DATA), None)


def _plate_problems(model_sites, guide_sites) -> list[str]:
    problems = []
    for who, sites in (("model", model_sites), ("guide", guide_sites)):
        problems += [
            f"the {who} samples '{n}' outside the data plate, so minibatches are not scaled to "
            f"the data set: wrap it in `with data_plate(x, idx, num_data):` (ppvae.models.sites)"
            for n, s in sites.items()
            if _plate(s) is None
        ]
    for name in sorted(set(model_sites) & set(guide_sites)):
        m, g = _plate(model_sites[name]), _plate(guide_sites[name])
        if m is not None and g is not None:
            problems += _plate_size_problems(name, m, g)
    return problems


def _plate_size_problems(name: str, m, g) -> list[str]:
    """The minibatch sizes, then the data-set sizes (the N of the N / B scaling), must agree."""
    if m.size != g.size:
        return [
            f"site '{name}': the data plate has size {m.size} in the model but {g.size} in "
            "the guide: pass the same idx and num_data to both"
        ]
    m_full, g_full = m.full_size or m.size, g.full_size or g.size
    if m_full != g_full:
        return [
            f"site '{name}': the data plate covers {m_full} examples in the model but {g_full} "
            "in the guide, so their log-densities are scaled differently: open the plate with "
            "the num_data that fit passes, e.g. `with data_plate(x, idx, num_data):`"
        ]
    return []


def _seen_params(*traces) -> set[int]:
    seen = set()
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "param":
                value = site["value"]
                unconstrained = getattr(value, "unconstrained", None)
                seen.add(id(unconstrained() if unconstrained else value))
    return seen


def _param_problems(model, guide, traces) -> list[str]:
    seen = _seen_params(*traces)
    problems = []
    for who, obj in (("model", model), ("guide", guide)):
        if not isinstance(obj, torch.nn.Module):
            continue
        hidden = [n for n, p in obj.named_parameters() if p.requires_grad and id(p) not in seen]
        if hidden:
            names = ", ".join(hidden[:4]) + (", ..." if len(hidden) > 4 else "")
            problems.append(
                f"the {who} has parameters that Pyro never sees ({names}), so SVI would not "
                f"train them: make the {who} a pyro.nn.PyroModule, or call "
                f"pyro.module('{who}', self) at the top of its forward"
            )
    return problems


def _reparam_problems(guide_sites, objective: str) -> list[str]:
    if not OBJECTIVES[objective].reparameterized:
        return []
    return [
        f"the guide's distribution at '{n}' ({type(s['fn']).__name__}) cannot be "
        f"reparameterized, but objective '{objective}' assumes it is: its gradient would "
        "silently become a score-function estimate; choose objective 'score' or "
        "'score-baseline', or a distribution with rsample"
        for n, s in guide_sites.items()
        if not s["fn"].has_rsample
    ]


def problems(
    model,
    guide,
    x: torch.Tensor,
    *,
    idx: torch.Tensor | None = None,
    num_data: int | None = None,
    objective: str = "trace",
) -> list[str]:
    """Everything that stops ``model`` and ``guide`` from training together on batch ``x``.

    Returns
    -------
    list of str
        One sentence per problem, each saying what to change; empty when the pair is sound.
    """
    args, kwargs = (x, idx), {"num_data": num_data}
    guide_trace, guide_error = _run(guide, "guide", args, kwargs)
    model_trace, model_error = _run(model, "model", args, kwargs)
    if guide_error or model_error:
        return [e for e in (guide_error, model_error) if e]
    model_sites, guide_sites = _sample_sites(model_trace), _sample_sites(guide_trace)
    return (
        _site_problems(model_sites, guide_sites)
        + _shape_problems(model_sites, guide_sites)
        + _plate_problems(model_sites, guide_sites)
        + _param_problems(model, guide, (model_trace, guide_trace))
        + _reparam_problems(guide_sites, objective)
    )


def check(model, guide, x: torch.Tensor, **kwargs) -> None:
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
    ppvae.checker.ModelGuideError: site 'z' has event shape (3,) in the guide but (2,) ...
    """
    found = problems(model, guide, x, **kwargs)
    if found:
        raise ModelGuideError("; ".join(found))
