"""Atomic, safe training checkpoints: parameters, optimizer and RNG state, progress and history.

A checkpoint is written to a temporary file in the same directory and moved into place with
``os.replace``, so a crash, Ctrl-C or a full disk during the write leaves the previous
checkpoint intact. It holds only tensors and plain Python values (numbers, strings, lists,
dicts, tuples) and is read with ``torch.load(weights_only=True)``: a file from someone else
cannot run code when loaded. Only a regular file is read (a FIFO would block forever).
Parameter constraints are stored by name.
"""

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from torch.distributions import constraints

from ppvae.config import open_regular
from ppvae.errors import CheckpointError, OutputError, first_line, shown

FORMAT_VERSION = 3
"""3: a checkpoint written by ``ppvae train`` carries the whole run config under ``run``."""

CONSTRAINTS: dict[str, constraints.Constraint] = {
    name: value
    for name, value in vars(constraints).items()
    if isinstance(value, constraints.Constraint) and not name.startswith("_")
}
"""torch's constraint singletons by name (``real``, ``positive``, ``simplex``, ...)."""


def _constraint_name(constraint: constraints.Constraint) -> str:
    for name, known in CONSTRAINTS.items():
        if constraint is known:
            return name
    return repr(constraint)


def rng_state() -> dict[str, Any]:
    """Every generator Pyro samples from: torch (CPU and CUDA), Python's and NumPy's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore every generator from :func:`rng_state`'s ``state``."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def store_state() -> dict[str, Any]:
    """Pyro's param store as tensors and constraint names."""
    store = pyro.get_param_store().get_state()
    names = {k: _constraint_name(c) for k, c in store["constraints"].items()}
    return {"params": store["params"], "constraints": names}


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Raises
    ------
    OutputError
        When the file cannot be written (the previous checkpoint, if any, is kept).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        kept = "; the previous checkpoint is kept" if path.is_file() else ""
        raise OutputError(f"cannot write the checkpoint {path}: {first_line(err)}{kept}") from err
    finally:
        tmp.unlink(missing_ok=True)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` onto the CPU, refusing anything else.

    Raises
    ------
    CheckpointError
        When the file is missing, not a regular file, empty, truncated, not a ppvae
        checkpoint, of another format version (both versions are named), or holds Python
        objects other than tensors and plain values (which could run code when unpickled).
    """
    if not os.path.lexists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    with open_regular(path, what="the checkpoint", error=CheckpointError) as f:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on foreign pickles: our line
                state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception:  # truncated, garbage, or a pickle with code in it
            raise CheckpointError(
                f"cannot read the checkpoint {path}: it is empty, damaged, or not a ppvae "
                "checkpoint (refused to unpickle anything but tensors and plain values)"
            ) from None
    if not isinstance(state, dict) or "version" not in state:
        raise CheckpointError(f"{path} is not a ppvae checkpoint (it has no format version)")
    if state["version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is a checkpoint of format {shown(state['version'])}, and this ppvae "
            f"reads format {FORMAT_VERSION}: load it with the ppvae that wrote it, or train again"
        )
    return state


def require(state: dict[str, Any], keys, path) -> None:
    """Raise CheckpointError unless ``state`` (from :func:`load`) holds every one of ``keys``."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is a format-{FORMAT_VERSION} checkpoint without {', '.join(missing)}: "
            "it is damaged, or was not written by ppvae's fit"
        )


def restore_params(saved: dict[str, Any], like: torch.Tensor) -> None:
    """Put saved param-store values back (``saved`` from :func:`store_state`).

    A name the store already holds is copied into the tensor there, in place: that tensor is
    what the networks compute with and what the optimizer steps (for ``pyro.module`` and
    ``PyroModule`` it *is* the network's weight), so its identity, device and dtype are kept.
    A name the store lacks (a value created during training, such as a score-function
    baseline) is inserted as a new leaf on ``like``'s device, floating point in its dtype.

    Raises
    ------
    CheckpointError
        When a saved value's shape differs from the one in the store, or a new name's
        constraint is not one of torch's named constraints.
    """
    store = pyro.get_param_store()
    current = store.get_state()["params"]
    fresh = {}
    for name, value in saved["params"].items():
        target = current.get(name)
        if target is None:
            dtype = like.dtype if value.is_floating_point() else value.dtype
            fresh[name] = value.detach().to(like.device, dtype).requires_grad_()
        elif target.shape != value.shape:
            raise CheckpointError(
                f"the checkpoint's parameter '{name}' has shape {tuple(value.shape)} but the "
                f"model's has {tuple(target.shape)}: it was written for another architecture"
            )
        else:
            with torch.no_grad():
                target.copy_(value)
    store.set_state({"params": fresh, "constraints": _constraints(saved, fresh)})


def _constraints(saved: dict[str, Any], names) -> dict[str, constraints.Constraint]:
    found = {}
    for name in names:
        label = saved["constraints"][name]
        if label not in CONSTRAINTS:
            raise CheckpointError(f"cannot restore '{name}': unknown constraint {label}")
        found[name] = CONSTRAINTS[label]
    return found
