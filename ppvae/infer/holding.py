"""Output safety for :func:`~ppvae.infer.fitting.fit`: a checkpoint path checked before any
work, and a lock held on it (or on a run folder) against other processes."""

import os
from contextlib import contextmanager
from pathlib import Path

from ppvae import distributed
from ppvae.config import ConfigError
from ppvae.errors import OutputError
from ppvae.outputs import OutputLock

CHECKPOINT_HINT = "wait for it to finish, or give this fit another checkpoint path"


def check_checkpoint_path(checkpoint: str | os.PathLike | None) -> None:
    """Refuse, before any work, a checkpoint path no epoch could be saved to."""
    if checkpoint is None:
        return
    path = Path(os.fspath(checkpoint))
    if path.is_dir():
        raise ConfigError(
            f"checkpoint={checkpoint} is a folder: give a file path, such as "
            f"{path / 'checkpoint.pt'}"
        )
    if not path.absolute().parent.is_dir():
        raise ConfigError(f"checkpoint={checkpoint}: the folder {path.parent} does not exist")


@contextmanager
def holding(target: str | os.PathLike | None, what: str, hint: str = ""):
    """Hold ``target`` against other processes (:class:`~ppvae.outputs.OutputLock`) for the
    block: rank 0 (the one that writes) takes the lock, and under torch.distributed every rank
    learns whether it could, so all refuse together. ``None`` holds nothing."""
    lock = OutputLock(target, what, hint) if target is not None and distributed.is_main() else None
    refusal = None
    try:
        if lock is not None:
            lock.acquire()
    except OutputError as err:
        refusal = str(err)
    refusals = [r for r in distributed.gather_objects(refusal) if r]
    if refusals:
        if lock is not None:
            lock.release()
        raise OutputError(refusals[0], every_rank=True)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
