"""Checkpoints of a training run: what they hold, and putting them back for an exact resume.

A checkpoint holds the progress (epoch, step, the epoch's losses so far, the history), the
config, the modules' state dicts, Pyro's param store, the optimizer's state and the random
state (every rank's, under torch.distributed). :func:`restore` puts it back so that a resumed
run continues exactly where the stopped one was.
"""

from typing import Any

import torch

from ppvae import distributed
from ppvae.config import ConfigError
from ppvae.infer import checkpoint as ckpt
from ppvae.infer.loop import Step, _Progress


def state(progress: _Progress, model, guide, step: Step, config) -> dict[str, Any]:
    """Everything a checkpoint holds."""
    return {
        "progress": vars(progress),
        "config": config.to_dict(),
        "model": model.state_dict() if isinstance(model, torch.nn.Module) else None,
        "guide": guide.state_dict() if isinstance(guide, torch.nn.Module) else None,
        "params": ckpt.store_state(),
        "optim": step.state_dict(),
        "rng": _rng_states(),
    }


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
    """Raise ConfigError unless ``config`` matches the saved one in everything but epochs."""
    current = config.to_dict()
    differ = sorted(k for k, v in saved.items() if k != "epochs" and current.get(k) != v)
    if differ:
        raise ConfigError(f"{path} was written with different settings: {', '.join(differ)}")


def restore(path, model, guide, step: Step, config, like: torch.Tensor) -> _Progress:
    """Put a checkpoint back: module buffers by ``load_state_dict``, every parameter by copying
    into the tensor the param store already holds (so the networks registered with
    ``pyro.module`` or as ``PyroModule`` train the restored values), on ``like``'s device."""
    saved = ckpt.load(path)
    check_compatible(saved["config"], config, path)
    for obj, key in ((model, "model"), (guide, "guide")):
        if isinstance(obj, torch.nn.Module) and saved.get(key) is not None:
            obj.load_state_dict(saved[key])
    ckpt.restore_params(saved["params"], like)
    step.load_state_dict(saved["optim"])
    _set_rng_states(saved["rng"], path)
    return _Progress(**saved["progress"])
