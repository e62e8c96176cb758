"""What :func:`~ppvae.infer.fitting.fit` tells the code watching it: the start of training, each
epoch's history row, each checkpoint and the end, as the methods of a :class:`Callback`.

``fit(..., callbacks=[...])`` calls them on rank 0 alone (under torch.distributed the other
ranks train the same run). A callback that raises costs one warning line
(:class:`CallbackWarning`) and is not called again: training goes on, and what ``fit`` and
``ppvae train`` write is written as without it. Trackers (``ppvae.experiments.trackers``) are
callbacks that send a run to TensorBoard or MLflow.
"""

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from ppvae.errors import first_line

TRACKED = "trackers"
"""The key of the run info (stored in every checkpoint) under which a callback may keep what
it needs to continue its record on resume, such as a tracker's run id: ``{name: plain values}``.
A resumed ``fit`` hands the saved entries back, so a resume continues the same tracked run."""


class CallbackWarning(UserWarning):
    """A callback raised: it is switched off for the rest of the run, and training goes on."""


class TrainingStart(NamedTuple):
    """What a callback is told when training starts (or resumes).

    Attributes
    ----------
    config : FitConfig
    run_info : dict
        The run's record stored in every checkpoint (``ppvae train``: ``{"config": RunConfig
        as a dict, "data": sizes}``). Live: a callback may keep plain values under
        ``run_info[TRACKED][its name]``; on resume they are the ones it kept before.
    history : DataFrame
        The epochs already trained (empty for a new run; a resumed one's saved rows).
    resumed : bool
        True when ``fit`` continues a checkpoint.
    """

    config: Any
    run_info: dict
    history: pd.DataFrame
    resumed: bool

    def kept(self, name: str) -> dict | None:
        """What the callback called ``name`` kept in the checkpoint, or None."""
        return self.run_info.get(TRACKED, {}).get(name)

    def keep(self, name: str, values: dict) -> None:
        """Keep ``values`` (plain, JSON-able) in every later checkpoint under ``name``."""
        self.run_info.setdefault(TRACKED, {})[name] = values


class Callback:
    """The hooks ``fit`` calls, each a no-op here: override the ones you need.

    Examples
    --------
    >>> from ppvae.infer.callbacks import Callback
    >>> class Last(Callback):
    ...     def on_epoch_end(self, row, history):
    ...         self.row = row
    >>> Last().on_train_start(None)  # the others do nothing
    """

    def on_train_start(self, start: TrainingStart) -> None:
        """Training starts or resumes; ``start.history`` holds the epochs already trained."""

    def on_epoch_end(self, row: dict[str, float], history: pd.DataFrame) -> None:
        """An epoch ended: its history row, and the whole history so far."""

    def on_checkpoint(self, path: Path) -> None:
        """A checkpoint was written at ``path`` (every epoch, and on Ctrl-C)."""

    def on_train_end(self, result, out: Path | None = None) -> None:
        """Training ended (``result.interrupted`` after Ctrl-C). ``out`` is the run folder when
        ``ppvae train`` calls it, once the folder's metrics and pictures are written."""

    def on_train_error(self, error: BaseException) -> None:
        """Training stopped on ``error`` (a non-finite loss, a failing model...): ``fit`` raises
        it once the callbacks have heard, so a tracker can mark its run failed."""


class CallbackList:
    """The callbacks of one run, each called behind a guard: the first exception a callback
    raises is one :class:`CallbackWarning` line, and that callback is not called again.

    ``outputs_follow``: ``fit``'s own end call is skipped, for a caller (``ppvae train``) that
    writes the run folder after ``fit`` and then calls ``end(result, out, outputs=True)``.

    Examples
    --------
    >>> import warnings
    >>> from ppvae.infer.callbacks import Callback, CallbackList
    >>> class Broken(Callback):
    ...     def on_checkpoint(self, path):
    ...         raise OSError("disk full")
    >>> hooks = CallbackList([Broken()])
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     hooks.checkpoint("a.pt"); hooks.checkpoint("b.pt")
    >>> [str(w.message) for w in caught]
    ['callback Broken failed in on_checkpoint, and is off for the rest of the run: disk full']
    """

    def __init__(self, callbacks: Iterable[Callback] = (), *, outputs_follow: bool = False):
        self.callbacks = list(callbacks)
        self.outputs_follow = outputs_follow
        self._off: set[int] = set()

    @classmethod
    def of(cls, callbacks) -> "CallbackList":
        """``callbacks`` as a CallbackList (one given is used as it is)."""
        return callbacks if isinstance(callbacks, CallbackList) else cls(callbacks or ())

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def call(self, hook: str, *args) -> None:
        """Call ``hook`` of every callback still on, with ``args``."""
        for i, callback in enumerate(self.callbacks):
            if i in self._off:
                continue
            try:
                getattr(callback, hook)(*args)
            except Exception as err:  # a tracker's trouble must not stop training
                self._off.add(i)
                warnings.warn(
                    f"callback {type(callback).__name__} failed in {hook}, and is off for the "
                    f"rest of the run: {first_line(err)}",
                    CallbackWarning,
                    stacklevel=3,
                )

    def start(self, start: TrainingStart) -> None:
        """Tell every callback that training starts (or resumes)."""
        self.call("on_train_start", start)

    def epoch(self, history: pd.DataFrame) -> None:
        """Tell every callback of the epoch that ended (the last row of ``history``)."""
        self.call("on_epoch_end", history.iloc[-1].to_dict(), history)

    def checkpoint(self, path) -> None:
        """Tell every callback of the checkpoint written at ``path``."""
        self.call("on_checkpoint", Path(path))

    def failed(self, error: BaseException) -> None:
        """Tell every callback that training stopped on ``error``."""
        self.call("on_train_error", error)

    def end(self, result, out: Path | None = None, *, outputs: bool = False) -> None:
        """Tell every callback that training ended (with ``outputs_follow``, only once
        ``outputs`` is true)."""
        if self.outputs_follow and not outputs:
            return
        self.call("on_train_end", result, None if out is None else Path(out))
