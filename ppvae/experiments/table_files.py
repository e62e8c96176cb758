"""A comparison table's files: ``<out>/<stem>.csv`` and ``.md``, written atomically after every
row, and ``.json``, the settings that made it, which ``--resume`` checks."""

import os
from pathlib import Path

import pandas as pd

from ppvae.config import ConfigError, atomic_write_text
from ppvae.data import Dataset
from ppvae.errors import first_line
from ppvae.experiments import compare_labels
from ppvae.experiments.compare import CompareConfig
from ppvae.experiments.rows import Split
from ppvae.outputs import make_dir


def caption(config: CompareConfig, split: Split | Dataset) -> str:
    """One line stating the data, the dequantization and the settings behind a table (``split``
    is :func:`~ppvae.experiments.rows.prepare`'s, or with labels or quadrants
    :func:`~ppvae.experiments.compare_labels.table_data`'s)."""
    if config.labels or config.quadrants:
        return compare_labels.caption(config, split)
    dequant = f"uniformly dequantized ({split.levels} levels)" if split.levels else "continuous"
    missing = (
        f", {config.missing_rate:.0%} of entries missing completely at random (train and "
        f"test), VAE on the MIWAE bound with K={config.num_particles}"
        if config.missing_rate
        else ""
    )
    return (
        f"{config.dataset}, {dequant}{missing}, "
        f"train/test {len(split.train)}/{len(split.test)} rows; "
        f"z_dim={config.z_dim}, mixture K={config.components}, VAE hidden={list(config.hidden)}, "
        f"SVI {config.epochs} epochs (batch {config.batch_size}, lr {config.lr}), "
        f"EM tol {config.em_tol} (at most {config.em_max_iter} iterations), "
        f"IS K={config.eval_samples}, seed {config.seed}. "
        f"log p(x{'_obs' if config.missing_rate else ''}) and ELBO in nats per test example; "
        f"fit_seconds on {split.train.device.type}."
    )


def check_stem(stem: str) -> str:
    """Raise ConfigError unless ``stem`` is a plain file name (the folder goes in ``out``)."""
    separators = [sep for sep in (os.sep, os.altsep, "/") if sep]
    if not stem or stem in (".", "..") or any(sep in stem for sep in separators):
        raise ConfigError(
            f"--stem {stem[:80]!r} must be a file name, not a path: put the folder in --out"
        )
    return stem


def table_paths(out: str | Path, stem: str = "compare") -> tuple[Path, Path, Path]:
    """``<out>/<stem>.csv``, ``.md`` and ``.json`` (the config that made the table)."""
    out = Path(out)
    return tuple(out / f"{check_stem(stem)}{ext}" for ext in (".csv", ".md", ".json"))


def write(
    frame: pd.DataFrame,
    out: str | Path,
    markdown: str,
    stem: str = "compare",
    config: CompareConfig | None = None,
) -> list[Path]:
    """Write ``<out>/<stem>.csv``, ``markdown`` (see :func:`ppvae.experiments.compare.to_markdown`)
    as ``<out>/<stem>.md`` and, with ``config``, ``<out>/<stem>.json`` (what
    :func:`resume_table` checks), each atomically; returns their paths."""
    csv, md, saved = table_paths(out, stem)
    texts = {csv: frame.to_csv(index=False), md: markdown}
    if config is not None:
        texts[saved] = config.to_json() + "\n"
    make_dir(Path(out))
    for path, text in texts.items():
        atomic_write_text(path, text)
    return list(texts)


def resume_table(out: str | Path, stem: str, config: CompareConfig) -> pd.DataFrame:
    """The table saved in ``out`` under ``stem`` (by :func:`write` with its config), to pass
    to :func:`ppvae.experiments.compare.compare` as ``done``.

    Raises
    ------
    ConfigError
        When there is no such table, it cannot be read, or it was made with other settings
        (the message names them).
    """
    csv, _, saved = table_paths(out, stem)
    for path in (saved, csv):
        if not path.is_file():
            raise ConfigError(f"nothing to resume: {path} does not exist")
    old, new = CompareConfig.load(saved).leaves(), config.leaves()
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        changes = ", ".join(f"{k} {new.get(k)!r} (saved {old.get(k)!r})" for k in differ)
        raise ConfigError(
            f"--resume continues the table {csv} with its saved settings, but {changes}"[:300]
        )
    try:
        done = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {csv}: {first_line(err)}") from None
    if not {"method", "status"} <= set(done.columns):
        raise ConfigError(f"{csv} has no method and status columns: not a table to resume")
    return done
