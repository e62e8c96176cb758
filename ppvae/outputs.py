"""Output folders: checked before anything is computed, held by one process, written
atomically, swapped in whole.

A command checks its ``--out`` with :func:`check_output_dir` before doing any work, so bad input
is refused with nothing written, and holds it with :class:`OutputLock` for as long as it runs,
so a second command writing the same folder (or a second ``fit`` the same checkpoint) is
refused before it starts. :class:`Staging` builds a new training run beside the old one and
swaps it in only once it holds a checkpoint, so a run that fails at start-up leaves no
half-written folder and ``--overwrite`` never destroys a finished run for nothing; an empty
folder that cannot be renamed (a mount point, the current folder) is written in place instead.

The lock is ``fcntl.flock`` on a hidden file beside what it guards (``.<name>.lock`` next to
the folder ``<name>``, so it survives the swap and ``--overwrite``; inside the folder only when
its parent cannot be written). The kernel drops the lock when its process dies, so a run killed
with ``kill -9`` never blocks the next one; the file is removed when the lock is let go, and a
killed run leaves only that empty hidden file, which the next run takes over.
"""

import fcntl
import hashlib
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


def resolve_link(out: Path) -> Path:
    """``out`` with its symbolic links followed (to a folder or to a path not yet made), so a
    run is written where a link points and the link stays a link; ``out`` itself otherwise."""
    real = Path(os.path.realpath(out))
    return out if real == out.absolute() else real


def hidden_sibling(path: Path, tag: str) -> Path:
    """``.<name>.<tag>`` beside ``path``, with the name cut and hashed when the whole would pass
    the file system's limit on a name (NAME_MAX, 255 on most), so any legal name has one."""
    try:
        limit = os.pathconf(_nearest_existing(path.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    name = path.name
    if len(name) + 40 > limit:  # room for the dot, the tag ("new-<pid>", "lock") and slack
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[: limit - 60]}~{digest}"
    return path.parent / f".{name}.{tag}"


LOCK_NAME = ".ppvae.lock"
"""The lock file inside a folder whose parent cannot be written (see :class:`OutputLock`)."""


def is_lock_file(name: str) -> bool:
    """A name :class:`OutputLock` may leave behind (an empty hidden file, free to remove)."""
    return name.startswith(".") and name.endswith(".lock")


class OutputLock:
    """Hold ``target`` (a folder or a file, or a PathLike whose path may change) against every
    other process for the duration of a ``with`` block.

    The lock file is ``.<name>.lock`` beside ``target``, found anew from ``target`` when let
    go, so it follows a :class:`Staging` path across the swap. A folder whose parent cannot be
    written is locked by :data:`LOCK_NAME` inside it. Missing parent folders are made for the
    lock file, and removed with it when nothing else was put in them.

    Raises
    ------
    OutputError
        On entry, when another process holds ``target``; the message names that process.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "run"
    >>> with OutputLock(out):
    ...     hidden_sibling(out, "lock").exists()
    True
    >>> hidden_sibling(out, "lock").exists()
    False
    """

    def __init__(self, target: str | os.PathLike, what: str = "", hint: str = ""):
        self.target, self.fd, self.made = target, None, []
        self.what = what or f"{os.fspath(target)}"
        self.hint = hint or "wait for it to finish, or choose another output"

    def path(self) -> Path:
        """The lock file: a hidden sibling of the target, or inside it when its parent is
        read-only."""
        target = Path(os.fspath(self.target)).absolute()
        inside = target / LOCK_NAME
        parent = _nearest_existing(target.parent)
        if target.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
            return inside
        return hidden_sibling(target, "lock")

    def acquire(self) -> None:
        """Take the lock, or raise :class:`~ppvae.errors.OutputError` naming the holder."""
        self.made = _make_parents(Path(os.fspath(self.target)).absolute().parent)
        try:
            self._acquire()
        except BaseException:
            _remove_empty(self.made)
            raise

    def _acquire(self) -> None:
        while self.fd is None:  # again when the file was removed by its holder as we opened it
            path = self.path()
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise OutputError(f"cannot lock {self.what}: {first_line(err)}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                who = f"ppvae process {holder}" if holder.isdigit() else "another ppvae process"
                raise OutputError(f"{self.what} is in use by {who}: {self.hint}") from None
            if _same_file(fd, path):
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self.fd = fd
            else:
                os.close(fd)

    def release(self) -> None:
        """Give the lock back and remove its file (nothing when not held)."""
        if self.fd is None:
            return
        path = self.path()
        if _same_file(self.fd, path):
            path.unlink(missing_ok=True)  # before letting go: a waiter finds the file gone
        os.close(self.fd)
        self.fd = None
        _remove_empty(self.made)  # the folders made for the lock, unless something is in them

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it made, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if missing:
        make_dir(missing[0])
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _contents(folder: Path) -> list[Path]:
    """What ``folder`` holds, lock files left aside."""
    return [p for p in folder.iterdir() if not is_lock_file(p.name)]


def _stays_in_place(out: Path) -> bool:
    """Whether ``out`` is a folder that cannot be renamed: the current folder (or one above
    it), a mount point, or one a rename is refused on (tried and undone, under the lock)."""
    if not out.is_dir():
        return False
    real, cwd = Path(os.path.realpath(out)), Path(os.path.realpath(os.getcwd()))
    if real == cwd or real in cwd.parents or os.path.ismount(real):
        return True
    probe = hidden_sibling(real, f"probe-{os.getpid()}")
    try:
        os.rename(real, probe)
    except OSError:
        return True
    os.rename(probe, real)
    return False


class Staging(os.PathLike):
    """A new run built in a hidden folder beside ``out``, then swapped in whole.

    ``folder`` is where the run's files go: the hidden folder until :meth:`publish`, ``out``
    after. As a path (``os.fspath``) it is ``folder / name``, so ``fit(checkpoint=staging)``
    keeps writing its checkpoint to the right place across the swap.

    An empty ``out`` that cannot be renamed (a mount point, the current folder) is written in
    place, file by atomic file: ``folder`` is ``out`` from the start, and :meth:`discard` empties
    it again. Such an ``out`` holding a run is refused at once, since nothing can replace it
    whole. The caller holds ``out`` (:class:`OutputLock`) while staging.

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
        self.in_place = _stays_in_place(out)
        if self.in_place:
            if _contents(out):
                raise OutputError(
                    f"cannot replace the run in {out}: it is a mount point or the current "
                    "folder, which cannot be swapped whole; empty it or choose another --out"
                )
            self.hidden = out
            return
        self.hidden = hidden_sibling(out, f"new-{os.getpid()}")
        _remove_stale(out)
        shutil.rmtree(self.hidden, ignore_errors=True)
        make_dir(self.hidden)

    @property
    def folder(self) -> Path:
        """Where the files go now: the hidden staging folder, then the output once published."""
        return self.out if self.published else self.hidden

    def __fspath__(self) -> str:
        return os.fspath(self.folder / self.name)

    def publish(self) -> None:
        """Replace ``out`` (an old run, or nothing) by the new run, in two renames."""
        if self.published or self.in_place:
            self.published = True
            return
        trash = hidden_sibling(self.out, f"old-{os.getpid()}")
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
        """Remove the hidden folder (in place: the files) of a run that never got a
        checkpoint."""
        if self.published:
            return
        if not self.in_place:
            shutil.rmtree(self.hidden, ignore_errors=True)
            return
        for path in _contents(self.out):
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_stale(out: Path) -> None:
    """Hidden folders left by runs killed before their first checkpoint."""
    prefix = hidden_sibling(out, "new-").name
    for path in out.parent.iterdir():
        pid = path.name[len(prefix) :] if path.name.startswith(prefix) else ""
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
