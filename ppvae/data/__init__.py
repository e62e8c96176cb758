"""Datasets as flat float32 tensors: scikit-learn digits, (Fashion-)MNIST and synthetic PPCA data.

Every loader returns a :class:`Dataset` whose rows are examples (images flattened to
``(N, C*H*W)``). Every data problem raises :class:`DataError` with a one-line message.
"""

import functools
import gzip
import math
import os
import shutil
import uuid
import warnings
import zlib
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ppvae.errors import DataError, shown  # DataError: importable from here too (its old home)

#: Where the Debian package ``dataset-fashion-mnist`` installs its gzip'ed IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


NAN_HINT = (
    "; NaN marks a missing entry only for a model with accepts_missing (ppvae's VAE models "
    "built with missing=True, or DataShape(..., missing=True)) and a guide that reads the "
    "mask (GUIDES['masked-diag'])"
)


class Dataset(NamedTuple):
    """A train/test pair of flat float32 data sets.

    Attributes
    ----------
    name : str
    train, test : Tensor
        ``(N, D)`` and ``(M, D)`` float32, one example per row.
    image_shape : tuple of int or None
        ``(C, H, W)`` of one image (``C * H * W == D``), or None for non-image data.
    train_labels, test_labels : Tensor or None
        ``(N,)`` and ``(M,)`` int64 class labels.
    dynamic : bool
        True when the training loop must re-binarize ``train`` every epoch with
        :func:`binarize_sample` (the IWAE protocol).
    params : dict of str to Tensor or None
        The true generating parameters (float64), for synthetic data only.

    Examples
    --------
    >>> data = load_dataset("digits")
    >>> data.train.shape, data.test.shape, data.image_shape
    (torch.Size([1437, 64]), torch.Size([360, 64]), (1, 8, 8))
    """

    name: str
    train: Tensor
    test: Tensor
    image_shape: tuple[int, int, int] | None
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    dynamic: bool = False
    params: dict[str, Tensor] | None = None


HALF_PRECISION = (torch.float16, torch.bfloat16)
"""Dtypes that data is upcast from (to float32, with a note): a log-density summed over a row
overflows float16 at the first step, and bfloat16 keeps 3 significant digits."""


def validate_data(
    x: Tensor, *, unit_interval: bool = False, missing: bool = False, what: str = "data"
) -> Tensor:
    """``x``, after raising :class:`DataError` unless it is a finite, non-empty ``(N, D)``
    float tensor; float16 and bfloat16 data comes back as float32, with a warning that says so.

    Parameters
    ----------
    x : Tensor
        ``(N, D)`` data, one example per row.
    unit_interval : bool
        Also require every entry to lie in [0, 1], as Bernoulli-type decoders do.
    missing : bool
        Accept NaN as a missing entry (for a model with ``accepts_missing``), as long as every
        row has an observed entry; the other checks then apply to the observed entries.
    what : str
        How to name ``x`` in the message.

    Returns
    -------
    Tensor, shape (N, D)
        ``x`` itself, or a float32 copy of half-precision data.

    Examples
    --------
    >>> validate_data(torch.zeros(3, 2, 2))
    Traceback (most recent call last):
    ...
    ppvae.errors.DataError: data must be 2-D (N, D) with one example per row, got shape \
(3, 2, 2); flatten images to (N, C*H*W) first
    """
    if not isinstance(x, Tensor):
        raise DataError(
            f"{what} must be a torch.Tensor, got {type(x).__name__}; "
            "convert it with torch.as_tensor(x, dtype=torch.float32)"
        )
    if x.dim() != 2:
        raise DataError(
            f"{what} must be 2-D (N, D) with one example per row, got shape {tuple(x.shape)}; "
            "flatten images to (N, C*H*W) first"
        )
    if x.numel() == 0:
        raise DataError(f"{what} is empty (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise DataError(f"{what} must have a floating dtype, got {x.dtype}; use x.float()")
    x = _upcast(x, what)
    _check_values(x, what, unit_interval, missing)
    return x


def _upcast(x: Tensor, what: str) -> Tensor:
    if x.dtype not in HALF_PRECISION:
        return x
    warnings.warn(
        f"{what} is {x.dtype}: ppvae upcasts it to torch.float32, since log-densities in half "
        "precision overflow (pass x.float() to skip this note)",
        stacklevel=3,
    )
    return x.float()


def _check_values(x: Tensor, what: str, unit_interval: bool, missing: bool = False) -> None:
    lo, hi = (float(v) for v in x.aminmax())
    # min and max propagate NaN and Inf, so one fast pass suffices unless there is a problem.
    if not (math.isfinite(lo) and math.isfinite(hi)):
        nan = x.isnan()
        n_nan, n_inf = int(torch.count_nonzero(nan)), int(torch.count_nonzero(x.isinf()))
        if n_inf or not missing:
            hint = "" if n_inf or not n_nan else NAN_HINT
            raise DataError(
                f"{what} has {n_nan} NaN and {n_inf} Inf entries (of {x.numel()}){hint}"
            )
        check_rows_observed(nan, what)
        lo, hi = (float(v) for v in x[~nan].aminmax())
    if unit_interval and (lo < 0 or hi > 1):
        raise DataError(
            f"{what} must lie in [0, 1] for Bernoulli-type decoders, found min {lo:.4g} and "
            f"max {hi:.4g}; rescale it (pixels / 255) or use a Gaussian decoder"
        )


def check_rows_observed(nan: Tensor, what: str = "data") -> None:
    """Raise :class:`DataError` if a row of the (N, D) boolean ``nan`` (True = missing) is all
    missing: a row with nothing observed has no likelihood to learn from or condition on.

    Examples
    --------
    >>> check_rows_observed(torch.tensor([[False, True], [True, True]]))
    Traceback (most recent call last):
    ...
    ppvae.errors.DataError: data has 1 row with nothing observed (all NaN), the first is row 1; \
drop it: every row needs an observed entry
    """
    empty = nan.all(-1).nonzero().flatten()
    if len(empty):
        rows = "1 row" if len(empty) == 1 else f"{len(empty)} rows"
        raise DataError(
            f"{what} has {rows} with nothing observed (all NaN), the first is row "
            f"{int(empty[0])}; drop {'it' if len(empty) == 1 else 'them'}: every row needs an "
            "observed entry"
        )


def binarize_sample(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``Bernoulli(x)`` entrywise: one stochastic binarization of data in [0, 1].

    Returns a tensor of 0s and 1s with the shape, dtype and device of ``x``; missing entries
    (NaN) stay NaN.

    Examples
    --------
    >>> binarize_sample(torch.tensor([[0.0, 1.0, float("nan")]]))
    tensor([[0., 1., nan]])
    """
    observed = ~x.isnan()
    return torch.bernoulli(x.where(observed, 0.0), generator=generator).where(observed, x)


def dequantize(x: Tensor, generator: torch.Generator | None = None, levels: int = 256) -> Tensor:
    """Uniformly dequantize data in [0, 1] with ``levels`` grey levels.

    Returns ``(k + u) / levels`` where ``k = x * (levels - 1)`` is the grey level and
    ``u ~ U[0, 1)``, so grey level ``k`` is spread over ``[k / levels, (k + 1) / levels)``.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 1.0]])
    >>> bool(((dequantize(x) * 256).floor() == x * 255).all())
    True
    """
    # Rounding undoes the float error of k / 255 * 255, which would otherwise drop k by one.
    k = torch.round(x * (levels - 1))
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    # k + u can round up to k + 1 in float32; keep every value strictly below its next level.
    upper = torch.nextafter((k + 1) / levels, torch.zeros_like(x))
    return torch.minimum((k + u) / levels, upper)


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


class _Source(NamedTuple):
    title: str  # for messages
    class_name: str  # the torchvision class, which is also the folder under the root
    hint: str  # how to get the files
    debian: bool  # whether DEBIAN_FASHION_MNIST can provide the files


_SOURCES = {
    "fashion-mnist": _Source(
        "Fashion-MNIST",
        "FashionMNIST",
        "install the Debian package dataset-fashion-mnist (apt install dataset-fashion-mnist), "
        "or put the IDX files there, or pass --data-dir / set PPVAE_DATA_DIR",
        True,
    ),
    "mnist": _Source(
        "MNIST",
        "MNIST",
        f"put the IDX files ({', '.join(IDX_FILES)}) there or download them (download=True, "
        "needs internet), or pass --data-dir / set PPVAE_DATA_DIR",
        False,
    ),
}


def resolve_root(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Return the torchvision root directory for ``"fashion-mnist"`` or ``"mnist"``.

    The root is, in order: ``data_dir``; ``$PPVAE_DATA_DIR``; the cache (``$PPVAE_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/ppvae``, else ``~/.cache/ppvae``). When the cache is chosen for
    Fashion-MNIST and the Debian package ``dataset-fashion-mnist`` is installed, its files are
    first decompressed into ``<cache>/FashionMNIST/raw`` (once; existing files are kept).
    """
    source = _choose(_SOURCES, name, "file-backed dataset")
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("PPVAE_DATA_DIR"):
        return Path(os.environ["PPVAE_DATA_DIR"]).expanduser()
    root = _cache_dir()
    if source.debian and _has_files(DEBIAN_FASHION_MNIST, ".gz"):
        _unpack(DEBIAN_FASHION_MNIST, root / source.class_name / "raw")
    return root


def _cache_dir() -> Path:
    if os.environ.get("PPVAE_CACHE_DIR"):
        return Path(os.environ["PPVAE_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "ppvae"


def _has_files(folder: Path, suffix: str = "") -> bool:
    return all((folder / f"{name}{suffix}").is_file() for name in IDX_FILES)


def _unpack(src: Path, raw: Path) -> None:
    # The Debian files were re-compressed, so their .gz checksums differ from torchvision's
    # list; torchvision only checks that the decompressed files exist, so we decompress here.
    for name in IDX_FILES:
        if not (raw / name).exists():
            try:
                raw.mkdir(parents=True, exist_ok=True)
                _gunzip_atomic(src / f"{name}.gz", raw / name)
            except (OSError, EOFError, zlib.error) as err:
                raise DataError(
                    f"cannot decompress {src / name}.gz into {raw} ({_one_line(err)}); "
                    "set PPVAE_CACHE_DIR to a writable directory or reinstall the package"
                ) from err


def _gunzip_atomic(src: Path, dst: Path) -> None:
    # A temporary file in the same folder plus os.replace: readers never see a partial file.
    # Mode "x" (unlike mkstemp's 0600) gives the file the permissions the umask allows.
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        with open(tmp, "xb") as out, gzip.open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
        os.replace(tmp, dst)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _load_idx(name: str, *, data_dir=None, seed: int = 0, download: bool = True) -> Dataset:
    source = _SOURCES[name]
    root = resolve_root(name, data_dir)
    raw = root / source.class_name / "raw"
    if download and not _has_files(raw):
        try:
            _torchvision_class(source)(root, train=True, download=True)
        except Exception as err:  # URLError, RuntimeError, socket and HTTP errors alike
            raise DataError(
                f"{source.title} not found under {raw} and the download failed "
                f"({_one_line(err)}); {source.hint}"
            ) from err
    if not _has_files(raw):
        raise DataError(f"{source.title} not found under {raw}; {source.hint}")
    train, train_labels = _read_split(source, root, train=True)
    test, test_labels = _read_split(source, root, train=False)
    return Dataset(name, train, test, (1, 28, 28), train_labels, test_labels)


def _read_split(source: _Source, root: Path, *, train: bool) -> tuple[Tensor, Tensor]:
    raw = root / source.class_name / "raw"
    try:
        split = _torchvision_class(source)(root, train=train)
    except (
        AssertionError,
        KeyError,
        IndexError,
        OSError,
        RuntimeError,
        TypeError,
        ValueError,
    ) as err:
        # torchvision checks the IDX magic number with bare asserts and a dict lookup.
        bad_header = isinstance(err, (AssertionError, KeyError))
        raise DataError(
            f"{source.title} files under {raw} are unreadable, corrupt or truncated "
            f"({'bad IDX header' if bad_header else _one_line(err)}); "
            "delete them and fetch them again"
        ) from err
    images, labels = split.data, split.targets
    if images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise DataError(
            f"{source.title} files under {raw} hold images of shape {tuple(images.shape)} and "
            f"{len(labels)} labels; expected (N, 28, 28) images and N labels"
        )
    return images.reshape(len(images), -1).float().div_(255), labels.long()


def _torchvision_class(source: _Source) -> type:
    import torchvision.datasets  # slow to import, and only these two datasets need it

    return getattr(torchvision.datasets, source.class_name)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _choose(choices: dict, key: str, what: str):
    if key not in choices:
        raise DataError(f"unknown {what} {shown(key)}; choose one of: {', '.join(choices)}")
    return choices[key]


def _threshold(x: Tensor) -> Tensor:
    return (x > 0.5).to(x.dtype)


def _binarize_none(data: Dataset, generator: torch.Generator) -> Dataset:
    return data


def _binarize_static(data: Dataset, generator: torch.Generator) -> Dataset:
    return data._replace(train=_threshold(data.train), test=_threshold(data.test))


def _binarize_static_sample(data: Dataset, generator: torch.Generator) -> Dataset:
    # The test set is drawn first, so "static-sample" and "dynamic" share it for a given seed.
    test = binarize_sample(data.test, generator)
    return data._replace(train=binarize_sample(data.train, generator), test=test)


def _binarize_dynamic(data: Dataset, generator: torch.Generator) -> Dataset:
    return data._replace(test=binarize_sample(data.test, generator), dynamic=True)


_BINARIZERS = {
    "none": _binarize_none,
    "static": _binarize_static,
    "static-sample": _binarize_static_sample,
    "dynamic": _binarize_dynamic,
}
BINARIZATIONS: tuple[str, ...] = tuple(_BINARIZERS)
DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": _load_digits,
    "fashion-mnist": functools.partial(_load_idx, "fashion-mnist"),
    "mnist": functools.partial(_load_idx, "mnist"),
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
    loader = _choose(DATASETS, name, "dataset")
    binarizer = _choose(_BINARIZERS, binarize, "binarization")
    data = loader(data_dir=data_dir, seed=seed, download=download)
    for what, x in (("train", data.train), ("test", data.test)):
        validate_data(x, unit_interval=data.image_shape is not None, what=f"{name} {what}")
    if binarize != "none" and data.image_shape is None:
        raise DataError(
            f"binarize={shown(binarize)} needs pixel data in [0, 1], but {name} is real-valued; "
            "use binarize='none'"
        )
    return binarizer(data, torch.Generator().manual_seed(seed))
