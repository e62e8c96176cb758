"""Plain-torch probabilistic PCA, its EM fits and the mixture of PPCA: oracles for the models.

No Pyro here, so these double as test oracles for the Pyro models and guides.
"""

from ppvae.baselines.em import EMPPCA, EMResult, ppca_em, ppca_em_missing
from ppvae.baselines.missing import impute
from ppvae.baselines.mppca import MixtureParams, MixturePPCA, MixtureSample
from ppvae.baselines.ppca import (
    PPCA,
    NotFittedError,
    PPCAParams,
    PPCAPosterior,
    ppca_log_prob,
    ppca_mle,
    ppca_posterior,
    ppca_sample,
)

__all__ = [
    "EMPPCA",
    "EMResult",
    "MixtureParams",
    "MixturePPCA",
    "MixtureSample",
    "NotFittedError",
    "PPCA",
    "PPCAParams",
    "PPCAPosterior",
    "impute",
    "ppca_em",
    "ppca_em_missing",
    "ppca_log_prob",
    "ppca_mle",
    "ppca_posterior",
    "ppca_sample",
]
