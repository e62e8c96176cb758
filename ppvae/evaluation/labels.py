"""Scores of semi-supervised (M2-like) pairs: the label summed out, and the guide as a classifier.

A *label* is an argument of the data (:class:`~ppvae.data.Rows`) that the model observes at a
discrete site when it is given and that the guide samples at that site when it arrives as None
(Pyro's ss-vae: ``model(xs, ys=None)`` observes ``y`` given ``ys``, and ``guide(xs, ys=None)``
samples ``y ~ q(y | x)`` without). It is found from traces, never by name
(:func:`label_argument`). For such data :func:`label_columns` gives

- ``log_px_unlabelled`` (and its Monte Carlo ``_stderr``): log p(x) of each test row with the
  label left out, the model's y summed out by importance sampling over y ~ q(y | x) together
  with its other latents (a valid estimator of log p(x), a lower bound in expectation that
  rises to it with the samples);
- ``accuracy``: the share of test rows whose label is the mode of q(y | x).
"""

import math

import torch
from pyro import poutine

from ppvae.data import Rows
from ppvae.evaluation.bounds import log_likelihood
from ppvae.pairs import DEFAULT_PLATE, aside, batched, data_frame, sample_sites

PROBE = 16
"""Rows traced to find the label."""


def _discrete(site) -> bool:
    return bool(getattr(site["fn"].support, "is_discrete", False))


def label_argument(model, guide, x: Rows, plate: str = DEFAULT_PLATE):
    """(which tensors to keep, the label's site name) for the first argument of ``x`` that is a
    label (see the module's notes), or None."""
    rows = x[: min(PROBE, len(x))]
    calls = batched(model, plate), batched(guide, plate)
    with aside(rows), poutine.block(), torch.no_grad():
        given = sample_sites(poutine.trace(calls[0]).get_trace(rows, None, None))
        observed = {n for n, s in given.items() if s["is_observed"] and data_frame(s, plate)}
        for k in range(len(x.tensors)):
            keep = tuple(i != k for i in range(len(x.tensors)))
            try:
                trace = poutine.trace(calls[1]).get_trace(rows.present(keep), None, None)
            except Exception:  # the guide needs this argument: not a label
                continue
            for name, site in sample_sites(trace).items():
                if name in observed and not site["is_observed"] and _discrete(site):
                    return keep, name
    return None


@torch.no_grad()
def accuracy(model, guide, x: Rows, keep, site: str, plate: str = DEFAULT_PLATE) -> float:
    """Share of rows whose observed label is the mode of the guide's q(label | rest)."""
    calls = batched(model, plate), batched(guide, plate)
    with aside(x), poutine.block():
        q = poutine.trace(calls[1]).get_trace(x.present(keep), None, None).nodes[site]["fn"]
        truth = poutine.trace(calls[0]).get_trace(x, None, None).nodes[site]["value"]
    probs = getattr(q, "probs", None)
    if probs is None:
        return math.nan
    guess = probs.argmax(-1)
    truth = truth.argmax(-1) if q.event_shape else truth.long()
    return (guess == truth).double().mean().item()


def label_columns(model, guide, x, num_samples: int, plate: str = DEFAULT_PLATE) -> dict:
    """The columns above for data with a label argument; {} for any other data."""
    if not isinstance(x, Rows) or not all(all(g.present) for g in x.groups()):
        return {}
    found = label_argument(model, guide, x, plate)
    if found is None:
        return {}
    keep, site = found
    ll = log_likelihood(model, guide, x.present(keep), num_samples=num_samples, plate=plate)
    return {
        "log_px_unlabelled": ll.log_px.mean().item(),
        "log_px_unlabelled_stderr": (ll.stderr.pow(2).sum().sqrt() / len(x)).item(),
        "accuracy": accuracy(model, guide, x, keep, site, plate),
    }
