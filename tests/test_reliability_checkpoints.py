"""A run folder is trusted only as far as its checkpoint vouches for it.

The checkpoint carries the whole run config; ``load_run`` and ``--resume`` refuse, in one line
naming the field, a config.json that differs from it or lacks a key, a checkpoint of another
format (naming both versions) or architecture, and anything that is not a regular file or is
JSON too deep or too large. Each refusal leaves the folder byte for byte as it was.
"""

import json
import os
import threading

import pandas as pd
import pyro
import pytest
import torch

from ppvae import ArchConfig, DataShape, FitConfig, evaluate, fit, load_run
from ppvae.cli import main
from ppvae.config import MAX_JSON_DEPTH, parse_json, read_json
from ppvae.errors import CheckpointError, ConfigError, DataError
from ppvae.guides import GUIDES
from ppvae.infer import checkpoint as ckpt
from ppvae.models import MODELS
from tests.test_reliability import one_line_error, ppvae, snapshot

TINY = ["--epochs", "1", "--hidden", "16", "--eval-samples", "20", "--batch-size", "256"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run on statically binarized digits, trained once for the module."""
    out = tmp_path_factory.mktemp("finished") / "run"
    args = ["train", "--out", str(out), "--binarize", "static", "--device", "cpu", *TINY]
    assert main(args) == 0
    return out


@pytest.fixture
def run_dir(finished, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    for p in finished.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    return copy


def edit_config(folder, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def edit_checkpoint(folder, change) -> None:
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    torch.save(change(state), folder / "checkpoint.pt")


def refused_in_one_line(folder, error, message, capsys) -> None:
    """``load_run`` raises ``error`` and ``ppvae train --resume`` exits 2 with one line, both
    saying ``message``; neither changes a byte under the folder's parent."""
    before = snapshot(folder.parent)
    with pytest.raises(error) as raised:
        load_run(folder)
    assert message in str(raised.value) and "\n" not in str(raised.value), raised.value
    capsys.readouterr()
    assert main(["train", "--out", str(folder), "--resume", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppvae: error:") and err.count("\n") == 1, err
    assert message in err, err
    assert snapshot(folder.parent) == before


# --- the checkpoint carries the run, and an unedited run loads as it was trained ---


def test_the_checkpoint_carries_the_whole_run_config(finished):
    saved = ckpt.load(finished / "checkpoint.pt")
    assert saved["version"] == ckpt.FORMAT_VERSION == 3
    written = json.loads((finished / "config.json").read_text())
    assert json.loads(json.dumps(saved["run"]["config"])) == written
    assert saved["run"]["config"]["binarize"] == "static"
    assert saved["run"]["data"] == {"train": [1437, 64], "test": [360, 64]}


def test_an_unedited_run_loads_and_scores_as_its_metrics_say(finished):
    pyro.clear_param_store()
    run = load_run(finished)
    assert set(run.data.train.unique().tolist()) == {0.0, 1.0}  # binarized, as trained
    recorded = pd.read_csv(finished / "metrics.csv").iloc[0]
    torch.manual_seed(0)
    scored = evaluate(run.model, run.guide, run.data.test, num_samples=20).iloc[0]
    # fresh draws of the same estimators: log p(x) within 6 standard errors of either run
    tolerance = 6 * (recorded.log_px_stderr + scored.log_px_stderr)
    assert abs(scored.log_px - recorded.log_px) < tolerance, (scored.log_px, recorded.log_px)
    assert scored.elbo == pytest.approx(recorded.elbo, abs=0.2)


def test_a_resume_that_stopped_early_still_loads(run_dir):
    """Only the checkpoint holds the raised epochs until a resume finishes."""
    edit_checkpoint(run_dir, lambda s: {**s, "run": {**s["run"], "config": {
        **s["run"]["config"], "fit": {**s["run"]["config"]["fit"], "epochs": 5}}}})  # fmt: skip
    assert load_run(run_dir).config.fit.epochs == 1


# --- config.json must match the checkpoint, field for field ---


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda c: c.update(model="continuous-bernoulli"),
            "model is 'continuous-bernoulli', the checkpoint's 'bernoulli'",
        ),
        (lambda c: c.pop("binarize"), "binarize is missing (the checkpoint has 'static')"),
        (lambda c: c.pop("arch"), "arch is missing (the checkpoint has {"),
        (lambda c: c["arch"].update(z_dim=3), "arch.z_dim is 3, the checkpoint's 2"),
        (lambda c: c["fit"].pop("lr"), "fit.lr is missing (the checkpoint has 0.003)"),
        (lambda c: c.update(extra=1), "extra is not in the checkpoint's config"),
    ],
    ids=["model", "no-binarize", "no-arch", "z_dim", "no-lr", "extra"],
)
def test_a_config_json_that_differs_from_the_checkpoint_is_refused(
    run_dir, capsys, change, message
):
    edit_config(run_dir, change)
    refused_in_one_line(run_dir, ConfigError, message, capsys)


def test_an_edited_z_dim_on_resume_is_one_line_in_a_new_process(run_dir):
    edit_config(run_dir, lambda c: c["arch"].update(z_dim=3))
    before = snapshot(run_dir.parent)
    one_line_error(
        ppvae("train", "--out", run_dir, "--resume", "--epochs", "2"),
        "config.json does not match the run in checkpoint.pt: arch.z_dim is 3",
    )
    assert snapshot(run_dir.parent) == before


def test_data_that_loads_with_other_sizes_is_refused(run_dir, capsys):
    edit_checkpoint(run_dir, lambda s: {**s, "run": {**s["run"], "data": {"train": [1000, 64]}}})
    refused_in_one_line(run_dir, DataError, "trained on train data of shape (1000, 64)", capsys)


# --- the checkpoint itself: its format version, its layout, its architecture ---


@pytest.mark.parametrize(
    "change,error,message",
    [
        (
            lambda s: {**s, "version": 2},
            CheckpointError,
            "is a checkpoint of format 2, and this ppvae reads format 3",
        ),
        (
            lambda s: {"version": 2, "model": s["model"], "params": s["params"]},
            CheckpointError,
            "is a checkpoint of format 2, and this ppvae reads format 3",
        ),
        (
            lambda s: {k: v for k, v in s.items() if k != "config"},
            CheckpointError,
            "is a format-3 checkpoint without config: it is damaged",
        ),
        (
            lambda s: {**s, "run": None},
            CheckpointError,
            "holds no run config: it was written by fit(checkpoint=...), not ppvae train",
        ),
        (lambda s: {"weights": torch.zeros(3)}, CheckpointError, "is not a ppvae checkpoint"),
    ],
    ids=["version-2", "version-2-layout", "no-config", "plain-fit", "foreign"],
)
def test_a_checkpoint_of_another_format_is_refused(run_dir, capsys, change, error, message):
    edit_checkpoint(run_dir, change)
    refused_in_one_line(run_dir, error, message, capsys)


def test_another_format_version_names_both_in_a_new_process(run_dir):
    edit_checkpoint(run_dir, lambda s: {**s, "version": 7})
    before = snapshot(run_dir.parent)
    one_line_error(
        ppvae("train", "--out", run_dir, "--resume", "--epochs", "2"),
        "checkpoint.pt is a checkpoint of format 7, and this ppvae reads format 3",
    )
    assert snapshot(run_dir.parent) == before


def tiny_pair(hidden: int):
    shape = DataShape(16, None, 64)
    model = MODELS["bernoulli"](ArchConfig(hidden=(hidden,)), shape)
    return model, GUIDES["diag"](ArchConfig(hidden=(hidden,)), shape, model)


def test_fit_resume_with_another_architecture_names_the_difference(tmp_path):
    x = (torch.rand(64, 16) > 0.5).float()
    path = tmp_path / "fit.pt"
    fit(*tiny_pair(8), x, FitConfig(epochs=1, batch_size=32, device="cpu"), checkpoint=path)
    assert ckpt.load(path)["run"] is None and ckpt.load(path)["config"]["epochs"] == 1
    before = snapshot(tmp_path)
    pyro.clear_param_store()
    config = FitConfig(epochs=2, batch_size=32, device="cpu")
    with pytest.raises(CheckpointError) as raised:
        fit(*tiny_pair(16), x, config, checkpoint=path, resume=True)
    assert str(raised.value) == (
        f"{path} was written for another architecture: its model has "
        "'decoder.net.0.bias' of shape (8,), this model (16,)"
    )
    assert snapshot(tmp_path) == before


# --- only regular files, and JSON within limits ---


def within(call, fifo, seconds: float = 60):
    """``call()``'s result or error, from a thread that may block at most ``seconds``: when it
    blocks, the test unblocks it (opening ``fifo`` for writing) and fails."""
    outcome = {}

    def target():
        try:
            outcome["result"] = call()
        except Exception as err:  # noqa: BLE001 - handed to the test
            outcome["result"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"{call} blocked for {seconds} s on the FIFO {fifo}")
    return outcome["result"]


@pytest.mark.parametrize("name", ["checkpoint.pt", "config.json"])
def test_a_fifo_in_the_run_folder_is_refused_without_blocking(run_dir, capsys, name):
    fifo = run_dir / name
    fifo.unlink()
    os.mkfifo(fifo)
    before = snapshot(run_dir.parent)
    err = within(lambda: load_run(run_dir), fifo)
    assert isinstance(err, CheckpointError if name == "checkpoint.pt" else ConfigError), err
    assert str(err).endswith(f"{fifo} is a FIFO: ppvae reads only files"), err
    capsys.readouterr()
    args = ["train", "--out", str(run_dir), "--resume", "--epochs", "2"]
    assert within(lambda: main(args), fifo) == 2
    assert capsys.readouterr().err.endswith(f"{fifo} is a FIFO: ppvae reads only files\n")
    assert snapshot(run_dir.parent) == before


def test_a_fifo_checkpoint_is_one_line_in_a_new_process(run_dir):
    (run_dir / "checkpoint.pt").unlink()
    os.mkfifo(run_dir / "checkpoint.pt")
    before = snapshot(run_dir.parent)
    one_line_error(
        ppvae("train", "--out", run_dir, "--resume", "--epochs", "2", timeout=300),
        "checkpoint.pt is a FIFO: ppvae reads only files",
    )
    assert snapshot(run_dir.parent) == before


@pytest.mark.parametrize(
    "text,message",
    [
        ("[" * 100_000 + "]" * 100_000, f"nests over {MAX_JSON_DEPTH} levels: not a ppvae file"),
        ('{"dataset": "' + "x" * 50_000_000 + '"}', "is over 1024 KiB: not a ppvae file"),
        ("[1, 2, 3]", "must hold a JSON object, got [1, 2, 3]"),
        ('{"model": "bernoulli",', "is not valid JSON: Expecting property name"),
        (b"\xff\xfe{}", "is not valid JSON: 'utf-8' codec can't decode"),
    ],
    ids=["deep", "50MB", "list", "truncated", "not-utf8"],
)
def test_a_config_json_that_is_not_a_small_json_object_is_refused(run_dir, capsys, text, message):
    path = run_dir / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    refused_in_one_line(run_dir, ConfigError, message, capsys)


def test_read_json_is_the_one_reader_and_a_list_is_no_config(tmp_path):
    from ppvae.experiments.run import RunConfig

    path = tmp_path / "c.json"
    path.write_text("[1, 2, 3]")
    assert read_json(path) == [1, 2, 3]
    with pytest.raises(ConfigError, match=r"expected a JSON object of fields, got \[1, 2, 3\]$"):
        RunConfig.load(path)
    deepest = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH  # brackets in strings do not count
    assert json.dumps(parse_json(deepest)) == deepest
    assert parse_json('{"a": "' + "[" * 1000 + '"}') == {"a": "[" * 1000}
    with pytest.raises(ConfigError, match="folder"):
        read_json(tmp_path)
