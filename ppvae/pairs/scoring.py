"""Per-example log-densities from Pyro traces: the arithmetic behind
:mod:`ppvae.evaluation.metrics`.

Each site's log-density is summed to one value per example (no plate scaling, no beta; masks
are kept); the model's latent sites inside the plate over examples are local, those outside are
global; enumerated sites are summed out exactly. See :mod:`ppvae.evaluation.metrics` for what
the numbers mean with global latents.
"""

import os
from typing import NamedTuple

import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask
from torch.distributions import kl_divergence

from ppvae.pairs import (
    Structure,
    batched,
    claim_parameters,
    data_frame,
    probe,
    run_pair,
    sample_sites,
)

PROBE_ROWS = 64
"""Rows of the data that the pair is probed (and checked) on before scoring."""


def free_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device``: CUDA's free memory, or the host's available
    memory (psutil if installed, else the free pages the kernel reports)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        import psutil
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return psutil.virtual_memory().available


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


def per_row(log_prob: torch.Tensor, dim: int | None, nesting: int) -> torch.Tensor:
    """Sum a log-density over every plate dimension but the examples' (``dim``); shape
    (enum..., R), or (enum..., 1) outside the plate. Enumeration dims stay on the left."""
    lp = log_prob.reshape((1,) * max(0, nesting - log_prob.dim()) + log_prob.shape)
    if nesting == 0:
        return lp.unsqueeze(-1)
    plates = [lp.dim() + k for k in range(-nesting, 0) if k != dim]
    if plates:
        lp = lp.sum(plates, keepdim=True)
    return lp.reshape(*lp.shape[: lp.dim() - nesting], -1)


def _site_rows(site, plate: str, nesting: int) -> torch.Tensor:
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        lp = scale_and_mask(lp, mask=site["mask"])
    frame = data_frame(site, plate)
    return per_row(lp, None if frame is None else frame.dim, nesting)


def _joint(sites, plate: str, nesting: int) -> torch.Tensor:
    """Sum of the sites' per-row log-densities with enumerated dimensions summed out: (R,).

    No sites give a 0-d zero, which broadcasts."""
    if not sites:
        return torch.zeros(())
    total = sum(_site_rows(s, plate, nesting) for s in sites)
    return total.reshape(-1, total.shape[-1]).logsumexp(0)


class ScoredPair(NamedTuple):
    """A model and guide called ``(x, idx, num_data)`` and what they sample."""

    model: object
    guide: object
    structure: Structure
    plate: str

    def traces(self, x, idx, copies: int):
        """One trace of each on ``copies`` stacked copies of the rows of ``x``."""
        rep_idx = None if idx is None else idx.repeat(copies)
        st = self.structure
        enum = st.max_plate_nesting if st.enumerated else None
        return run_pair(self.model, self.guide, x.repeat(copies, 1), rep_idx, enumerate_at=enum)

    def sites(self, model_trace, guide_trace):
        """(the model's local latent sites, its observed sites, the guide's local sites)."""
        st, m = self.structure, model_trace.nodes
        latent = [m[n] for n in dict.fromkeys((*st.local_latents, *st.enumerated))]
        observed = [m[n] for n in st.observed if data_frame(m[n], self.plate) is not None]
        local = [  # every local guide site, auxiliary ones (an AutoGuide's) included
            s
            for s in sample_sites(guide_trace).values()
            if not s["is_observed"] and data_frame(s, self.plate) is not None
        ]
        return latent, observed, local

    def log_weights(self, model_trace, guide_trace) -> torch.Tensor:
        """log p(x, z) - log q(z | x) per row, enumerated sites summed out: (R,)."""
        latent, observed, local = self.sites(model_trace, guide_trace)
        n = self.structure.max_plate_nesting
        return _joint(latent + observed, self.plate, n) - _joint(local, self.plate, n)

    def terms(self, model_trace, guide_trace, analytic: bool):
        """(reconstruction, KL) per row: E log p(x | z) and log q(z | x) - log p(z) (or the
        analytic KL where every local site has one and nothing is enumerated)."""
        latent, observed, local = self.sites(model_trace, guide_trace)
        n = self.structure.max_plate_nesting
        log_pz = _joint(latent, self.plate, n)
        rec = _joint(latent + observed, self.plate, n) - log_pz
        kl = self._analytic_kl(model_trace, guide_trace) if analytic else None
        if kl is None:
            kl = _joint(local, self.plate, n) - log_pz
        return rec, kl

    def _analytic_kl(self, model_trace, guide_trace) -> torch.Tensor | None:
        if self.structure.enumerated or not self.structure.local_latents:
            return None
        total = 0.0
        for name in self.structure.local_latents:
            p, q = model_trace.nodes[name], guide_trace.nodes.get(name)
            kl = None if q is None else analytic_kl(q["fn"], p["fn"])
            if kl is None or p["mask"] is not None:
                return None
            nesting = self.structure.max_plate_nesting
            total = total + per_row(kl, data_frame(p, self.plate).dim, nesting)
        return total


def scored_pair(model, guide, x, idx, plate: str) -> ScoredPair:
    """The pair called ``(x, idx, num_data)``, its parameters claimed, its structure probed."""
    model, guide = batched(model, plate), batched(guide, plate)
    rows = slice(0, min(PROBE_ROWS, x.shape[0]))
    sub = None if idx is None else idx[rows]
    claim_parameters(model, guide, x[rows], sub)
    return ScoredPair(model, guide, probe(model, guide, x[rows], sub, plate), plate)


def draws(pair: ScoredPair, x, idx, k: int, fn) -> list[torch.Tensor]:
    """``fn(model_trace, guide_trace)`` on ``k`` draws of the latents for each row of ``x``:
    per-row tensors of shape (k, B). One trace for all draws unless there are global latents."""
    copies = 1 if pair.structure.global_latents else k
    parts = []
    for _ in range(k // copies):
        out = fn(*pair.traces(x, idx, copies))
        out = out if isinstance(out, tuple) else (out,)
        rows = copies * x.shape[0]  # a pair without local terms gives a 0-d zero: broadcast it
        parts.append([torch.as_tensor(t).expand(rows).reshape(copies, x.shape[0]) for t in out])
    return [torch.cat(column) for column in zip(*parts, strict=True)]
