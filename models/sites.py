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

CLUSTER = "y"
"""The discrete mixture component of a mixture prior, ``y ~ Categorical(pi)``; enumerated."""

DATA = "data"
"""The plate over examples. Minibatches subsample it, so log-densities scale to the full data."""


def data_plate(
    x: torch.Tensor | int, idx: torch.Tensor | None = None, num_data: int | None = None
):
    """Open the data plate for a minibatch.

    Parameters
    ----------
    x : Tensor, shape (B, D), or int
        The minibatch, or its number of rows B (when sampling from the model).
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
    rows = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() else x
    size = rows if num_data is None else num_data
    if idx is None and size != rows:
        raise ValueError(
            f"num_data={size} but the batch has {rows} rows: pass idx, the batch's indices"
        )
    return pyro.plate(DATA, size, subsample=idx)


def batch_rows(x: torch.Tensor | None, idx: torch.Tensor | None, batch_size: int | None):
    """Rows of the batch: ``x`` itself (its rows), else those of ``idx``, else ``batch_size``
    (default 1).

    A model called with ``x=None`` samples its observations, so ``model(None, batch_size=B)``
    and ``pyro.infer.Predictive(model, num_samples=S)(None)`` draw from the prior.
    """
    if x is not None:
        return x  # under torch.jit.trace its size is a tensor: data_plate reads it
    if idx is not None:
        return idx.shape[0]
    return 1 if batch_size is None else batch_size


LABEL = "y"
"""The class label of a semi-supervised model, observed on labelled rows and enumerated on the
others; also the output of a conditional model, ``y ~ p(y | x, z)``."""

LABEL_AUX = "y_aux"
"""The label observed by the auxiliary classifier q(y | x) (Kingma et al. 2014's extra loss)."""
