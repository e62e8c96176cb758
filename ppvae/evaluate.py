"""Honest evaluation: per-example ELBO with its terms, importance-sampled log p(x), active units.

Everything here is exact arithmetic on Pyro traces: the guide is traced, the model is replayed
against it, and the log-densities are read per example (no plate scaling, no beta). Work is
vectorized over samples and examples by repeating rows, and chunked so memory stays bounded.
"""

import math
import sys
from typing import NamedTuple

import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import kl_divergence
from tqdm.auto import tqdm

from ppvae.models.sites import LATENT, OBS

MAX_ROWS = 1 << 15
"""Rows (examples x samples) pushed through a model and guide at once."""


class ElboTerms(NamedTuple):
    """Per-example ELBO = reconstruction - KL, each of shape (N,), in nats."""

    elbo: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


class LogLikelihood(NamedTuple):
    """Importance-sampled log p(x) per example, shape (N,), and its Monte Carlo standard error.

    ``stderr`` is the delta-method standard error of log of the mean importance weight,
    sqrt(Var[w] / K) / mean(w), estimated from the same K weights.
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    num_samples: int


def _traces(model, guide, x: torch.Tensor, idx: torch.Tensor | None):
    guide_trace = poutine.trace(guide).get_trace(x, idx)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, idx)
    return model_trace.nodes, guide_trace.nodes


def analytic_kl(q: dist.Distribution, p: dist.Distribution) -> torch.Tensor | None:
    """KL(q || p) in closed form, or None where no formula is registered (flows, say).

    A diagonal prior is promoted to a full Gaussian when q is one, since torch registers
    KL only between Gaussians of the same kind.
    """
    if isinstance(q, dist.MultivariateNormal | dist.LowRankMultivariateNormal) and isinstance(
        p, dist.Independent
    ):
        base = p.base_dist
        if isinstance(base, dist.Normal):
            p = dist.MultivariateNormal(base.loc, scale_tril=torch.diag_embed(base.scale))
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def _chunk_terms(model, guide, x, idx, num_samples: int, use_analytic_kl: bool) -> ElboTerms:
    B = x.shape[0]
    rep_idx = None if idx is None else idx.repeat(num_samples)
    nodes_m, nodes_g = _traces(model, guide, x.repeat(num_samples, 1), rep_idx)
    q, z = nodes_g[LATENT]["fn"], nodes_g[LATENT]["value"]
    p = nodes_m[LATENT]["fn"]
    rec = nodes_m[OBS]["fn"].log_prob(nodes_m[OBS]["value"])
    kl = analytic_kl(q, p) if use_analytic_kl else None
    if kl is None:
        kl = q.log_prob(z) - p.log_prob(z)
    rec, kl = rec.reshape(num_samples, B).mean(0), kl.reshape(num_samples, B).mean(0)
    return ElboTerms(rec - kl, rec, kl)


def _row_chunks(n: int, per_row: int):
    step = max(1, MAX_ROWS // max(per_row, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


@torch.no_grad()
def elbo_terms(
    model,
    guide,
    x: torch.Tensor,
    *,
    idx: torch.Tensor | None = None,
    num_samples: int = 1,
    analytic: bool = True,
) -> ElboTerms:
    """The ELBO of each row of ``x`` and its reconstruction / KL split.

    Parameters
    ----------
    model, guide : callables with signature (x, idx=None, num_data=None)
    x : Tensor, shape (N, D)
    idx : LongTensor, shape (N,), optional
        Row numbers of ``x`` in the training set (needed by per-datapoint guides).
    num_samples : int
        Monte Carlo samples of z per example for the reconstruction (and for the KL where it
        has no closed form).
    analytic : bool
        Use the closed-form KL where one exists.

    Returns
    -------
    ElboTerms
        Three tensors of shape (N,), in nats.
    """
    parts = []
    with pyro.get_param_store().scope():
        for rows in _row_chunks(x.shape[0], num_samples):
            sub = None if idx is None else idx[rows]
            parts.append(_chunk_terms(model, guide, x[rows], sub, num_samples, analytic))
    return ElboTerms(*(torch.cat(t) for t in zip(*parts, strict=True)))


def _log_weights(model, guide, x, idx, k: int) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k | x), shape (k, B)."""
    rep_idx = None if idx is None else idx.repeat(k)
    nodes_m, nodes_g = _traces(model, guide, x.repeat(k, 1), rep_idx)
    z = nodes_g[LATENT]["value"]
    log_w = (
        nodes_m[OBS]["fn"].log_prob(nodes_m[OBS]["value"])
        + nodes_m[LATENT]["fn"].log_prob(z)
        - nodes_g[LATENT]["fn"].log_prob(z)
    )
    return log_w.reshape(k, x.shape[0])


def _streamed_log_moments(model, guide, x, idx, num_samples: int):
    """Running logsumexp of w and of w^2 over chunks of samples, each of shape (B,)."""
    k_step = max(1, min(num_samples, MAX_ROWS // x.shape[0]))
    lse1 = lse2 = x.new_full((x.shape[0],), -math.inf)
    for start in range(0, num_samples, k_step):
        log_w = _log_weights(model, guide, x, idx, min(k_step, num_samples - start))
        lse1 = torch.logaddexp(lse1, log_w.logsumexp(0))
        lse2 = torch.logaddexp(lse2, (2 * log_w).logsumexp(0))
    return lse1, lse2


@torch.no_grad()
def log_likelihood(
    model,
    guide,
    x: torch.Tensor,
    *,
    num_samples: int = 1000,
    idx: torch.Tensor | None = None,
    progress: bool | None = None,
) -> LogLikelihood:
    """Importance-sampled log p(x) with the guide as proposal (Burda et al. 2016).

    log p(x) ~= logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K,  z_k ~ q(z | x).

    The estimate is a stochastic lower bound that rises with K towards log p(x). Samples and
    examples are processed in chunks of at most :data:`MAX_ROWS` rows, so K = 5000 fits in
    memory on CPU or GPU.

    ``progress`` shows a bar over the chunks of examples (default: only on a terminal).

    Returns
    -------
    LogLikelihood
        ``log_px`` and ``stderr`` of shape (N,), in nats.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    log_px, stderr = [], []
    log_k = math.log(num_samples)
    with pyro.get_param_store().scope():
        chunks = _row_chunks(x.shape[0], min(num_samples, MAX_ROWS))
        shown = sys.stderr.isatty() if progress is None else progress
        for rows in tqdm(chunks, desc=f"log p(x), K={num_samples}", disable=not shown):
            sub = None if idx is None else idx[rows]
            lse1, lse2 = _streamed_log_moments(model, guide, x[rows], sub, num_samples)
            rel_var = (lse2 - 2 * lse1 + log_k).exp() - 1  # Var[w] / mean(w)^2
            log_px.append(lse1 - log_k)
            stderr.append((rel_var.clamp(min=0) / num_samples).sqrt())
    return LogLikelihood(torch.cat(log_px), torch.cat(stderr), num_samples)


@torch.no_grad()
def posterior_means(guide, x: torch.Tensor, *, num_samples: int = 64) -> torch.Tensor:
    """E_q[z | x] for each row, shape (N, q): exact where q has a mean, else a sample mean."""
    with pyro.get_param_store().scope():
        q = poutine.trace(guide).get_trace(x).nodes[LATENT]["fn"]
        try:
            return q.mean
        except NotImplementedError:
            return q.sample((num_samples,)).mean(0)


def active_units(guide, x: torch.Tensor, *, threshold: float = 0.01) -> tuple[int, torch.Tensor]:
    """Active latent units (Burda et al. 2016): dimensions with Cov_x(E_q[z | x]) > threshold.

    Returns
    -------
    count : int
    variances : Tensor, shape (q,)
        The variance over examples of each coordinate of E_q[z | x].
    """
    variances = posterior_means(guide, x).var(0)
    return int((variances > threshold).sum()), variances


def bits_per_dim(nats: float, x_dim: int, levels: int | None = None) -> float:
    """Negative log-likelihood per dimension in bits, from a log-likelihood per example in nats.

    With ``levels`` (256 for 8-bit pixels dequantized to [0, 1]), the density is rescaled to the
    integer grid first, the usual convention for continuous models of pixel data.
    """
    offset = 0.0 if levels is None else x_dim * math.log(levels)
    return (-nats + offset) / (x_dim * math.log(2))


def evaluate(
    model,
    guide,
    x: torch.Tensor,
    *,
    num_samples: int = 1000,
    idx: torch.Tensor | None = None,
    levels: int | None = None,
) -> pd.DataFrame:
    """One row summarising a model and guide on ``x``: ELBO terms, log p(x) and active units.

    Columns: ``elbo``, ``reconstruction``, ``kl``, ``log_px``, ``log_px_stderr`` (Monte Carlo),
    ``log_px_sd`` (spread over examples), ``bits_per_dim``, ``active_units``, ``num_samples``,
    all per example in nats except where named.
    """
    terms = elbo_terms(model, guide, x, idx=idx, num_samples=10)
    ll = log_likelihood(model, guide, x, num_samples=num_samples, idx=idx)
    log_px = ll.log_px.mean().item()
    row = {name: t.mean().item() for name, t in terms._asdict().items()}
    row |= {
        "log_px": log_px,
        "log_px_stderr": (ll.stderr.pow(2).sum().sqrt() / len(x)).item(),
        "log_px_sd": ll.log_px.std().item(),
        "bits_per_dim": bits_per_dim(log_px, x.shape[1], levels),
        "num_samples": num_samples,
    }
    if idx is None:
        row["active_units"] = active_units(guide, x)[0]
    return pd.DataFrame([row])


@torch.no_grad()
def reconstruct(model, guide, x: torch.Tensor) -> torch.Tensor:
    """E[x | z = E_q[z | x]] for each row of ``x``, shape (N, D): the model decodes the
    guide's posterior mean."""
    z = posterior_means(guide, x)
    with pyro.get_param_store().scope():
        conditioned = poutine.condition(model, data={LATENT: z})
        return poutine.trace(conditioned).get_trace(x).nodes[OBS]["fn"].mean


@torch.no_grad()
def generate(model, like: torch.Tensor) -> torch.Tensor:
    """E[x | z] for z drawn from the prior, one per row of ``like`` (whose values are unused)."""
    with pyro.get_param_store().scope():
        return poutine.trace(model).get_trace(like).nodes[OBS]["fn"].mean
