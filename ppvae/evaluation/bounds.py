"""Honest evaluation of any model and guide: per-example ELBO and its terms, importance-sampled
log p(x), active units.

Everything here is exact arithmetic on Pyro traces: the guide is traced, the model is replayed
against it, and each site's log-density is summed to one value per example (no plate scaling,
no beta; masks are kept). Sites are found in the traces, whatever their names: the model's
latent sites inside the plate over examples are local, those outside are global; its observed
sites inside the plate are the data. Latent sites the model enumerates are summed out exactly.

Global latents (a parameter with a prior, say) are drawn from the guide, so per-example numbers
are conditional on them: log p(x) is the posterior-predictive estimate
``log E_{q(theta)} E_{q(z | x, theta)} [p(x, z | theta) / q(z | x, theta)]``, each importance
sample with its own draw of theta. Work is vectorized over samples and examples by repeating rows
(one trace per sample when there are global latents), and chunked so memory stays bounded.

Under ``torch.distributed`` (``torchrun``), inside ``fit`` and ``ppvae train``
(:func:`ppvae.distributed.scoring_together`), :func:`elbo_terms` and :func:`log_likelihood` score
each rank's share of the rows and gather the results, so every rank gets the whole answer (and
every rank calls them). Called on their own they score every row locally.
"""

import math
import sys
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ppvae import distributed
from ppvae.data import Rows, as_rows, validate_data
from ppvae.pairs import DEFAULT_PLATE, aside
from ppvae.pairs.checker import check
from ppvae.pairs.scoring import PROBE_ROWS, ScoredPair, draws, scored_pair

MAX_ROWS = 1 << 15
"""Rows (examples x samples) pushed through a model and guide at once on the CPU."""


MEMORY_FRACTION = 0.5
"""Share of the free CUDA memory that one chunk of rows may take."""


ROW_LIMITS = (1 << 10, 1 << 22)
"""Bounds on the rows of a chunk sized from CUDA memory."""


def rows_for(free_bytes: int, bytes_per_row: int) -> int:
    """Rows per chunk that fit ``MEMORY_FRACTION`` of ``free_bytes``, within ``ROW_LIMITS``.

    Examples
    --------
    >>> rows_for(free_bytes=8 * 2**30, bytes_per_row=64 * 2**10)  # 8 GiB free, 64 KiB a row
    65536
    """
    rows = int(MEMORY_FRACTION * free_bytes) // max(bytes_per_row, 1)
    return max(ROW_LIMITS[0], min(ROW_LIMITS[1], rows))


def _chunk_rows(pair: ScoredPair, x: torch.Tensor, idx) -> int:
    """Rows per chunk: :data:`MAX_ROWS` on the CPU; on CUDA, from the free memory and the
    peak memory of scoring a probe of rows (measured, so any model sizes itself)."""
    if x.device.type != "cuda":
        return MAX_ROWS
    probe_rows = min(256, x.shape[0])
    base = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    sub = None if idx is None else idx[:probe_rows]
    draws(pair, x[:probe_rows], sub, 1, pair.log_weights)
    peak = torch.cuda.max_memory_allocated(x.device) - base
    free, _ = torch.cuda.mem_get_info(x.device)
    return rows_for(free, peak // probe_rows)


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


def _row_chunks(n: int, per_row: int, max_rows: int = MAX_ROWS):
    step = max(1, max_rows // max(per_row, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def validated_for(model, x: torch.Tensor) -> torch.Tensor:
    """``x`` checked for ``model`` (float32 if it was half precision)."""
    unit = getattr(model, "requires_unit_interval", False)
    missing = getattr(model, "accepts_missing", False)  # NaN = a missing entry
    return validate_data(x, unit_interval=unit, missing=missing, what="evaluation data")


def _checked(model, guide, x, idx, plate: str) -> torch.Tensor:
    """The data validated, then the pair checked on its first rows, as ``fit`` does before
    training; returns the data as scored (:func:`validated_for`)."""
    x = validated_for(model, x)
    rows = slice(0, min(PROBE_ROWS, x.shape[0]))
    sub = None if idx is None else idx[rows]
    with aside(x):  # checking draws no numbers from the stream the scoring uses
        check(model, guide, x[rows], idx=sub, objective=None, plate=plate)
    return x


@torch.no_grad()
def elbo_terms(
    model,
    guide,
    x: torch.Tensor,
    *,
    idx: torch.Tensor | None = None,
    num_samples: int = 1,
    analytic: bool = True,
    plate: str = DEFAULT_PLATE,
) -> ElboTerms:
    """The ELBO of each row of ``x`` and its reconstruction / KL split.

    Parameters
    ----------
    model, guide : callables, ``f(x)`` (Pyro's convention) or ``f(x, idx=None, num_data=None)``
    x : Tensor, shape (N, D), or a tuple or dict of tensors
        The data; several tensors are passed as ``model(*x)`` or ``model(**x)``
        (:mod:`ppvae.data.rows`), and rows with an unobserved argument (all NaN) are scored
        with it None (``by_group``).
    idx : LongTensor, shape (N,), optional
        Row numbers of ``x`` in the training set (needed by per-datapoint guides).
    num_samples : int
        Monte Carlo samples of z per example for the reconstruction (and for the KL where it
        has no closed form).
    analytic : bool
        Use the closed-form KL where every local latent site has one.
    plate : str
        The name of the plate over examples.

    Returns
    -------
    ElboTerms
        Three tensors of shape (N,), in nats. With enumerated discrete latents, the
        reconstruction is log p(x | z) with them summed out and the KL is log q(z|x) - log p(z).
    """
    options = {"num_samples": num_samples, "analytic": analytic, "plate": plate}
    grouped = by_group(elbo_terms, model, guide, x, idx, **options)
    if grouped is not None:
        return grouped
    x = _checked(model, guide, x, idx, plate)
    pair = scored_pair(model, guide, x, idx, plate)
    n, (x, idx) = x.shape[0], _shard(x, idx)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    parts, max_rows = [], _chunk_rows(pair, x, idx)
    for rows in _row_chunks(x.shape[0], min(num_samples, max_rows), max_rows):
        sub = None if idx is None else idx[rows]
        parts.append(_streamed_terms(pair, x[rows], sub, num_samples, max_rows, analytic))
    columns = zip(*parts, strict=True) if parts else ((), ())
    rec, kl = (distributed.gather_rows(cat_rows(t, x), n) for t in columns)
    return ElboTerms(rec - kl, rec, kl)


def by_group(score, model, guide, x, idx, **options):
    """``score`` of data with unobserved arguments (all-NaN rows of a tensor, see
    :mod:`ppvae.data.rows`): each group of rows scored with its unobserved arguments None,
    the per-row results put back in row order. None when every argument of every row is
    observed (then ``score`` scores the data as it is)."""
    x = as_rows(x, "evaluation data")
    if not isinstance(x, Rows):
        return None
    groups = x.groups()
    if all(all(g.present) for g in groups):
        return None
    done = []
    for g in groups:
        sub = None if idx is None else idx[g.rows.to(idx.device)]
        rows = x[g.rows.to(x.device)].present(g.present)
        done.append((g.rows.to(x.device), score(model, guide, rows, idx=sub, **options)))
    fields = {}
    for name, value in done[0][1]._asdict().items():
        if not torch.is_tensor(value):
            fields[name] = value
            continue
        fields[name] = value.new_zeros(len(x))
        for rows, result in done:
            fields[name][rows] = getattr(result, name)
    return type(done[0][1])(**fields)


def cat_rows(tensors, like: torch.Tensor) -> torch.Tensor:
    """Concatenated chunks; an empty shard (fewer rows than ranks) gives an empty tensor."""
    return torch.cat(tensors) if tensors else like.new_zeros(0)


def _shard(x: torch.Tensor, idx):
    """This rank's rows of ``x`` (and ``idx``) when scoring together across ranks
    (:func:`ppvae.distributed.scoring_together`); all the rows otherwise."""
    rows = distributed.shard_rows(x.shape[0])
    return x[rows], None if idx is None else idx[rows]


def _streamed_terms(pair: ScoredPair, x, idx, num_samples: int, max_rows: int, analytic: bool):
    """Mean reconstruction and KL over ``num_samples`` draws, each of shape (B,), summed over
    blocks of draws of at most ``max_rows`` rows (one block: the plain mean)."""
    k_step = max(1, min(num_samples, max_rows // x.shape[0]))
    if k_step == num_samples:
        rec, kl = draws(pair, x, idx, num_samples, lambda m, g: pair.terms(m, g, analytic))
        return rec.mean(0), kl.mean(0)
    rec = kl = x.new_zeros(x.shape[0])
    for start in range(0, num_samples, k_step):
        k = min(k_step, num_samples - start)
        r, q = draws(pair, x, idx, k, lambda m, g: pair.terms(m, g, analytic))
        rec, kl = rec + r.sum(0), kl + q.sum(0)
    return rec / num_samples, kl / num_samples


def _streamed_log_moments(pair: ScoredPair, x, idx, num_samples: int, max_rows: int):
    """Running logsumexp of w and of w^2 over chunks of samples, each of shape (B,)."""
    k_step = max(1, min(num_samples, max_rows // x.shape[0]))
    lse1 = lse2 = x.new_full((x.shape[0],), -math.inf)
    for start in range(0, num_samples, k_step):
        (log_w,) = draws(pair, x, idx, min(k_step, num_samples - start), pair.log_weights)
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
    plate: str = DEFAULT_PLATE,
) -> LogLikelihood:
    """Importance-sampled log p(x) with the guide as proposal (Burda et al. 2016).

    log p(x) ~= logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K,  z_k ~ q(z | x),

    where z are the local latents (enumerated ones summed out) and global latents are drawn
    from the guide once per sample (see the module's notes). The estimate is a stochastic lower
    bound that rises with K towards log p(x). Samples and examples are processed in chunks of at
    most :data:`~ppvae.evaluation.bounds.MAX_ROWS` rows on the CPU, and on CUDA as many as half
    the free memory holds (measured on a probe), so K = 5000 fits in memory on either.

    ``progress`` shows a bar over the chunks of examples (default: only on a terminal).

    ``x`` may be a tuple or dict of tensors (:mod:`ppvae.data.rows`): the estimate is then of
    log p(what the model observes | the arguments it conditions on), log p(y | x) for a
    conditional model, each row with the arguments it has observed.

    Returns
    -------
    LogLikelihood
        ``log_px`` and ``stderr`` of shape (N,), in nats.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    options = {"num_samples": num_samples, "progress": progress, "plate": plate}
    grouped = by_group(log_likelihood, model, guide, x, idx, **options)
    if grouped is not None:
        return grouped
    x = _checked(model, guide, x, idx, plate)
    pair = scored_pair(model, guide, x, idx, plate)
    n, (x, idx) = x.shape[0], _shard(x, idx)
    log_px, stderr = [], []
    log_k = math.log(num_samples)
    max_rows = _chunk_rows(pair, x, idx)
    chunks = _row_chunks(x.shape[0], min(num_samples, max_rows), max_rows)
    shown = sys.stderr.isatty() if progress is None else progress
    for rows in tqdm(chunks, desc=f"log p(x), K={num_samples}", disable=not shown):
        sub = None if idx is None else idx[rows]
        lse1, lse2 = _streamed_log_moments(pair, x[rows], sub, num_samples, max_rows)
        rel_var = (lse2 - 2 * lse1 + log_k).exp() - 1  # Var[w] / mean(w)^2
        log_px.append(lse1 - log_k)
        stderr.append((rel_var.clamp(min=0) / num_samples).sqrt())
    log_px, stderr = (distributed.gather_rows(cat_rows(t, x), n) for t in (log_px, stderr))
    return LogLikelihood(log_px, stderr, num_samples)
