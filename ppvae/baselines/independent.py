"""Baselines that need no training: every pixel independent, fitted by its training moments.

They give the exact per-example test log-likelihood of the best model that ignores any latent
variable, so a run that ends far below them has diverged rather than not yet learned
(:func:`diverged`). Plain torch, no Pyro, as the other baselines.

- :func:`bernoulli_log_prob`: independent Bernoulli pixels with the training means (for binary
  data the exact log-likelihood; for grey levels in [0, 1] the same cross-entropy that a
  Bernoulli decoder scores). The means are clamped to ``[PROB_CLAMP, 1 - PROB_CLAMP]`` so a
  pixel that is constant in training does not give a test pixel log-probability of -inf;
- :func:`gaussian_log_prob`: independent Gaussian pixels, with per-pixel training means and
  variances (the maximum-likelihood diagonal Gaussian) or with a given noise scale. Variances
  are floored at ``VARIANCE_FLOOR`` times the mean per-pixel variance, so a constant pixel does
  not make the density unbounded.
"""

import math

import torch
from torch import Tensor

from ppvae.baselines.missing import observed_column_means

PROB_CLAMP = 1e-3
"""Training means are clamped to [PROB_CLAMP, 1 - PROB_CLAMP] (at most log(1000) = 6.9 nats a
pixel lost on a test pixel that training never showed)."""

VARIANCE_FLOOR = 1e-3
"""Per-pixel variances are floored at this fraction of the mean per-pixel variance."""

DIVERGENCE_MIN_NATS = 10.0
DIVERGENCE_NATS_PER_DIM = 1.0
DIVERGENCE_RELATIVE = 10.0
"""A run has diverged when its test log p(x) per example ends below the baseline b by more than
max(``DIVERGENCE_MIN_NATS``, ``DIVERGENCE_NATS_PER_DIM`` * D, ``DIVERGENCE_RELATIVE`` * ``|b|``),
D the scored dimensions, or is not finite.

Why so wide: a healthy network that has barely started sits well below the baseline. An
untrained Bernoulli VAE on the 64 pixels of digits scores 64 log 2 = 44 nats against the
baseline's 27; a Gaussian decoder that starts at sigma = 1 scores -61 against the diagonal
Gaussian's +40, 100 nats below. Diverged runs end thousands to 1e31 nats below (a learning rate
of 3 gives -2e9 against +40, and 1e6 gives -1e31 against -27), so a margin of ten times the
baseline's size, or one nat per dimension (a factor e in density per pixel), whichever is
larger, flags them and never a short healthy run."""


def _masked_sum(values: Tensor, x: Tensor) -> Tensor:
    """Per-row sum over the observed (not NaN) entries of ``x``, shape (N,)."""
    return torch.where(x.isnan(), 0.0, values).sum(-1)


def bernoulli_means(train: Tensor) -> Tensor:
    """Per-pixel training means (of the observed entries), clamped, shape (D,)."""
    return observed_column_means(train).to(train).clamp(PROB_CLAMP, 1 - PROB_CLAMP)


def bernoulli_log_prob(train: Tensor, test: Tensor) -> Tensor:
    """log prod_d Bernoulli(x_d; p_d) of each test row, p the clamped training means, (N,).

    Examples
    --------
    >>> train = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    >>> bernoulli_log_prob(train, torch.tensor([[1.0, 1.0]]))  # log 0.5 + log 0.999
    tensor([-0.6941])
    """
    p = bernoulli_means(train)
    terms = test * p.log() + (1 - test) * torch.log1p(-p)
    return _masked_sum(terms, test)


def gaussian_moments(train: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel training means and floored variances (of the observed entries), each (D,)."""
    mean = observed_column_means(train).to(train)
    var = torch.nanmean((train - mean).square(), dim=0)
    return mean, var.clamp(min=VARIANCE_FLOOR * var.mean().clamp(min=1e-12))


def gaussian_log_prob(train: Tensor, test: Tensor, scale: Tensor | None = None) -> Tensor:
    """log prod_d N(x_d; m_d, s_d^2) of each test row, m the training means, shape (N,).

    ``s`` is ``scale`` (a fixed noise scale, broadcast to (D,)) or, by default, the floored
    training standard deviations (the maximum-likelihood diagonal Gaussian).

    Examples
    --------
    >>> train = torch.tensor([[0.0], [2.0]])  # mean 1, variance 1
    >>> gaussian_log_prob(train, torch.tensor([[1.0]]))  # -log(2 pi) / 2
    tensor([-0.9189])
    """
    mean, var = gaussian_moments(train)
    if scale is not None:
        var = torch.as_tensor(scale, dtype=test.dtype, device=test.device).square()
    terms = -0.5 * (math.log(2 * math.pi) + var.log() + (test - mean).square() / var)
    return _masked_sum(terms, test)


def divergence_margin(baseline: float, dims: float) -> float:
    """Nats per example below ``baseline`` beyond which a run over ``dims`` scored dimensions
    has diverged (see :data:`DIVERGENCE_RELATIVE`)."""
    scales = (DIVERGENCE_NATS_PER_DIM * dims, DIVERGENCE_RELATIVE * abs(baseline))
    return max(DIVERGENCE_MIN_NATS, *scales)


def diverged(log_px: float, baseline: float, dims: float) -> bool:
    """Whether a test log p(x) per example ended far below the baseline (or is not finite)."""
    if not math.isfinite(log_px):
        return True
    return log_px < baseline - divergence_margin(baseline, dims)
