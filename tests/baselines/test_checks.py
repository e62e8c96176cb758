"""Bad input to the baselines: one clear, one-line error each (ConfigError or DataError)."""

import math

import pytest
import torch

from ppvae.baselines import (
    EMPPCA,
    PPCA,
    MixtureParams,
    MixturePPCA,
    PPCAParams,
    imputation_rmse,
    impute,
    impute_samples,
    mean_impute,
    mixture_log_prob,
    mppca_em_missing,
    ppca_log_prob,
    ppca_posterior,
)
from ppvae.baselines.missing import observed_posterior
from ppvae.config import ConfigError
from ppvae.data import DataError

F64 = torch.float64
W = torch.ones(4, 2, dtype=F64).tril()
MU = torch.zeros(4, dtype=F64)
X4 = torch.arange(12, dtype=F64).reshape(3, 4)
X5 = torch.zeros(3, 5, dtype=F64)
ONE = torch.ones(1, dtype=F64)
PARAMS = PPCAParams(W, MU, torch.tensor(0.5, dtype=F64))


def fitted_ppca() -> PPCA:
    return PPCA.from_params(*PARAMS)


def with_nan(X: torch.Tensor) -> torch.Tensor:
    return X.clone().fill_diagonal_(math.nan)


CASES = {
    "mixture n_clusters < 1": (
        lambda: MixturePPCA(0, 1),
        ConfigError,
        "n_clusters must be an integer >= 1; got 0",
    ),
    "mixture n_components < 1": (
        lambda: MixturePPCA(2, 0),
        ConfigError,
        "n_components must be an integer >= 1; got 0",
    ),
    "mixture n_components not an integer": (
        lambda: MixturePPCA(2, 1.5),
        ConfigError,
        "n_components must be an integer >= 1; got 1.5",
    ),
    "mixture n_components >= d": (
        lambda: MixturePPCA(2, 4).fit(X4),
        ConfigError,
        r"q must satisfy 1 <= q < d; got q=4, d=4",
    ),
    "mixture n_components >= d with NaN": (
        lambda: MixturePPCA(2, 4).fit(with_nan(X4)),
        ConfigError,
        r"q must satisfy 1 <= q < d; got q=4, d=4",
    ),
    "mixture negative sigma2_floor": (
        lambda: MixturePPCA(2, 1, sigma2_floor=-1.0),
        ConfigError,
        "sigma2_floor must be a finite number >= 0; got -1.0",
    ),
    "ppca n_components < 1": (
        lambda: PPCA(0),
        ConfigError,
        "n_components must be an integer >= 1; got 0",
    ),
    "log_prob sigma2 = 0": (
        lambda: ppca_log_prob(X4, W, MU, 0.0),
        ConfigError,
        "sigma2 must be > 0; got 0",
    ),
    "log_prob sigma2 < 0": (
        lambda: ppca_log_prob(X4, W, MU, -1.0),
        ConfigError,
        "sigma2 must be > 0; got -1",
    ),
    "log_prob W of the wrong d": (
        lambda: ppca_log_prob(X5, W, MU, 0.5),
        DataError,
        r"X has 5 columns but the parameters have d=4 \(W has shape \(4, 2\)\)",
    ),
    "log_prob mu of the wrong d": (
        lambda: ppca_log_prob(X4, W, torch.zeros(5), 0.5),
        ConfigError,
        r"mu must have d=4 entries to match W of shape \(4, 2\); got shape \(5,\)",
    ),
    "posterior W of the wrong d": (
        lambda: ppca_posterior(X5, W, MU, 0.5),
        DataError,
        "X has 5 columns but the parameters have d=4",
    ),
    "PPCA.log_prob X of the wrong d": (
        lambda: fitted_ppca().log_prob(X5),
        DataError,
        "X has 5 columns but the parameters have d=4",
    ),
    "PPCA.score X of the wrong d": (
        lambda: fitted_ppca().score(X5),
        DataError,
        "X has 5 columns but the parameters have d=4",
    ),
    "PPCA.from_params sigma2 <= 0": (
        lambda: PPCA.from_params(W, MU, -0.5),
        ConfigError,
        "sigma2 must be > 0; got -0.5",
    ),
    "EMPPCA.log_prob X of the wrong d": (
        lambda: EMPPCA.from_params(*PARAMS).log_prob(with_nan(X5)),
        DataError,
        r"X must have shape \(N, 4\); got shape \(3, 5\)",
    ),
    "impute X of the wrong d": (
        lambda: impute(with_nan(X5), PARAMS),
        DataError,
        r"X must have shape \(N, 4\); got shape \(3, 5\)",
    ),
    "impute sigma2 <= 0": (
        lambda: impute(with_nan(X4), PARAMS._replace(sigma2=torch.tensor(0.0))),
        ConfigError,
        "sigma2 must be > 0; got 0",
    ),
    "impute_samples num_samples < 1": (
        lambda: impute_samples(with_nan(X4), PARAMS, 0),
        ConfigError,
        "num_samples must be an integer >= 1; got 0",
    ),
    "observed_posterior mask of the wrong shape": (
        lambda: observed_posterior(X4, torch.ones(3, 5, dtype=F64), W, PARAMS.sigma2),
        DataError,
        r"the mask O has shape \(3, 5\) but the data have shape \(3, 4\)",
    ),
    "rmse mask of the wrong shape": (
        lambda: imputation_rmse(X4, X4, torch.ones(3, 5, dtype=torch.bool)),
        DataError,
        r"missing_mask has shape \(3, 5\) but the data have shape \(3, 4\)",
    ),
    "rmse imputation of the wrong shape": (
        lambda: imputation_rmse(X4, X5, torch.ones(3, 4, dtype=torch.bool)),
        DataError,
        r"X_imputed has shape \(3, 5\) but the data have shape \(3, 4\)",
    ),
    "rmse mask that selects nothing": (
        lambda: imputation_rmse(X4, X4, torch.zeros(3, 4, dtype=torch.bool)),
        DataError,
        "missing_mask selects no entries, so there is nothing to score",
    ),
    "rmse NaN left at a held-out entry": (
        lambda: imputation_rmse(X4, with_nan(X4), torch.ones(3, 4, dtype=torch.bool)),
        DataError,
        "X_true or X_imputed is NaN or infinite at a held-out entry",
    ),
    "mean_impute column with nothing observed": (
        lambda: mean_impute(torch.tensor([[1.0, math.nan, 2.0], [3.0, math.nan, math.nan]])),
        DataError,
        r"columns \[1\] have no observed entries, so they have no mean",
    ),
    "mean_impute X of the wrong d": (
        lambda: mean_impute(X4, X5),
        DataError,
        r"X must have shape \(N, 4\); got shape \(3, 5\)",
    ),
    "mixture fit with no row observed": (
        lambda: mppca_em_missing(torch.full((5, 3), math.nan), 2, 1),
        DataError,
        r"columns \[0, 1, 2\] are observed in fewer than 2 rows",
    ),
    "mixture fit with fewer observed rows than clusters": (
        lambda: mppca_em_missing(torch.cat([with_nan(X4), torch.full((4, 4), math.nan)]), 4, 1),
        DataError,
        "need at least n_clusters=4 rows with an observed entry; got 3",
    ),
    "mixture log_prob X of the wrong d": (
        lambda: mixture_log_prob(
            X5, MixtureParams(torch.ones(1), MU[None], W[None], torch.ones(1))
        ),
        DataError,
        r"X must have shape \(N, 4\); got shape \(3, 5\)",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_raises_one_clear_error(case):
    call, error, message = CASES[case]
    with pytest.raises(error, match=message) as info:
        call()
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
