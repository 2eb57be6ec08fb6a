"""The ``fit`` and ``score`` commands (one process, or several under ``torchrun``).

``python -m rose_core fit --checkpoint C --out F`` fits the **default ROSE** of the checkpoint
(:mod:`rose_core.defaults`: the Fisher per model kind on ``--n-fisher`` training images — by default
the full-rank rule —, z-normalisation and calibration on the calibration half of the test split,
:mod:`rose_core.data.splits`). The fit file holds the Fisher statistics *and* the calibration
images' layer scores and losses, so ``score`` reads the verdict threshold from it: the threshold
that keeps ``--tpr`` of the held-out calibration images in-distribution. A fit whose layers would
be rank-deficient (fewer image-positions than a factor's dimension) is refused unless ``--force``.

``python -m rose_core fit --checkpoint C --data FOLDER [--calibration-data FOLDER2] --out F`` fits on a
folder of images instead (recursive; flat or class-subfolder layouts; every non-hidden file, or those of
``--ext``): each file is decoded by :func:`rose_core.imageio.read_image` and prepared to the model's size
and channels (:func:`rose_core.data.prepare_images`); a file that cannot be decoded is reported on stderr
and skipped. The calibration images come from ``--calibration-data`` or, without it, from a fixed
held-out split of ``--data``: every 5th file by sorted relative path (positions 4, 9, 14, … counted
from 0, :func:`folder_split`); the other files are the Fisher images, so no image is in both. The fit
card records the data under ``"data"``: each folder's path, file count, decoded and skipped counts and
the SHA-256 of its sorted file list (:func:`file_list_sha256`).

``python -m rose_core score --checkpoint C [--fit F] (--input DIR | --list FILE | --dataset NAME)
--out OUT`` streams images into Parquet (:mod:`rose_core.batch_score`); ``--fit auto`` (default)
reuses or makes the default fit under ``results/cache/fits/``.

Every argument and output location is checked before a model is loaded; every error is one line
on stderr and exit status 2 (:mod:`rose_core.cli`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from rose_core.batch_score import (ImageInputs, dataset_inputs, default_workers, fit_id, folder_inputs,
                                   list_inputs, load_dataset_once, score_inputs)
from rose_core.errors import CheckpointError, InvalidInput, RoseError
from rose_core.image_folder import CALIBRATION_EVERY, file_list_sha256, folder_split
from rose_core.image_folder import decode_files as _decode
from rose_core.image_folder import folder_record as _folder_record
from rose_core.image_folder import list_folder as _list_folder
from rose_core.output_lock import lock_collectively, lock_path
from rose_core.score_output import check_output_location

log = logging.getLogger(__name__)

__all__ = ["register_commands", "auto_fit_path", "fit_id", "fit_calibration", "folder_split", "file_list_sha256",
           "CALIBRATION_EVERY"]



# ------------------------------------------------------------------------------------------------
# Fit files
# ------------------------------------------------------------------------------------------------

def fit_calibration(scorer, fit_path) -> np.ndarray:
    """The calibration scores a fit carries (its held-out calibration images' ROSE scores)."""
    from rose_core.checkpoint import card_path

    if scorer.norm_layer_raw is None:
        raise CheckpointError(f"The fit {card_path(fit_path)} carries no calibration scores (it was written by an "
                              "older version), so the verdict threshold is unknown: refit it with "
                              "`python -m rose_core fit`, or pass --threshold.")
    return scorer.calibration_scores


def auto_fit_path(checkpoint: str | os.PathLike, fisher: str, dataset: str, n_fisher: int, seed: int,
                  results: str | os.PathLike | None = None) -> Path:
    """Where ``--fit auto`` keeps its fit: ``<results>/cache/fits/<checkpoint>/rose-<fisher>-<dataset>-
    fisher<N>-cal-seed<S>`` (``results/cache`` is git-ignored)."""
    from rose_core.checkpoint import card_path
    from rose_core.results import results_root

    name = card_path(checkpoint).name[: -len(".json")]
    return results_root(results) / "cache" / "fits" / name / f"rose-{fisher}-{dataset}-fisher{n_fisher}-cal-seed{seed}"


# ------------------------------------------------------------------------------------------------
# The fit
# ------------------------------------------------------------------------------------------------

def _fit_sets(model, dataset: str, spec, n_calibration: int | None, seed: int, ctx):
    """Fisher images (``spec.n_fisher`` random training images) and calibration images (the calibration
    half of the test split), prepared for ``model``: uint8 ``(N, S, S, C)`` each, plus a description."""
    from rose_core.data import prepare_images
    from rose_core.data.splits import calibration_images

    channels, size, _ = model.input_shape
    train = load_dataset_once(ctx, dataset, "train", n=spec.n_fisher, seed=seed)
    cal = calibration_images(dataset, n_calibration)
    what = (f"{len(train)} {dataset} training images (seed {seed}) for the Fisher, {len(cal)} held-out {dataset} "
            "test images (the calibration half) for the normalisation and the threshold")
    return prepare_images(train.images, size, channels), prepare_images(cal.images, size, channels), what


# ------------------------------------------------------------------------------------------------
# Folders of images (fit --data)
# ------------------------------------------------------------------------------------------------

def _folder_fit_sets(model, args, ctx):
    """Fisher and calibration images from ``--data`` (and ``--calibration-data``), prepared for
    ``model``; returns ``(spec, fisher images, calibration images, description, provenance)``."""
    channels, size, _ = model.input_shape
    exts = [e for e in args.ext.split(",") if e] if getattr(args, "ext", None) else None
    data = _list_folder("--data", args.data, exts)
    cal_folder = getattr(args, "calibration_data", None)
    if cal_folder:
        cal_inputs = _list_folder("--calibration-data", cal_folder, exts)
        fisher_pos, cal_pos = list(range(len(data))), list(range(len(cal_inputs)))
        split = f"all files of --calibration-data {cal_folder}"
        if {str(Path(x).resolve()) for x in data.locations} & {str(Path(x).resolve()) for x in cal_inputs.locations}:
            raise InvalidInput(f"--data {args.data} and --calibration-data {cal_folder} share files; the calibration "
                               "images must be held out from the Fisher images.")
    else:
        cal_inputs = data
        fisher_pos, cal_pos = folder_split(len(data))
        split = (f"every {CALIBRATION_EVERY}th file of --data by sorted relative path (positions "
                 f"{CALIBRATION_EVERY - 1}, {2 * CALIBRATION_EVERY - 1}, … from 0); the other files are the Fisher images")
        if len(cal_pos) < 2 or not fisher_pos:
            raise InvalidInput(f"--data {args.data} holds {len(data)} files; the held-out split (every "
                               f"{CALIBRATION_EVERY}th file) needs at least {2 * CALIBRATION_EVERY} files, or pass "
                               "--calibration-data.")
    spec = _spec(model, None, args, n_train=len(fisher_pos))
    rng = np.random.default_rng(args.seed)
    if spec.n_fisher < len(fisher_pos):   # a seeded random subset, kept in sorted order
        fisher_pos = [fisher_pos[i] for i in sorted(rng.choice(len(fisher_pos), spec.n_fisher, replace=False))]
    if args.n_calibration is not None and args.n_calibration < len(cal_pos):
        cal_pos = [cal_pos[i] for i in sorted(np.random.default_rng(args.seed + 1).choice(
            len(cal_pos), args.n_calibration, replace=False))]
    images, bad = _decode(data, fisher_pos, size, channels, "--data", report=ctx.is_main)
    calibration, cal_bad = _decode(cal_inputs, cal_pos, size, channels,
                                   "--calibration-data" if cal_folder else "--data", report=ctx.is_main)
    if len(images) < 1:
        raise InvalidInput(f"None of the {len(fisher_pos)} Fisher files of --data {args.data} could be decoded.")
    if len(calibration) < 2:
        raise InvalidInput(f"Only {len(calibration)} of the {len(cal_pos)} calibration files could be decoded; "
                           "ROSE needs at least 2.")
    prov = {"source": "folder", "image_shape": [channels, size, size], "calibration_split": split,
            "seed": args.seed,
            "fisher": _folder_record(args.data, data, len(images), bad, selected=len(fisher_pos)),
            "calibration": _folder_record(cal_folder or args.data, cal_inputs, len(calibration), cal_bad,
                                          selected=len(cal_pos))}
    n_bad = len(bad) + len(cal_bad)
    what = (f"{len(images)} images of folder {args.data} for the Fisher and {len(calibration)} held-out images "
            f"({'folder ' + cal_folder if cal_folder else f'every {CALIBRATION_EVERY}th file of the folder'}) for "
            "the normalisation and the threshold" + (f"; {n_bad} unreadable files skipped" if n_bad else ""))
    return spec, images, calibration, what, prov


def _add_to_card(path, key: str, value) -> None:
    """Add ``key`` to a saved fit's JSON card (atomically)."""
    from rose_core.checkpoint import card_path

    cp = card_path(path)
    card = json.loads(cp.read_text())
    card[key] = value
    tmp = cp.with_name(cp.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(cp)


def _spec(model, dataset: str | None, args, n_train: int | None = None):
    """The default ROSE settings with the command's overrides (``n_train``: the Fisher images of a
    ``--data`` folder, otherwise ``dataset``'s training split)."""
    from dataclasses import replace

    from rose_core.defaults import default_rose, resolve_defaults

    base = resolve_defaults(model, dataset) if n_train is None else default_rose(model, n_train)
    overrides = {k: v for k, v in (("fisher", args.fisher), ("n_fisher", args.n_fisher),
                                   ("layers", getattr(args, "layers", None)),
                                   ("damping", getattr(args, "damping", None))) if v is not None}
    return replace(base, **overrides)   # a larger --n-fisher than there are images takes them all


def _run_fit(model, card: dict, out: Path, ctx, args, *, progress: bool):
    """Fit the default ROSE (distributed when ``ctx`` is), save on rank 0; returns ``(scorer, description,
    seconds, CPU seconds summed over ranks)``."""
    from tqdm import tqdm

    from rose_core.distributed import fit_scorer, fit_work
    from rose_core.scorers.rose import RoseScorer

    provenance = None
    if getattr(args, "data", None):
        spec, images, calibration, what, provenance = _folder_fit_sets(model, args, ctx)
    else:
        dataset = args.dataset or card.get("dataset")
        if not dataset:
            raise CheckpointError("The checkpoint's card does not name its training dataset; pass --dataset or --data.")
        spec = _spec(model, dataset, args)
    scorer = RoseScorer(model, fisher=spec.fisher, layers=spec.layers, p=spec.p, beta=spec.beta,
                        aggregation=spec.aggregation, damping=spec.damping, batch_size=args.batch_size)
    if provenance is None:
        images, calibration, what = _fit_sets(model, dataset, spec, args.n_calibration, args.seed, ctx)
    scorer.data_provenance = provenance
    bar = tqdm(total=fit_work(len(images), scorer, ctx, n_calibration=len(calibration)), unit="img",
               file=sys.stderr, disable=not (progress and ctx.is_main),
               desc=f"fitting ROSE-{spec.fisher.upper()}" + (f" (rank 0 of {ctx.world_size})" if ctx.is_distributed else ""))
    t0, c0 = time.perf_counter(), time.process_time()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # rank problems are refused below, with the CLI's own message
        fit_scorer(scorer, images, ctx, progress=bar.update, calibration=calibration)
    seconds = time.perf_counter() - t0
    cpu_seconds = sum(v[0] for v in ctx.all_gather_floats([time.process_time() - c0]))
    bar.close()
    if scorer.fit_problems and not getattr(args, "force", False):
        raise InvalidInput("The fit is rank-deficient and was not saved: " + " ".join(scorer.fit_problems)
                           + " Raise --n-fisher, or pass --force to save it anyway.")
    err = None
    if ctx.is_main:
        try:
            scorer.save(out)
            if provenance is not None:
                _add_to_card(out, "data", provenance)
        except OSError as exc:
            err = InvalidInput(f"Cannot write the fit to {out}: {exc}")
    ctx.agree(err)
    return scorer, what, seconds, cpu_seconds


def _load_model(args, ctx):
    from rose_core.checkpoint import load_model

    model, card = load_model(args.checkpoint, device=ctx.device)
    if not callable(getattr(model, "per_sample_loss", None)) or not hasattr(model, "scored_layers"):
        raise CheckpointError(f"{args.checkpoint} is a {card.get('kind')!r} checkpoint, not a generative model.")
    return model, card


# ------------------------------------------------------------------------------------------------
# Argument checks (before any model is loaded)
# ------------------------------------------------------------------------------------------------

def _check_common_args(args) -> None:
    """Checks shared by ``fit`` and ``score`` (the numbers first: they need no import of torch or of the
    dataset registry, so they fail within a fraction of a second)."""
    from rose_core import cli_checks as c

    c.at_least("--batch-size", args.batch_size, 1)
    c.at_least("--seed", args.seed, 0)
    c.at_least("--n-fisher", args.n_fisher, 1, optional=True)
    c.at_least("--n-calibration", args.n_calibration, 2, optional=True)
    c.in_range("--dist-timeout", args.dist_timeout, 0.0, math.inf, lo_open=True, hi_open=True)
    if args.report:
        c.writable_folder("--report", Path(args.report).parent)


def _check_model_args(args) -> None:
    """``--checkpoint`` and ``--device`` (these import torch)."""
    from rose_core import cli_checks as c

    c.checkpoint_exists("--checkpoint", args.checkpoint)
    c.device_spec("--device", args.device)


def _check_dataset(args, option: str, name: str | None) -> None:
    """The fit dataset (default: the checkpoint's) has a train split and a test split to calibrate on."""
    from rose_core import cli_checks as c

    if name is None:
        from rose_core.checkpoint import read_card

        option, name = "the checkpoint's dataset", read_card(args.checkpoint).get("dataset")
    c.known_dataset(option, name, "train")
    c.known_dataset(option, name, "test")


def _check_fit_args(args) -> None:
    from rose_core import cli_checks as c

    _check_common_args(args)
    c.in_range("--damping", args.damping, 0.0, math.inf, hi_open=True, optional=True)
    if args.data is not None:
        if args.dataset is not None:
            raise InvalidInput("--data and --dataset exclude each other: fit on a folder or on a registry dataset.")
        c.image_folder("--data", args.data)
        c.image_folder("--calibration-data", args.calibration_data, optional=True)
    elif args.calibration_data is not None:
        raise InvalidInput("--calibration-data needs --data (a registry fit calibrates on the test split's "
                           "calibration half).")
    _check_model_args(args)
    if args.data is None:
        _check_dataset(args, "--dataset", args.dataset)
    c.writable_stem("--out", args.out, (".json", ".safetensors"))


def _check_score_args(args) -> None:
    from rose_core import cli_checks as c

    _check_common_args(args)
    c.in_range("--tpr", args.tpr, 0.0, 1.0, lo_open=True)
    c.finite("--threshold", args.threshold, optional=True)
    c.at_least("--flush-rows", args.flush_rows, 1)
    c.at_least("--workers", args.workers, 0, optional=True)
    c.at_least("--limit", args.limit, 0, optional=True)
    check_output_location(args.out, int(os.environ.get("WORLD_SIZE", "1")) > 1)   # WORLD_SIZE: set by torchrun
    _check_model_args(args)
    c.known_dataset("--dataset", args.dataset, args.split)
    c.known_dataset("--fit-dataset", args.fit_dataset, "train")
    if args.fit != "auto":
        from rose_core.checkpoint import card_path

        if not card_path(args.fit).exists():
            _check_dataset(args, "--fit-dataset", args.fit_dataset)
            c.writable_stem("--fit", args.fit, (".json", ".safetensors"))
    else:
        _check_dataset(args, "--fit-dataset", args.fit_dataset)


def _report(path: str | None, summary: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(summary, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------

def _cmd_fit(args: argparse.Namespace) -> int:
    _check_fit_args(args)   # before the imports below: a bad number fails before torch is even imported
    from rose_core.distributed import init_distributed, shutdown

    ctx = init_distributed(device=args.device, timeout_minutes=args.dist_timeout)
    try:
        model = card = None
        err = None
        try:
            model, card = _load_model(args, ctx)
        except RoseError as exc:
            err = exc
        ctx.agree(err)
        scorer, what, seconds, cpu_seconds = _run_fit(model, card, Path(args.out), ctx, args,
                                                      progress=not args.quiet)
        if ctx.is_main:
            from rose_core.checkpoint import card_path

            n = scorer.n_fisher + scorer.n_norm
            print(f"fitted ROSE-{scorer.fisher_kind.upper()} on {what} with {ctx.describe()}: "
                  f"{n} images in {seconds:.1f} s ({n / seconds:.1f} images/s); wrote {card_path(args.out)} "
                  "(+ .safetensors)")
            _report(args.report, {"command": "fit", "processes": ctx.world_size, "backend": ctx.backend,
                                  "images": n, "n_fisher": scorer.n_fisher, "n_norm": scorer.n_norm,
                                  "seconds": seconds, "images_per_second": n / seconds, "cpu_seconds": cpu_seconds,
                                  "fit": str(card_path(args.out)), "fit_id": fit_id(scorer),
                                  "rank_problems": scorer.fit_problems, "data": scorer.data_provenance})
        ctx.barrier()
        return 0
    finally:
        shutdown(ctx)


# ------------------------------------------------------------------------------------------------
# score
# ------------------------------------------------------------------------------------------------

def _resolve_inputs(args, ctx) -> ImageInputs:
    if args.input is not None:
        exts = [e for e in args.ext.split(",") if e] if args.ext else None
        out = Path(args.out)
        inputs = folder_inputs(args.input, exts, exclude=[out, out.with_name(out.name + ".partial"), lock_path(out)])
    elif args.list is not None:
        inputs = list_inputs(args.list)
    else:
        inputs = dataset_inputs(args.dataset, args.split, ctx=ctx)
    return inputs.limit(args.limit)


def _get_fit(args, model, card, ctx):
    """Load ``--fit`` or fit it (``auto``, or a path that does not exist yet); returns
    ``(scorer, fit path, how)``."""
    from rose_core.checkpoint import card_path
    from rose_core.scorers.rose import RoseScorer

    auto = args.fit == "auto"
    dataset = args.fit_dataset or card.get("dataset") or ""
    if auto:
        spec = _spec(model, dataset, args)
        path = auto_fit_path(args.checkpoint, spec.fisher, dataset, spec.n_fisher, args.seed)
    else:
        path = Path(args.fit)
    exists = card_path(path).exists()
    ctx.check_same(exists, f"whether the fit {card_path(path)} exists")
    err, scorer, reason = None, None, None
    if exists:
        try:
            scorer = RoseScorer.load(path, model, device=ctx.device)
            if auto and (not scorer.calibrated or scorer.norm_layer_raw is None):
                reason, scorer = "it was not calibrated on held-out images", None
        except CheckpointError as exc:
            if not auto:
                err = CheckpointError(f"--fit {path}: {exc}")
            else:
                reason = str(exc)
                scorer = None
    ctx.agree(err)
    ctx.check_same(scorer is None, "whether the fit could be loaded")
    if scorer is not None:
        return scorer, path, "loaded"
    if reason and ctx.is_main:
        log.warning("The automatic fit %s is not used (%s); fitting again.", path, reason)
    fit_args = argparse.Namespace(**{**vars(args), "dataset": args.fit_dataset, "layers": None, "damping": None})
    scorer, what, seconds, _ = _run_fit(model, card, path, ctx, fit_args, progress=not args.quiet)
    if ctx.is_main:
        print(f"fitted ROSE-{scorer.fisher_kind.upper()} on {what} in {seconds:.1f} s; saved {card_path(path)}",
              file=sys.stderr)
    return scorer, path, "fitted"


def _cmd_score(args: argparse.Namespace) -> int:
    _check_score_args(args)   # before the imports below: a bad number fails before torch is even imported
    from rose_core.checkpoint import card_path
    from rose_core.distributed import init_distributed, shutdown
    from rose_core.metrics import threshold_at_tpr

    ctx = init_distributed(device=args.device, timeout_minutes=args.dist_timeout)
    lock = None
    try:
        lock = lock_collectively(args.out, ctx)   # a second writer stops here, before the model is loaded
        err, inputs, model, card = None, None, None, None
        try:
            inputs = _resolve_inputs(args, ctx)
            model, card = _load_model(args, ctx)
        except RoseError as exc:
            err = exc
        ctx.agree(err)
        ctx.check_same_keys(inputs.keys, "the list of inputs (every rank must see the same files)")
        scorer, fit_path, how = _get_fit(args, model, card, ctx)
        if args.threshold is not None:
            threshold, source = float(args.threshold), "--threshold"
        else:
            calibration = fit_calibration(scorer, fit_path)
            threshold = threshold_at_tpr(calibration, args.tpr)
            held = "held-out in-distribution test images" if scorer.calibrated else "in-distribution images"
            source = f"TPR {args.tpr:g} of the fit's {len(calibration)} calibration scores ({held})"
        workers = default_workers(ctx.local_world_size) if args.workers is None else args.workers
        summary = score_inputs(
            scorer, inputs, args.out, threshold=threshold, ctx=ctx, batch_size=args.batch_size, workers=workers,
            flush_rows=args.flush_rows, overwrite=args.overwrite, progress=not args.quiet,
            metadata={"rose.checkpoint": str(args.checkpoint), "rose.fit": str(card_path(fit_path)),
                      "rose.tpr": "" if args.threshold is not None else repr(args.tpr),
                      "rose.threshold_source": source})
        if ctx.is_main:
            where = summary.out if len(summary.files) == 1 else f"{summary.out}/ ({len(summary.files)} parts)"
            print(f"scored {summary.scored} images ({summary.errors} of them unreadable, recorded with their error) "
                  f"with {ctx.describe()}; {summary.already_done} of {summary.inputs} were already in the output; "
                  f"{summary.seconds:.1f} s, {summary.images_per_second:.1f} images/s "
                  f"(model {summary.model_seconds:.1f} s, waiting for decoding {summary.wait_seconds:.1f} s, "
                  f"writing {summary.write_seconds:.1f} s)")
            print(f"threshold {threshold:.6g} from {source}; fit {card_path(fit_path)} ({how}); wrote {where}")
            if summary.duplicates_removed:
                print(f"removed {summary.duplicates_removed} duplicate rows left in the output by an earlier run "
                      "(the first row of each input is kept)")
            _report(args.report, {"command": "score", "processes": ctx.world_size, "backend": ctx.backend,
                                  "inputs": summary.inputs, "already_done": summary.already_done,
                                  "scored": summary.scored, "errors": summary.errors, "seconds": summary.seconds,
                                  "images_per_second": summary.images_per_second,
                                  "model_seconds": summary.model_seconds, "wait_seconds": summary.wait_seconds,
                                  "write_seconds": summary.write_seconds, "cpu_seconds": summary.cpu_seconds,
                                  "threshold": threshold,
                                  "threshold_source": source, "fit": str(card_path(fit_path)), "fit_how": how,
                                  "out": str(summary.out), "files": [str(f) for f in summary.files],
                                  "duplicates_removed": summary.duplicates_removed})
        ctx.barrier()
        return 0
    finally:
        if lock is not None:
            lock.release()
        shutdown(ctx)


# ------------------------------------------------------------------------------------------------
# Parsers
# ------------------------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model checkpoint (stem or .json card)")
    p.add_argument("--fisher", choices=["ekfac", "diag"], default=None,
                   help="Fisher approximation (default: the paper's per model kind — EKFAC for a VAE, DIAG for Glow)")
    p.add_argument("--n-fisher", type=int, default=None,
                   help="training images for the Fisher (default: the full-rank rule of rose_core.defaults, "
                        "10000 for the FMNIST VAE); not '--n': torchrun would take it for its own option")
    p.add_argument("--n-calibration", type=int, default=None,
                   help="held-out test images for normalisation and threshold (default: the whole calibration half)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward/backward pass (default: 128 for fit, 256 for score)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random subset of Fisher images")
    p.add_argument("--device", default="auto", help="auto (cuda:<local rank> if available, else cpu), cpu, cuda")
    p.add_argument("--dist-timeout", type=float, default=30.0,
                   help="minutes a collective may wait for the other processes (torchrun runs)")
    p.add_argument("--report", default=None, help="also write the summary as JSON to this file (rank 0)")
    p.add_argument("--force", action="store_true", help="save a rank-deficient fit anyway")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register_commands(sub) -> None:
    """Add ``fit`` and ``score`` to the CLI's sub-parsers (``rose_core.cli._EXTRA_COMMANDS``)."""
    p = sub.add_parser(
        "fit", help="fit the default ROSE scorer (one process, or several with torchrun)",
        description="Fit ROSE's Fisher on training images and its normalisation and verdict calibration on the "
                    "held-out calibration half of the test split (rose_core.defaults). Under torchrun each rank "
                    "fits its shard and the float64 sums are all-reduced; rank 0 writes <out>.safetensors and "
                    "<out>.json.")
    _common(p)
    p.add_argument("--out", required=True, help="fit path (fit.safetensors, fit.json or the stem)")
    p.add_argument("--dataset", default=None, help="registry dataset (default: the checkpoint's training set)")
    p.add_argument("--data", default=None,
                   help="fit on this folder of images instead (recursive; flat or class subfolders; unreadable files "
                        "are reported and skipped; resized to the model's size and channels)")
    p.add_argument("--calibration-data", default=None,
                   help="folder of held-out in-distribution images for normalisation and threshold (with --data; "
                        f"default: every {CALIBRATION_EVERY}th file of --data by sorted path, the rest for the Fisher)")
    p.add_argument("--ext", default=None, help="only files with these extensions, e.g. png,jpg (--data)")
    p.add_argument("--layers", default=None, choices=["default", "all"])
    p.add_argument("--damping", type=float, default=None, help="relative damping (default 1e-8)")
    p.set_defaults(func=_cmd_fit, batch_size=128)   # overrides the None default of _common

    p = sub.add_parser(
        "score", help="score images into Parquet (one process, or several with torchrun)",
        description="Stream images through ROSE into Parquet: one row per image with the ROSE score, per-layer "
                    "raw and z-scores, NLL, verdict and error. Resumable; see rose_core.batch_score.")
    _common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", "--data", dest="input", default=None,
                     help="folder of images (recursive; flat or class subfolders; unreadable files are recorded with "
                          "their error); --data is the same option, named as in train and fit")
    src.add_argument("--list", default=None, help="text file with one image path per line")
    src.add_argument("--dataset", default=None, help="registry dataset to score")
    p.add_argument("--split", default="test", help="split of --dataset (default test)")
    p.add_argument("--ext", default=None, help="only files with these extensions, e.g. png,jpg (--input)")
    p.add_argument("--limit", type=int, default=None, help="only the first N inputs")
    p.add_argument("--fit", default="auto",
                   help="ROSE fit path; 'auto' (default) or a path that does not exist: make the default fit for "
                        "the checkpoint and save it there (auto: under results/cache/fits/)")
    p.add_argument("--fit-dataset", default=None, help="dataset of a new fit (default: the checkpoint's)")
    p.add_argument("--out", required=True,
                   help="scores.parquet (one process), or a directory of part-<rank>.parquet (torchrun)")
    p.add_argument("--tpr", type=float, default=0.95, help="in-distribution TPR of the verdict threshold")
    p.add_argument("--threshold", type=float, default=None, help="use this ROSE threshold instead")
    p.add_argument("--workers", type=int, default=None, help="decoding processes per rank (default: spare cores, <= 4)")
    p.add_argument("--flush-rows", type=int, default=4096, help="rows buffered before a segment is written")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output instead of resuming")
    p.set_defaults(func=_cmd_score, batch_size=256)
