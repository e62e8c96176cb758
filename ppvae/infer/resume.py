"""Checkpoints of a training run: what they hold, and putting them back for an exact resume.

A checkpoint holds the progress (epoch, step, the epoch's losses so far, the history), the
config (and, from ``ppvae train``, the whole run's config and data sizes), the modules' state
dicts, Pyro's param store, the optimizer's state and the random
state (every rank's, under torch.distributed). :func:`restore` puts it back so that a resumed
run continues exactly where the stopped one was.
"""

from typing import Any

import torch

from ppvae import distributed
from ppvae.config import ConfigError
from ppvae.errors import CheckpointError
from ppvae.infer import checkpoint as ckpt
from ppvae.infer.callbacks import TRACKED
from ppvae.infer.loop import Progress, Step

KEYS = ("progress", "config", "run", "model", "guide", "params", "optim", "rng")
"""What every checkpoint written by :func:`state` holds (``run`` is None from a plain fit)."""


def state(
    progress: Progress, model, guide, step: Step, config, run_info: dict | None = None, aux=()
) -> dict[str, Any]:
    """Everything a checkpoint holds; ``run_info`` is the caller's record of the whole run, in
    plain values (``ppvae train`` stores its RunConfig and the data sizes). The auxiliary
    pairs' parameters are in the param store; their modules' state dicts (buffers too) are
    kept under ``aux``, one (model, guide) pair of state dicts or None per pair."""
    return {
        "aux": [[_state_dict(m), _state_dict(g)] for m, g, _ in aux],
        "progress": vars(progress),
        "config": config.to_dict(),
        "run": run_info,
        "model": model.state_dict() if isinstance(model, torch.nn.Module) else None,
        "guide": guide.state_dict() if isinstance(guide, torch.nn.Module) else None,
        "params": ckpt.store_state(),
        "optim": step.state_dict(),
        "rng": _rng_states(),
    }


def _state_dict(obj) -> dict | None:
    return obj.state_dict() if isinstance(obj, torch.nn.Module) else None


def _rng_states():
    """This process's random state; under torch.distributed, every rank's, in rank order."""
    if distributed.ranks().world == 1:
        return ckpt.rng_state()
    return distributed.gather_objects(ckpt.rng_state())


def _set_rng_states(saved, path) -> None:
    rank, world = distributed.ranks()
    if isinstance(saved, dict) and world == 1:
        return ckpt.set_rng_state(saved)
    written = len(saved) if isinstance(saved, list) else 1
    if written != world:
        raise ConfigError(
            f"{path} was written by {written} process(es): resume it with {written} "
            f"(torchrun --nproc-per-node {written}), not {world}"
        )
    ckpt.set_rng_state(saved[rank])


def check_compatible(saved: dict[str, Any], config, path) -> None:
    """Raise ConfigError unless ``config`` matches the saved one in everything but epochs and
    jit (which computes the same loss: an old checkpoint's false resumes under auto)."""
    current = config.to_dict()
    differ = sorted(
        k for k, v in saved.items() if k not in ("epochs", "jit") and current.get(k) != v
    )
    if differ:
        raise ConfigError(f"{path} was written with different settings: {', '.join(differ)}")


def load_modules(saved: dict[str, Any], model, guide, path, aux=()) -> None:
    """``load_state_dict`` the saved model and guide (and the auxiliary pairs' modules), after
    checking that every entry's name and shape match (a CheckpointError that names the first
    one that differs)."""
    saved_aux = saved.get("aux") or []
    if "aux" in saved and len(saved_aux) != len(aux):
        raise CheckpointError(
            f"{path} was written with {len(saved_aux)} aux pair(s), this fit has {len(aux)}"
        )
    pairs = [((model, "model"), (guide, "guide"))] + [
        ((m, f"aux {i} model"), (g, f"aux {i} guide")) for i, (m, g, _) in enumerate(aux)
    ]
    states = [(saved.get("model"), saved.get("guide"))] + [tuple(s) for s in saved_aux]
    for objects, kept in zip(pairs, states, strict=False):  # an old checkpoint: no aux
        _load_pair(objects, kept, path)


def _load_pair(objects, kept, path) -> None:
    for (obj, key), state_dict in zip(objects, kept, strict=True):
        if isinstance(obj, torch.nn.Module) and state_dict is not None:
            problem = _first_difference(state_dict, obj.state_dict(), key)
            if problem:
                raise CheckpointError(
                    f"{path} was written for another architecture: its {key} {problem}"
                )
            obj.load_state_dict(state_dict)


def _first_difference(saved: dict[str, Any], current: dict[str, Any], key: str) -> str:
    """How the saved state dict first differs from ``current`` in names or shapes, or ""."""
    for name in sorted(saved.keys() | current.keys()):
        if name not in current:
            return f"has '{name}', which this {key} lacks"
        if name not in saved:
            return f"lacks this {key}'s '{name}'"
        if _shape(saved[name]) != _shape(current[name]):
            return (
                f"has '{name}' of shape {_shape(saved[name])}, this {key} {_shape(current[name])}"
            )
    return ""


def _shape(value) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", ()))


def restore(
    path,
    model,
    guide,
    step: Step,
    config,
    like: torch.Tensor,
    run_info: dict | None = None,
    aux=(),
) -> Progress:
    """Put a checkpoint back: module buffers by ``load_state_dict``, every parameter by copying
    into the tensor the param store already holds (so the networks registered with
    ``pyro.module`` or as ``PyroModule`` train the restored values), on ``like``'s device.
    What callbacks kept in the saved run info (``TRACKED``) is copied into ``run_info``."""
    saved = ckpt.load(path)
    ckpt.require(saved, KEYS, path)
    check_compatible(saved["config"], config, path)
    load_modules(saved, model, guide, path, aux)
    ckpt.restore_params(saved["params"], like)
    step.load_state_dict(saved["optim"])
    _set_rng_states(saved["rng"], path)
    kept = saved["run"].get(TRACKED) if isinstance(saved["run"], dict) else None
    if run_info is not None and kept:
        run_info[TRACKED] = kept
    return Progress(**saved["progress"])
