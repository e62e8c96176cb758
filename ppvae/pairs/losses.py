"""Training losses built from Pyro's traces, with no host synchronization.

Pyro's ELBO classes return Python floats: ``Trace_ELBO.differentiable_loss`` calls ``.item()``
on every site and checks the loss for NaN on the host, so a GPU waits for every step. The
losses here are the same estimators, written as tensors from the traces' log-densities, so a
training step queues its work and moves on; ``fit`` looks at the losses every few steps.

Each loss returns a tensor whose value is minus the bound's estimate and whose gradient is
minus the surrogate's (the score-function terms included), exactly as Pyro's would:

- :func:`trace_terms`: the ELBO with a Monte Carlo KL (``Trace_ELBO``), score-function terms
  for latent sites that are not reparameterized (``log_r`` as in Pyro);
- :func:`mean_field_terms`: the analytic KL where one is registered (``TraceMeanField_ELBO``);
- :func:`iwae_terms`: the importance-weighted bound, per example. Pyro's ``RenyiELBO`` takes the
  log-mean-exp of *scaled* log weights, which for a minibatch scaled by s = N / B is the bound of
  the weights raised to the power s, not s times the bound; here the log weights are unscaled
  per example before the log-mean-exp, then scaled.

Validation is off while these run (it checks values on the host); ``fit`` checks the pair with
validation on before training.
"""

import math
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer.trace_elbo import _compute_log_r
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from ppvae.pairs import data_frame, observed_site
from ppvae.pairs.scoring import analytic_kl, per_row

PARTICLES = "num_particles_vectorized"
"""The plate that vectorizes particles, to the left of the model's plates (Pyro's name)."""


def _vectorized(fn, num_particles: int, nesting: int):
    if num_particles == 1:
        return fn
    return pyro.plate(PARTICLES, num_particles, dim=-1 - nesting)(fn)


def traces(model, guide, args, num_particles: int = 1, nesting: int = 1):
    """The guide's trace and the model's replayed against it, log-densities computed.

    ``num_particles`` > 1 draws the particles in one pass, in a plate left of ``nesting``.
    """
    model, guide = (_vectorized(f, num_particles, nesting) for f in (model, guide))
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    model_trace.compute_log_prob(_not_subsample)
    _score_parts(guide_trace)
    return model_trace, guide_trace


def _not_subsample(name, site) -> bool:
    return not site_is_subsample(site)


def _score_parts(trace) -> None:
    """``Trace.compute_score_parts`` for the sample sites but the plates' subsample sites
    (which have no score parts), without copying the trace to prune them."""
    for site in _samples(trace):
        parts = site["fn"].score_parts(site["value"], *site["args"], **site["kwargs"])
        site["unscaled_log_prob"] = parts.log_prob
        parts = parts.scale_and_mask(site["scale"], site["mask"])
        site["score_parts"], site["log_prob"] = parts, parts.log_prob
        site["log_prob_sum"] = parts.log_prob.sum()


def _samples(trace):
    """The sample sites of a trace, without the plates' subsample sites (never copied)."""
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def trace_terms(model_trace, guide_trace, plate: str):
    """(ELBO, surrogate ELBO) summed over the traces, as in Pyro's ``Trace_ELBO``; the two are
    one tensor when every guide site is reparameterized."""
    model_sum = sum(s["log_prob_sum"] for s in _samples(model_trace))
    guide_sites = _samples(guide_trace)
    elbo = model_sum - sum(s["log_prob_sum"] for s in guide_sites)
    if all(not torch.is_tensor(s["score_parts"].score_function) for s in guide_sites):
        return elbo, elbo
    surrogate, log_r = model_sum, None
    for site in guide_sites:
        _, score, entropy = site["score_parts"]
        if torch.is_tensor(entropy):
            surrogate = surrogate - entropy.sum()
        if torch.is_tensor(score):
            if log_r is None:  # Pyro's, on copies without the plates' subsample sites
                pruned = (prune_subsample_sites(t) for t in (model_trace, guide_trace))
                log_r = _compute_log_r(*pruned)
            cost = log_r.sum_to(site["cond_indep_stack"])
            surrogate = surrogate + (cost * score).sum()
    return elbo, surrogate


def mean_field_terms(model_trace, guide_trace, plate: str):
    """(ELBO, ELBO): each latent site's KL in closed form where one exists, as in Pyro's
    ``TraceMeanField_ELBO`` (which needs a reparameterized guide)."""
    elbo = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"]:
            elbo = elbo + site["log_prob_sum"]
            continue
        q = guide_trace.nodes[name]
        kl = analytic_kl(q["fn"], site["fn"])
        if kl is None:
            elbo = elbo + site["log_prob_sum"] - q["score_parts"].entropy_term.sum()
        else:
            kl = pyro.distributions.util.scale_and_mask(kl, q["scale"], q["mask"])
            elbo = elbo - kl.expand(q["fn"].batch_shape).sum()
    return elbo, elbo


def _data_scale(model_trace, plate: str):
    """N / B, read from an observed site inside the plate over examples (1 without one)."""
    site = observed_site(model_trace, plate)
    return 1.0 if site is None else site["scale"]


def iwae_terms(model_trace, guide_trace, plate: str, num_particles: int, nesting: int):
    """(bound, bound): s * sum_n log mean_k w_nk, with w_nk the unscaled weight of example n
    under particle k and s = N / B (the weight a latent site's beta gives it is kept)."""
    s = _data_scale(model_trace, plate)
    log_w = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in _samples(trace):
            frame = data_frame(site, plate)
            log_w = log_w + sign * per_row(site["log_prob"], frame.dim, nesting) / s
    log_w = log_w.reshape(num_particles, -1) if num_particles > 1 else log_w.reshape(1, -1)
    bound = s * (log_w.logsumexp(0) - math.log(num_particles)).sum()
    return bound, bound


def loss_from(elbo, surrogate) -> torch.Tensor:
    """A tensor with the value of -ELBO and the gradient of -surrogate."""
    if surrogate is elbo:
        return -elbo
    return -surrogate + (surrogate - elbo).detach()


def lean_loss(kind: str, model, guide, *, num_particles: int, nesting: int, plate: str):
    """``loss(x, idx, num_data) -> Tensor`` for ``kind`` in ``trace``, ``mean-field``, ``iwae``."""
    terms: Callable = {
        "trace": trace_terms,
        "mean-field": mean_field_terms,
        "iwae": lambda m, g, p: iwae_terms(m, g, p, num_particles, nesting),
    }[kind]

    def loss(*args) -> torch.Tensor:
        model_trace, guide_trace = traces(model, guide, args, num_particles, nesting)
        elbo, surrogate = terms(model_trace, guide_trace, plate)
        if kind != "iwae":
            elbo, surrogate = elbo / num_particles, surrogate / num_particles
        return loss_from(elbo, surrogate)

    return loss
