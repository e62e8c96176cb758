"""``ppvae compare``: PPCA, its EM fits and VAEs on one dataset, scored on one table."""

from ppvae.cli.common import add_tracking_args, holding_out, trackers
from ppvae.config import ConfigError
from ppvae.data import DATASETS
from ppvae.errors import OutputError, PPVAEError, first_line
from ppvae.experiments.compare import CompareConfig, compare, to_markdown
from ppvae.experiments.compare_labels import table_data
from ppvae.experiments.rows import prepare, row_callbacks
from ppvae.experiments.table_files import caption, resume_table, table_paths, write
from ppvae.experiments.tracked_rows import TableRows
from ppvae.outputs import check_output_dir


def run(args, given: set[str]) -> int:
    config = CompareConfig(
        dataset=args.dataset, data_dir=args.data_dir, z_dim=args.z_dim,
        components=args.components, hidden=tuple(args.hidden), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, em_tol=args.em_tol, em_max_iter=args.em_max_iter,
        eval_samples=args.eval_samples, elbo_samples=args.elbo_samples,
        train_size=args.train_size, test_size=args.test_size, seed=args.seed, device=args.device,
        missing_rate=args.missing_rate, num_particles=args.num_particles, labels=args.labels,
        quadrants=args.quadrants, methods=tuple(args.methods or ()),
    )  # fmt: skip
    out = check_output_dir(args.out)
    tracked = trackers(args, args.stem, "ppvae compare")
    done = _done(args, config, out)
    split = table_data(config) if config.labels or config.quadrants else prepare(config)
    title = caption(config, split)
    rows = TableRows(tracked, config, done)  # one tracked run per row

    def save(frame) -> None:  # after every row: what was fitted is kept
        rows(frame, write(frame, out, to_markdown(frame, title), args.stem, config))

    try:
        with row_callbacks([rows.epochs]):  # each SVI row's epochs go to its tracked run
            frame = compare(config, split=split, done=done, on_row=save)
    except PPVAEError as err:
        raise type(err)(
            f"{first_line(err)} (the other rows are in {out / args.stem}.csv; "
            "--resume fits the rest)"
        ) from err
    paths = write(frame, out, to_markdown(frame, title), args.stem, config)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _done(args, config: CompareConfig, out):
    """With --resume, the saved table (same settings) whose rows are kept; else None, once
    the table's files are free (or --overwrite)."""
    paths = table_paths(out, args.stem)  # a stem that is a path is refused here
    if args.resume:
        if args.overwrite:
            raise ConfigError("--resume keeps the saved table, --overwrite replaces it: pass one")
        return resume_table(out, args.stem, config)
    taken = [f for f in paths if f.exists()]
    if taken and not args.overwrite:
        raise OutputError(
            f"{taken[0]} exists: pass --overwrite to replace it, --resume to fit its missing "
            "rows, or --stem NAME"
        )
    return None


def add(sub) -> None:
    """Register ``ppvae compare`` on the CLI's subparsers."""
    c = CompareConfig()
    p = sub.add_parser(
        "compare",
        allow_abbrev=False,
        help="fit PPCA, EM, mixture of PPCA and VAEs on one dataset; write one table",
        description="Fit closed-form PPCA, PPCA-EM, a mixture of PPCA, PPCA by SVI, a linear "
        "VAE and a nonlinear VAE on one dataset and split, and score all of them by test "
        "log p(x) on the same uniformly dequantized data. --missing-rate, --labels and "
        "--quadrants each make another table instead (see each flag). Writes <out>/<stem>.csv "
        "and .md after every row (a progress bar over the rows on a terminal).",
    )
    p.add_argument("--dataset", default=c.dataset, choices=list(DATASETS))
    p.add_argument("--data-dir", help="root holding the dataset files (see ppvae train)")
    p.add_argument("--z-dim", type=int, default=c.z_dim, help="latent dimension (%(default)s)")
    p.add_argument("--components", type=int, default=c.components, help="mixture components")
    p.add_argument("--hidden", type=int, nargs="+", default=list(c.hidden), help="VAE MLP sizes")
    p.add_argument("--epochs", type=int, default=c.epochs, help="SVI epochs (%(default)s)")
    p.add_argument("--batch-size", type=int, default=c.batch_size)
    p.add_argument("--lr", type=float, default=c.lr, help="Adam learning rate (%(default)s)")
    p.add_argument("--em-tol", type=float, default=c.em_tol, help="EM tolerance, nats/example")
    p.add_argument("--em-max-iter", type=int, default=c.em_max_iter)
    p.add_argument(
        "--eval-samples", type=int, default=c.eval_samples, help="K for the VAEs' log p(x)"
    )
    p.add_argument("--elbo-samples", type=int, default=c.elbo_samples)
    p.add_argument("--train-size", type=int, help="score a random subset of the training rows")
    p.add_argument("--test-size", type=int, help="score a random subset of the test rows")
    p.add_argument(
        "--missing-rate",
        type=float,
        default=c.missing_rate,
        help="share of entries missing at random: score observed-data log p(x) and imputation "
        "of PPCA-EM, mixture of PPCA, a MIWAE VAE and mean imputation (default: 0, none)",
    )
    p.add_argument(
        "--labels",
        type=int,
        default=c.labels,
        metavar="N",
        help="N class-balanced training labels: the semi-supervised table, M2 and the same "
        "classifier trained on the labels alone, by test accuracy and M2's log p(x) "
        "(default: 0, none)",
    )
    p.add_argument(
        "--quadrants",
        type=int,
        default=c.quadrants,
        metavar="K",
        help="K = 1, 2 or 3 given quadrants: the quadrant-completion table, the CVAE's "
        "importance-sampled log p(y|x), its ELBO and the plain network's (default: 0, none)",
    )
    p.add_argument(
        "--num-particles", type=int, default=c.num_particles, help="K of the VAE's MIWAE bound"
    )
    p.add_argument("--methods", nargs="+", help="fit only these rows (default: every method)")
    p.add_argument("--seed", type=int, default=c.seed)
    p.add_argument("--device", default=c.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", default="runs/compare", help="output folder (%(default)s)")
    p.add_argument("--stem", default="compare", help="file name stem (%(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace <out>/<stem>.csv and .md")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of <out>/<stem>.csv and fit only the missing, failed or "
        "interrupted ones (the settings must be those saved in <out>/<stem>.json)",
    )
    add_tracking_args(p)
    p.set_defaults(func=holding_out(run), parser=p)
