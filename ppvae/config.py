"""Frozen, typed configs with a JSON round trip (the pythae pattern, without string switches).

Names that pick a model, guide, objective or data set are keys of the registries
(``ppvae.models.MODELS``, ``ppvae.guides.GUIDES``, ``ppvae.pairs.objectives.OBJECTIVES``,
``ppvae.data.DATASETS``); a config only records which key was chosen.
"""

import dataclasses
import json
import math
import os
import re
import stat
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ppvae.errors import (
    ConfigError,  # its historical home: importable from here too
    PPVAEError,
    first_line,
    shown,
)

C = TypeVar("C", bound="JsonConfig")

MAX_JSON_BYTES = 1 << 20
"""The largest JSON file ppvae reads (a run's config.json is about 1 KiB)."""

MAX_JSON_DEPTH = 64
"""The deepest nesting of objects and lists ppvae parses (a config nests 2 deep)."""


class JsonConfig:
    """Mixin for frozen dataclasses: ``to_dict``/``from_dict`` and ``save``/``load`` as JSON.

    Nested config fields are rebuilt from their type hints; tuples come back as tuples.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True, kw_only=True)
    ... class Sizes(JsonConfig):
    ...     hidden: tuple[int, ...] = (400,)
    >>> Sizes.from_json(Sizes(hidden=(8, 4)).to_json())
    Sizes(hidden=(8, 4))
    """

    def check_types(self) -> None:
        """Raise ConfigError unless every field holds its declared type (an int is no float's
        stand-in for an int field, nor a bool; floats are finite; None only where allowed).

        Configs call it first in ``__post_init__``, so a JSON file is checked like arguments.
        """
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            problem = _type_problem(hints[f.name], getattr(self, f.name))
            if problem:
                raise ConfigError(
                    f"{type(self).__name__}: {f.name} must be {problem}, "
                    f"got {getattr(self, f.name)!r}"
                )

    def leaves(self) -> dict[str, Any]:
        """Every field by dotted name (``{"fit.lr": 0.003, ...}``), lists as tuples.

        Examples
        --------
        >>> from ppvae.experiments.run_config import RunConfig
        >>> RunConfig().leaves()["arch.hidden"]
        (400,)
        """
        return dotted(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (nested configs as dicts), ready for JSON."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """The config from :meth:`to_dict`'s dict; an unknown field or a wrong type raises
        :class:`~ppvae.config.ConfigError`."""
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if not isinstance(data, dict):
            raise ConfigError(
                f"{cls.__name__}: expected a JSON object of fields, got {shown(data)}"
            )
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {shown(', '.join(unknown))}")
        kwargs = {name: _coerce(hints[name], value) for name, value in data.items()}
        return cls(**kwargs)

    def to_json(self) -> str:
        """The config as indented JSON with sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        """The config from :meth:`to_json`'s text."""
        return cls.from_dict(parse_json(text, what=f"{cls.__name__} JSON"))

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON atomically (temporary file, then ``os.replace``)."""
        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        """Read the config from a JSON file (see :func:`read_json` for what is refused)."""
        try:
            return cls.from_dict(read_json(path, what=f"{cls.__name__} file"))
        except TypeError as err:
            raise ConfigError(f"cannot read {cls.__name__} from {path}: {err}") from None


def open_regular(
    path: str | os.PathLike, *, what: str = "file", error: type[PPVAEError] = ConfigError
):
    """Open ``path`` for binary reading if it is a regular file, else raise ``error``.

    The file is opened without blocking and checked before a byte is read, so a FIFO (which
    would wait for a writer forever), a device or a folder is refused in one line.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as err:
        raise error(f"cannot read {what} {path}: {first_line(err)}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else None
        raise error(f"{what} {path} is {kind or 'not a regular file'}: ppvae reads only files")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> Any:
    """Parse a JSON file ppvae did not just write: only a regular file, at most
    :data:`MAX_JSON_BYTES` bytes and :data:`MAX_JSON_DEPTH` levels deep.

    Raises
    ------
    ConfigError
        In one line, when the file is missing, not a regular file, too large, too deep, or
        not JSON.
    """
    with open_regular(path, what=what) as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    return parse_json(raw, what=f"{what} {path}")


def parse_json(text: str | bytes, *, what: str = "JSON") -> Any:
    """``json.loads`` within :data:`MAX_JSON_BYTES` and :data:`MAX_JSON_DEPTH`; every
    failure is one ConfigError line.

    Examples
    --------
    >>> parse_json("[" * 100_000)
    Traceback (most recent call last):
    ...
    ppvae.errors.ConfigError: JSON nests over 64 levels: not a ppvae file
    """
    if len(text) > MAX_JSON_BYTES:
        raise ConfigError(f"{what} is over {MAX_JSON_BYTES >> 10} KiB: not a ppvae file")
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if _depth(text) > MAX_JSON_DEPTH:
            raise ConfigError(f"{what} nests over {MAX_JSON_DEPTH} levels: not a ppvae file")
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{what} is not valid JSON: {first_line(err)}") from None


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


def _depth(text: str) -> int:
    """How deep ``text``'s brackets nest, outside strings (an upper bound on the JSON depth)."""
    depth = deepest = 0
    for char in re.sub(r"[^\[\]{}]", "", _STRINGS.sub("", text)):
        depth += 1 if char in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def dotted(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of nested dicts by dotted name, lists as tuples."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= dotted(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = tuple(value) if isinstance(value, list | tuple) else value
    return flat


def _type_problem(hint: Any, value: Any) -> str:
    """What ``value`` should be for type ``hint``, or "" when it is that."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return ""
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        return "true or false" if not isinstance(value, bool) else ""
    if hint is int:
        return "an integer" if isinstance(value, bool) or not isinstance(value, int) else ""
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "a number"
        return "a finite number" if not math.isfinite(value) else ""
    if hint is str:
        return "a string" if not isinstance(value, str) else ""
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        ok = isinstance(value, tuple) and not any(_type_problem(item, v) for v in value)
        return "a list of integers" if not ok else ""
    if isinstance(hint, type) and not isinstance(value, hint):
        return f"a {hint.__name__}"
    return ""


def _coerce(hint: Any, value: Any) -> Any:
    if isinstance(hint, type) and issubclass(hint, JsonConfig) and isinstance(value, dict):
        return hint.from_dict(value)
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def atomic_write_text(path: Path, text: str | bytes) -> None:
    """Write ``text`` (or bytes) to ``path`` so that readers see the old file or the new one,
    never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True, kw_only=True)
class ArchConfig(JsonConfig):
    """Sizes of the networks a model or guide is built with.

    Attributes
    ----------
    z_dim : int
        Latent dimension q.
    hidden : tuple of int
        Hidden layer sizes of the MLP encoder and decoder (the decoder mirrors them).
    conv : bool
        Use the small conv nets instead of MLPs (image data only).
    rank : int
        Rank of the low-rank covariance guide.
    flows : int
        Number of conditional autoregressive transforms in the flow guide.
    context_dim : int
        Size of the per-datapoint context that conditions the flow guide's transforms.
    components : int
        Mixture components of the mixture-prior model.

    Examples
    --------
    >>> a = ArchConfig(z_dim=2, hidden=(64, 32))
    >>> ArchConfig.from_json(a.to_json()) == a
    True
    """

    z_dim: int = 2
    hidden: tuple[int, ...] = (400,)
    conv: bool = False
    rank: int = 2
    flows: int = 2
    context_dim: int = 16
    components: int = 10

    def __post_init__(self):
        self.check_types()
        for name in ("z_dim", "rank", "flows", "context_dim", "components"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be >= 1, got {self.hidden}")


class DataShape(typing.NamedTuple):
    """What a model or guide builder needs to know about the data.

    Attributes
    ----------
    x_dim : int
        D, the length of a (flattened) example.
    image_shape : tuple of int or None
        (C, H, W) for images, None otherwise.
    num_data : int
        N, the number of training examples (per-datapoint guides keep N parameter rows).
    missing : bool
        The data has missing entries (NaN): models are built to leave them out of the
        likelihood.
    classes : int or None
        C, the number of classes of labelled data (semi-supervised models), else None.
    """

    x_dim: int
    image_shape: tuple[int, ...] | None
    num_data: int
    missing: bool = False
    classes: int | None = None
