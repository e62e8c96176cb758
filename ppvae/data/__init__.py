"""Data: datasets as flat float32 tensors (scikit-learn digits, (Fashion-)MNIST, synthetic PPCA
data), their validation, binarization and dequantization, and missing entries (NaN).

The lowest layer above the foundation: imports only ``ppvae.errors`` and ``ppvae.config``.
Every data problem raises :class:`~ppvae.errors.DataError` with a one-line message.
"""

from ppvae.data.dataset import (
    HALF_PRECISION,
    NAN_HINT,
    Dataset,
    check_rows_observed,
    validate_data,
)
from ppvae.data.files import DEBIAN_FASHION_MNIST, IDX_FILES, resolve_root
from ppvae.data.labels import one_hot, quadrants, with_labels
from ppvae.data.loaders import DATASETS, load_dataset, synthetic_ppca
from ppvae.data.rows import Group, Rows, as_rows
from ppvae.data.transforms import BINARIZATIONS, binarize_sample, dequantize
from ppvae.errors import DataError  # importable from here too (its old home)

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "HALF_PRECISION",
    "IDX_FILES",
    "NAN_HINT",
    "DataError",
    "Dataset",
    "Group",
    "Rows",
    "as_rows",
    "binarize_sample",
    "check_rows_observed",
    "dequantize",
    "load_dataset",
    "resolve_root",
    "synthetic_ppca",
    "validate_data",
    "one_hot",
    "quadrants",
    "with_labels",
]
