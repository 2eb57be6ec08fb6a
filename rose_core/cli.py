"""Command-line interface: ``python -m rose_core <command> …``.

Commands: ``datasets`` (list the registry and what is available here),
``data`` (build the dataset caches), ``train`` (train a model), ``fit`` / ``score``
(:mod:`rose_core.commands`), ``evaluate`` / ``report``.

Errors: arguments and output locations are checked before a model is loaded
(:mod:`rose_core.cli_checks`); every error is one line on stderr (``error: …``) and exit
status 2 — argument-parser errors included, without the usage block. An unexpected exception
(a bug) is one line too, exit status 1; ``-v`` shows its traceback. Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rose_core.allocator import reuse_freed_memory
from rose_core.errors import RoseError


def _cmd_datasets(args: argparse.Namespace) -> int:
    from rose_core.data import dataset_names, get_card, is_available

    for name in dataset_names():
        card = get_card(name)
        kind = "real" if card.real else f"stand-in{' for ' + card.stands_in_for if card.stands_in_for else ''}"
        status = "available" if is_available(name) else f"missing: {card.how_to_get}"
        print(f"{name:18s} {kind:28s} {status}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from rose_core import cli_checks
    from rose_core.data import dataset_names, get_card, is_available, load_dataset
    from rose_core.data.registry import data_dir
    from rose_core.errors import DatasetUnavailable

    for name in args.names:   # every name first: not after building the caches before it
        cli_checks.known_dataset("data:", name)
    cli_checks.writable_folder("the data folder ($ROSE_DATA, default ./data)", data_dir())
    names = args.names
    if args.all:
        # Offline sources and stand-ins; online-only sets only when already downloaded.
        names = [n for n in dataset_names()
                 if n in ("fashion-mnist", "mnist") or not get_card(n).source.startswith("torchvision")
                 or is_available(n)]
        for n in sorted(set(dataset_names()) - set(names)):
            print(f"{n}: skipped: {get_card(n).how_to_get}")
    failures = 0
    for name in names:
        for split in get_card(name).splits:
            if args.test_only and split != "test":
                continue
            try:
                ds = load_dataset(name, split)
                print(f"{name}/{split}: {len(ds)} images {ds.images.shape[1:]}")
            except DatasetUnavailable as exc:
                failures += 1
                print(f"{name}/{split}: unavailable: {exc}", file=sys.stderr)
    return 1 if (failures and args.strict) else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from rose_core.training import TrainConfig, train   # train() checks the configuration first

    cfg = TrainConfig(kind=args.model, preset=args.preset, dataset=args.dataset, out=args.out, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, subset=args.subset, device=args.device,
                      resume=not args.no_resume, max_minutes=args.max_minutes, noise_fraction=args.noise_fraction,
                      perturbation=args.perturbation, perturbation_strength=args.perturbation_strength,
                      l2=args.l2, capacity=args.capacity, eval_subset=args.eval_subset, keep_epochs=args.keep_epochs,
                      progress=not args.quiet,
                      data=args.data, channels=args.channels, compile=args.compile,
                      extensions=[e for e in args.ext.split(",") if e] if args.ext else None)
    if args.data is not None and args.dataset is not None:
        from rose_core.errors import InvalidInput
        raise InvalidInput("--data and --dataset exclude each other: train on a folder or on a registry dataset.")
    cfg.dataset = cfg.dataset or "fashion-mnist"
    card = train(cfg)
    print({k: card[k] for k in ("epochs", "test_bits_per_dim", "train_seconds") if k in card})
    return 0


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    import torch

    from rose_core.classifier_training import ClassifierTrainConfig, train_classifier

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    card = train_classifier(ClassifierTrainConfig(
        architecture=args.arch, out=args.out, epochs=args.epochs, subset=args.subset, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, test_images=args.test_images, resume=not args.no_resume, progress=not args.quiet))
    print({k: card[k] for k in ("epochs", "train_images", "test_accuracy", "train_seconds")})
    return 0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``error: <command>: <message> (see … --help)``), exit 2.
    Sub-command parsers are of the same class (argparse creates them with ``type(parent)``)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m rose_core", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list datasets and whether they are available here")
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("data", help="build dataset caches")
    p.add_argument("names", nargs="*", default=["fashion-mnist", "mnist"])
    p.add_argument("--all", action="store_true", help="every dataset that can be built offline here")
    p.add_argument("--test-only", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 if any dataset is unavailable")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("train", help="train a VAE or Glow on a registry dataset or a folder of images")
    p.add_argument("--model", choices=["vae", "glow"], default="vae")
    p.add_argument("--preset", default="fmnist", choices=["fmnist", "cifar10"])
    p.add_argument("--dataset", default=None, help="registry dataset to train on (default fashion-mnist)")
    p.add_argument("--data", default=None,
                   help="train on this folder of images instead (recursive; flat or class subfolders; unreadable "
                        "files are reported and skipped; resized to 32x32; every 5th file by sorted path is held out "
                        "for the test bits/dim); the card records the folder, its file count and the SHA-256 of "
                        "its file list")
    p.add_argument("--channels", type=int, default=None, choices=[1, 3],
                   help="channels of the model (default: for --data, 1 if every sampled file is grey, else 3; "
                        "for a dataset, the preset's)")
    p.add_argument("--ext", default=None, help="only files with these extensions, e.g. png,jpg (--data)")
    p.add_argument("--out", required=True, help="checkpoint path without extension, e.g. checkpoints/vae-fmnist")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", type=int, default=None, help="train on a random subset of this size")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after the epoch that would exceed this")
    p.add_argument("--noise-fraction", type=float, default=0.0, help="background model: fraction of random pixels")
    p.add_argument("--perturbation", default=None, choices=["svd", "dct", "gaussian"],
                   help="background model on blurred inputs (the Likelihood Ratio's Table 10 variants)")
    p.add_argument("--perturbation-strength", type=int, default=None, metavar="K",
                   help="K of --perturbation svd/dct (default 28, the paper's)")
    p.add_argument("--l2", type=float, default=None,
                   help="weight decay (default: the preset's: 5e-5 for the CIFAR-10 Glow, as in the paper, else 0)")
    p.add_argument("--capacity", type=float, default=1.0)
    p.add_argument("--compile", action="store_true",
                   help="run the training loss through torch.compile (see benchmarks/bench_train.py for whether it pays)")
    p.add_argument("--eval-subset", type=int, default=None)
    p.add_argument("--keep-epochs", default=None, metavar="DIR",
                   help="keep a copy of every epoch's checkpoint in DIR/epoch-NNN/ (choose one afterwards by held-out "
                        "bits/dim: scripts/select_epoch.py)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("train-classifier", help="train a Figure 6 classifier on Fashion-MNIST (CPU budget)")
    p.add_argument("--arch", required=True, choices=["basic-cnn", "vgg11", "resnet18"])
    p.add_argument("--out", required=True, help="checkpoint path without extension, e.g. checkpoints/cls-vgg11-fmnist")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--subset", type=int, default=None, help="train on a seeded subset of this many images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-images", type=int, default=2000,
                   help="test accuracy on this many images of the test split's evaluation half")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train_classifier)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    reuse_freed_memory()
    try:
        _register_user_datasets()
        return int(args.func(args) or 0)
    except RoseError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:   # a disk that fills up, a file that vanished: the user can act on it
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        print(f"error: unexpected {type(exc).__name__}: {_one_line(exc)} (this is a bug; rerun with -v for the "
              "traceback and report it)", file=sys.stderr)
        return 1


def _register_user_datasets() -> None:
    """Datasets imported from the user's folders (:mod:`rose_core.user_data`) are registry datasets for every
    command (``--dataset user-…``, a user model's card); nothing is imported when there are none."""
    from rose_core.user_data import register_user_datasets, user_data_dir

    if user_data_dir().is_dir():
        register_user_datasets()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _register_evaluation_commands(sub) -> None:
    """``evaluate`` (rose_core.evaluation) and ``report`` (rose_core.report); the handlers import lazily."""

    def _evaluate(args):
        from rose_core.evaluation import cli_evaluate
        return cli_evaluate(args)

    def _report(args):
        from rose_core.report import cli_report
        return cli_report(args)

    p = sub.add_parser("evaluate", help="score a checkpoint with the OOD methods and write the results bundle")
    p.add_argument("--checkpoint", required=True, help="model checkpoint without extension, e.g. checkpoints/vae-fmnist")
    p.add_argument("--preset", default=None,
                   help="comma-separated: table2, table5, brightness, perturbations, capacity, fisher, glow-layers, "
                        "throughput, fisher-samples, layerwise (default: table2 for a VAE, table5 for Glow)")
    p.add_argument("--results", default=None, help="results root (default $ROSE_RESULTS or ./results)")
    p.add_argument("--n-in", type=int, default=None, help="in-distribution test images (default 5000 VAE, 1000 Glow)")
    p.add_argument("--n-ood", type=int, default=1000, help="images per OOD set")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all for the model kind)")
    p.add_argument("--ood-sets", default=None, help="comma-separated OOD sets (default: every available one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-fit", type=int, default=2000, help="train images for the ROSE fit")
    p.add_argument("--cap", action="append", default=None, metavar="METHOD=N",
                   help="images per set for a method (default likelihood-regret=300)")
    p.add_argument("--only", action="append", default=None, metavar="METHOD=SET1,SET2",
                   help="restrict a method to some OOD sets, e.g. likelihood-regret=mnist")
    p.add_argument("--overall-per-set", type=int, default=1000)
    p.add_argument("--k", type=int, default=20, help="IWAE importance samples")
    p.add_argument("--rose", action="append", default=None, metavar="KEY=VALUE",
                   help="RoseScorer setting for all ROSE methods (p, aggregation, normalization, damping)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--strengths", default=None, help="brightness factors (default 0.2,...,1.8)")
    p.add_argument("--repeats", type=int, default=None, help="brightness / fisher-samples repeats")
    p.add_argument("--n-per-set", type=int, default=None, help="brightness: images per OOD set")
    p.add_argument("--brightness-methods", default=None, help="brightness: methods (default rose-ekfac, "
                   "likelihood-ratio, rnd, nll where available)")
    p.add_argument("--brightness-sets", default=None, help="brightness: OOD sets (default CelebA/SVHN/Omniglot "
                   "or their stand-ins, and MNIST)")
    p.add_argument("--sizes", default=None, help="fisher-samples: numbers of Fisher samples (default 10,...,10000)")
    p.add_argument("--fisher", default="ekfac", help="fisher-samples: diag or ekfac")
    p.add_argument("--n-norm", type=int, default=500, help="fisher-samples: normalisation images")
    p.add_argument("--n-eval-in", type=int, default=1000, help="fisher-samples: in-distribution evaluation images")
    p.add_argument("--n-eval-per-set", type=int, default=100, help="fisher-samples: evaluation images per OOD set")
    p.add_argument("--throughput-n", type=int, default=32, help="throughput: images (the same for every method)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="throughput: time each method at least this long")
    p.add_argument("--train-missing", action="store_true", help="perturbations: train the missing RNDs (small)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("report", help="write docs/results.md from the results bundles")
    p.add_argument("--results", default=None, help="results root (default $ROSE_RESULTS or ./results)")
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--checkpoints", default="checkpoints", help="folder of the model checkpoints")
    p.set_defaults(func=_report)


_EXTRA_COMMANDS.append(_register_evaluation_commands)


def _register_scale_out(sub) -> None:
    """``fit`` and ``score`` (streaming Parquet output, torchrun-aware): see :mod:`rose_core.commands`."""
    from rose_core.commands import register_commands

    register_commands(sub)


_EXTRA_COMMANDS.append(_register_scale_out)
