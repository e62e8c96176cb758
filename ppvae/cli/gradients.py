"""``ppvae gradients``: reparameterized, score-function and baseline gradient estimators of the
ELBO, side by side on one fixed minibatch."""

import argparse
from pathlib import Path

import torch

from ppvae.cli.common import add_arch_args, add_data_args, arch_config, describe, holding_out
from ppvae.config import ConfigError, DataShape
from ppvae.data import load_dataset
from ppvae.experiments.gradients import (
    check_estimates,
    gradient_estimates,
    gradient_table,
    to_markdown,
    write_outputs,
)
from ppvae.guides import GUIDES
from ppvae.infer.fitting import FitConfig, fit, resolve_device
from ppvae.models import MODELS
from ppvae.outputs import check_output_dir
from ppvae.pairs.checker import check
from ppvae.pairs.objectives import OBJECTIVES


def _build_pair(args: argparse.Namespace, data):
    arch = arch_config(args)
    shape = DataShape(data.train.shape[1], data.image_shape, data.train.shape[0])
    model = MODELS[args.model](arch, shape)
    guide = GUIDES[args.guide](arch, shape, model)
    if not [p for p in guide.parameters() if p.requires_grad]:
        raise ConfigError(f"the guide '{args.guide}' has no parameters to take gradients of")
    return model, guide


def _at_realistic_point(args: argparse.Namespace, data, model, guide) -> torch.Tensor:
    """Train briefly if asked (``fit`` checks the pair), and return the fixed minibatch."""
    device = resolve_device(args.device)
    b = min(args.batch_size, data.train.shape[0])
    if args.train_epochs:
        config = FitConfig(
            epochs=args.train_epochs, batch_size=b, seed=args.seed, device=args.device
        )
        fit(model, guide, data, config, progress=False)
    for m in (model, guide):
        m.to(device)
    x = data.train[:b].to(device)
    check(model, guide, x, idx=torch.arange(b, device=device), objective="trace")
    return x


def run(args: argparse.Namespace, given: set[str]) -> int:
    if args.batch_size < 1 or args.train_epochs < 0:
        raise ConfigError("batch-size must be >= 1 and train-epochs >= 0")
    check_estimates(args.objectives, args.num_estimates, args.warmup)
    check_output_dir(args.out)
    data = load_dataset(
        args.dataset, data_dir=args.data_dir, binarize=args.binarize, seed=args.seed
    )
    model, guide = _build_pair(args, data)
    x = _at_realistic_point(args, data, model, guide)
    moments = gradient_estimates(
        model,
        guide,
        x,
        idx=torch.arange(x.shape[0], device=x.device),
        objectives=args.objectives,
        num_estimates=args.num_estimates,
        warmup=args.warmup,
        seed=args.seed,
    )
    table = gradient_table(moments)
    files = write_outputs(table, Path(args.out))
    print(to_markdown(table[table["group"] == "total"]), end="")
    print(f"outputs in {args.out}/: " + ", ".join(f.name for f in files))
    return 0


def add(sub) -> None:
    """Register ``ppvae gradients``."""
    p = sub.add_parser(
        "gradients",
        allow_abbrev=False,
        help="compare gradient estimators (reparameterized, score function, baseline)",
        description="Draw many estimates of the ELBO gradient w.r.t. the guide's parameters "
        "on one fixed minibatch, per estimator, and write gradients.csv, gradients.md and "
        "gradients.png to --out: mean norm, total variance and signal-to-noise ratio per "
        "parameter group.",
    )
    add_data_args(p)
    g = p.add_argument_group("model and guide")
    g.add_argument("--model", default="bernoulli", choices=list(MODELS), help=describe(MODELS))
    g.add_argument("--guide", default="diag", choices=list(GUIDES), help=describe(GUIDES))
    add_arch_args(p)
    _add_estimate_args(p)
    p.set_defaults(func=holding_out(run), parser=p)


def _add_estimate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("estimates")
    g.add_argument(
        "--objectives",
        nargs="+",
        default=["trace", "score", "score-baseline"],
        choices=list(OBJECTIVES),
        help="the estimators to compare (default: %(default)s)",
    )
    g.add_argument("--num-estimates", type=int, default=200, help="(default: %(default)s)")
    g.add_argument(
        "--warmup", type=int, default=50, help="estimates discarded to settle a baseline"
    )
    g.add_argument("--batch-size", type=int, default=64, help="the fixed minibatch's size")
    g.add_argument(
        "--train-epochs",
        type=int,
        default=0,
        help="first train the pair this many epochs, so gradients are taken at a realistic "
        "point (default: 0, at initialization)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default: cpu)")
    g.add_argument("--out", default="runs/gradients", help="output directory")
