"""Plain-torch probabilistic PCA, its EM fits and the mixture of PPCA: oracles for the models.

No Pyro here, so these double as test oracles for the Pyro models and guides.
"""

from ppvae.baselines.em import EMPPCA, EMResult, ppca_em, ppca_em_missing
from ppvae.baselines.missing import (
    imputation_rmse,
    impute,
    impute_samples,
    mean_impute,
    observed_column_means,
    observed_log_prob,
)
from ppvae.baselines.mppca import MixturePPCA, MixtureSample
from ppvae.baselines.mppca_em import MixtureEMResult, MixtureParams, mppca_em
from ppvae.baselines.mppca_missing import mixture_impute, mixture_log_prob, mppca_em_missing
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
    "MixtureEMResult",
    "MixtureParams",
    "MixturePPCA",
    "MixtureSample",
    "NotFittedError",
    "PPCA",
    "PPCAParams",
    "PPCAPosterior",
    "impute",
    "impute_samples",
    "imputation_rmse",
    "mean_impute",
    "mixture_impute",
    "mixture_log_prob",
    "mppca_em",
    "mppca_em_missing",
    "observed_column_means",
    "observed_log_prob",
    "ppca_em",
    "ppca_em_missing",
    "ppca_log_prob",
    "ppca_mle",
    "ppca_posterior",
    "ppca_sample",
]
