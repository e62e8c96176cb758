"""The ppvae command line: outputs, one-line errors, nothing half-written, Ctrl-C and resume."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from ppvae.cli import main
from ppvae.experiments.run import RunConfig
from ppvae.infer import checkpoint as ckpt
from tests.test_render import VAE_EDGES, svg_arrows

FAST = ["--hidden", "16", "--eval-samples", "50", "--batch-size", "256"]


def test_train_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "3", "--out", str(out), *FAST]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {
        "config.json", "history.csv", "checkpoint.pt", "metrics.csv",
        "elbo.png", "reconstructions.png", "samples.png", "latent.png",
        "interpolation.png", "latent_grid.png", "model.svg",
    }  # fmt: skip
    assert svg_arrows(out / "model.svg") == VAE_EDGES  # the pair drawn (tests/test_render.py)
    run = RunConfig.load(out / "config.json")
    assert (run.dataset, run.model, run.guide, run.fit.epochs) == (
        "digits",
        "bernoulli",
        "diag",
        3,
    )
    history = pd.read_csv(out / "history.csv")
    assert history.epoch.tolist() == [1, 2, 3]
    metrics = pd.read_csv(out / "metrics.csv").iloc[0]
    # the importance-sampled log-likelihood is a tighter bound than the ELBO
    assert metrics.log_px >= metrics.elbo - 3 * metrics.log_px_stderr
    assert metrics.active_units <= 2
    printed = capsys.readouterr().out
    assert f"test ELBO {history.test_elbo.iloc[-1]:.2f}" in printed
    assert str(out) in printed


def test_no_latent_plot_unless_z_is_two_dimensional(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--z-dim", "3", "--out", str(out), *FAST]) == 0
    assert not (out / "latent.png").exists()


def _one_line_error(capsys, message: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ppvae: error:"), err
    assert message in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--lr", "-1"], "lr must be > 0"),
        (["--z-dim", "0"], "z_dim must be >= 1"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--model", "gaussian", "--guide", "ppca-exact"], "needs the ppca model"),
        (["--dataset", "mnist", "--data-dir", "EMPTY", "--binarize", "static"], "MNIST"),
        (["--conv", "--dataset", "synthetic-ppca", "--model", "gaussian"], "image shape"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ppvae.data.files.DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setenv("PPVAE_CACHE_DIR", str(tmp_path / "cache"))
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *args]) == 2
    _one_line_error(capsys, message)
    assert not out.exists()


def test_unknown_names_list_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--guide", "vampprior"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown choice 'vampprior'" in err and "diag" in err and "flow" in err


def test_an_existing_run_is_not_overwritten_by_accident(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), *FAST]) == 0
    before = (out / "history.csv").read_text()
    assert main(["train", "--epochs", "1", "--out", str(out), *FAST]) == 2
    _one_line_error(capsys, "already holds a run")
    assert (out / "history.csv").read_text() == before
    assert main(["train", "--epochs", "2", "--out", str(out), "--overwrite", *FAST]) == 0
    assert len(pd.read_csv(out / "history.csv")) == 2


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    _one_line_error(capsys, "nothing to resume")


def test_help_lists_every_choice(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in (
        "bernoulli",
        "continuous-bernoulli",
        "full-cov",
        "flow",
        "iwae",
        "score-baseline",
    ):
        assert name in text


def test_ctrl_c_saves_and_resume_finishes(tmp_path):
    """A real SIGINT to a real process: it exits cleanly with a checkpoint, and --resume
    carries the run on to the end."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ppvae", "train", "--out", str(out), "--epochs", "150", *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "history.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout and "Traceback" not in stderr
    done = ckpt.load(out / "checkpoint.pt")["progress"]["epoch"]
    assert 1 <= done < 150
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]

    resume = [sys.executable, "-m", "ppvae", "train", "--out", str(out), "--resume"]
    finished = subprocess.run(resume, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert pd.read_csv(out / "history.csv").epoch.tolist() == list(range(1, 151))
    assert (out / "metrics.csv").exists()
