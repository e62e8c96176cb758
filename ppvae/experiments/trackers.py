"""Trackers: callbacks (:mod:`ppvae.infer.callbacks`) that send a run to TensorBoard or MLflow,
where runs are compared in the tracker's own UI.

- :class:`TensorBoardTracker`: every history column as a scalar per epoch, the run's config
  as hparams, and (from ``ppvae train``) the run's PNGs as images and ``metrics.csv`` as
  ``final/<column>`` scalars; needs the ``tensorboard`` package (``pip install
  'ppvae[tensorboard]'``).
- :class:`MLflowTracker`: the config as params, every history column as a metric per epoch,
  ``metrics.csv`` as ``final/<column>`` and the run folder as artifacts; needs ``mlflow``
  (``pip install 'ppvae[mlflow]'``). Its default store is a SQLite file beside the runs, which
  needs no server (:func:`default_mlflow_uri`).

Each keeps what names its tracked run (TensorBoard's log folder, MLflow's run id) in the run's
checkpoints, so a resumed run goes on in the same tracked run, and no epoch is logged twice.
``ppvae compare`` logs one tracked run per table row (``log_row``, driven by
:class:`ppvae.experiments.tracked_rows.TableRows`).
"""

import importlib
import logging
import math
import os
import time
from pathlib import Path

import pandas as pd

from ppvae.config import ConfigError, dotted
from ppvae.infer.callbacks import TRACKED, Callback, TrainingStart
from ppvae.outputs import is_lock_file

FINAL = "final/"
"""The prefix of the tags of ``metrics.csv``'s columns, logged at the last epoch."""


def require(module: str, extra: str, flag: str) -> None:
    """Raise ConfigError, in one line naming the pip command, unless ``module`` imports."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{flag} needs the {extra} package: pip install 'ppvae[{extra}]'"
        ) from None


def plain(value) -> str | float | int | bool:
    """A config value as trackers take it: numbers and strings as they are, others as text."""
    return value if isinstance(value, str | float | int | bool) else str(value)


def params(start: TrainingStart) -> dict[str, str | float | int | bool]:
    """The run's config by dotted name: the run config of ``ppvae train`` (``run_info``'s
    ``config``, its ``fit`` included) or the FitConfig as ``fit.*``, and the other run info
    (``data.train`` sizes, ...)."""
    info = {k: v for k, v in start.run_info.items() if k != TRACKED}
    base = info.pop("config") if isinstance(info.get("config"), dict) else {}
    base = base or {"fit": start.config.to_dict()}
    return {k: plain(v) for k, v in dotted({**base, **info}).items()}


def numbers(row: dict) -> dict[str, float]:
    """The numeric entries of a row as floats (NaN kept)."""
    kept = {k: v for k, v in row.items() if not isinstance(v, bool)}
    return {k: float(v) for k, v in kept.items() if isinstance(v, int | float)}


def finished(result, out: Path | None) -> Path | None:
    """The run folder, once training completed (None after Ctrl-C: what it holds is old)."""
    return None if result.interrupted else out


def final_metrics(out: Path | None) -> dict[str, float]:
    """``metrics.csv``'s numeric columns of a run folder as ``final/<column>`` (empty if none)."""
    path = None if out is None else out / "metrics.csv"
    if path is None or not path.is_file():
        return {}
    row = pd.read_csv(path).iloc[0].to_dict()
    return {FINAL + k: v for k, v in numbers(row).items()}


def outputs(out: Path) -> list[Path]:
    """The files of a run folder a tracker keeps (all but lock files), sorted."""
    return sorted(p for p in out.iterdir() if p.is_file() and not is_lock_file(p.name))


def unused(folder: Path) -> Path:
    """``folder``, or ``folder-2``, ``folder-3``... the first that does not exist."""
    candidate, n = folder, 1
    while candidate.exists():
        n += 1
        candidate = folder.with_name(f"{folder.name}-{n}")
    return candidate


class TensorBoardTracker(Callback):
    """Write a run for TensorBoard into ``root / run_name`` (``-2``, ``-3``... when taken).

    Scalars: every history column, tagged by its name, at step = epoch. The config as
    hparams (TensorBoard's HParams tab), the run's PNGs as images. On resume the same folder
    is continued: the last saved epoch is purged and logged again, so no step is doubled.

    Examples
    --------
    >>> import tempfile
    >>> from ppvae.experiments.trackers import TensorBoardTracker
    >>> TensorBoardTracker(tempfile.mkdtemp(), "demo").run_name  # writes when training starts
    'demo'
    """

    NAME = "tensorboard"

    def __init__(self, root, run_name: str = "run"):
        require("tensorboard", "tensorboard", "--tensorboard")
        self.root, self.run_name, self.writer = Path(root), run_name, None

    def _open(self, log_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def _hparams(self, values: dict, metric_tags) -> None:
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(values, {tag: math.nan for tag in metric_tags}):
            self.writer.file_writer.add_summary(summary)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def on_train_start(self, start: TrainingStart) -> None:
        """Open the run's log folder (the same one on resume): the config as hparams, the
        rows already trained as scalars."""
        kept, rows = start.kept(self.NAME), start.history
        if kept:  # resumed: the last saved epoch may or may not have been logged
            last = int(rows.epoch.iloc[-1]) if len(rows) else None
            self._open(Path(kept["log_dir"]), purge_step=last)
            rows = rows[rows.epoch >= last] if last else rows
        else:
            self._open(unused(self.root / self.run_name))
            start.keep(self.NAME, {"log_dir": str(self.log_dir)})
            self._hparams(params(start), list(start.history.columns))
        for row in rows.to_dict("records"):
            self._scalars(numbers(row), int(row["epoch"]))
        self.writer.flush()

    def on_epoch_end(self, row: dict[str, float], history: pd.DataFrame) -> None:
        """The epoch's history row as scalars at step = epoch."""
        self._scalars(numbers(row), int(row["epoch"]))
        self.writer.flush()

    def on_train_end(self, result, out: Path | None = None) -> None:
        """``metrics.csv`` as ``final/<column>``, the run's PNGs as images; the writer closed."""
        step, out = len(result.history), finished(result, out)
        self._scalars(final_metrics(out), step)
        for png in [] if out is None else sorted(out.glob("*.png")):
            self._image(png, step)
        self.writer.close()

    def on_train_error(self, error: BaseException) -> None:
        """Close the writer: the epochs logged before the error stay."""
        self.writer.close()  # what was logged stays: the epochs before the error

    def _image(self, png: Path, step: int) -> None:
        import matplotlib.image

        self.writer.add_image(
            f"pictures/{png.stem}", matplotlib.image.imread(png), step, dataformats="HWC"
        )

    def log_row(self, name: str, values: dict, row: dict, files: list[Path], history=None):
        """One table row as its own run, ``root / run_name / name``: ``values`` as hparams,
        the row's numbers as scalars at step 0, its fit's ``history`` (if any) per epoch
        (``files`` are left to the table's folder)."""
        self._open(unused(self.root / self.run_name / name))
        metrics, epochs = numbers(row), [] if history is None else history.to_dict("records")
        self._hparams({**values, "method": name}, [*metrics, *(epochs[0] if epochs else [])])
        self._scalars(metrics, 0)
        for epoch in epochs:
            self._scalars(numbers(epoch), int(epoch["epoch"]))
        self.writer.close()


PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
"""How long MLflow's client waits for a tracking server, unless the environment says: about 10
seconds for one that does not answer (MLflow's own default retries for minutes, and training
would wait that long before the tracker is switched off)."""


SQLITE = "sqlite:///"


def default_mlflow_uri(runs: Path) -> str:
    """``sqlite:///<runs>/mlflow.db``: a store in one file beside the runs, no server."""
    return f"sqlite:///{(Path(runs).absolute() / 'mlflow.db').as_posix()}"


class MLflowTracker(Callback):
    """Log a run to MLflow at ``tracking_uri``, in the experiment ``experiment`` (made if it
    does not exist, its artifacts in ``artifact_location``: by default, for a SQLite store,
    ``mlartifacts`` beside its file; else where the store puts them).

    Params: the config by dotted name. Metrics: every history column, at step = epoch. At
    the end, ``metrics.csv`` as ``final/<column>`` and the run folder's files as artifacts;
    the run is then FINISHED (KILLED after Ctrl-C, RUNNING again on resume). On resume the
    same run goes on from the first epoch it lacks.

    Examples
    --------
    >>> from ppvae.experiments.trackers import MLflowTracker
    >>> MLflowTracker("sqlite:///runs/mlflow.db").experiment  # connects when training starts
    'ppvae'
    """

    NAME = "mlflow"

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "ppvae",
        run_name: str | None = None,
        artifact_location: Path | None = None,
    ):
        require("mlflow", "mlflow", "--mlflow")
        self.uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        if artifact_location is None and tracking_uri.startswith(SQLITE):
            artifact_location = Path(tracking_uri.removeprefix(SQLITE)).parent / "mlartifacts"
        self.artifact_location, self.client, self.run_id = artifact_location, None, None

    def _client(self):
        from mlflow.tracking import MlflowClient

        for name, value in PATIENCE.items():
            os.environ.setdefault(name, value)
        for name in ("mlflow", "alembic"):  # their INFO lines on making the SQLite tables
            logging.getLogger(name).setLevel(logging.WARNING)
        if self.uri.startswith(SQLITE):
            Path(self.uri.removeprefix(SQLITE)).parent.mkdir(parents=True, exist_ok=True)
        self.client = self.client or MlflowClient(tracking_uri=self.uri)
        return self.client

    def _new_run(self, values: dict, tags: dict | None = None) -> str:
        from mlflow.entities import Param

        client = self._client()
        found = client.get_experiment_by_name(self.experiment)
        where = self.artifact_location and Path(self.artifact_location).absolute().as_uri()
        experiment = (
            found.experiment_id if found else client.create_experiment(self.experiment, where)
        )
        run = client.create_run(experiment, run_name=self.run_name, tags=tags)
        items = [Param(k, str(v)) for k, v in values.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def on_train_start(self, start: TrainingStart) -> None:
        """Start the MLflow run (or continue the saved one on resume) with the config as params."""
        kept, rows = start.kept(self.NAME), start.history
        if kept:  # the same run, in the store it is in
            self.run_id, self.uri = kept["run_id"], kept.get("tracking_uri", self.uri)
            self._client().update_run(self.run_id, status="RUNNING")
            logged = [m.step for m in self.client.get_metric_history(self.run_id, "epoch")]
            rows = rows[rows.epoch > max(logged, default=0)]
        else:
            self.run_id = self._new_run(params(start))
            start.keep(self.NAME, {"run_id": self.run_id, "tracking_uri": self.uri})
        for row in rows.to_dict("records"):
            self._metrics(numbers(row), int(row["epoch"]))

    def on_epoch_end(self, row: dict[str, float], history: pd.DataFrame) -> None:
        """The epoch's history row as metrics at step = epoch."""
        self._metrics(numbers(row), int(row["epoch"]))

    def on_train_end(self, result, out: Path | None = None) -> None:
        """``metrics.csv`` as ``final/<column>``, the run folder as artifacts; the run FINISHED
        (KILLED after Ctrl-C)."""
        out = finished(result, out)
        self._metrics(final_metrics(out), len(result.history))
        for path in [] if out is None else outputs(out):
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "KILLED" if result.interrupted else "FINISHED")

    def on_train_error(self, error: BaseException) -> None:
        """Mark the run FAILED, with the epochs logged before the error."""
        self.client.set_terminated(self.run_id, "FAILED")

    def log_row(self, name: str, values: dict, row: dict, files: list[Path], history=None):
        """One table row as its own run named ``name``: ``values`` as params, the row's
        numbers as metrics, its fit's ``history`` (if any) per epoch, its text columns as
        tags, ``files`` as artifacts."""
        tags = {k: str(v) for k, v in row.items() if isinstance(v, str)}
        self.run_name = name
        self.run_id = self._new_run({**values, "method": name}, tags)
        self._metrics(numbers(row), 0)
        for epoch in [] if history is None else history.to_dict("records"):
            self._metrics(numbers(epoch), int(epoch["epoch"]))
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")


def from_flags(
    tensorboard: str | None, mlflow: str | None, out: Path, name: str, experiment: str
) -> list[Callback]:
    """The trackers the CLI's ``--tensorboard DIR`` and ``--mlflow [URI]`` ask for (``""``:
    the default store beside ``out``, see :func:`default_mlflow_uri`), made before any work so
    that a missing extra is one line. ``name`` names the run (a table's rows go under it)."""
    trackers: list[Callback] = []
    if tensorboard is not None:
        trackers.append(TensorBoardTracker(tensorboard, name))
    if mlflow is not None:
        uri = mlflow or default_mlflow_uri(Path(out).absolute().parent)
        trackers.append(MLflowTracker(uri, experiment, name))
    return trackers
