"""Argument helpers shared by the subcommands: data, architecture and training options, the
configs they build, and which flags a command line gave explicitly."""

import argparse
import difflib
import functools
import re
import sys
from collections.abc import Sequence

from ppvae.config import ArchConfig
from ppvae.data import BINARIZATIONS, DATASETS
from ppvae.distributed import main_process
from ppvae.errors import SHOWN_LIMIT, shown
from ppvae.infer.fitting import FitConfig
from ppvae.outputs import OutputLock, check_output_dir
from ppvae.pairs.objectives import OBJECTIVES


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line, ``ppvae: error: ...``, exit status 2,
    with "did you mean" for a mistyped choice or option and long values cut (:func:`shown`).

    Its subparsers are of this class too. Under torchrun, rank 0 alone prints the line (every
    rank parses the same command line); ``--help`` and ``--version`` are argparse's own.

    Examples
    --------
    >>> p = Parser(prog="ppvae")
    >>> _ = p.add_argument("--model", choices=["bernoulli", "gaussian"])
    >>> p.parse_args(["--model", "gaussian"]).model
    'gaussian'
    >>> unknown_choice("bernouli", ["bernoulli", "gaussian"])  # what a typo gets
    "unknown choice 'bernouli'; did you mean 'bernoulli'? (choices: bernoulli, gaussian)"
    """

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:  # the subcommand's parser (set as a default by each subcommand) names them
            self.error(unrecognized(extras, getattr(namespace, "parser", self)))
        return namespace

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(action, unknown_choice(value, action.choices))

    def error(self, message: str):
        if main_process():
            print(f"ppvae: error: {_cut(message.removeprefix('argument '))}", file=sys.stderr)
        self.exit(2)


def unknown_choice(value, choices) -> str:
    """'unknown choice 'x'; did you mean 'y'? (choices: ...)' for a value not in ``choices``."""
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown choice {shown(value)}{hint} (choices: {', '.join(names)})"


def unrecognized(extras: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """One line for arguments no option takes, with the closest option to the first flag."""
    options = {o.lstrip("-"): o for a in parser._actions for o in a.option_strings}
    flags = [a.split("=", 1)[0].lstrip("-") for a in extras if a.startswith("-")]
    close = difflib.get_close_matches(flags[0], options, n=1) if flags else []
    hint = f"; did you mean {options[close[0]]!r}?" if close else ""
    what = "argument" if len(extras) == 1 else f"{len(extras)} arguments"
    listed = ", ".join(shown(a) for a in extras[:3]) + (", ..." if len(extras) > 3 else "")
    return f"unrecognized {what} {listed}{hint} (see '{parser.prog} --help')"


def _cut(message: str) -> str:
    """argparse's message on one line, with any quoted value longer than SHOWN_LIMIT cut."""
    line = " ".join(message.split())
    return re.sub(rf"'([^'…]{{{SHOWN_LIMIT + 1},}})'", lambda m: shown(m.group(1)), line)


def one_line(text: str) -> str:
    """A docstring's first line as plain help text: no reST backquotes, no final period."""
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return re.sub(r"`+", "", line).rstrip(".")


def describe(registry) -> str:
    """'key: first docstring line; ...' for a registry of builders."""
    return "; ".join(f"{k}: {one_line(v.__doc__)}" for k, v in registry.items())


def describe_objectives() -> str:
    return "; ".join(f"{k}: {one_line(o.description)}" for k, o in OBJECTIVES.items())


def add_data_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The data flags, in a group "data" (returned, for a command's own data flags)."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default="digits",
        choices=list(DATASETS),
        help="(default: digits, embedded, needs no network)",
    )
    g.add_argument(
        "--binarize",
        default="none",
        choices=BINARIZATIONS,
        help="for Bernoulli decoders: none (grey levels), static (x > 0.5), "
        "static-sample (one seeded draw), dynamic (a new draw every epoch)",
    )
    g.add_argument(
        "--data-dir",
        help="root holding the dataset files "
        "(else $PPVAE_DATA_DIR, the Debian package, ~/.cache/ppvae)",
    )
    return g


def add_arch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("architecture")
    a = ArchConfig()
    g.add_argument("--z-dim", type=int, default=a.z_dim, help="latent dimension (%(default)s)")
    g.add_argument(
        "--hidden", type=int, nargs="+", default=list(a.hidden), help="MLP hidden sizes"
    )
    g.add_argument(
        "--conv", action="store_true", help="conv encoder and decoder instead of MLPs (images)"
    )
    g.add_argument("--rank", type=int, default=a.rank, help="rank of the low-rank guide")
    g.add_argument("--flows", type=int, default=a.flows, help="transforms in the flow guide")
    g.add_argument(
        "--components",
        type=int,
        default=a.components,
        help="mixture components of the mixture-prior model (%(default)s)",
    )


def add_fit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    f = FitConfig()
    g.add_argument(
        "--epochs", type=int, default=None, help=f"passes over the data (default: {f.epochs})"
    )
    g.add_argument("--batch-size", type=int, default=f.batch_size, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=f.lr, help="Adam learning rate (%(default)s)")
    g.add_argument(
        "--objective", default=f.objective, choices=list(OBJECTIVES), help=describe_objectives()
    )
    g.add_argument(
        "--num-particles",
        type=int,
        default=f.num_particles,
        help="samples of z per example per step; K for iwae",
    )
    g.add_argument(
        "--jit",
        action="store_const",
        const=True,
        default=None,
        help="compile the training loss (torch.jit.trace): faster steps, same estimator "
        "(default: auto, jit for a catalogue pair on a CPU run of 500 steps or more)",
    )
    g.add_argument(
        "--no-jit", dest="jit", action="store_const", const=False, help="never compile the loss"
    )
    g.add_argument("--beta", type=float, default=f.beta, help="weight of the KL term (beta-VAE)")
    g.add_argument(
        "--kl-warmup-epochs",
        type=int,
        default=f.kl_warmup_epochs,
        help="anneal the KL weight from 0 over this many epochs",
    )
    g.add_argument("--seed", type=int, default=f.seed)
    g.add_argument("--device", default=f.device, help="auto, cpu, cuda or cuda:N (default: auto)")


def arch_config(args) -> ArchConfig:
    return ArchConfig(
        z_dim=args.z_dim,
        hidden=tuple(args.hidden),
        conv=args.conv,
        rank=args.rank,
        flows=args.flows,
        components=args.components,
    )


def fit_config(args) -> FitConfig:
    epochs = args.epochs if args.epochs is not None else FitConfig().epochs
    return FitConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        objective=args.objective,
        num_particles=args.num_particles,
        jit=args.jit,
        beta=args.beta,
        kl_warmup_epochs=args.kl_warmup_epochs,
        seed=args.seed,
        device=args.device,
    )


def provided(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the options that ``argv`` gives explicitly (parsers are built with
    ``allow_abbrev=False``, so an option is one of its own strings or ``--opt=value``)."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    return {a.dest for a in parser._actions if given & set(a.option_strings)}


def holding_out(command):
    """``command(args, given)`` with ``args.out`` checked and held for its whole duration
    (:class:`~ppvae.outputs.OutputLock`): a second command writing the same folder is refused
    in one line before it does any work."""

    @functools.wraps(command)
    def held(args: argparse.Namespace, given: set[str]) -> int:
        out = check_output_dir(args.out)
        with OutputLock(out, str(out), "wait for it to finish, or choose another --out"):
            return command(args, given)

    return held


def add_tracking_args(p: argparse.ArgumentParser) -> None:
    """``--tensorboard DIR`` and ``--mlflow [TRACKING_URI]`` (optional extras)."""
    g = p.add_argument_group("tracking (optional extras: pip install 'ppvae[tensorboard]', ...)")
    g.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="log the run for TensorBoard under DIR: every history column, the config as "
        "hparams, the pictures (open with: tensorboard --logdir DIR)",
    )
    g.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        metavar="TRACKING_URI",
        help="log the run to MLflow: the config as params, metrics per epoch, the outputs as "
        "artifacts (default store: sqlite:///<the folder holding --out>/mlflow.db, no server)",
    )


def trackers(args, name: str, experiment: str) -> list:
    """The trackers the flags ask for; one line naming the pip command if an extra is
    missing, before any work."""
    from ppvae.experiments.trackers import from_flags

    return from_flags(args.tensorboard, args.mlflow, args.out, name, experiment)
