"""Atomic training checkpoints: parameters, optimizer and RNG state, progress and history.

A checkpoint is written to a temporary file in the same directory and moved into place with
``os.replace``, so a crash or Ctrl-C during the write leaves the previous checkpoint intact.
"""

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Every generator Pyro samples from: torch (CPU and CUDA), Python's and NumPy's."""
    state = {"torch": torch.get_rng_state(), "random": random.getstate()}
    state["numpy"] = np.random.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` onto the CPU."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(state, dict) or state.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a ppvae checkpoint (format {FORMAT_VERSION})")
    return state


def restore_params(saved: dict[str, Any], like: torch.Tensor) -> None:
    """Put saved param-store values back (``saved`` from ``ParamStoreDict.get_state()``).

    A name the store already holds is copied into the tensor there, in place: that tensor is
    what the networks compute with and what the optimizer steps (for ``pyro.module`` and
    ``PyroModule`` it *is* the network's weight), so its identity, device and dtype are kept.
    A name the store lacks (a value created during training, such as a score-function
    baseline) is inserted as a new leaf on ``like``'s device, floating point in its dtype.

    Raises
    ------
    ValueError
        When a saved value's shape differs from the one in the store.
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
            raise ValueError(
                f"the checkpoint's parameter '{name}' has shape {tuple(value.shape)} but the "
                f"model's has {tuple(target.shape)}: it was written for another architecture"
            )
        else:
            with torch.no_grad():
                target.copy_(value)
    constraints = {k: saved["constraints"][k] for k in fresh}
    store.set_state({"params": fresh, "constraints": constraints})
