"""The names every model and guide share: sample sites and the data plate.

Guides import these constants and never retype the strings, so a model and a guide written
against this module always have matching sites.
"""

import pyro
import torch

LATENT = "z"
"""The latent sample site, ``z ~ p(z)`` in the model and ``z ~ q(z | x)`` in the guide."""

OBS = "x"
"""The observed sample site, ``x ~ p(x | z)``."""

DATA = "data"
"""The plate over examples. Minibatches subsample it, so log-densities scale to the full data."""


def data_plate(x: torch.Tensor, idx: torch.Tensor | None = None, num_data: int | None = None):
    """Open the data plate for a minibatch.

    Parameters
    ----------
    x : Tensor, shape (B, D)
        The minibatch.
    idx : LongTensor, shape (B,), optional
        Indices of the rows of ``x`` in the full data set. Per-datapoint guides read their
        parameters at these indices. Defaults to ``arange(B)``.
    num_data : int, optional
        Size N of the full data set. The plate scales every log-density inside it by N / B, so
        the ELBO of a minibatch is an unbiased estimate of the full-data ELBO. Defaults to B.

    Returns
    -------
    pyro.plate
        Used as a context manager; it yields the subsample indices.
    """
    size = x.shape[0] if num_data is None else num_data
    if idx is None and size != x.shape[0]:
        raise ValueError(
            f"num_data={size} but the batch has {x.shape[0]} rows: pass idx, the batch's indices"
        )
    return pyro.plate(DATA, size, subsample=idx)
