"""Data that is more than x: class labels for semi-supervised models, and quadrant completion
for conditional models.

Both return a :class:`~ppvae.data.Dataset` whose ``train`` and ``test`` are tuples of tensors
that share their first dimension, the examples, in the order a Pyro-style ``model(xs, ys=None)``
takes them:

- :func:`with_labels`: ``(x, y)`` with ``y`` the one-hot labels (N, C); a training row whose
  label is hidden is all NaN ("not observed for this example"), so a model is called with
  ``ys`` on the labelled rows and ``ys=None`` on the others.
- :func:`quadrants`: ``(inputs, outputs)`` as in Pyro's ``examples/cvae``: ``inputs`` is the
  image with its hidden quadrants set to -1, ``outputs`` the image with its given quadrants
  set to -1, so the pixels to predict are those of ``outputs`` that are not -1.
"""

import torch
from torch import Tensor

from ppvae.data.dataset import Dataset
from ppvae.errors import DataError

MASKED = -1.0
"""The value Pyro's cvae example writes in the pixels a tensor does not carry."""

__all__ = ["MASKED", "balanced_rows", "one_hot", "quadrant_mask", "quadrants", "with_labels"]


def one_hot(labels: Tensor, classes: int) -> Tensor:
    """Float32 one-hot rows (N, C) of int labels (N,).

    Examples
    --------
    >>> one_hot(torch.tensor([2, 0]), 3)
    tensor([[0., 0., 1.],
            [1., 0., 0.]])
    """
    return torch.nn.functional.one_hot(labels, classes).float()


def balanced_rows(labels: Tensor, n_labels: int, classes: int, seed: int) -> Tensor:
    """Indices (sorted) of ``n_labels`` rows, ``n_labels / classes`` of each class, drawn
    uniformly without replacement with a generator seeded by ``seed``.

    Raises :class:`~ppvae.errors.DataError` unless ``n_labels`` is a positive multiple of
    ``classes`` that every class has enough rows for.

    Examples
    --------
    >>> balanced_rows(torch.tensor([0, 1, 0, 1, 0, 1]), 4, 2, seed=0).shape
    torch.Size([4])
    """
    if n_labels < classes or n_labels % classes:
        raise DataError(
            f"--labels {n_labels} cannot be class-balanced over {classes} classes: give a "
            f"positive multiple of {classes}"
        )
    if n_labels > len(labels):
        raise DataError(f"--labels {n_labels} is more than the {len(labels)} training rows")
    per_class = n_labels // classes
    counts = torch.bincount(labels, minlength=classes)
    if int(counts.min()) < per_class:
        short = int(counts.argmin())
        raise DataError(
            f"--labels {n_labels} needs {per_class} rows of each class, but class {short} has "
            f"{int(counts[short])} training rows"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(classes):
        rows = (labels == c).nonzero().flatten()
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def with_labels(data: Dataset, n_labels: int, seed: int = 0) -> Dataset:
    """``data`` with ``n_labels`` class-balanced training labels and every test label.

    Parameters
    ----------
    data : Dataset
        With ``train_labels`` and ``test_labels`` (digits, (Fashion-)MNIST).
    n_labels : int
        Labelled training rows, a multiple of the number of classes C; the same number of each
        class is drawn (seeded by ``seed``).
    seed : int
        Which rows are labelled.

    Returns
    -------
    Dataset
        ``train = (x, y)`` with ``y`` (N, C) one-hot on the labelled rows and all NaN on the
        others; ``test = (x, y)`` with every label. ``train_labels`` and ``test_labels`` are
        the int labels, all of them (for scoring).

    Examples
    --------
    >>> from ppvae.data import load_dataset
    >>> data = with_labels(load_dataset("digits"), 100, seed=0)
    >>> x, y = data.train
    >>> x.shape, y.shape, int((~y.isnan().any(1)).sum())
    (torch.Size([1437, 64]), torch.Size([1437, 10]), 100)
    """
    if data.train_labels is None or data.test_labels is None:
        raise DataError(f"{data.name} has no class labels to hand out")
    classes = int(max(data.train_labels.max(), data.test_labels.max())) + 1
    rows = balanced_rows(data.train_labels, n_labels, classes, seed)
    y = torch.full((len(data.train), classes), float("nan"))
    y[rows] = one_hot(data.train_labels[rows], classes)
    test = (data.test, one_hot(data.test_labels, classes))
    return data._replace(name=f"{data.name}-{n_labels}-labels", train=(data.train, y), test=test)


def quadrant_mask(height: int, width: int, given: int) -> Tensor:
    """(H, W) bool, True on the ``given`` quadrants the model sees, as Pyro's ``MaskImages``:
    1 = the bottom-left quadrant, 2 = the left half, 3 = the left half and the top-right.

    Examples
    --------
    >>> quadrant_mask(2, 2, 3).int()
    tensor([[1, 1],
            [1, 0]], dtype=torch.int32)
    """
    if given not in (1, 2, 3):
        raise DataError(f"--quadrants must be 1, 2 or 3 given quadrants, got {given}")
    mask = torch.zeros(height, width, dtype=torch.bool)
    top, left = slice(None, height // 2), slice(None, width // 2)
    mask[height // 2 :, left] = True
    if given >= 2:
        mask[:, left] = True
    if given == 3:
        mask[top, :] = True
    return mask


def _split(x: Tensor, seen: Tensor) -> tuple[Tensor, Tensor]:
    inputs = x.masked_fill(~seen, MASKED)
    outputs = x.masked_fill(seen, MASKED)
    return inputs, outputs


def quadrants(data: Dataset, given: int) -> Dataset:
    """``data`` as quadrant completion: see ``given`` quadrants (1, 2 or 3), predict the rest.

    Returns
    -------
    Dataset
        ``train`` and ``test`` are ``(inputs, outputs)``, both (N, D) like ``x``: ``inputs``
        is the image with the hidden quadrants set to -1 (:data:`MASKED`), ``outputs`` the
        image with the given quadrants set to -1, as Pyro's ``examples/cvae`` builds them.

    Examples
    --------
    >>> from ppvae.data import load_dataset
    >>> inputs, outputs = quadrants(load_dataset("digits"), 1).test
    >>> int((inputs[0] != -1).sum()), int((outputs[0] != -1).sum())
    (16, 48)
    """
    if data.image_shape is None:
        raise DataError(f"{data.name} is not images: quadrant completion needs (C, H, W) data")
    c, h, w = data.image_shape
    seen = quadrant_mask(h, w, given).expand(c, h, w).reshape(-1)
    return data._replace(
        name=f"{data.name}-{given}-quadrants",
        train=_split(data.train, seen),
        test=_split(data.test, seen),
        dynamic=False,
    )
