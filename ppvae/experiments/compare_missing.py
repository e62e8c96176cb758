"""One table for incomplete data: PPCA by missing-data EM, the mixture of PPCA, a VAE trained on
the masked data (MIWAE), and mean imputation, scored on the same masked split.

The data are prepared as for :func:`ppvae.experiments.compare.compare` (seeded subsets, uniform
dequantization), then entries go missing completely at random
(:func:`ppvae.data.missing.mcar_mask`,
seeded by ``config.seed``) in train and test alike. Every method is fitted on the masked
training set, and scored on the masked test set by:

- ``log_px``: the observed-data log-likelihood log p(x_obs) per test example: exact for the
  Gaussian models (mean imputation's independent Gaussians, PPCA, the mixture), importance
  sampled for the VAE (K = ``eval_samples``, with its Monte Carlo standard error);
- ``imputation_rmse``: the root mean squared error of E[x_miss | x_obs] on the held-out test
  entries, against their true values;
- ``fit_seconds``: the fit only.

Methods:

- ``mean``: each pixel an independent Gaussian with its observed mean and variance; it
  imputes the training column mean: the floor;
- ``ppca-em``: PPCA by exact EM on the observed entries (:class:`~ppvae.baselines.EMPPCA`);
- ``mppca``: a mixture of PPCA by exact EM with the missing entries and the component as latent
  variables (:class:`~ppvae.baselines.MixturePPCA`);
- ``vae``: a VAE with a learned per-pixel Gaussian likelihood that leaves missing entries out
  (``missing=True``) and an encoder of the zero-filled data and its mask, trained on the MIWAE
  bound (objective ``iwae``, K = ``num_particles``); it imputes with
  :func:`ppvae.evaluation.imputation.impute`.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import pandas as pd
import torch
from torch import Tensor

from ppvae.baselines import EMPPCA, MixturePPCA, imputation_rmse, observed_column_means
from ppvae.data.missing import mcar_split
from ppvae.evaluation.imputation import impute
from ppvae.experiments.rows import Baseline, fit_table, sampled_mean, score_row, svi, timed

#: The columns of ``ppvae compare --missing-rate``'s table, in order.
COLUMNS = [
    "method", "log_px", "log_px_stderr", "estimator", "imputation_rmse", "fit_seconds", "status",
]  # fmt: skip

LOG_2PI = math.log(2 * math.pi)


class MaskedSplit(NamedTuple):
    """The masked train and test sets, and the complete test set to score imputations."""

    train: Tensor
    test: Tensor
    test_complete: Tensor
    image_shape: tuple[int, ...] | None

    @property
    def held_out(self) -> Tensor:
        """True at the test entries that are missing."""
        return self.test.isnan()


def mask(split, rate: float, seed: int) -> MaskedSplit:
    """Entries of ``split.train`` and ``split.test`` missing completely at random."""
    train, test = mcar_split(split.train, split.test, rate, seed)
    return MaskedSplit(train, test, split.test, split.image_shape)


class MissingRow(NamedTuple):
    log_px: float
    log_px_stderr: float
    estimator: str
    imputation_rmse: float
    fit_seconds: float


def _rmse(split: MaskedSplit, imputed: Tensor) -> float:
    return imputation_rmse(split.test_complete, imputed, split.held_out)


def mean_floor(split: MaskedSplit, config) -> MissingRow:
    """Independent Gaussian pixels (observed means and variances); imputes the column means."""
    (mean, var), seconds = timed(lambda: _column_moments(split.train))
    observed = ~split.test.isnan()
    lp = -0.5 * (LOG_2PI + var.log() + (split.test - mean).square() / var)
    log_px = torch.where(observed, lp, 0.0).sum(1)
    imputed = torch.where(observed, split.test, mean)
    return MissingRow(log_px.mean().item(), 0.0, "exact", _rmse(split, imputed), seconds)


def _column_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    mean = observed_column_means(x).to(x)
    var = torch.nanmean((x - mean).square(), dim=0).clamp(min=1e-6)
    return mean, var


def ppca_em(split: MaskedSplit, config) -> MissingRow:
    """PPCA by exact EM on the observed entries."""
    em = EMPPCA(config.z_dim, max_iter=config.em_max_iter, tol=config.em_tol, seed=config.seed)
    model, seconds = timed(lambda: em.fit(split.train))
    log_px = model.log_prob(split.test).mean().item()
    return MissingRow(log_px, 0.0, "exact", _rmse(split, model.impute(split.test)), seconds)


def mixture_ppca(split: MaskedSplit, config) -> MissingRow:
    """Mixture of PPCA by exact EM, the missing entries and the component latent."""
    mixture = MixturePPCA(
        config.components, config.z_dim, max_iter=config.em_max_iter, tol=config.em_tol,
        seed=config.seed,
    )  # fmt: skip
    model, seconds = timed(lambda: mixture.fit(split.train))
    log_px = model.log_prob(split.test).mean().item()
    return MissingRow(log_px, 0.0, "exact", _rmse(split, model.impute(split.test)), seconds)


def miwae(split: MaskedSplit, config) -> MissingRow:
    """VAE (learned per-pixel Gaussian) trained on the observed entries' MIWAE bound.

    It imputes by importance-weighted conditional means.
    """
    options = {"objective": "iwae", "num_particles": config.num_particles}
    model, guide, seconds = svi("gaussian-learned", "masked-diag", split, config, **options)
    log_px, stderr, estimator = sampled_mean(model, guide, split.test, config)
    imputed = impute(model, guide, split.test.float(), num_samples=config.eval_samples).mean
    rmse = _rmse(split, imputed.to(split.test_complete))
    return MissingRow(log_px, stderr, estimator, rmse, seconds)


#: The rows of ``ppvae compare --missing-rate`` by name: each fits one method on a split with
#: missing entries and scores it.
METHODS: dict[str, Callable[[MaskedSplit, object], MissingRow]] = {
    "mean": mean_floor,
    "ppca-em": ppca_em,
    "mppca": mixture_ppca,
    "vae": miwae,
}


def compare_missing(config, split, bar=iter, *, done=None, on_row=None) -> pd.DataFrame:
    """The methods of :data:`METHODS` named by ``config.methods`` (all by default) on ``split``
    (a :class:`ppvae.experiments.compare.Split`) with ``config.missing_rate`` of the entries
    missing;
    ``bar`` wraps the (name, method) pairs (a progress bar). ``done`` and ``on_row``, and what
    a failed or interrupted row does, are as in :func:`ppvae.experiments.compare.compare` (the
    same :func:`~ppvae.experiments.compare.fit_table`); the baseline a row diverges from is the
    ``mean`` row's model."""
    masked = mask(split, config.missing_rate, config.seed)
    chosen = {k: m for k, m in METHODS.items() if not config.methods or k in config.methods}
    baseline = Baseline.of(masked.train, masked.test)

    def score(name: str, method: Callable) -> dict:
        row = score_row(name, method, masked, config)
        return {**row._asdict(), "status": baseline.status(name, row)}

    return fit_table(chosen, score, COLUMNS, bar, done=done, on_row=on_row)
