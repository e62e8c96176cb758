"""The rows of :func:`ppvae.experiments.compare.compare`: each method fits on a
:class:`~ppvae.experiments.rows.Split` and returns a :class:`~ppvae.experiments.rows.Row`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ppvae.baselines import EMPPCA, PPCA, MixturePPCA, ppca_log_prob
from ppvae.errors import TrainingError
from ppvae.evaluation.bounds import elbo_terms
from ppvae.experiments.rows import Row, Split, sampled_mean, svi, timed

if TYPE_CHECKING:  # (compare imports this module)
    from ppvae.experiments.compare import CompareConfig


def _exact(log_px: Tensor, seconds: float, elbo: float = math.nan) -> Row:
    return Row(log_px.mean().item(), 0.0, "exact", elbo, seconds)


def ppca_closed_form(split: Split, config: CompareConfig) -> Row:
    """PPCA, closed-form maximum likelihood (eigendecomposition of the covariance)."""
    model, seconds = timed(lambda: PPCA(config.z_dim).fit(split.train))
    return _exact(model.log_prob(split.test), seconds)


def ppca_em(split: Split, config: CompareConfig) -> Row:
    """PPCA fitted by EM from a random start."""
    em = EMPPCA(config.z_dim, max_iter=config.em_max_iter, tol=config.em_tol, seed=config.seed)
    model, seconds = timed(lambda: em.fit(split.train))
    return _exact(model.log_prob(split.test), seconds)


def mixture_ppca(split: Split, config: CompareConfig) -> Row:
    """Mixture of PPCA (K components of dimension z_dim), EM from a k-means++ start."""
    mixture = MixturePPCA(
        config.components, config.z_dim, max_iter=config.em_max_iter, tol=config.em_tol,
        seed=config.seed,
    )  # fmt: skip
    model, seconds = timed(lambda: mixture.fit(split.train))
    return _exact(model.log_prob(split.test), seconds)


@torch.no_grad()
def _analytic_elbo(model, guide, x: Tensor) -> float:
    return model.analytic_elbo(x, guide.encode(x)).mean().item()


def ppca_svi(split: Split, config: CompareConfig) -> Row:
    """The PPCA Pyro model by SVI with the exact posterior guide (ELBO = log p(x))."""
    model, guide, seconds = svi("ppca", "ppca-exact", split, config)
    if not model.sigma2 > 0:  # a finite loss all the way, but the noise variance underflowed
        raise TrainingError(
            f"training drove sigma2 to {model.sigma2.item():.3g}: the learning rate {config.lr} "
            "is too high for PPCA by SVI"
        )
    with torch.no_grad():
        params = (p.double() for p in (model.W, model.mu, model.sigma2))
        log_px = ppca_log_prob(split.test, *params)
    return _exact(log_px, seconds, elbo=_analytic_elbo(model, guide, split.test.float()))


def _sampled(model, guide, split: Split, config: CompareConfig, elbo: float, seconds) -> Row:
    return Row(*sampled_mean(model, guide, split.test, config), elbo, seconds)


def linear_vae(split: Split, config: CompareConfig) -> Row:
    """The PPCA Pyro model with a linear mean-field guide by SVI: the linear VAE."""
    model, guide, seconds = svi("ppca", "linear", split, config)
    elbo = _analytic_elbo(model, guide, split.test.float())
    return _sampled(model, guide, split, config, elbo, seconds)


def nonlinear_vae(split: Split, config: CompareConfig) -> Row:
    """MLP decoder with a learned per-pixel Gaussian likelihood, MLP mean-field guide."""
    model, guide, seconds = svi("gaussian-learned", "diag", split, config)
    terms = elbo_terms(model, guide, split.test.float(), num_samples=config.elbo_samples)
    return _sampled(model, guide, split, config, terms.elbo.double().mean().item(), seconds)


#: The rows of ``ppvae compare`` by name: each fits one method on a split and scores it.
METHODS: dict[str, Callable[[Split, CompareConfig], Row]] = {
    "ppca": ppca_closed_form,
    "ppca-em": ppca_em,
    "mppca": mixture_ppca,
    "ppca-svi": ppca_svi,
    "linear-vae": linear_vae,
    "vae": nonlinear_vae,
}
