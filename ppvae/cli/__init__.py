"""The ``ppvae`` command line: one module per subcommand, shared argument helpers in ``common``.

Every choice is a registry key, so ``--help`` lists exactly what exists. A mistake in the input
prints one line (``ppvae: error: ...``) and exits with status 2; ``--debug`` (or
``PPVAE_DEBUG=1``) shows the traceback instead. Ctrl-C exits with 130.
"""

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from ppvae.cli import compare, gradients, train
from ppvae.cli.common import Parser, provided
from ppvae.distributed import main_process, rank_label
from ppvae.errors import DivergenceWarning, PPVAEError, first_line

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
    if issubclass(category, DivergenceWarning):
        return f"ppvae: warning: {first_line(message)}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PYTHON_FORMAT = warnings.formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ppvae`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    debug = args.debug or bool(os.environ.get("PPVAE_DEBUG"))
    warnings.formatwarning = _format_warning
    try:
        return args.func(args, provided(args.parser, argv))
    except PPVAEError as err:
        if debug:
            raise
        # under torchrun every rank finds a mistake in the input, and rank 0 says it; an
        # error one rank can meet alone (a failed step) that rank says
        if main_process() or not err.every_rank:
            print(f"ppvae: error: {rank_label()}{first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ppvae: interrupted", file=sys.stderr)
        return 130
