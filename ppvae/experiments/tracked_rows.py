"""``ppvae compare``'s rows in trackers (:mod:`ppvae.experiments.trackers`): one tracked run per
row of the table, with the table's config, the row's scores and, for a row fitted by SVI, its
epochs."""

from pathlib import Path

import pandas as pd

from ppvae.config import dotted
from ppvae.experiments.rows import INTERRUPTED, KEPT
from ppvae.experiments.trackers import plain
from ppvae.infer.callbacks import Callback, CallbackList


class Epochs(Callback):
    """Keeps the history of the last fit, for :class:`TableRows` to log with its row.

    Examples
    --------
    >>> import pandas as pd
    >>> from ppvae.experiments.tracked_rows import Epochs
    >>> epochs = Epochs()
    >>> epochs.on_epoch_end({"epoch": 1}, pd.DataFrame({"epoch": [1]}))
    >>> len(epochs.take()), epochs.take()  # taken once
    (1, None)
    """

    def __init__(self):
        self.history = None

    def on_epoch_end(self, row: dict[str, float], history: pd.DataFrame) -> None:
        """Keep the epoch's row, to log with the table row it belongs to."""
        self.history = history

    def take(self) -> pd.DataFrame | None:
        """The history kept since the last take (None when no fit ran)."""
        history, self.history = self.history, None
        return history


class TableRows:
    """Log each row of a comparison table to ``trackers`` once, as its own tracked run
    (``log_row``), with ``config`` as params and, for an SVI row, the epochs of its fit (give
    ``epochs`` to the rows' fits: :func:`ppvae.experiments.rows.row_callbacks`). The rows
    ``done`` kept from an earlier table were logged by the run that fitted them, and an
    interrupted row is left to ``--resume``.

    Examples
    --------
    >>> from ppvae.experiments.compare import CompareConfig
    >>> from ppvae.experiments.tracked_rows import TableRows
    >>> TableRows([], CompareConfig()).values["z_dim"]
    10
    """

    def __init__(self, trackers: list[Callback], config, done: pd.DataFrame | None = None):
        self.hooks, self.epochs = CallbackList(trackers), Epochs()
        self.values = {k: plain(v) for k, v in dotted(config.to_dict()).items()}
        kept = set() if done is None else set(done.method[done.status.isin(KEPT)])
        self.logged: set[str] = kept

    def __call__(self, frame: pd.DataFrame, files: list[Path]) -> None:
        history = self.epochs.take()  # of the row just fitted, if it was fitted by SVI
        for row in frame.to_dict("records"):
            name = row["method"]
            if name in self.logged or row.get("status") == INTERRUPTED:
                continue
            self.logged.add(name)
            paths = [Path(f) for f in files]
            self.hooks.call("log_row", name, self.values, row, paths, history)
