"""The ``ppvae`` command line: one module per subcommand, shared argument helpers in ``common``.

Every choice is a registry key, so ``--help`` lists exactly what exists. A mistake in the input
prints one line (``ppvae: error: ...``) and exits with status 2; ``--debug`` (or
``PPVAE_DEBUG=1``) shows the traceback instead. Ctrl-C exits with 130. Under torchrun the line
is also this worker's error file, so torchrun's summary of the failed workers shows it.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence

from ppvae.cli import compare, gradients, train
from ppvae.cli.common import Parser, provided
from ppvae.distributed import main_process, rank_label
from ppvae.errors import DiagramWarning, DivergenceWarning, PPVAEError, first_line
from ppvae.infer.callbacks import CallbackWarning

SUBCOMMANDS = [train.add, gradients.add, compare.add]


def parser() -> argparse.ArgumentParser:
    from ppvae import __version__

    p = Parser(
        prog="ppvae",
        allow_abbrev=False,
        description="Variational autoencoders as Pyro models and guides, with PPCA as the oracle.",
        epilog="Run 'ppvae <command> --help' for the options of a command.",
    )
    p.add_argument("--version", action="version", version=f"ppvae {__version__}")
    p.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not one line"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="<command>")
    for add in SUBCOMMANDS:
        add(sub)
    return p


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """ppvae's own warnings as one line, ``ppvae: warning: ...``; others as Python has them."""
    if issubclass(category, DivergenceWarning | CallbackWarning | DiagramWarning):
        return f"ppvae: warning: {first_line(message)}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PYTHON_FORMAT = warnings.formatwarning


def _for_torchrun(line: str) -> None:
    """Under torchrun, write ``line`` as this worker's error (``TORCHELASTIC_ERROR_FILE``, in
    the format of torch's ``@record``): torchrun's summary of the failed workers then shows it
    as their ``traceback``, in place of a link to its documentation."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with contextlib.suppress(OSError), open(path, "w") as file:
            json.dump({"message": line, "timestamp": int(time.time())}, file)


def _parsed(argv: list[str]) -> argparse.Namespace:
    """The parsed arguments; the one line of a mistake (the parser prints it on rank 0) also
    goes to torchrun (:func:`_for_torchrun`)."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return parser().parse_args(argv)
    finally:
        sys.stderr.write(said.getvalue())
        if said.getvalue().startswith("ppvae: error:"):
            _for_torchrun(said.getvalue().splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ppvae`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parsed(argv)
    debug = args.debug or bool(os.environ.get("PPVAE_DEBUG"))
    warnings.formatwarning = _format_warning
    try:
        return args.func(args, provided(args.parser, argv))
    except PPVAEError as err:
        if debug:
            raise
        # under torchrun every rank finds a mistake in the input, and rank 0 says it; an
        # error one rank can meet alone (a failed step) that rank says
        line = f"ppvae: error: {rank_label()}{first_line(err)}"
        if main_process() or not err.every_rank:
            print(line, file=sys.stderr)
        _for_torchrun(line)  # every rank's entry in torchrun's summary says it
        return 2
    except KeyboardInterrupt:
        print("ppvae: interrupted", file=sys.stderr)
        return 130
