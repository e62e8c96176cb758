"""Runs tracked in TensorBoard and MLflow, read back with the trackers' own readers, against the
run folder's history.csv and metrics.csv; a resumed run continues its tracked run; a tracker
that fails costs a warning, not the run; a missing extra is one line."""

import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from ppvae.cli import _format_warning, main  # noqa: E402
from ppvae.data import load_dataset  # noqa: E402
from ppvae.experiments.run import train  # noqa: E402
from ppvae.experiments.run_config import RunConfig  # noqa: E402
from ppvae.experiments.trackers import default_mlflow_uri  # noqa: E402
from ppvae.infer.callbacks import Callback, CallbackWarning  # noqa: E402
from tests.conftest import steps_then_sigint  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader")  # (in mlflow)

SMALL = ["--hidden", "16", "--eval-samples", "20", "--device", "cpu"]


def events(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def history_points(history: pd.DataFrame, column: str) -> list[tuple[int, float]]:
    return [(int(e), float(v)) for e, v in zip(history.epoch, history[column], strict=True)]


def same_points(logged, expected, rel=1e-6) -> bool:
    """The same steps, and values equal to float32 precision (TensorBoard's scalars)."""
    return [s for s, _ in logged] == [s for s, _ in expected] and all(
        v == pytest.approx(w, rel=rel, abs=1e-6)
        for (_, v), (_, w) in zip(logged, expected, strict=False)
    )


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One 2-epoch digits run with both trackers, the MLflow store at its default place."""
    root = tmp_path_factory.mktemp("tracked")
    out, tb = root / "runs" / "run", root / "tb"
    args = ["train", "--epochs", "2", *SMALL, "--out", str(out), "--tensorboard", str(tb)]
    assert main([*args, "--mlflow"]) == 0
    return out, tb / "run", default_mlflow_uri(root / "runs")


def only_run(uri: str, experiment: str):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_tensorboard_holds_every_history_column_the_config_and_the_pictures(tracked):
    out, log_dir, _ = tracked
    history, metrics = pd.read_csv(out / "history.csv"), pd.read_csv(out / "metrics.csv")
    acc = events(log_dir)
    for column in history.columns:
        assert same_points(scalars(acc, column), history_points(history, column)), column
    assert scalars(acc, "final/log_px")[0][1] == pytest.approx(metrics.log_px[0], rel=1e-6)
    pictures = sorted(f"pictures/{p.stem}" for p in out.glob("*.png"))
    assert pictures and sorted(acc.Tags()["images"]) == pictures
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["fit.epochs"].number_value == 2
    assert start.hparams["dataset"].string_value == "digits"


def test_mlflow_holds_the_params_the_metric_history_and_the_outputs(tracked):
    out, _, uri = tracked
    history, metrics = pd.read_csv(out / "history.csv"), pd.read_csv(out / "metrics.csv")
    client, run = only_run(uri, "ppvae train")
    saved = RunConfig.load(out / "config.json").leaves()
    assert run.data.params["fit.epochs"] == "2" and run.data.params["arch.hidden"] == "(16,)"
    assert {k: run.data.params[k] for k in saved} == {k: str(v) for k, v in saved.items()}
    assert run.data.params["data.train"] == str(tuple(load_dataset("digits").train.shape))
    for column in history.columns:
        logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, column)]
        assert same_points(sorted(logged), history_points(history, column), rel=1e-12), column
    assert run.data.metrics["final/log_px"] == pytest.approx(metrics.log_px[0], rel=1e-12)
    artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    assert artifacts == sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert run.info.status == "FINISHED" and run.info.run_name == "run"


def test_a_resumed_run_continues_its_tracked_run_with_no_step_twice(tracked, tmp_path):
    uri = tracked[2]  # the store the fixture made (making one takes seconds)
    out, tb = tmp_path / "resumed", tmp_path / "tb"
    flags = ["--out", str(out), "--tensorboard", str(tb), "--mlflow", uri]
    assert main(["train", "--epochs", "1", *SMALL, *flags]) == 0
    assert main(["train", "--resume", "--epochs", "3", *flags]) == 0
    history = pd.read_csv(out / "history.csv")
    assert history.epoch.tolist() == [1, 2, 3]
    assert [p.name for p in tb.iterdir()] == ["resumed"]  # one TensorBoard run
    acc = events(tb / "resumed")  # epoch 1 was logged again on resume, and purged once
    for column in history.columns:
        assert same_points(scalars(acc, column), history_points(history, column)), column
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("ppvae train").experiment_id],
        filter_string="attributes.run_name = 'resumed'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for column in history.columns:
        logged = [
            (m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, column)
        ]
        assert same_points(sorted(logged), history_points(history, column), rel=1e-12), column


class Raising(Callback):
    """A tracker whose disk fills up after the first epoch."""

    def __init__(self):
        self.calls = 0

    def on_epoch_end(self, row, history):
        self.calls += 1
        raise OSError(28, "No space left on device")

    def on_train_end(self, result, out=None):
        self.calls += 1


def test_a_tracker_raising_mid_run_costs_one_warning_and_nothing_of_the_run(tmp_path):
    run = RunConfig.from_dict(
        {
            "arch": {"z_dim": 2, "hidden": [16]},
            "fit": {"epochs": 2, "device": "cpu"},
            "eval_samples": 20,
        }
    )
    plain = train(run, tmp_path / "plain", progress=False)
    raising = Raising()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracked = train(run, tmp_path / "tracked", progress=False, callbacks=[raising])
    ours = [w for w in caught if issubclass(w.category, CallbackWarning)]
    assert len(ours) == 1 and raising.calls == 1  # not called again once it failed
    assert "on_epoch_end" in str(ours[0].message) and "No space left" in str(ours[0].message)
    line = _format_warning(ours[0].message, CallbackWarning, "x.py", 1)
    assert line.startswith("ppvae: warning: callback Raising failed") and line.count("\n") == 1
    names = sorted(p.name for p in plain.files)
    assert sorted(p.name for p in tracked.files) == names
    assert sorted(p.name for p in (tmp_path / "tracked").iterdir()) == sorted(
        p.name for p in (tmp_path / "plain").iterdir()
    )
    columns = [c for c in plain.fit.history.columns if c != "seconds"]
    saved = pd.read_csv(tmp_path / "tracked" / "history.csv")
    pd.testing.assert_frame_equal(
        saved[columns], pd.read_csv(tmp_path / "plain" / "history.csv")[columns]
    )


def test_an_unreachable_store_is_a_warning_and_the_run_goes_on(tmp_path, capsys):
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the store's folder cannot be made under a file
    out = tmp_path / "run"
    args = ["train", "--epochs", "1", *SMALL, "--out", str(out)]
    with pytest.warns(CallbackWarning, match="MLflowTracker failed in on_train_start"):
        assert main([*args, "--mlflow", f"sqlite:///{blocked}/mlflow.db"]) == 0
    assert (out / "metrics.csv").is_file() and len(pd.read_csv(out / "history.csv")) == 1


@pytest.mark.parametrize("extra", ["tensorboard", "mlflow"])
def test_a_missing_extra_is_one_line_before_any_work(extra, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, extra, None)  # import fails, as when not installed
    out = tmp_path / "run"
    value = [str(tmp_path / "tb")] if extra == "tensorboard" else []
    for command in (["train", "--epochs", "1"], ["compare", "--methods", "ppca"]):
        assert main([*command, "--out", str(out), f"--{extra}", *value]) == 2
        err = capsys.readouterr().err
        assert (
            err
            == f"ppvae: error: --{extra} needs the {extra} package: pip install 'ppvae[{extra}]'\n"
        )
    assert not out.exists() and not (tmp_path / "tb").exists()


def test_compare_logs_one_tracked_run_per_row_with_an_svi_rows_epochs(
    tracked, tmp_path, monkeypatch
):
    uri = tracked[2]
    monkeypatch.chdir(tmp_path)  # where MLflow would put artifacts of its own accord
    out, tb = tmp_path / "compare", tmp_path / "tb"
    args = ["compare", "--methods", "ppca", "vae", "--epochs", "2", "--z-dim", "2"]
    args += ["--hidden", "16", "--eval-samples", "10", "--elbo-samples", "5"]
    args += ["--train-size", "200", "--test-size", "50", "--device", "cpu", "--out", str(out)]
    assert main([*args, "--tensorboard", str(tb), "--mlflow", uri]) == 0
    table = pd.read_csv(out / "compare.csv").set_index("method")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ppvae compare").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["ppca", "vae"]
    for run in runs:
        name = run.info.run_name
        assert run.data.metrics["log_px"] == pytest.approx(table.log_px[name], rel=1e-12)
        assert run.data.params["method"] == name and run.data.params["z_dim"] == "2"
        assert run.data.tags["status"] == table.status[name]
        artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
        assert artifacts == ["compare.csv", "compare.json", "compare.md"]
        acc = events(tb / "compare" / name)
        assert scalars(acc, "log_px") == [(0, pytest.approx(table.log_px[name], rel=1e-6))]
    vae = next(r for r in runs if r.info.run_name == "vae")
    epochs = client.get_metric_history(vae.info.run_id, "test_elbo")  # the row's fit, per epoch
    assert sorted(m.step for m in epochs) == [1, 2]
    assert [s for s, _ in scalars(events(tb / "compare" / "vae"), "test_elbo")] == [1, 2]
    assert "test_elbo" not in events(tb / "compare" / "ppca").Tags()["scalars"]  # no SVI
    store = Path(uri.removeprefix("sqlite:///")).parent  # the artifacts sit beside the store
    assert not (tmp_path / "mlruns").exists() and (store / "mlartifacts").is_dir()


def test_a_run_stopped_by_ctrl_c_and_resumed_is_one_tracked_run(tracked, tmp_path, monkeypatch):
    uri = tracked[2]
    out, tb = tmp_path / "stopped", tmp_path / "tb"
    flags = ["--out", str(out), "--tensorboard", str(tb), "--mlflow", uri]
    with monkeypatch.context() as m:
        steps_then_sigint(m, after=30)  # in epoch 2 (22 steps an epoch)
        assert main(["train", "--epochs", "2", *SMALL, *flags]) == 130
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ppvae train").experiment_id
    named = "attributes.run_name = 'stopped'"
    assert client.search_runs([experiment], named)[0].info.status == "KILLED"
    assert main(["train", "--resume", "--epochs", "3", *flags]) == 0
    history = pd.read_csv(out / "history.csv")
    runs = client.search_runs([experiment], named)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    acc = events(tb / "stopped")
    for column in history.columns:
        assert same_points(scalars(acc, column), history_points(history, column)), column
        logged = [(m.step, m.value) for m in client.get_metric_history(run_id, column)]
        assert same_points(sorted(logged), history_points(history, column), rel=1e-12), column


def test_a_fit_that_fails_leaves_its_tracked_runs_failed_with_the_epochs_before(tmp_path):
    """A model that breaks in epoch 2: fit raises its error, and both trackers hold epoch 1,
    the MLflow run FAILED (not RUNNING for ever)."""
    import pyro
    import pyro.distributions as dist
    import torch

    from ppvae.experiments.trackers import MLflowTracker, TensorBoardTracker
    from ppvae.infer.fitting import FitConfig, fit

    broken = {"now": False}

    def model(x):
        loc = pyro.param("loc", torch.zeros(x.shape[1]))
        if broken["now"]:
            raise RuntimeError("the model broke")
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trackers = [TensorBoardTracker(tmp_path / "tb", "broken"), MLflowTracker(uri)]
    with pytest.raises(RuntimeError, match="the model broke"):
        fit(
            model,
            guide,
            torch.randn(40, 3),
            FitConfig(epochs=3, batch_size=20, device="cpu"),
            on_epoch=lambda history: broken.update(now=True),
            callbacks=trackers,
        )
    client, run = only_run(uri, "ppvae")
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_elbo")] == [1]
    assert [s for s, _ in scalars(events(tmp_path / "tb" / "broken"), "train_elbo")] == [1]
