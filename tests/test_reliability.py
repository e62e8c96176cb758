"""The promises, one test each: bad input is one line and exit code 2, a run directory stays
whole, checkpoints are safe to load, and a run stopped any way resumes to the same result.

Command-line cases run ``python -m ppvae`` as a real subprocess and check the exit code, that
stderr is one ``ppvae: error:`` line with no traceback, and what is left on disk.
"""

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ppvae import ArchConfig, DataShape, FitConfig, evaluate, fit, log_likelihood
from ppvae.cli import main
from ppvae.errors import CheckpointError, ConfigError, DataError
from ppvae.experiments.run import RunConfig
from ppvae.guides import GUIDES
from ppvae.infer import checkpoint as ckpt
from ppvae.models import MODELS

TINY = ["--hidden", "16", "--eval-samples", "20", "--batch-size", "256"]


def ppvae(*args, timeout=300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ppvae", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("ppvae: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr, proc.stderr


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-epoch run, trained once for the module (copied by tests that change it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--out", str(out), "--epochs", "2", *TINY]) == 0
    return out


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    copy.mkdir()
    for p in finished.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    return copy


# --- bad input never destroys a finished run ---


def test_overwrite_with_bad_input_keeps_the_finished_run(run_dir):
    before = snapshot(run_dir.parent)
    proc = ppvae("train", "--out", run_dir, "--overwrite", "--dataset", "synthetic-ppca")
    one_line_error(proc, "must lie in [0, 1] for Bernoulli-type decoders")
    assert snapshot(run_dir.parent) == before


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--lr", "0.5"], "--lr 0.5 (saved 0.003)"),
        (["--z-dim", "3", "--epochs", "4"], "--z-dim 3 (saved 2)"),
        (["--epochs", "1"], "--epochs 1 would shorten the saved run of 2 epochs"),
    ],
)
def test_resume_refuses_any_change_but_more_epochs(run_dir, flags, message):
    before = snapshot(run_dir)
    one_line_error(ppvae("train", "--out", run_dir, "--resume", *flags), message)
    assert snapshot(run_dir) == before


def test_resume_rebuilds_the_history_from_the_checkpoint(run_dir):
    """As if the process died between writing the checkpoint and the history."""
    history = pd.read_csv(run_dir / "history.csv")
    history.iloc[:1].to_csv(run_dir / "history.csv", index=False)
    (run_dir / "metrics.csv").unlink()
    proc = ppvae("train", "--out", run_dir, "--resume", "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    rebuilt = pd.read_csv(run_dir / "history.csv")
    assert rebuilt.epoch.tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(rebuilt.iloc[:2], history)
    assert RunConfig.load(run_dir / "config.json").fit.epochs == 3
    assert (run_dir / "metrics.csv").exists()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--seed", "-1"], "seed must be in [0, 2**32)"),
        (["--lr", "inf"], "lr must be a finite number"),
        (["--beta", "nan"], "beta must be a finite number"),
        (["--device", "cuda:0" if not torch.cuda.is_available() else "tpu"], "device"),
        (
            [
                "--model",
                "ppca",
                "--guide",
                "ppca-exact",
                "--dataset",
                "synthetic-ppca",
                "--lr",
                "1000",
            ],
            "training failed at epoch 1, step",
        ),  # fmt: skip
    ],
)
def test_a_failure_at_start_up_leaves_nothing_behind(tmp_path, flags, message):
    out = tmp_path / "run"
    one_line_error(ppvae("train", "--out", out, "--epochs", "2", *flags, *TINY), message)
    assert sorted(os.listdir(tmp_path)) == []  # no lone config.json, no hidden folder
    assert ppvae("train", "--out", out, "--epochs", "1", *TINY).returncode == 0


@pytest.mark.parametrize("command", ["train", "compare", "gradients"])
def test_an_output_that_is_a_file_is_one_line(tmp_path, command):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    for out in (target, target / "inside"):
        one_line_error(ppvae(command, "--out", out), "is a file, not a folder")
    assert target.read_text() == "not a folder"


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_an_output_where_no_folder_can_be_made_is_refused_before_any_work():
    """/proc passes a permission check, and refuses mkdir: the probe finds it out."""
    from ppvae.errors import OutputError
    from ppvae.outputs import check_output_dir

    with pytest.raises(OutputError, match="cannot write to /proc/ppvae-run"):
        check_output_dir("/proc/ppvae-run")


def test_an_output_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    one_line_error(ppvae("train", "--out", tmp_path, *TINY), "holds other files and no run")
    assert os.listdir(tmp_path) == ["notes.txt"]


# --- checkpoints ---


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_checkpoint_is_one_line(run_dir, damage):
    path = run_dir / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"x" * 999}[damage]
    )
    one_line_error(ppvae("train", "--out", run_dir, "--resume"), "cannot read the checkpoint")


class Payload:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_checkpoint_with_code_in_it_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"version": ckpt.FORMAT_VERSION, "x": Payload(marker)}, f)
    with pytest.raises(CheckpointError, match="refused to unpickle anything but tensors"):
        ckpt.load(path)
    assert not marker.exists()


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_old_checkpoint_stays(
    run_dir, monkeypatch, capsys
):
    before = (run_dir / "checkpoint.pt").read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    assert main(["train", "--out", str(run_dir), "--resume", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppvae: error: cannot write the checkpoint") and err.count("\n") == 1
    assert "No space left on device; the previous checkpoint is kept" in err
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    assert not [p for p in os.listdir(run_dir) if p.endswith(".tmp")]


# --- evaluation and fit check the data they are given ---


@pytest.fixture(scope="module")
def pair():
    shape = DataShape(64, (1, 8, 8), 100)
    model = MODELS["bernoulli"](ArchConfig(hidden=(8,)), shape)
    return model, GUIDES["diag"](ArchConfig(hidden=(8,)), shape, model)


@pytest.mark.parametrize(
    "bad,message",
    [
        (torch.rand(10, 64) * 5, "must lie in [0, 1]"),
        (torch.full((10, 64), float("nan")), "NaN"),
        (torch.rand(64), "must be 2-D"),
        (torch.rand(0, 64), "is empty"),
        (torch.ones(10, 64, dtype=torch.int64), "floating dtype"),
        (np.random.rand(10, 64), "must be a torch.Tensor"),
    ],
)
def test_evaluate_and_fit_check_their_data(pair, bad, message):
    model, guide = pair
    for call in (
        lambda: evaluate(model, guide, bad, num_samples=5),
        lambda: log_likelihood(model, guide, bad, num_samples=5),
        lambda: fit(model, guide, bad, FitConfig(epochs=1, device="cpu")),
    ):
        with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
            call()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
        ({"epochs": "3"}, "epochs must be an integer, got '3'"),
        ({"beta": float("nan")}, "beta must be a finite number"),
        ({"kl_warmup_epochs": float("nan")}, "kl_warmup_epochs must be an integer"),
    ],
)
def test_configs_check_their_field_types(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FitConfig(**kwargs)


def test_the_json_loader_checks_types_too(run_dir):
    text = (run_dir / "config.json").read_text().replace('"epochs": 2', '"epochs": "2"')
    (run_dir / "config.json").write_text(text)
    one_line_error(ppvae("train", "--out", run_dir, "--resume"), "epochs must be an integer")


def test_compare_with_a_diverging_learning_rate_is_one_line(tmp_path):
    proc = ppvae(
        "compare", "--out", tmp_path / "c", "--lr", "1000", "--epochs", "1",
        "--eval-samples", "5", "--elbo-samples", "2",
    )  # fmt: skip
    one_line_error(proc, "ppca-svi: training failed at epoch 1")
    status = pd.read_csv(tmp_path / "c" / "compare.csv").set_index("method").status
    assert status["ppca"] == "ok" and status["ppca-svi"].startswith("failed: training failed")


def test_compare_names_the_learning_rate_when_ppca_svi_ends_with_no_noise(tmp_path):
    """200 rows, one epoch at lr 1000: the loss stays finite but sigma2 underflows to 0."""
    proc = ppvae(
        "compare", "--out", tmp_path / "c", "--lr", "1000", "--epochs", "1", "--hidden", "16",
        "--train-size", "200", "--test-size", "100", "--eval-samples", "10",
    )  # fmt: skip
    one_line_error(proc, "ppca-svi: training drove sigma2 to 0: the learning rate 1000.0")
    status = pd.read_csv(tmp_path / "c" / "compare.csv").set_index("method").status
    assert status["ppca-svi"].startswith("failed: training drove sigma2 to 0")


# --- conventions ---


def test_version_and_clean_help():
    assert ppvae("--version").stdout.strip().startswith("ppvae ")
    text = ppvae("train", "--help").stdout
    assert ".;" not in text and "``" not in text
    headings = [line for line in text.splitlines() if line and line[0].isalpha()]
    assert len(headings) == len(set(headings))  # one "data:" group, not two
    from ppvae.cli.common import describe
    from ppvae.guides import GUIDES
    from ppvae.models import MODELS

    for registry in (MODELS, GUIDES):  # each description a whole first line, not cut short
        assert not any(part.endswith(":") for part in describe(registry).split("; "))
    assert "mixture-prior" in text and "enum" in text


def test_the_library_does_not_import_the_command_line():
    """No cycle: the library modules never import ppvae.cli (the console script imports them)."""
    imports = (
        "import sys, ppvae.experiments.gradients, ppvae.experiments.compare, ppvae.experiments.run"
    )
    code = f"{imports}; print('ppvae.cli' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "False", proc.stderr


# --- faults: real processes stopped and resumed end where an uninterrupted run ends ---


def _params(out: Path) -> dict[str, torch.Tensor]:
    return ckpt.load(out / "checkpoint.pt")["params"]["params"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert ppvae("train", "--out", out, "--epochs", "60", *TINY).returncode == 0
    return out


def _start_and_stop(out: Path, sig: int, twice: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ppvae", "train", "--out", str(out), "--epochs", "60", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "history.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    if twice:
        proc.send_signal(sig)
    proc.communicate(timeout=120)
    return proc


@pytest.mark.parametrize("how", ["ctrl-c", "double ctrl-c", "sigterm", "kill -9"])
def test_a_stopped_run_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path, how):
    out = tmp_path / "run"
    sig = {"kill -9": signal.SIGKILL, "sigterm": signal.SIGTERM}.get(how, signal.SIGINT)
    proc = _start_and_stop(out, sig, twice=how == "double ctrl-c")
    assert proc.returncode in {130, -signal.SIGKILL, 0}, proc.returncode
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    done = ckpt.load(out / "checkpoint.pt")["progress"]["epoch"]
    assert done < 60
    assert ppvae("train", "--out", out, "--resume").returncode == 0
    expected, got = _params(uninterrupted), _params(out)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "history.csv").drop(columns="seconds"),
        pd.read_csv(uninterrupted / "history.csv").drop(columns="seconds"),
    )
