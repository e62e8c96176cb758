"""Imputing missing entries (NaN) with any model and guide, or exactly with a fitted PPCA.

For a model p(z) p(x | z) whose likelihood leaves missing entries out and a guide q(z | x) that
reads the observed ones, draw z_k ~ q(z | x), k = 1..K, and weigh them by
w_k = p(x_obs, z_k) / q(z_k | x), the importance weights of the MIWAE bound (Mattei & Frellsen,
ICML 2019), read from Pyro's traces by :mod:`ppvae.pairs.scoring`. With wbar_k = w_k / sum_j w_j:

- the conditional mean: E[x_miss | x_obs] ~= sum_k wbar_k E[x_miss | z_k] (self-normalized
  importance sampling), with the delta-method standard error
  sqrt(sum_k wbar_k^2 (E[x | z_k] - mean)^2) and the effective sample size 1 / sum_k wbar_k^2;
- multiple imputations by sampling-importance-resampling: k ~ Categorical(wbar), then
  x_miss ~ p(x_miss | z_k), a fresh draw for each imputation.

Both converge to the exact conditional as K grows. Rows are processed in chunks, and the K
samples of a chunk in blocks whose summaries are merged exactly, so memory stays bounded for
any K; the M imputations are drawn in blocks too, into one (M, N, D) tensor, which is refused
up front when it would take more than :data:`MEMORY_FRACTION` of the free memory. A fitted
:class:`ppvae.baselines.PPCA` (or ``EMPPCA``) imputes through its exact
conditional Gaussian with the same call.
"""

import contextlib
import math
from typing import NamedTuple

import torch
from pyro import poutine
from torch import Tensor

from ppvae.baselines import PPCA as BaselinePPCA
from ppvae.baselines import impute as exact_impute
from ppvae.baselines import impute_samples as exact_impute_samples
from ppvae.config import ConfigError
from ppvae.data.missing import validate_missing
from ppvae.errors import ModelGuideError
from ppvae.pairs import DEFAULT_PLATE, aside, observed_site
from ppvae.pairs.checker import check
from ppvae.pairs.scoring import PROBE_ROWS, ScoredPair, free_memory, scored_pair

MAX_ROWS = 1 << 15
"""Rows (examples x samples) pushed through a model and guide at once."""

MEMORY_FRACTION = 0.5
"""Share of the free memory (of the data's device) that the M imputations, (M, N, D), may take
with their working copies (as large again at most: the chosen latents and draws of a chunk of
rows); more is refused before any work."""


class Imputation(NamedTuple):
    """Imputed data; observed entries are those of the input, unchanged.

    Attributes
    ----------
    mean : Tensor, shape (N, D)
        E[x_miss | x_obs] at the missing entries.
    samples : Tensor, shape (M, N, D)
        M multiple imputations, draws of x_miss ~ p(x_miss | x_obs) (M = 0 unless asked).
    stderr : Tensor, shape (N, D)
        Monte Carlo standard error of ``mean`` (0 at observed entries, and for exact methods).
    ess : Tensor, shape (N,)
        Effective sample size of the importance weights of each row (inf for exact methods).
    """

    mean: Tensor
    samples: Tensor
    stderr: Tensor
    ess: Tensor


class _Block(NamedTuple):
    """Summary of a block of k samples for B rows, weights normalized within the block."""

    log_total: Tensor  # (B,) logsumexp of the log weights
    mean: Tensor  # (B, D) sum_k wbar_k f_k
    sq: Tensor  # (B,) sum_k wbar_k^2
    lin: Tensor  # (B, D) sum_k wbar_k^2 (f_k - mean)
    quad: Tensor  # (B, D) sum_k wbar_k^2 (f_k - mean)^2
    chosen: dict[str, Tensor]  # site -> (M, B, ...) latents resampled within the block


def impute(
    model,
    guide,
    x: Tensor,
    mask: Tensor | None = None,
    *,
    num_samples: int = 1000,
    multiple: int = 0,
    generator: torch.Generator | None = None,
    plate: str = DEFAULT_PLATE,
) -> Imputation:
    """Fill the missing entries of ``x``: the conditional mean and, on request, M imputations.

    Parameters
    ----------
    model, guide
        Any Pyro pair (either calling convention, :mod:`ppvae.pairs`) whose model scores only
        the observed entries (``accepts_missing``, as ppvae's VAE models) and whose guide reads
        missing entries (``GUIDES["masked-diag"]``), with local latents only. Or a fitted
        :class:`ppvae.baselines.PPCA` / ``EMPPCA`` and ``guide=None``: the exact conditional.
    x : Tensor, shape (N, D)
        Data, NaN at missing entries.
    mask : BoolTensor, shape (N, D), optional
        True = observed; entries where it is False are treated as missing.
    num_samples : int
        K, the importance samples per row (unused by the exact PPCA).
    multiple : int
        M, the number of multiple imputations to draw.
    generator : torch.Generator, optional
        Makes every draw reproducible, leaving torch's global random stream as it was.
    plate : str
        The name of the plate over examples.

    Returns
    -------
    Imputation

    Raises
    ------
    DataError
        For a mask of the wrong shape or dtype, a row with nothing observed, or Inf.
    ModelGuideError
        For missing entries and a model without ``accepts_missing``, or a guide that cannot
        read them.
    ConfigError
        For M imputations that would not fit in :data:`MEMORY_FRACTION` of the free memory.

    Examples
    --------
    >>> from ppvae import ArchConfig, DataShape
    >>> from ppvae.guides import GUIDES
    >>> from ppvae.models import MODELS
    >>> shape = DataShape(x_dim=4, image_shape=None, num_data=2, missing=True)
    >>> arch = ArchConfig(hidden=(8,))
    >>> model = MODELS["gaussian"](arch, shape)
    >>> guide = GUIDES["masked-diag"](arch, shape, model)
    >>> x = torch.tensor([[0.1, float("nan"), 0.3, 0.4], [float("nan"), 0.2, 0.3, 0.4]])
    >>> result = impute(model, guide, x, num_samples=100, multiple=5)
    >>> bool(result.mean.isfinite().all()), result.samples.shape, result.ess.shape
    (True, torch.Size([5, 2, 4]), torch.Size([2]))
    """
    if num_samples < 1 or multiple < 0:
        raise ConfigError(
            f"need num_samples >= 1 and multiple >= 0, got {num_samples}, {multiple}"
        )
    if isinstance(model, BaselinePPCA):
        x = validate_missing(torch.as_tensor(x), mask, what="data to impute")
        _check_fits(multiple, x)
        return _exact(model, guide, x, multiple, generator)
    unit = getattr(model, "requires_unit_interval", False)
    x = validate_missing(x, mask, unit_interval=unit, what="data to impute")
    _check_fits(multiple, x)
    with torch.no_grad():
        _check_pair(model, guide, x, plate)
    with torch.no_grad(), _seeded(generator, x):
        pair = scored_pair(model, guide, x, None, plate)
        if pair.structure.global_latents:
            names = ", ".join(pair.structure.global_latents)
            raise ConfigError(f"impute needs local latents only; the model has global ({names})")
        step = max(1, MAX_ROWS // max(num_samples, multiple, 1))
        samples = x.new_empty((multiple, *x.shape))
        parts = [
            _impute_rows(pair, x[i : i + step], num_samples, samples[:, i : i + step])
            for i in range(0, x.shape[0], step)
        ]
    mean, stderr, ess = zip(*parts, strict=True)
    return Imputation(torch.cat(mean), samples, torch.cat(stderr), torch.cat(ess))


def _check_fits(multiple: int, x: Tensor) -> None:
    """ConfigError, before any work, when M imputations of ``x`` would take more than
    :data:`MEMORY_FRACTION` of the free memory."""
    need = 2 * multiple * x.numel() * x.element_size()  # the imputations and working copies
    free = free_memory(x.device)
    if need > MEMORY_FRACTION * free:
        most = int(MEMORY_FRACTION * free) // (2 * x.numel() * x.element_size())
        raise ConfigError(
            f"multiple={multiple} imputations of {x.shape[0]} x {x.shape[1]} data would take "
            f"{need / 2**30:.3g} GiB, more than {MEMORY_FRACTION:.0%} of the "
            f"{free / 2**30:.3g} GiB free: ask for at most {most}, or impute fewer rows at once"
        )


def _check_pair(model, guide, x: Tensor, plate: str) -> None:
    """One line, not a Pyro dump, when the pair cannot read the missing entries of ``x``."""
    if not bool(x.isnan().any()):
        return
    if not getattr(model, "accepts_missing", False):
        raise ModelGuideError(
            "impute needs a model that scores only the observed entries (accepts_missing): "
            "build it with missing=True (DataShape(..., missing=True)) and pair it with a "
            "guide that reads the mask (GUIDES['masked-diag'])"
        )
    with aside(x):  # checking draws no numbers from the stream the imputation uses
        check(model, guide, x[:PROBE_ROWS], objective=None, plate=plate)


@contextlib.contextmanager
def _seeded(generator: torch.Generator | None, x: Tensor):
    """Draw from a seed taken from ``generator``, restoring the global stream afterwards."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
    with aside(x):
        torch.random.default_generator.manual_seed(seed)
        if x.device.type == "cuda":
            with torch.cuda.device(x.device):
                torch.cuda.manual_seed(seed)
        yield


def _exact(ppca: BaselinePPCA, guide, x, multiple: int, generator) -> Imputation:
    if guide is not None:
        raise ConfigError("a fitted PPCA imputes through its exact conditional: pass guide=None")
    mean = exact_impute(x, ppca.params_)
    if multiple:
        samples = exact_impute_samples(x, ppca.params_, multiple, generator)
    else:
        samples = mean.new_empty((0, *mean.shape))
    ess = mean.new_full(mean.shape[:1], math.inf)
    return Imputation(mean, samples, torch.zeros_like(mean), ess)


def _impute_rows(pair: ScoredPair, x: Tensor, k: int, out: Tensor):
    """(mean, stderr, ess) of the rows of ``x``, from blocks of at most MAX_ROWS; the M
    imputations (``out``, shape (M, B, D)) are written in place, in blocks of draws."""
    size, m = max(1, min(k, MAX_ROWS // x.shape[0])), out.shape[0]
    blocks = [_block(pair, x, min(size, k - start), m) for start in range(0, k, size)]
    share, mean, sq, quad = _merge(blocks)
    missing = x.isnan()
    if m:
        chosen = _resample(share, blocks, m)
        per = max(1, MAX_ROWS // x.shape[0])  # draws at once
        for start in range(0, m, per):
            part = {name: z[start : start + per] for name, z in chosen.items()}
            drawn = _draw(pair, x, part, min(per, m - start))
            out[start : start + per] = torch.where(missing, drawn, x)
    return (
        torch.where(missing, mean, x),
        torch.where(missing, quad.clamp(min=0).sqrt(), 0.0),
        1 / sq,
    )


def _merge(blocks: list[_Block]):
    """Blocks' summaries as one over all their samples: (each block's share of the total
    weight (J, B), the mean (B, D), sum_k wbar_k^2 (B,), sum_k wbar_k^2 (f_k - mean)^2 (B, D))."""
    share = torch.stack([b.log_total for b in blocks]).softmax(0)
    means, sq, lin, quad = (
        torch.stack([getattr(b, field) for b in blocks]) for field in ("mean", "sq", "lin", "quad")
    )
    mean = (share[..., None] * means).sum(0)
    shift, share2 = means - mean, share.square()  # each block's mean to the total's
    quad = quad + 2 * shift * lin + shift.square() * sq[..., None]
    return share, mean, (share2 * sq).sum(0), (share2[..., None] * quad).sum(0)


def _block(pair: ScoredPair, x: Tensor, k: int, m: int) -> _Block:
    """Draw k latents per row; weigh them; resample m of them (SIR within the block)."""
    model_trace, guide_trace = pair.traces(x, None, k)
    b = x.shape[0]
    log_w = pair.log_weights(model_trace, guide_trace).reshape(k, b)
    if not torch.isfinite(log_w).all():
        raise ValueError(
            "the importance weights are not finite: the guide must read data with missing "
            "entries (NaN), e.g. an encoder of [zero-filled x, mask] (GUIDES['masked-diag'])"
        )
    f = _data_site(model_trace, pair)["fn"].mean
    if f.shape != (k * b, x.shape[1]):
        raise ValueError(
            f"the observed site's mean has shape {tuple(f.shape)}, not {(k * b, x.shape[1])}"
        )
    f = f.reshape(k, b, -1)
    w = log_w.softmax(0)
    mean = (w[..., None] * f).sum(0)
    dev, w2 = f - mean, w.square()[..., None]
    chosen = {}
    if m:  # SIR within the block: m indices per row, drawn by the weights
        pick, rows = (
            torch.multinomial(w.T, m, replacement=True).T,
            torch.arange(b, device=x.device),
        )
        for name in pair.structure.local_latents:
            if name in guide_trace.nodes:
                value = guide_trace.nodes[name]["value"]
                chosen[name] = value.reshape(k, b, *value.shape[1:])[pick, rows]
    return _Block(
        log_w.logsumexp(0),
        mean,
        w2.sum(0)[..., 0],
        (w2 * dev).sum(0),
        (w2 * dev.square()).sum(0),
        chosen,
    )


def _resample(p: Tensor, blocks: list[_Block], m: int) -> dict[str, Tensor]:
    """m latents per row from all blocks: a block by its share, then that block's pick."""
    which = torch.multinomial(p.T, m, replacement=True).T  # (m, B)
    rows, draws = (torch.arange(n, device=p.device) for n in (which.shape[1], m))
    return {
        name: torch.stack([b.chosen[name] for b in blocks])[which, draws[:, None], rows]
        for name in blocks[0].chosen
    }


def _draw(pair: ScoredPair, x: Tensor, chosen: dict[str, Tensor], m: int) -> Tensor:
    """x ~ p(x | z) for the m chosen latents of each row: shape (m, B, D)."""
    data = {name: z.reshape(-1, *z.shape[2:]) for name, z in chosen.items()}
    conditioned = poutine.condition(pair.model, data=data)
    trace = poutine.trace(conditioned).get_trace(x.repeat(m, 1), None, None)
    return _data_site(trace, pair)["fn"].sample().reshape(m, *x.shape)


def _data_site(trace, pair: ScoredPair):
    """The model's data site (latents conditioned to a draw are observed too: skip them)."""
    conditioned = set(trace.nodes) - set(pair.structure.observed)
    site = observed_site(trace, pair.plate, skip=conditioned)
    if site is None:
        raise ValueError("the model has no observed site inside the plate over examples")
    return site


__all__ = ["Imputation", "impute"]
