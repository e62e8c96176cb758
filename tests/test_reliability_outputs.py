"""One run per output folder, and output folders as users have them: a second command into a
folder in use is refused in one line before any work, a run killed with ``kill -9`` never
blocks the next, a symlinked ``--out`` is written where it points, an empty folder that cannot
be renamed is written in place, and a name up to the file system's limit works."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from ppvae import ArchConfig, DataShape, FitConfig, fit
from ppvae.cli import main
from ppvae.data import load_dataset
from ppvae.errors import ConfigError, OutputError
from ppvae.experiments.run import RunConfig
from ppvae.guides import GUIDES
from ppvae.infer import checkpoint as ckpt
from ppvae.models import MODELS
from ppvae.outputs import OutputLock, hidden_sibling
from tests.test_reliability import snapshot

FAST = ["--epochs", "1", "--hidden", "8", "--z-dim", "2", "--eval-samples", "5"]
FAST += ["--batch-size", "256"]
RUN_FILES = {"config.json", "history.csv", "checkpoint.pt", "metrics.csv", "elbo.png"}


def start(out: Path, *flags) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ppvae", "train", "--out", str(out), *FAST, *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_held(out: Path, proc: subprocess.Popen) -> None:
    """Until ``proc`` holds ``out`` (its pid is in the lock file)."""
    lock = hidden_sibling(out, "lock")
    for _ in range(600):
        if lock.exists() and lock.read_text() == str(proc.pid):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    pytest.fail("the run never took its lock")


def in_process(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


# --- one run per folder ---


def test_a_second_run_into_a_folder_in_use_is_refused_and_the_first_finishes(tmp_path, capsys):
    out = tmp_path / "run"
    first = start(out, "--seed", "1", "--epochs", "3")
    wait_until_held(out, first)
    code, err = in_process(capsys, "train", "--out", out, *FAST, "--seed", "2")  # a 2nd process
    assert code == 2 and err.count("\n") == 1, err
    assert err == f"ppvae: error: {out} is in use by ppvae process {first.pid}: wait for that " \
        "run to finish, or choose another --out\n"  # fmt: skip
    assert first.wait(timeout=300) == 0, first.communicate()
    assert RunConfig.load(out / "config.json").fit.seed == 1
    saved = ckpt.load(out / "checkpoint.pt")
    assert saved["config"]["seed"] == 1 and saved["progress"]["epoch"] == 3
    assert pd.read_csv(out / "history.csv").epoch.tolist() == [1, 2, 3]
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no lock file, no hidden folder left


def test_a_run_killed_with_sigkill_does_not_block_the_next(tmp_path, capsys):
    out = tmp_path / "run"
    killed = start(out, "--epochs", "500")
    wait_until_held(out, killed)
    while not (out / "checkpoint.pt").exists():
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert hidden_sibling(out, "lock").exists()  # left behind, and held by no one
    assert in_process(capsys, "train", "--out", out, "--overwrite", *FAST) == (0, "")
    assert RunConfig.load(out / "config.json").fit.epochs == 1
    assert sorted(os.listdir(tmp_path)) == ["run"]


@pytest.mark.parametrize(
    "command",
    [
        ["compare", "--methods", "ppca", "--train-size", "50", "--test-size", "20"],
        ["gradients", "--num-estimates", "4", "--warmup", "0", "--hidden", "8"],
    ],
)
def test_compare_and_gradients_refuse_a_folder_in_use(tmp_path, capsys, command):
    out = tmp_path / "tables"
    out.mkdir()
    (out / "kept.txt").write_text("the other command's")
    with OutputLock(out):  # another process, as far as flock is concerned
        before = snapshot(tmp_path)
        code, err = in_process(capsys, *command, "--out", out)
        assert snapshot(tmp_path) == before
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"ppvae: error: {out} is in use by ppvae process {os.getpid()}")
    assert in_process(capsys, *command, "--out", out)[0] == 0  # free again once let go
    assert not hidden_sibling(out, "lock").exists()


@pytest.fixture
def pair():
    data = load_dataset("digits")
    arch = ArchConfig(z_dim=2, hidden=(8,))
    shape = DataShape(data.train.shape[1], data.image_shape, data.train.shape[0])
    model = MODELS["bernoulli"](arch, shape)
    return model, GUIDES["diag"](arch, shape, model), data


def test_a_second_fit_writing_the_same_checkpoint_is_refused(pair, tmp_path):
    model, guide, data = pair
    path = tmp_path / "fit.pt"
    refused = []

    def second_fit(history: pd.DataFrame) -> None:
        with pytest.raises(OutputError) as err:
            fit(model, guide, data, FitConfig(epochs=1, seed=9), checkpoint=path)
        refused.append(str(err.value))

    config = FitConfig(epochs=2, batch_size=256)
    fit(model, guide, data, config, checkpoint=path, progress=False, on_epoch=second_fit)
    message = f"the checkpoint {path} is in use by ppvae process {os.getpid()}: wait for it"
    assert len(refused) == 2 and all(r.startswith(message) for r in refused), refused
    saved = ckpt.load(path)
    assert saved["config"]["seed"] == 0 and saved["progress"]["epoch"] == 2
    assert sorted(os.listdir(tmp_path)) == ["fit.pt"]


# --- output folders as users have them ---


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_symlinked_out_is_written_where_it_points(tmp_path, capsys, target_exists):
    target, link = tmp_path / "target", tmp_path / "link"
    if target_exists:
        target.mkdir()
    link.symlink_to(target)
    assert in_process(capsys, "train", "--out", link, *FAST) == (0, "")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert RUN_FILES <= set(os.listdir(target))
    assert sorted(os.listdir(tmp_path)) == ["link", "target"]


@pytest.fixture
def unrenamable(tmp_path, monkeypatch) -> Path:
    """An empty folder that refuses to be renamed, as a mount point does."""
    folder = tmp_path / "volume"
    folder.mkdir()
    real_rename, real_replace = os.rename, os.replace

    def busy(rename):
        def guarded(src, dst, *args, **kwargs):
            if Path(src) == folder:
                raise OSError(errno.EBUSY, "Device or resource busy", str(src))
            return rename(src, dst, *args, **kwargs)

        return guarded

    monkeypatch.setattr(os, "rename", busy(real_rename))
    monkeypatch.setattr(os, "replace", busy(real_replace))
    return folder


def test_an_empty_folder_that_cannot_be_renamed_is_written_in_place(unrenamable, capsys):
    inode = unrenamable.stat().st_ino
    assert in_process(capsys, "train", "--out", unrenamable, *FAST) == (0, "")
    assert unrenamable.stat().st_ino == inode
    assert RUN_FILES <= set(os.listdir(unrenamable))
    assert not [n for n in os.listdir(unrenamable) if n.startswith(".")]  # no temporary left
    assert os.listdir(unrenamable.parent) == ["volume"]


def test_a_failure_at_start_up_leaves_an_in_place_folder_empty(unrenamable, capsys):
    flags = ["--model", "ppca", "--guide", "ppca-exact", "--dataset", "synthetic-ppca"]
    code, err = in_process(capsys, "train", "--out", unrenamable, *FAST, *flags, "--lr", "1e3")
    assert code == 2 and "training failed at epoch 1, step" in err, err
    assert os.listdir(unrenamable) == []


def test_overwrite_into_a_folder_that_cannot_be_renamed_is_refused_before_any_work(
    unrenamable, capsys
):
    assert in_process(capsys, "train", "--out", unrenamable, *FAST) == (0, "")
    before = snapshot(unrenamable.parent)
    code, err = in_process(capsys, "train", "--out", unrenamable, *FAST, "--overwrite")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"ppvae: error: cannot replace the run in {unrenamable}: it is a mount")
    assert snapshot(unrenamable.parent) == before


def test_out_dot_in_an_empty_folder_is_written_in_place(tmp_path, capsys, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert in_process(capsys, "train", "--out", ".", *FAST) == (0, "")
    assert Path.cwd() == here and RUN_FILES <= set(os.listdir(here))
    assert os.listdir(tmp_path) == ["here"]


def test_a_name_as_long_as_the_file_system_allows_works(tmp_path, capsys):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    out = tmp_path / ("r" * (limit - 5))
    assert in_process(capsys, "train", "--out", out, *FAST) == (0, "")
    assert RUN_FILES <= set(os.listdir(out))
    assert os.listdir(tmp_path) == [out.name]
    for tag in ("lock", f"new-{2**31}", f"old-{2**31}"):
        assert len(hidden_sibling(out, tag).name) <= limit


# --- fit(checkpoint=...) ---


def test_fit_refuses_a_checkpoint_path_that_is_a_folder_before_any_work(pair, tmp_path):
    model, guide, data = pair
    with pytest.raises(ConfigError, match=f"^checkpoint={tmp_path} is a folder: give a file"):
        fit(model, guide, data, FitConfig(epochs=1), checkpoint=tmp_path)
    missing = tmp_path / "nowhere" / "fit.pt"
    with pytest.raises(ConfigError, match="the folder .*nowhere does not exist$"):
        fit(model, guide, data, FitConfig(epochs=1), checkpoint=missing)
    assert os.listdir(tmp_path) == []
    assert all(p.grad is None for p in guide.parameters())  # not one step was taken


def test_the_previous_checkpoint_is_said_to_be_kept_only_when_there_is_one(tmp_path):
    with pytest.raises(OutputError) as err:
        ckpt.save(tmp_path, {"x": torch.zeros(1)})
    assert "is kept" not in str(err.value)
