"""The ``ppvae`` command line: ``train`` (more subcommands register themselves below).

Every choice is a registry key, so ``--help`` lists exactly what exists. Errors in the input
print one line (``ppvae: error: ...``) and exit with status 2; set ``PPVAE_DEBUG=1`` for the
traceback.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ppvae.checker import ModelGuideError
from ppvae.compare import add_compare
from ppvae.config import ArchConfig, ConfigError
from ppvae.data import BINARIZATIONS, DATASETS, DataError
from ppvae.diagnostics import add_gradients
from ppvae.guides import GUIDES
from ppvae.models import MODELS
from ppvae.objectives import OBJECTIVES
from ppvae.train import FitConfig, TrainingError

EXPECTED_ERRORS = (ConfigError, DataError, ModelGuideError, TrainingError)


def _describe(registry) -> str:
    """'key: first docstring line; ...' for a registry of builders."""
    return "; ".join(
        f"{k}: {(v.__doc__ or '').strip().splitlines()[0]}" for k, v in registry.items()
    )


def add_data_args(p: argparse.ArgumentParser) -> None:
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


def add_arch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("architecture")
    a = ArchConfig()
    g.add_argument(
        "--z-dim", type=int, default=a.z_dim, help="latent dimension (default: %(default)s)"
    )
    g.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=list(a.hidden),
        help="MLP hidden sizes (default: %(default)s)",
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
        help="mixture components of the mixture-prior model (default: %(default)s)",
    )


def add_fit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    f = FitConfig()
    g.add_argument(
        "--epochs", type=int, default=None, help=f"passes over the data (default: {f.epochs})"
    )
    g.add_argument("--batch-size", type=int, default=f.batch_size, help="(default: %(default)s)")
    g.add_argument(
        "--lr", type=float, default=f.lr, help="Adam learning rate (default: %(default)s)"
    )
    g.add_argument(
        "--objective", default=f.objective, choices=list(OBJECTIVES), help=_describe_objectives()
    )
    g.add_argument(
        "--num-particles",
        type=int,
        default=f.num_particles,
        help="samples of z per example per step; K for iwae",
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


def _describe_objectives() -> str:
    return "; ".join(f"{k}: {o.description}" for k, o in OBJECTIVES.items())


def arch_config(args) -> ArchConfig:
    return ArchConfig(
        z_dim=args.z_dim,
        hidden=tuple(args.hidden),
        conv=args.conv,
        rank=args.rank,
        flows=args.flows,
        components=args.components,
    )


def fit_config(args, epochs_default: int | None = None) -> FitConfig:
    epochs = args.epochs if args.epochs is not None else (epochs_default or FitConfig().epochs)
    return FitConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        objective=args.objective,
        num_particles=args.num_particles,
        beta=args.beta,
        kl_warmup_epochs=args.kl_warmup_epochs,
        seed=args.seed,
        device=args.device,
    )


def _train(args) -> int:
    from ppvae.run import RunConfig, resumed_config, train

    if args.resume:
        run = resumed_config(args.out, args.epochs)
    else:
        run = RunConfig(
            dataset=args.dataset,
            binarize=args.binarize,
            data_dir=args.data_dir,
            model=args.model,
            guide=args.guide,
            arch=arch_config(args),
            fit=fit_config(args),
            eval_samples=args.eval_samples,
        )
    result = train(run, args.out, resume=args.resume, overwrite=args.overwrite)
    out = Path(args.out)
    if result.fit.interrupted:
        print(f"interrupted; checkpoint saved. Continue with: ppvae train --out {out} --resume")
        return 130
    last = result.fit.history.iloc[-1]
    print(
        f"epoch {int(last.epoch)}: train ELBO {last.train_elbo:.2f}, "
        f"test ELBO {last.test_elbo:.2f} nats per example"
    )
    if result.metrics is not None:
        m = result.metrics.iloc[0]
        k = int(m.num_samples)
        print(f"test log p(x) ~ {m.log_px:.2f} +- {m.log_px_stderr:.3f} nats (K={k})")
    print(f"outputs in {out}/: " + ", ".join(sorted({p.name for p in result.files})))
    return 0


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model and guide by SVI and write a run directory",
        description="Train a VAE (model + guide) by SVI. Writes config.json, history.csv, "
        "checkpoint.pt, metrics.csv and PNG pictures to --out. Ctrl-C saves a checkpoint; "
        "--resume continues it (with the saved settings; --epochs may extend the run).",
    )
    add_data_args(p)
    g = p.add_argument_group("model and guide")
    g.add_argument("--model", default="bernoulli", choices=list(MODELS), help=_describe(MODELS))
    g.add_argument("--guide", default="diag", choices=list(GUIDES), help=_describe(GUIDES))
    add_arch_args(p)
    add_fit_args(p)
    g = p.add_argument_group("output")
    g.add_argument("--out", default="runs/demo", help="run directory (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument(
        "--eval-samples",
        type=int,
        default=1000,
        help="K for the importance-sampled test log p(x) (default: %(default)s)",
    )
    p.set_defaults(func=_train)


SUBCOMMANDS = [add_train, add_gradients, add_compare]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ppvae",
        description="Variational autoencoders as Pyro models and guides, with PPCA as the oracle.",
        epilog="Run 'ppvae <command> --help' for the options of a command.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="<command>")
    for add in SUBCOMMANDS:
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ppvae`` console script."""
    p = parser()
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except EXPECTED_ERRORS as err:
        if os.environ.get("PPVAE_DEBUG"):
            raise
        print(f"ppvae: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ppvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
