"""``ppvae train``: train a model and guide by SVI and write a run directory."""

import os
from pathlib import Path

from ppvae import distributed
from ppvae.cli.common import (
    add_arch_args,
    add_data_args,
    add_fit_args,
    add_tracking_args,
    arch_config,
    describe,
    fit_config,
    trackers,
)
from ppvae.config import ConfigError
from ppvae.guides import GUIDES
from ppvae.infer.fitting import resolve_device
from ppvae.models import MODELS

KEPT_ON_RESUME = {"out", "resume", "overwrite", "epochs", "debug", "func", "parser", "backend"}
KEPT_ON_RESUME |= {"tensorboard", "mlflow"}
"""Flags a resumed run may be given: everything else is the saved run's own."""


OWN_GUIDE = {"m2": ("m2", "enum"), "cvae": ("cvae", "trace")}
"""The guide and objective a model that takes more than x gets unless --guide/--objective say."""


def _new_config(args, given: set[str] = frozenset()):
    from ppvae.experiments.run_config import RunConfig

    if args.model in OWN_GUIDE:
        guide, objective = OWN_GUIDE[args.model]
        args.guide = args.guide if "guide" in given else guide
        args.objective = args.objective if "objective" in given else objective

    return RunConfig(
        dataset=args.dataset,
        binarize=args.binarize,
        data_dir=args.data_dir,
        model=args.model,
        guide=args.guide,
        arch=arch_config(args),
        fit=fit_config(args),
        eval_samples=args.eval_samples,
        missing_rate=args.missing_rate,
        labels=args.labels,
        quadrants=args.quadrants,
    )


def _flat(config) -> dict:
    """{field name: value} of a RunConfig (its field names are unique across the nesting, and
    a flag's destination is its field's name)."""
    return {k.rsplit(".", 1)[-1]: v for k, v in config.leaves().items()}


def _resumed_config(args, given: set[str]):
    """The saved run's config; only a larger --epochs may change, any other flag is refused."""
    from ppvae.experiments.saved_runs import saved_config

    saved = saved_config(args.out)  # config.json, checked against the checkpoint
    requested, kept = _flat(_new_config(args, given)), _flat(saved)
    changed = sorted(d for d in given - KEPT_ON_RESUME if requested.get(d) != kept.get(d))
    if changed:
        flags = ", ".join(
            f"--{d.replace('_', '-')} {requested[d]} (saved {kept[d]})" for d in changed
        )
        raise ConfigError(
            f"--resume continues the run in {args.out} with its own settings and only --epochs "
            f"may change, but {flags}: start a new run instead (another --out, or --overwrite)"
        )
    if args.epochs is None:
        return saved
    if args.epochs < saved.fit.epochs:
        raise ConfigError(
            f"--epochs {args.epochs} would shorten the saved run of {saved.fit.epochs} epochs: "
            "--resume only extends a run"
        )
    return saved.replace_epochs(args.epochs)


def run(args, given: set[str]) -> int:
    from ppvae.experiments.run import train

    tracked = trackers(args, Path(args.out).name, "ppvae train")
    config = _resumed_config(args, given) if args.resume else _new_config(args, given)
    device = resolve_device(config.fit.device)
    with distributed.from_environment(device, args.backend):  # under torchrun: the group
        result = train(
            config, args.out, resume=args.resume, overwrite=args.overwrite, callbacks=tracked
        )
    if not distributed.main_process():
        return 130 if result.fit.interrupted else 0
    out = Path(args.out)
    if result.fit.interrupted:
        world = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun: resume with as many
        launch = f"torchrun --nproc-per-node {world} -m ppvae" if world > 1 else "ppvae"
        print(f"interrupted; checkpoint saved. Continue with: {launch} train --out {out} --resume")
        return 130
    if len(result.fit.history):
        last = result.fit.history.iloc[-1]
        print(
            f"epoch {int(last.epoch)}: train ELBO {last.train_elbo:.2f}, "
            f"test ELBO {last.test_elbo:.2f} nats per example"
        )
    if result.metrics is not None:
        m = result.metrics.iloc[0]
        k = int(m.num_samples)
        what = {"quadrants": "log p(y|x)", "labels": "log p(x, y)"}  # cvae, m2
        what = next((w for k, w in what.items() if getattr(config, k)), "log p(x)")
        print(f"test {what} ~ {m.log_px:.2f} +- {m.log_px_stderr:.3f} nats (K={k})")
        if "log_px_unlabelled" in m:
            se = m.log_px_unlabelled_stderr
            print(f"test log p(x), y summed out ~ {m.log_px_unlabelled:.2f} +- {se:.3f} nats")
        if "accuracy" in m:
            print(f"test accuracy of q(y|x): {m.accuracy:.3f}")
    print(f"outputs in {out}/: " + ", ".join(sorted({p.name for p in result.files})))
    return 0


def add(sub) -> None:
    p = sub.add_parser(
        "train",
        allow_abbrev=False,
        help="train a model and guide by SVI and write a run directory",
        description="Train a VAE (model + guide) by SVI. Writes config.json, history.csv, "
        "checkpoint.pt, metrics.csv, PNG pictures and model.svg (the pair drawn) to --out. "
        "Ctrl-C saves a checkpoint; "
        "--resume continues it with the saved settings (only --epochs may be raised).",
    )
    add_data_args(p).add_argument(
        "--missing-rate",
        type=float,
        default=0.0,
        help="make this share of the entries missing at random (seeded): the model leaves "
        "them out; pair it with --guide masked-diag (default: 0)",
    )
    g = p.add_argument_group("labels and conditions")
    g.add_argument(
        "--labels",
        type=int,
        help="--model m2: keep this many class-balanced training labels (a multiple of the "
        "classes), hide the others",
    )
    g.add_argument(
        "--quadrants",
        type=int,
        choices=[1, 2, 3],
        help="--model cvae: complete images from this many given quadrants (Pyro's cvae)",
    )
    g = p.add_argument_group("model and guide")
    g.add_argument("--model", default="bernoulli", choices=list(MODELS), help=describe(MODELS))
    g.add_argument("--guide", default="diag", choices=list(GUIDES), help=describe(GUIDES))
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
    g = p.add_argument_group("several processes (torchrun --nproc-per-node N -m ppvae train)")
    g.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "gloo", "nccl"],
        help="torch.distributed backend under torchrun: auto is nccl on CUDA, gloo on the CPU",
    )
    add_tracking_args(p)
    p.set_defaults(func=run, parser=p)
