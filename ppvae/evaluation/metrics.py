"""What :func:`evaluate` reports for a trained pair, beyond the bounds of
:mod:`ppvae.evaluation.bounds`: posterior means and active units, bits per dimension,
reconstructions and samples, and the independent-pixel baseline a run is judged against.
"""

import math

import pandas as pd
import pyro.distributions as dist
import torch
from pyro import poutine

from ppvae.baselines import independent
from ppvae.data import Rows
from ppvae.evaluation.bounds import elbo_terms, log_likelihood, validated_for
from ppvae.evaluation.labels import label_columns
from ppvae.pairs import DEFAULT_PLATE, aside, batched, data_frame, observed_site, sample_sites


def _local_guide_sites(guide, x: torch.Tensor, plate: str, idx: torch.Tensor | None = None):
    trace = poutine.trace(batched(guide, plate)).get_trace(x, idx, None)
    return {
        name: site
        for name, site in sample_sites(trace).items()
        if not site["is_observed"]
        and data_frame(site, plate)
        and not site["infer"].get("is_auxiliary")
    }


def _mean(fn: dist.Distribution, num_samples: int) -> torch.Tensor:
    try:
        return fn.mean
    except NotImplementedError:
        return fn.sample((num_samples,)).mean(0)


@torch.no_grad()
def posterior_means(
    guide,
    x: torch.Tensor,
    *,
    num_samples: int = 64,
    idx: torch.Tensor | None = None,
    plate: str = DEFAULT_PLATE,
) -> torch.Tensor:
    """E_q[z | x] for each row, shape (N, q): exact where q has a mean, else a sample mean.

    With several local latent sites, their means are flattened and concatenated in the order
    the guide samples them. ``idx`` (N,) gives the rows' numbers to a per-datapoint guide.
    """
    sites = _local_guide_sites(guide, x, plate, idx)
    if not sites:  # every latent is global or enumerated: nothing per example to average
        return x.new_zeros(x.shape[0], 0)
    return torch.cat(
        [_mean(s["fn"], num_samples).reshape(x.shape[0], -1) for s in sites.values()], -1
    )


def active_units(
    guide,
    x: torch.Tensor,
    *,
    threshold: float = 0.01,
    idx: torch.Tensor | None = None,
    plate: str = DEFAULT_PLATE,
) -> tuple[int, torch.Tensor]:
    """Active latent units (Burda et al. 2016): dimensions with Cov_x(E_q[z | x]) > threshold,
    the covariance taken over the rows of ``x`` (row numbers ``idx`` for a per-datapoint guide).

    Returns
    -------
    count : int
    variances : Tensor, shape (q,)
        The variance over examples of each coordinate of E_q[z | x].
    """
    means = posterior_means(guide, x, idx=idx, plate=plate)
    if means.shape[-1] == 0:  # no local latent to be active
        return 0, means.new_zeros(0)
    variances = means.var(0)
    return int((variances > threshold).sum()), variances


def bits_per_dim(nats: float, x_dim: float, levels: int | None = None) -> float:
    """Negative log-likelihood per dimension in bits, from a log-likelihood per example in nats
    over ``x_dim`` dimensions (with missing entries: the mean number observed).

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
    plate: str = DEFAULT_PLATE,
) -> pd.DataFrame:
    """One row summarising a model and guide on ``x``: ELBO terms, log p(x) and active units.

    Columns: ``elbo``, ``reconstruction``, ``kl``, ``log_px``, ``log_px_stderr`` (Monte Carlo),
    ``log_px_sd`` (spread over examples), ``bits_per_dim``, ``active_units``, ``num_samples``,
    all per example in nats except where named. The model and guide are scored with the
    parameters they hold now (Pyro's param store), whatever their calling convention.
    ``idx`` (N,), the rows' numbers in the training set, is passed to the guide (a
    per-datapoint guide reads its parameters there); the active units are then counted over
    exactly those rows.

    Data of several tensors (a tuple or dict, :mod:`ppvae.data.rows`): ``log_px`` is
    log p(observed sites | the arguments the model conditions on), the sites the model
    observes given every argument (for a conditional model, log p(y | x); with global latents,
    per row under q(theta), see :mod:`ppvae.evaluation.bounds`); rows with an unobserved
    argument are scored without it. When an argument is a label
    (:mod:`ppvae.evaluation.labels`: a discrete site the guide samples when it is None),
    ``log_px_unlabelled``, its ``_stderr`` and ``accuracy`` are added. ``bits_per_dim`` is NaN.
    """
    x = validated_for(model, x)
    terms = elbo_terms(model, guide, x, idx=idx, num_samples=10, plate=plate)
    ll = log_likelihood(model, guide, x, num_samples=num_samples, idx=idx, plate=plate)
    log_px = ll.log_px.mean().item()
    row = {name: t.mean().item() for name, t in terms._asdict().items()}
    row |= {
        "log_px": log_px,
        "log_px_stderr": (ll.stderr.pow(2).sum().sqrt() / len(x)).item(),
        "log_px_sd": ll.log_px.std().item(),
        "bits_per_dim": bits_per_dim(log_px, scored_dims(x), levels),
        "num_samples": num_samples,
        "active_units": active_units(guide, x, idx=idx, plate=plate)[0],
    }
    row |= label_columns(model, guide, x, num_samples, plate)  # M2-like data: {} otherwise
    return pd.DataFrame([row])


def scored_dims(x: torch.Tensor) -> float:
    """Dimensions per example that log p(x) scores: all of them, or with missing entries (NaN)
    the observed ones on average (log p(x_obs) is over those alone); NaN for data of several
    tensors (:class:`~ppvae.data.Rows`), where the model alone says which it scores."""
    if isinstance(x, Rows):
        return math.nan
    if not x.is_floating_point() or not x.isnan().any():
        return float(x.shape[1])
    return (~x.isnan()).sum(1).double().mean().item()


def _observed_mean(trace, plate: str, conditioned=()) -> torch.Tensor:
    site = observed_site(trace, plate, skip=conditioned)
    if site is None:
        raise ValueError("the model has no observed site inside the plate over examples")
    return site["fn"].mean


@torch.no_grad()
def reconstruct(model, guide, x: torch.Tensor, *, plate: str = DEFAULT_PLATE) -> torch.Tensor:
    """E[x | z = E_q[z | x]] for each row of ``x``, shape (N, D): the model decodes the
    guide's posterior mean of every local latent site."""
    means = {n: _mean(s["fn"], 64) for n, s in _local_guide_sites(guide, x, plate).items()}
    conditioned = poutine.condition(batched(model, plate), data=means)
    return _observed_mean(poutine.trace(conditioned).get_trace(x, None, None), plate, means)


@torch.no_grad()
def generate(model, like: torch.Tensor, *, plate: str = DEFAULT_PLATE) -> torch.Tensor:
    """E[x | z] for z drawn from the prior, one per row of ``like`` (whose values are unused)."""
    trace = poutine.trace(batched(model, plate)).get_trace(like, None, None)
    return _observed_mean(trace, plate)


def _base_distribution(fn: dist.Distribution) -> dist.Distribution:
    """The distribution under ``Independent`` and masking wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def baseline_log_px(
    model, train: torch.Tensor, test: torch.Tensor, *, plate: str = DEFAULT_PLATE
) -> torch.Tensor | None:
    """Per-example test log-likelihood (N,) of the independent-pixel baseline that the model's
    likelihood contains (:mod:`ppvae.baselines.independent`), or None for a likelihood with
    none.

    The model is traced once on two test rows and its observed site read: a Bernoulli (or
    continuous Bernoulli, whose density is above the Bernoulli cross-entropy at the same
    means) gets independent Bernoulli pixels at the training means; a Normal with a learned
    scale gets the maximum-likelihood diagonal Gaussian, one with a fixed scale the Gaussian
    at the training means with that scale. Each is the model with its latent ignored, so a
    trained model that ends far below it has diverged.
    """
    with aside(test), poutine.block():  # no draws taken from the scoring's stream
        trace = poutine.trace(batched(model, plate)).get_trace(test[:2], None, None)
    site = observed_site(trace, plate)
    fn = None if site is None else _base_distribution(site["fn"])
    train = train.to(test)
    if isinstance(fn, torch.distributions.Bernoulli | torch.distributions.ContinuousBernoulli):
        return independent.bernoulli_log_prob(train, test)
    if isinstance(fn, torch.distributions.Normal):
        scale = fn.scale
        fixed = not scale.requires_grad and scale.dim() and (scale == scale[:1]).all()
        return independent.gaussian_log_prob(train, test, scale[0].detach() if fixed else None)
    return None
