"""The errors ppvae raises for mistakes in what it is given: one type per kind of mistake.

Each says, in one line, what is wrong and what to change; the command line prints that line
and exits with status 2 (``--debug`` shows the traceback). All derive from :class:`PPVAEError`
and from the built-in type a Python caller would expect (``ValueError``, ``RuntimeError``,
``OSError``), so ``except ValueError`` keeps working.

Examples
--------
>>> issubclass(ConfigError, PPVAEError) and issubclass(ConfigError, ValueError)
True
"""


class PPVAEError(Exception):
    """A mistake in ppvae's input, explained in one line (the base of the ones below).

    ``every_rank`` says whether, under torch.distributed, every rank meets the same error
    (then rank 0 alone reports it) or one rank may meet it alone (then that rank says so).
    """

    every_rank = True

    def __init__(self, *args, every_rank: bool | None = None):
        super().__init__(*args)
        if every_rank is not None:
            self.every_rank = every_rank


class ConfigError(PPVAEError, ValueError):
    """A config file or value that cannot be used; the message says which field and why."""


class DataError(PPVAEError, ValueError):
    """A dataset is missing or corrupt, or data is not what a model needs."""


class ModelGuideError(PPVAEError, ValueError):
    """The model and guide cannot be trained together; the message lists what to change."""


class TrainingError(PPVAEError, RuntimeError):
    """Training cannot go on (a non-finite loss); the message names the epoch and step."""

    every_rank = False  # a step can fail on one rank; the loss checks raise on every rank


class CheckpointError(PPVAEError, ValueError):
    """A checkpoint that cannot be read (truncated, empty, foreign, or unsafe to load)."""


class OutputError(PPVAEError, OSError):
    """An output that cannot be written (a file where a folder should be, no permission, a
    full disk); what was written before stays as it was."""

    every_rank = False  # rank 0 alone writes


SHOWN_LIMIT = 80
"""Characters of a user's value that an error message echoes (:func:`shown`)."""


def shown(value, limit: int = SHOWN_LIMIT) -> str:
    """``value`` for an error message, cut to ``limit`` characters: a 20 MB name is not echoed
    whole, and a newline in it cannot break the message's one line. A string is quoted; any
    other value is shown as Python writes it (``3``, ``[1, 2]``).

    Examples
    --------
    >>> shown("bernouli")
    "'bernouli'"
    >>> shown("a" * 100, limit=4)
    "'aaaa…' (100 characters)"
    >>> shown(3), shown([1, 2])
    ('3', '[1, 2]')
    """
    if not isinstance(value, str):
        text = " ".join(repr(value).split())
        return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
    if len(value) <= limit:
        return repr(value)
    quoted = repr(value[:limit])
    return f"{quoted[:-1]}…{quoted[-1]} ({len(value)} characters)"


def first_line(err: BaseException) -> str:
    """The first line of an error's message (Pyro and torch append dumps), or its type's name."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class DivergenceWarning(UserWarning):
    """A run or a fitted row ended far below a baseline that needs no training: it diverged.
    The command line prints it as one line, ``ppvae: warning: ...``."""


class DiagramError(PPVAEError, RuntimeError):
    """A diagram cannot be drawn: Graphviz is missing, or the format is unknown; the message
    says what to install or choose."""


class DiagramWarning(UserWarning):
    """A diagram a command draws on the side (``ppvae train``'s ``model.svg``) was not drawn;
    the command goes on. The command line prints it as one line, ``ppvae: warning: ...``."""
