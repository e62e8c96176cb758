"""Datasets by name: scikit-learn digits, (Fashion-)MNIST and synthetic PPCA data, binarized
if asked (:func:`load_dataset`)."""

import functools
import os
from collections.abc import Callable

import torch
from torch import Tensor

from ppvae.data.dataset import Dataset, choose, validate_data
from ppvae.data.files import load_idx
from ppvae.data.transforms import BINARIZERS
from ppvae.errors import DataError, shown


def synthetic_ppca(
    *,
    n_train: int = 2000,
    n_test: int = 1000,
    d: int = 10,
    q: int = 2,
    sigma: float = 0.5,
    seed: int = 0,
) -> Dataset:
    """Draw train and test data from a PPCA model with known parameters.

    ``W`` (``(D, Q)``) and ``mu`` (``(D,)``) have standard normal entries, drawn first from a
    ``torch.Generator`` seeded with ``seed``; then come the train and the test data.

    Notes
    -----
    .. math::

        z \\sim \\mathcal{N}(0, I_Q), \\qquad
        x = W z + \\mu + \\sigma \\varepsilon, \\quad \\varepsilon \\sim \\mathcal{N}(0, I_D)

    Examples
    --------
    >>> data = synthetic_ppca(n_train=5, d=3, q=1)
    >>> data.train.shape, data.params["W"].shape, float(data.params["sigma"])
    (torch.Size([5, 3]), torch.Size([3, 1]), 0.5)
    """
    if min(n_train, n_test, q) < 1 or q > d or not sigma > 0:
        raise DataError(
            "synthetic_ppca needs n_train, n_test >= 1, 1 <= q <= d and sigma > 0, got "
            f"n_train={n_train}, n_test={n_test}, d={d}, q={q}, sigma={sigma}"
        )
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(d, q, generator=generator, dtype=torch.float64)
    mu = torch.randn(d, generator=generator, dtype=torch.float64)
    sigma_t = torch.tensor(sigma, dtype=torch.float64)

    def draw(n: int) -> Tensor:
        z = torch.randn(n, q, generator=generator, dtype=torch.float64)
        eps = torch.randn(n, d, generator=generator, dtype=torch.float64)
        return (z @ W.T + mu + sigma_t * eps).float()

    train = draw(n_train)
    params = {"W": W, "mu": mu, "sigma": sigma_t}
    return Dataset("synthetic-ppca", train, draw(n_test), None, params=params)


def _load_digits(*, data_dir=None, seed: int = 0, download: bool = True) -> Dataset:
    # Imported here so that `import ppvae.data` stays fast for modules that only validate data.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    # A fixed split (random_state=0, not `seed`) keeps test numbers comparable across runs.
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    train, test = (torch.as_tensor(a / 16, dtype=torch.float32) for a in (x_tr, x_te))
    labels = (torch.as_tensor(a, dtype=torch.int64) for a in (y_tr, y_te))
    return Dataset("digits", train, test, (1, 8, 8), *labels)


def _load_synthetic(*, data_dir=None, seed: int = 0, download: bool = True) -> Dataset:
    return synthetic_ppca(seed=seed)


#: The datasets by name (``--dataset``), each a loader returning a :class:`Dataset`.
DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": _load_digits,
    "fashion-mnist": functools.partial(load_idx, "fashion-mnist"),
    "mnist": functools.partial(load_idx, "mnist"),
    "synthetic-ppca": _load_synthetic,
}


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    binarize: str = "none",
    seed: int = 0,
    download: bool = True,
) -> Dataset:
    """Load a dataset by name and binarize it for Bernoulli decoders if asked.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`: ``"digits"``, ``"fashion-mnist"``, ``"mnist"``,
        ``"synthetic-ppca"``.
    data_dir : str or path, optional
        Root for (Fashion-)MNIST; see :func:`resolve_root` for the default.
    binarize : str
        One of :data:`BINARIZATIONS`. ``"none"`` keeps grey levels; ``"static"`` thresholds at
        0.5; ``"static-sample"`` draws one Bernoulli sample of train and test; ``"dynamic"``
        keeps train grey (``dynamic=True``: resample it every epoch) and samples test once.
    seed : int
        Seeds the binarization samples and the synthetic data (not the digits split).
    download : bool
        Let torchvision download missing (Fashion-)MNIST files.

    Examples
    --------
    >>> data = load_dataset("digits", binarize="dynamic")
    >>> data.dynamic, sorted(data.test.unique().tolist())
    (True, [0.0, 1.0])
    """
    loader = choose(DATASETS, name, "dataset")
    binarizer = choose(BINARIZERS, binarize, "binarization")
    data = loader(data_dir=data_dir, seed=seed, download=download)
    for what, x in (("train", data.train), ("test", data.test)):
        validate_data(x, unit_interval=data.image_shape is not None, what=f"{name} {what}")
    if binarize != "none" and data.image_shape is None:
        raise DataError(
            f"binarize={shown(binarize)} needs pixel data in [0, 1], but {name} is real-valued; "
            "use binarize='none'"
        )
    return binarizer(data, torch.Generator().manual_seed(seed))
