"""Output folders: checked before anything is computed, written atomically, swapped in whole.

A command checks its ``--out`` with :func:`check_output_dir` before doing any work, so bad input
is refused with nothing written; :class:`Staging` builds a new training run beside the old one
and swaps it in only once it holds a checkpoint, so a run that fails at start-up leaves no
half-written folder and ``--overwrite`` never destroys a finished run for nothing.
"""

import os
import shutil
import tempfile
from pathlib import Path

from ppvae.errors import OutputError, first_line


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(out: str | os.PathLike) -> Path:
    """Raise OutputError unless ``out`` is (or can become) a folder this process may write.

    Leaves nothing behind (it creates and removes an empty folder, which catches what
    permissions alone do not: a read-only file system, ``/proc``). Returns ``out`` as a Path.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "f").write_text("x") and None
    >>> check_output_dir(folder / "f" / "run")
    Traceback (most recent call last):
    ...
    ppvae.errors.OutputError: cannot write to ...: ... is a file, not a folder
    """
    out = Path(out)
    existing = _nearest_existing(out)
    if not existing.is_dir():
        raise OutputError(f"cannot write to {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {out}: no permission to write in {existing}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ppvae-probe-", dir=existing))
    except OSError as err:
        raise OutputError(f"cannot write to {out}: {first_line(err)}") from None
    return out


def make_dir(out: Path) -> Path:
    """``mkdir -p out``, with an OSError turned into one OutputError line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {out}: {first_line(err)}") from err
    return out


class Staging(os.PathLike):
    """A new run built in a hidden folder beside ``out``, then swapped in whole.

    ``folder`` is where the run's files go: the hidden folder until :meth:`publish`, ``out``
    after. As a path (``os.fspath``) it is ``folder / name``, so ``fit(checkpoint=staging)``
    keeps writing its checkpoint to the right place across the swap.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "run"
    >>> staging = Staging(out, "checkpoint.pt")
    >>> staging.folder.name.startswith(".run.new-"), out.exists()
    (True, False)
    >>> staging.publish()
    >>> Path(staging) == out / "checkpoint.pt", out.is_dir()
    (True, True)
    """

    def __init__(self, out: Path, name: str):
        self.out, self.name, self.published = out, name, False
        self.hidden = out.parent / f".{out.name}.new-{os.getpid()}"
        _remove_stale(out)
        shutil.rmtree(self.hidden, ignore_errors=True)
        make_dir(self.hidden)

    @property
    def folder(self) -> Path:
        return self.out if self.published else self.hidden

    def __fspath__(self) -> str:
        return os.fspath(self.folder / self.name)

    def publish(self) -> None:
        """Replace ``out`` (an old run, or nothing) by the new run, in two renames."""
        if self.published:
            return
        trash = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
        try:
            if self.out.exists():
                os.replace(self.out, trash)
            os.replace(self.hidden, self.out)
        except OSError as err:
            if trash.exists() and not self.out.exists():
                os.replace(trash, self.out)  # the old run back where it was
            msg = f"cannot move the new run into {self.out}: {first_line(err)}"
            raise OutputError(msg) from err
        self.published = True
        shutil.rmtree(trash, ignore_errors=True)

    def discard(self) -> None:
        """Remove the hidden folder of a run that never got a checkpoint."""
        if not self.published:
            shutil.rmtree(self.hidden, ignore_errors=True)


def _remove_stale(out: Path) -> None:
    """Hidden folders left by runs killed before their first checkpoint."""
    for path in out.parent.glob(f".{out.name}.new-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
