"""A run folder read back: ``config.json`` checked field by field against the run its checkpoint
carries (the checkpoint is trusted), the data checked against the sizes it was trained on, and
:func:`load_run`, which rebuilds the trained run in one line.
"""

import os
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch

from ppvae.config import (
    ConfigError,
    open_regular,
    read_json,
)
from ppvae.data import Dataset
from ppvae.errors import (
    CheckpointError,
    DataError,
    PPVAEError,
    first_line,
    shown,
)
from ppvae.experiments.run_config import CHECKPOINT, CONFIG, HISTORY, RunConfig, build, load_data
from ppvae.infer import checkpoint as ckpt
from ppvae.infer.fitting import resolve_device
from ppvae.infer.resume import KEYS, load_modules
from ppvae.pairs import place


def check_same_run(saved: RunConfig, run: RunConfig, out: Path) -> None:
    """Resume continues the run in ``out`` as it was: only ``fit.epochs`` may differ."""
    old, new = saved.leaves(), run.leaves()
    differ = sorted(k for k in old if k != "fit.epochs" and old[k] != new.get(k))
    if differ:
        changes = ", ".join(f"{k} {new.get(k)!r} (saved {old[k]!r})" for k in differ)
        raise ConfigError(
            f"resume continues the run in {out} as it was, and only fit.epochs may change, "
            f"but {changes}"
        )


MAY_CHANGE = ("fit.epochs", "data_dir")
"""config.json fields that may differ from the checkpoint's: a resume that stopped before it
finished leaves the new epochs in the checkpoint alone, and the data may move to a new folder."""


def sizes_of(x) -> list:
    """The shape of a data tensor as a list, or of each tensor of a tuple (list of lists)."""
    if isinstance(x, tuple | list):
        return [list(t.shape) for t in x]
    return list(x.shape)


def run_info(run: RunConfig, data: Dataset) -> dict:
    """What a run's checkpoint records of the run, in plain values: its config and data sizes."""
    sizes = {"train": sizes_of(data.train), "test": sizes_of(data.test)}
    return {"config": run.to_dict(), "data": sizes}


def saved_config(out: str | os.PathLike) -> RunConfig:
    """The config of the run in ``out`` (what ``--resume`` continues), once config.json is
    checked against the run config its checkpoint carries (see :func:`load_run`)."""
    out = Path(out)
    for name in (CONFIG, CHECKPOINT):
        if not os.path.lexists(out / name):
            raise ConfigError(f"nothing to resume: {out / name} does not exist")
    return saved_run(out)[0]


def saved_run(out: Path) -> tuple[RunConfig, dict]:
    """The run in ``out``: its config, once config.json is checked against the checkpoint's
    record of the run, and the checkpoint."""
    written = read_json(out / CONFIG, what="the run's config")
    saved = ckpt.load(out / CHECKPOINT)
    ckpt.require(saved, KEYS, out / CHECKPOINT)
    info = saved["run"]
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise CheckpointError(
            f"{out / CHECKPOINT} holds no run config: it was written by fit(checkpoint=...), "
            "not ppvae train; resume it with fit(..., resume=True)"
        )
    if not isinstance(written, dict):
        raise ConfigError(f"{out / CONFIG} must hold a JSON object, got {shown(written)}")
    problems = list(_differences(written, info["config"]))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(
            f"{out / CONFIG} does not match the run in {CHECKPOINT}: {problems[0]}{more}; put "
            "config.json back as it was, or train a new run"
        )
    return RunConfig.from_dict(written), saved


def _differences(written: dict, saved: dict, prefix: str = ""):
    """Each way config.json (``written``) differs from the checkpoint's config (``saved``)."""
    for key, value in saved.items():
        name = prefix + key
        if key not in written:
            yield f"{name} is missing (the checkpoint has {shown(value)})"
        elif isinstance(value, dict) and isinstance(written[key], dict):
            yield from _differences(written[key], value, f"{name}.")
        elif name not in MAY_CHANGE and _plain(written[key]) != _plain(value):
            yield f"{name} is {shown(written[key])}, the checkpoint's {shown(value)}"
    for key in sorted(written.keys() - saved.keys()):
        yield f"{prefix}{key} is not in the checkpoint's config"


def _plain(value):
    """A JSON value as the checkpoint holds it (lists as tuples); 1 and True stay apart."""
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return (type(value) is bool, value)


def check_data(info: dict, data: Dataset, out: Path) -> None:
    """DataError unless the data loaded now has the sizes the run was trained on."""
    sizes = info.get("data") or {}
    for split in ("train", "test"):
        now = sizes_of(getattr(data, split))
        if split in sizes and list(sizes[split]) != now:
            raise DataError(
                f"the run in {out} was trained on {split} data of shape {tuple(sizes[split])}, "
                f"but its data set now loads as {tuple(now)}: put the run's data back"
            )


class LoadedRun(NamedTuple):
    """A saved run, back with its trained parameters (see :func:`load_run`).

    Attributes
    ----------
    config : RunConfig
    model, guide
        Built from ``config`` by the registries, holding the checkpoint's parameters (also in
        Pyro's param store, under their names).
    data : Dataset
        The run's data, as :func:`load_data` gives it.
    history : DataFrame
        One row per epoch trained so far.
    """

    config: RunConfig
    model: torch.nn.Module
    guide: torch.nn.Module
    data: Dataset
    history: pd.DataFrame


def load_run(out: str | os.PathLike, *, device: str = "cpu") -> LoadedRun:
    """Load the run saved in ``out`` (``ppvae train --out``): config, model, guide, data, history.

    The model and guide are rebuilt from ``config.json`` and get the parameters of
    ``checkpoint.pt`` (the last finished epoch, or where Ctrl-C stopped), on ``device``::

        run = ppvae.load_run("runs/demo")
        ppvae.evaluate(run.model, run.guide, run.data.test)

    ``config.json`` must match the run config the checkpoint carries, field for field (only
    ``fit.epochs`` and ``data_dir`` may differ), and the data must load with the sizes the run
    was trained on: an edited or incomplete config is refused, never used.

    Raises
    ------
    ConfigError
        When ``out`` holds no run, config.json cannot be read (only a regular file of plain
        JSON is), or it differs from the checkpoint's config (the message names the field).
    CheckpointError
        When the checkpoint cannot be read, is of another format version, holds no run config,
        or was written for another architecture.
    DataError
        When the data set no longer loads with the sizes the run was trained on.
    """
    out = Path(out)
    if not os.path.lexists(out / CHECKPOINT):
        raise ConfigError(f"no run in {out}: {out / CHECKPOINT} does not exist")
    run, saved = saved_run(out)
    data = load_data(run)
    check_data(saved["run"], data, out)
    model, guide = build(run, data)
    like = data.train[:2].to(resolve_device(device))
    place(model, guide, data.train[:2], like.device, run.fit.plate)
    try:
        load_modules(saved, model, guide, out / CHECKPOINT)
        ckpt.restore_params(saved["params"], like)
    except PPVAEError:
        raise
    except (ValueError, RuntimeError, KeyError) as err:
        raise ConfigError(f"cannot load the run in {out}: {first_line(err)}") from None
    return LoadedRun(run, model, guide, data, _history(out))


def _history(out: Path) -> pd.DataFrame:
    if not os.path.lexists(out / HISTORY):
        return pd.DataFrame()
    with open_regular(out / HISTORY, what="the run's history") as f:
        try:
            return pd.read_csv(f)
        except ValueError as err:  # pandas' parser errors and bad bytes are ValueErrors
            raise ConfigError(f"cannot read {out / HISTORY}: {first_line(err)}") from None
