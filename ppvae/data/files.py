"""(Fashion-)MNIST from IDX files: where they are looked up (``--data-dir``, ``$PPVAE_DATA_DIR``,
the Debian package ``dataset-fashion-mnist``, the cache), unpacked atomically, and read through
torchvision."""

import gzip
import os
import shutil
import uuid
import zlib
from contextlib import suppress
from pathlib import Path
from typing import NamedTuple

from torch import Tensor

from ppvae.data.dataset import Dataset, choose
from ppvae.errors import DataError

#: Where the Debian package ``dataset-fashion-mnist`` installs its gzip'ed IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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
    source = choose(_SOURCES, name, "file-backed dataset")
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


def load_idx(name: str, *, data_dir=None, seed: int = 0, download: bool = True) -> Dataset:
    """MNIST or Fashion-MNIST (``name``) from its IDX files, found by :func:`resolve_root`
    (downloaded through torchvision when ``download`` and not found)."""
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
