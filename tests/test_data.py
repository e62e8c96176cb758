"""Tests for ppvae.data against worked-out answers: known pixels, known splits, known moments."""

import gzip
import math
import struct
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets
from scipy.stats import chi2
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ppvae.data import (
    BINARIZATIONS,
    DATASETS,
    IDX_FILES,
    DataError,
    binarize_sample,
    dequantize,
    load_dataset,
    resolve_root,
    synthetic_ppca,
    validate_data,
)
from ppvae.data import files as data
from tests.conftest import needs_data

REAL_DEBIAN = data.DEBIAN_FASHION_MNIST
FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test reads ~/.cache, the real Debian files (unless it asks) or the network."""
    monkeypatch.delenv("PPVAE_DATA_DIR", raising=False)
    monkeypatch.setenv("PPVAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")

    def offline(self):
        raise URLError("network disabled in tests")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 IDX: magic 2051 (3-D images) or 2049 (1-D labels), then big-endian dims."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    path.write_bytes(struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.tobytes())


@pytest.fixture
def idx_arrays():
    """12 train and 5 test random 28x28 images with labels, keyed by IDX file name."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(17, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=17, dtype=np.uint8)
    return dict(zip(IDX_FILES, (images[:12], labels[:12], images[12:], labels[12:]), strict=True))


def write_raw(raw: Path, arrays: dict, gz: bool = False) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(raw / name, array)
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
            (raw / name).unlink()


def assert_matches(dataset, arrays):
    train, train_labels, test, test_labels = (torch.from_numpy(a) for a in arrays.values())
    assert dataset.image_shape == (1, 28, 28)
    assert dataset.train.dtype == torch.float32 and dataset.train.shape == (12, 784)
    torch.testing.assert_close(dataset.train, train.reshape(12, 784).float() / 255)
    torch.testing.assert_close(dataset.test, test.reshape(5, 784).float() / 255)
    assert dataset.train_labels.dtype == torch.int64
    assert torch.equal(dataset.train_labels, train_labels.long())
    assert torch.equal(dataset.test_labels, test_labels.long())


def test_digits_shapes_and_grey_levels():
    d = load_dataset("digits")
    assert (d.train.shape, d.test.shape, d.image_shape) == ((1437, 64), (360, 64), (1, 8, 8))
    assert d.train.dtype == torch.float32 and d.train_labels.dtype == torch.int64
    both = torch.cat([d.train, d.test])
    assert both.min() == 0 and both.max() == 1
    assert torch.equal(both.unique(), torch.arange(17) / 16)  # exactly the levels k/16
    assert d.params is None and not d.dynamic


def test_digits_split_is_fixed_stratified_and_disjoint():
    x, y = load_digits(return_X_y=True)
    i_tr, i_te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    assert set(i_tr).isdisjoint(i_te) and len(i_tr) + len(i_te) == len(y)
    for seed in (0, 7):
        d = load_dataset("digits", seed=seed)
        assert torch.equal(d.train, torch.tensor(x[i_tr] / 16, dtype=torch.float32))
        assert torch.equal(d.test_labels, torch.tensor(y[i_te]))
    total, test = Counter(y.tolist()), Counter(d.test_labels.tolist())
    assert all(abs(test[c] - 0.2 * total[c]) <= 1 for c in range(10))


def test_static_binarization_thresholds_at_half():
    grey, binary = load_dataset("digits"), load_dataset("digits", binarize="static")
    assert torch.equal(binary.train, (grey.train > 0.5).float())
    assert torch.equal(binary.test, (grey.test > 0.5).float())
    assert not binary.dynamic


def test_static_sample_is_seeded_and_unbiased():
    grey = load_dataset("digits").train
    a, b, c = (load_dataset("digits", binarize="static-sample", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    assert set(a.train.unique().tolist()) == {0.0, 1.0} and a.train.dtype == torch.float32
    # The sample mean of independent Bernoulli(x_i) has std sqrt(sum x(1-x)) / n.
    std = (grey * (1 - grey)).sum().sqrt() / grey.numel()
    assert abs(a.train.mean() - grey.mean()) < 5 * std


def test_dynamic_keeps_train_grey_and_samples_test_once():
    grey = load_dataset("digits")
    dyn = load_dataset("digits", binarize="dynamic", seed=3)
    assert dyn.dynamic and torch.equal(dyn.train, grey.train)
    assert set(dyn.test.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(dyn.test, load_dataset("digits", binarize="dynamic", seed=3).test)
    # The test sample is the one "static-sample" draws for the same seed.
    assert torch.equal(dyn.test, load_dataset("digits", binarize="static-sample", seed=3).test)


def test_binarize_sample_mean_is_the_probability():
    p, x = 0.3, torch.full((200, 500), 0.3, dtype=torch.float64)
    sample = binarize_sample(x, torch.Generator().manual_seed(0))
    assert sample.dtype == torch.float64 and set(sample.unique().tolist()) == {0.0, 1.0}
    assert abs(sample.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / x.numel())
    assert torch.equal(sample, binarize_sample(x, torch.Generator().manual_seed(0)))


def test_dequantize_stays_in_its_grey_level():
    k = torch.randint(0, 256, (400, 784), generator=torch.Generator().manual_seed(0))
    out = dequantize(k / 255.0, torch.Generator().manual_seed(1))
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() < 1
    assert torch.equal((out * 256).floor(), k.float())
    assert abs((out * 256 - k).mean().item() - 0.5) < 0.01  # u ~ U[0, 1) has mean 1/2


def test_dequantize_worst_case_noise_stays_below_next_level(monkeypatch):
    k = torch.arange(256.0)
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, 1 - 2**-24))
    out = dequantize(k / 255)  # 255 + (1 - 2**-24) rounds to 256 in float32
    assert out.max() < 1 and torch.equal((out * 256).floor(), k)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("via", ["data_dir", "env"])
def test_idx_files_load_exact_pixels_and_labels(name, via, tmp_path, idx_arrays, monkeypatch):
    write_raw(tmp_path / "root" / FOLDERS[name] / "raw", idx_arrays)
    kwargs = {"data_dir": tmp_path / "root"} if via == "data_dir" else {}
    if via == "env":
        monkeypatch.setenv("PPVAE_DATA_DIR", str(tmp_path / "root"))
    assert_matches(load_dataset(name, download=False, **kwargs), idx_arrays)


def test_debian_files_are_unpacked_once_into_the_cache(tmp_path, idx_arrays, monkeypatch):
    write_raw(tmp_path / "debian", idx_arrays, gz=True)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    assert_matches(load_dataset("fashion-mnist", download=False), idx_arrays)
    raw = tmp_path / "cache" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(IDX_FILES)  # no temp files left
    mtimes = [(raw / n).stat().st_mtime_ns for n in IDX_FILES]
    assert_matches(load_dataset("fashion-mnist", download=False), idx_arrays)
    assert [(raw / n).stat().st_mtime_ns for n in IDX_FILES] == mtimes
    assert resolve_root("fashion-mnist") == tmp_path / "cache"


def test_corrupt_debian_gzip_leaves_nothing_behind(tmp_path, idx_arrays, monkeypatch):
    write_raw(tmp_path / "debian", idx_arrays, gz=True)
    gz = tmp_path / "debian" / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:200])  # truncated gzip stream
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    with pytest.raises(DataError, match="cannot decompress .*train-images") as err:
        load_dataset("fashion-mnist", download=False)
    assert "\n" not in str(err.value)
    assert list((tmp_path / "cache" / "FashionMNIST" / "raw").iterdir()) == []


def corrupt(raw: Path, case: str) -> None:
    images = raw / "train-images-idx3-ubyte"
    if case == "truncated":
        images.write_bytes(images.read_bytes()[:1000])
    elif case == "bad magic":
        images.write_bytes(b"\x00\x00\x00\x00" + images.read_bytes()[4:])
    else:
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8))


@pytest.mark.parametrize("case", ["truncated", "bad magic", "label count"])
def test_corrupt_idx_files_raise_data_error(case, tmp_path, idx_arrays):
    raw = tmp_path / "MNIST" / "raw"
    write_raw(raw, idx_arrays)
    corrupt(raw, case)
    with pytest.raises(DataError, match="MNIST files under .* (expected|corrupt)") as err:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert str(raw) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, hint",
    [("mnist", "download=True, needs internet"), ("fashion-mnist", "apt install")],
    ids=["mnist", "fashion-mnist"],
)
def test_missing_files_give_one_line_with_the_path(name, hint, tmp_path):
    with pytest.raises(DataError, match="not found under") as err:
        load_dataset(name, data_dir=tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / FOLDERS[name] / "raw") in message and hint in message
    assert "\n" not in message and "PPVAE_DATA_DIR" in message


def test_failed_download_becomes_data_error(tmp_path):
    with pytest.raises(DataError, match="download failed .*URLError.*network disabled") as err:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    assert "\n" not in str(err.value)


def test_real_debian_fashion_mnist(monkeypatch):
    available = all((REAL_DEBIAN / f"{n}.gz").is_file() for n in IDX_FILES)
    needs_data(available=available, what="Fashion-MNIST (apt install dataset-fashion-mnist)")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", REAL_DEBIAN)
    d = load_dataset("fashion-mnist", download=False)
    assert (d.train.shape, d.test.shape) == ((60000, 784), (10000, 784))
    assert torch.equal(d.train_labels.bincount(), torch.full((10,), 6000))
    assert torch.equal(d.test_labels.bincount(), torch.full((10,), 1000))
    assert d.train.min() == 0 and d.train.max() == 1


@pytest.mark.parametrize(
    "x, kwargs, expected",
    [
        (torch.zeros(3, 8, 8), {}, r"2-D \(N, D\).*got shape \(3, 8, 8\); flatten images"),
        (torch.tensor([[0.0, float("nan")], [float("nan"), 1.0]]), {}, "2 NaN and 0 Inf"),
        (torch.tensor([[float("inf"), 1.0]]), {}, "0 NaN and 1 Inf"),
        (torch.tensor([[-0.5, 1.25]]), {"unit_interval": True}, "min -0.5 and max 1.25"),
        (torch.zeros(0, 4), {}, r"empty \(shape \(0, 4\)\)"),
        (torch.zeros(2, 2, dtype=torch.int64), {}, "floating dtype, got torch.int64"),
        (np.zeros((2, 2)), {}, "must be a torch.Tensor, got ndarray"),
    ],
    ids=["3-d", "nan", "inf", "unit-interval", "empty", "int", "numpy"],
)
def test_validate_data_errors(x, kwargs, expected):
    with pytest.raises(DataError, match=expected) as err:
        validate_data(x, what="my data", **kwargs)
    assert str(err.value).startswith("my data ") and "\n" not in str(err.value)


def test_validate_data_accepts_good_data():
    x, y = torch.rand(4, 3, dtype=torch.float64), torch.randn(4, 3)
    assert validate_data(x, unit_interval=True) is x  # good data comes back as it was
    assert validate_data(y) is y  # real-valued data without unit_interval


def test_unknown_names_list_the_choices():
    with pytest.raises(DataError, match="unknown dataset 'foo'; choose one of: digits, fashion-"):
        load_dataset("foo")
    with pytest.raises(DataError, match="choose one of: none, static, static-sample, dynamic"):
        load_dataset("digits", binarize="dynamc")
    assert BINARIZATIONS == ("none", "static", "static-sample", "dynamic")
    assert list(DATASETS) == ["digits", "fashion-mnist", "mnist", "synthetic-ppca"]
    with pytest.raises(DataError, match="binarize='static'.*real-valued"):
        load_dataset("synthetic-ppca", binarize="static")


def test_resolve_root_order(tmp_path, monkeypatch):
    assert resolve_root("mnist") == tmp_path / "cache"
    monkeypatch.setenv("PPVAE_DATA_DIR", str(tmp_path / "env"))
    assert resolve_root("mnist") == tmp_path / "env"
    assert resolve_root("mnist", tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("PPVAE_DATA_DIR")
    monkeypatch.delenv("PPVAE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_root("fashion-mnist") == tmp_path / "xdg" / "ppvae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_root("mnist") == Path.home() / ".cache" / "ppvae"
    with pytest.raises(DataError, match="choose one of: fashion-mnist, mnist"):
        resolve_root("digits")


def test_synthetic_ppca_is_seeded():
    a, b, c = (load_dataset("synthetic-ppca", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.train, b.train) and torch.equal(a.params["W"], b.params["W"])
    assert not torch.equal(a.params["W"], c.params["W"])
    assert (a.train.shape, a.test.shape, a.image_shape) == ((2000, 10), (1000, 10), None)
    assert a.train.dtype == torch.float32 and a.params["W"].dtype == torch.float64
    assert a.params["sigma"].item() == 0.5 and a.params["mu"].shape == (10,)


def test_synthetic_ppca_moments_match_the_model():
    d = synthetic_ppca(seed=0)
    W, mu, sigma = d.params["W"], d.params["mu"], d.params["sigma"]
    C = W @ W.T + sigma**2 * torch.eye(10, dtype=torch.float64)
    x = d.train.double()
    n = len(x)
    # For Gaussian data E||S - C||_F^2 = (||C||_F^2 + tr(C)^2) / n; allow 5 standard errors.
    err = torch.linalg.norm(torch.cov(x.T) - C) / torch.linalg.norm(C)
    tol = 5 * math.sqrt((torch.linalg.norm(C) ** 2 + C.trace() ** 2) / n) / torch.linalg.norm(C)
    assert err < min(tol, 0.15)
    # n (xbar - mu)^T C^-1 (xbar - mu) ~ chi2(10).
    r = x.mean(0) - mu
    assert n * r @ torch.linalg.solve(C, r) < chi2.ppf(1 - 1e-6, df=10)


def test_synthetic_ppca_rejects_bad_arguments():
    with pytest.raises(DataError, match="1 <= q <= d.*q=3"):
        synthetic_ppca(d=2, q=3)
    with pytest.raises(DataError, match="sigma > 0"):
        synthetic_ppca(sigma=0.0)
