"""Streaming batch scoring to Parquet, and the ``fit`` / ``score`` commands (one process or ``torchrun``).

``python -m rose_core score --checkpoint C --fit F (--input DIR | --list FILE | --dataset NAME) --out OUT``
scores every image and writes one Parquet row per image:

===================  ==========================================================================
column               meaning
===================  ==========================================================================
``path`` / ``index`` the key: the file's path relative to ``--input`` (POSIX, as found) or as
                     written in ``--list``; the image's index in the dataset split for ``--dataset``
``rose_score``       ROSE score (higher = more out-of-distribution); null when the file failed
``nll_nats``         the model's deterministic per-sample loss in nats, the loss ROSE
                     differentiates: VAE −ELBO with z = μ (an upper bound on the NLL), Glow the
                     exact NLL (Parquet metadata ``rose.nll`` says which)
``bits_per_dim``     ``nll_nats / (C·H·W · ln 2)``
``verdict``          ``"OOD"`` when ``rose_score`` is strictly above the threshold, else
                     ``"in-distribution"``
``raw[<layer>]``     the layer score ``s_l = gᵀ F⁻¹ g``, one column per scored layer
``z[<layer>]``       its z-score with the fit's in-distribution mean and standard deviation
``error``            null, or why the file could not be scored (the other columns are then null)
===================  ==========================================================================

Decisions:

* **Threshold.** ``threshold_at_tpr(calibration, tpr)`` (:mod:`rose_core.metrics`): the smallest
  calibration score that keeps a fraction ``tpr`` of them at or below it. The calibration scores
  are the ROSE scores of the fit's *normalisation split* — in-distribution training images
  disjoint from the Fisher set with ``normalization="separate"`` — saved by ``fit`` beside the fit
  as ``<fit>.calibration.npy`` (the convention :mod:`rose_core.live` uses too). A fit without that
  file needs ``--threshold``. Threshold, TPR and their source are in the Parquet metadata.
* **Inputs.** A folder is read recursively; every regular file that is not hidden (no name part
  starting with ``.``) is an input unless ``--ext`` restricts the extensions — a stray text file
  becomes a row with an error, not a silent gap. Paths are sorted (by their POSIX string), so
  runs are deterministic. A list file holds one path per line (blank lines and ``#`` comments
  ignored; relative paths are relative to the list file's folder; the key is the line as written;
  duplicates are scored once). Files are decoded by :func:`rose_core.imageio.read_image` in
  ``DataLoader`` worker processes and prepared like the model's training data
  (:func:`rose_core.data.prepare_images`).
* **Streaming and resuming.** Rows are buffered up to ``flush_rows`` and then written as a
  complete Parquet *segment* (write to a temporary name, then rename) in a side folder
  (``<out>.partial/`` for a single file, ``<out>/_partial/`` for a directory of parts). At the end
  each process merges its segments, row group by row group, into its final file. Memory stays
  flat; a run that is killed loses at most ``flush_rows`` rows per process. Re-running reads the
  keys of every finished file and segment and scores only the rest; a segment already merged
  (the crash came between the merge and the clean-up) is recognised by its generation number and
  deleted. Results of another fit or threshold are never mixed into one output: that is an error
  (use ``--overwrite`` or another ``--out``).
* **One writer per output.** ``score`` locks ``<out>.lock`` (:mod:`rose_core.output_lock`) before it
  loads the model; a second writer exits 2 naming the holder (pid, host, start time). A lock left
  by a killed run is taken over. Duplicate keys left in an output by versions without the lock
  are removed when the run resumes (:mod:`rose_core.score_output`). Decoding workers die with
  their parent (:mod:`rose_core.worker_guard`).
* **Several processes** (``torchrun``): the inputs still to score are cut into one contiguous
  block per rank, in whole batches (so every rank scores exactly the batches one process would:
  the same float rounding), and rank ``r`` writes ``<out>/part-<r:05d>.parquet`` (``--out`` is then a
  directory; ``pandas.read_parquet(out)`` reads the union). The union equals a one-process run row
  for row (up to float rounding; sort by the key to compare). A rank with nothing to do writes an
  empty part. All ranks must see the same files (a shared filesystem): this is checked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from rose_core.errors import CheckpointError, InvalidInput, RoseError
from rose_core.output_lock import OutputLock, lock_path
from rose_core.score_output import (FORMAT, KEY_INDEX, KEY_PATH, ScoreOutput, check_output_location,  # noqa: F401
                                     output_schema, read_scores)

__all__ = ["ImageInputs", "folder_inputs", "list_inputs", "dataset_inputs", "ScoreSummary", "score_inputs",
           "output_schema", "read_scores", "load_calibration", "save_fit", "fit_id", "register_commands",
           "auto_fit_path", "default_workers"]

log = logging.getLogger(__name__)



# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

@dataclass
class ImageInputs:
    """What to score: keys (paths or dataset indices) and how to read each image.

    ``kind`` is ``"files"`` (``locations`` are the paths to open) or ``"dataset"`` (``images``
    uint8 ``(N, H, W, C)`` in memory, ``keys`` their indices in the split).
    """

    kind: str
    keys: list
    description: str
    locations: list[str] | None = None
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def key_column(self) -> str:
        return KEY_PATH if self.kind == "files" else KEY_INDEX

    def take(self, positions: Sequence[int]) -> "ImageInputs":
        """The inputs at ``positions`` (in that order)."""
        pos = list(positions)
        return ImageInputs(self.kind, [self.keys[i] for i in pos], self.description,
                           None if self.locations is None else [self.locations[i] for i in pos],
                           self.images)

    def limit(self, n: int | None) -> "ImageInputs":
        """The first ``n`` inputs (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        if n < 0:
            raise InvalidInput(f"--limit must be >= 0, got {n}.")
        return self.take(range(n))

    def read(self, i: int) -> np.ndarray:
        """The uint8 ``(H, W, C)`` image of input ``i``; raises :class:`InvalidInput` with the reason."""
        if self.kind == "dataset":
            return self.images[self.keys[i]]
        from rose_core.imageio import read_image

        return read_image(self.locations[i]).array


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def folder_inputs(folder: str | os.PathLike, extensions: Sequence[str] | None = None,
                  exclude: Sequence[str | os.PathLike] = ()) -> ImageInputs:
    """Every non-hidden regular file under ``folder`` (recursively), sorted by relative POSIX path.

    ``extensions`` (e.g. ``["png", "jpg"]``, case-insensitive) restricts the files; ``exclude``
    skips paths inside these files/folders (the output of a run). Raises :class:`InvalidInput`
    when the folder does not exist or holds no file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInput(f"--input {root} is not a folder." if root.exists() else f"--input {root} does not exist.")
    exts = None if not extensions else {"." + e.lower().lstrip(".") for e in extensions}
    excluded = [Path(e).resolve() for e in exclude]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if fn.startswith("."):
                continue
            full = Path(dirpath) / fn
            if exts is not None and full.suffix.lower() not in exts:
                continue
            if excluded:
                res = full.resolve()
                if any(res == e or e in res.parents for e in excluded):
                    continue
            if not full.is_file():
                continue
            found.append((_printable(full.relative_to(root).as_posix()), str(full)))
    found.sort()
    if not found:
        what = f" with extension {', '.join(sorted(exts))}" if exts else ""
        raise InvalidInput(f"No files{what} found under {root} (searched recursively; hidden files are skipped).")
    return ImageInputs("files", [k for k, _ in found], f"folder {root}", locations=[loc for _, loc in found])


def _printable(name: str) -> str:
    """A file name as valid UTF-8: bytes that are not UTF-8 (kept by Python as surrogates) become ``\\xNN``.
    The key stays deterministic, so resuming recognises the file; the file is still opened by its real name."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def list_inputs(list_file: str | os.PathLike) -> ImageInputs:
    """Paths listed in ``list_file``, one per line, in that order (see the module docstring)."""
    lf = Path(list_file)
    try:
        text = lf.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"--list {lf} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--list {lf} cannot be read as UTF-8 text ({exc}).") from None
    keys, seen = [], set()
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#") or entry in seen:
            continue
        seen.add(entry)
        keys.append(entry)
    if not keys:
        raise InvalidInput(f"--list {lf} lists no files.")
    base = lf.parent
    locations = [k if os.path.isabs(k) else str(base / k) for k in keys]
    return ImageInputs("files", keys, f"list {lf}", locations=locations)


def _load_dataset_once(ctx, name: str, split: str, **kwargs):
    """``load_dataset`` on rank 0 first (it may build the cache), then on the other ranks: processes
    building one cache file at the same time would collide. Collective when ``ctx`` is distributed."""
    from rose_core.data import load_dataset

    if ctx is None or not ctx.is_distributed:
        return load_dataset(name, split, **kwargs)
    ds, err = None, None
    if ctx.is_main:
        try:
            ds = load_dataset(name, split, **kwargs)
        except RoseError as exc:
            err = exc
    ctx.agree(err)
    return ds if ctx.is_main else load_dataset(name, split, **kwargs)


def dataset_inputs(name: str, split: str = "test", root: str | os.PathLike | None = None, ctx=None) -> ImageInputs:
    """A registry dataset split; keys are the image indices (``ctx``: see :func:`_load_dataset_once`)."""
    ds = _load_dataset_once(ctx, name, split, root=root)
    if len(ds) == 0:
        raise InvalidInput(f"Dataset {name}/{split} holds no images.")
    return ImageInputs("dataset", list(range(len(ds))), f"dataset {name}/{split}", images=ds.images)


class _DecodeItems:
    """Map-style dataset for the ``DataLoader``: item ``j`` → ``(position, prepared uint8 image or None,
    error or None)``. Decoding and resizing run in the loader's worker processes."""

    def __init__(self, inputs: ImageInputs, positions: np.ndarray, size: int, channels: int) -> None:
        self.inputs, self.positions, self.size, self.channels = inputs, positions, size, channels

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, j: int):
        from rose_core.data import prepare_images

        pos = int(self.positions[j])
        try:
            arr = self.inputs.read(pos)
            return pos, prepare_images(arr[None], self.size, self.channels)[0], None
        except InvalidInput as exc:
            return pos, None, str(exc)
        except Exception as exc:  # a file must never stop the run: record why and go on
            return pos, None, f"{type(exc).__name__}: {exc}"


def _collate(items):
    positions = np.array([p for p, _, _ in items], dtype=np.int64)
    ok = np.array([a is not None for _, a, _ in items], dtype=bool)
    good = [a for _, a, _ in items if a is not None]
    images = np.stack(good) if good else None
    errors = [e for _, _, e in items]
    return positions, ok, images, errors


def default_workers(local_world_size: int = 1) -> int:
    """Decoding workers per process: one core per process for the model, the rest (up to 4) decode."""
    cores = os.cpu_count() or 1
    return max(0, min(4, cores // max(1, local_world_size) - 1))


# ------------------------------------------------------------------------------------------------
# Fit files
# ------------------------------------------------------------------------------------------------

def _calibration_path(fit_path: str | os.PathLike) -> Path:
    from rose_core.checkpoint import card_path

    cp = card_path(fit_path)
    return cp.with_name(cp.name[: -len(".json")] + ".calibration.npy")


def save_fit(scorer, calibration: np.ndarray, path: str | os.PathLike) -> list[Path]:
    """Write ``scorer`` (:meth:`RoseScorer.save`) and its calibration scores; returns the files."""
    from rose_core.checkpoint import weights_path

    cp = scorer.save(path)
    cal = _calibration_path(path)
    tmp = cal.with_name(cal.name + ".tmp.npy")
    np.save(tmp, np.asarray(calibration, dtype=np.float64))
    tmp.replace(cal)
    return [weights_path(path), cp, cal]


def load_calibration(fit_path: str | os.PathLike) -> np.ndarray | None:
    """The calibration scores saved beside a fit, or None when there are none."""
    p = _calibration_path(fit_path)
    if not p.exists():
        return None
    fix = "delete it and run `python -m rose_core fit` again, or pass --threshold"
    try:
        with open(p, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise CheckpointError(f"Calibration file {p} cannot be read ({exc.strerror or exc}).") from None
    if magic != b"\x93NUMPY":   # np.load would call any other file "pickled (object) data"
        raise CheckpointError(f"Calibration file {p} is not a NumPy .npy file (it was not written by "
                              f"`python -m rose_core fit`, or it was replaced); {fix}.")
    try:
        values = np.load(p, allow_pickle=False)
    except Exception as exc:   # a damaged .npy header raises ValueError, SyntaxError, tokenize.TokenError, …
        reason = "it holds Python objects, not numbers" if "pickle" in str(exc) else "it is truncated or damaged"
        raise CheckpointError(f"Calibration file {p} cannot be read ({reason}); {fix}.") from None
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or not np.isfinite(values).all():
        raise CheckpointError(f"Calibration file {p} does not hold a 1-D array of finite scores; {fix}.")
    return values


def fit_id(scorer) -> str:
    """A short hash that identifies a fitted scorer (model weights, settings, normalisation)."""
    from rose_core.scorers.rose import model_fingerprint

    blob = json.dumps({
        "model": model_fingerprint(scorer.model), "fisher": scorer.fisher_kind, "layers": scorer.layer_names,
        "damping": scorer.damping, "n_fisher": scorer.n_fisher, "n_norm": scorer.n_norm,
        "mean": [repr(float(v)) for v in scorer.norm_mean], "std": [repr(float(v)) for v in scorer.norm_std],
        "p": repr(scorer.p), "beta": scorer.beta, "aggregation": scorer.aggregation,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def auto_fit_path(checkpoint: str | os.PathLike, fisher: str, dataset: str, n: int, seed: int,
                  results: str | os.PathLike | None = None) -> Path:
    """Where ``--fit auto`` keeps its fit:
    ``<results>/cache/fits/<checkpoint>/rose-<fisher>-<dataset>-n<N>-seed<S>`` (``results/cache`` is git-ignored)."""
    from rose_core.checkpoint import card_path
    from rose_core.results import results_root

    name = card_path(checkpoint).name[: -len(".json")]
    return results_root(results) / "cache" / "fits" / name / f"rose-{fisher}-{dataset}-n{n}-seed{seed}"


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------

@dataclass
class ScoreSummary:
    """What a scoring run did (totals over all ranks)."""

    inputs: int
    already_done: int
    scored: int
    errors: int
    seconds: float
    threshold: float
    out: Path
    files: list[Path] = field(default_factory=list)
    model_seconds: float = 0.0
    wait_seconds: float = 0.0
    write_seconds: float = 0.0
    processes: int = 1
    cpu_seconds: float = 0.0
    """CPU time of the scoring processes, summed over ranks (decoding workers not included)."""
    duplicates_removed: int = 0
    """Rows of keys written twice (by older versions without the output lock) removed on resume."""

    @property
    def images_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else float("nan")


def _nll_description(model) -> str:
    kind = getattr(model, "kind", type(model).__name__)
    if kind == "vae":
        return "VAE -ELBO with z = mu (deterministic per-sample loss; an upper bound on the NLL), nats"
    if kind == "glow":
        return "Glow exact NLL, nats"
    return f"{kind} per_sample_loss, nats"


def score_inputs(scorer, inputs: ImageInputs, out: str | os.PathLike, *, threshold: float,
                 ctx=None, batch_size: int = 256, workers: int = 0, flush_rows: int = 4096,
                 overwrite: bool = False, progress: bool = False, metadata: dict[str, str] | None = None
                 ) -> ScoreSummary:
    """Score ``inputs`` with a fitted ``scorer`` into Parquet at ``out`` (see the module docstring).

    Collective under ``torch.distributed``: every rank calls it with the same arguments (its
    own ``ctx``) and scores its block of the inputs not yet in ``out``. Rank 0 holds the output's
    lock (:class:`rose_core.output_lock.OutputLock`) meanwhile: a second writer gets
    :class:`rose_core.output_lock.OutputLocked` naming this process.
    """
    from rose_core.distributed import DistContext

    ctx = ctx or DistContext()
    if not scorer.fitted:
        raise RuntimeError("The scorer is not fitted.")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise InvalidInput(f"--batch-size must be a positive integer, got {batch_size!r}.")
    if not (isinstance(flush_rows, int) and flush_rows >= 1):
        raise InvalidInput(f"flush_rows must be a positive integer, got {flush_rows!r}.")
    if not math.isfinite(threshold):
        raise InvalidInput(f"The threshold must be finite, got {threshold!r}.")
    model = scorer.model
    names = scorer.layer_names
    md = {"rose.format": FORMAT, "rose.format_version": "1", "rose.key": inputs.key_column,
          "rose.fit_id": fit_id(scorer), "rose.threshold": repr(float(threshold)),
          "rose.layers": json.dumps(names), "rose.nll": _nll_description(model),
          "rose.method": f"rose-{scorer.fisher_kind}", "rose.input": inputs.description}
    md.update(metadata or {})
    schema = output_schema(inputs.key_column, names, md)

    lock = _lock_output(str(out), ctx)   # one writer per output: rank 0 holds it (re-entrant) for the job
    try:
        return _score_locked(scorer, inputs, Path(out), ctx, md, schema, threshold=threshold, batch_size=batch_size,
                             workers=workers, flush_rows=flush_rows, overwrite=overwrite, progress=progress)
    finally:
        if lock is not None:
            lock.release()


def _score_locked(scorer, inputs: ImageInputs, out: Path, ctx, md: dict, schema, *, threshold: float,
                  batch_size: int, workers: int, flush_rows: int, overwrite: bool, progress: bool) -> ScoreSummary:
    """The body of :func:`score_inputs`, run while rank 0 holds the output lock."""
    import pyarrow as pa
    import torch
    from torch.utils.data import DataLoader

    from rose_core.distributed import shard_range
    from rose_core.worker_guard import worker_init_fn

    model = scorer.model
    channels, size, _ = model.input_shape
    names = scorer.layer_names
    output = ScoreOutput(out, ctx, md, schema, flush_rows)
    done = output.prepare(overwrite)
    remaining = [i for i, k in enumerate(inputs.keys) if k not in done]
    ctx.check_same_keys([inputs.keys[i] for i in remaining],
                        "the inputs still to score (every rank must see the same input files and output folder)")
    lo, hi = shard_range(len(remaining), ctx.rank, ctx.world_size, unit=batch_size)
    mine = np.asarray(remaining[lo:hi], dtype=np.int64)

    import rose_core.data.preprocess  # noqa: F401  (imported before the workers fork: they start faster)
    import rose_core.imageio  # noqa: F401

    scorer.batch_size = batch_size
    loader = DataLoader(_DecodeItems(inputs, mine, size, channels), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate,
                        worker_init_fn=worker_init_fn() if workers > 0 else None)
    n_dims = float(channels * size * size)
    ln2 = math.log(2.0)
    from tqdm import tqdm

    bar = tqdm(total=len(mine), unit="img", disable=not (progress and ctx.is_main), file=sys.stderr,
               desc="scoring" if not ctx.is_distributed else f"scoring (rank 0 of {ctx.world_size})")
    t_model = t_wait = t_write = 0.0
    n_errors = 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            positions, ok, images, errors = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        k = len(positions)
        cols = {c: np.full(k, np.nan) for c in ("rose_score", "nll_nats", "bits_per_dim")}
        raw = np.full((k, len(names)), np.nan)
        z = np.full((k, len(names)), np.nan)
        if images is not None:
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
            res = scorer.score(x.to(scorer.device, scorer.dtype))
            cols["rose_score"][ok] = res.score
            cols["nll_nats"][ok] = res.extras["loss"]
            cols["bits_per_dim"][ok] = res.extras["loss"] / (n_dims * ln2)
            raw[ok], z[ok] = res.extras["layer_raw"], res.extras["layer_z"]
        t2 = time.perf_counter()
        keys = [inputs.keys[int(p)] for p in positions]
        verdict = [None if not o else ("OOD" if s > threshold else "in-distribution")
                   for o, s in zip(ok, cols["rose_score"])]
        arrays = [pa.array(keys, type=schema.field(0).type)]
        for c in ("rose_score", "nll_nats", "bits_per_dim"):
            arrays.append(pa.array(cols[c], mask=~ok))
        arrays.append(pa.array(verdict, type=pa.string()))
        arrays += [pa.array(raw[:, j], mask=~ok) for j in range(len(names))]
        arrays += [pa.array(z[:, j], mask=~ok) for j in range(len(names))]
        arrays.append(pa.array(errors, type=pa.string()))
        output.add(pa.Table.from_arrays(arrays, schema=schema))
        n_errors += int((~ok).sum())
        t3 = time.perf_counter()
        t_wait += t1 - t0
        t_model += t2 - t1
        t_write += t3 - t2
        bar.update(k)
    t4 = time.perf_counter()
    final = output.finish()
    t_write += time.perf_counter() - t4
    elapsed = time.perf_counter() - start
    bar.close()
    cpu = time.process_time() - cpu_start
    per_rank = ctx.all_gather_floats([len(mine), n_errors, elapsed, t_model, t_wait, t_write, cpu])
    files = [final]
    if ctx.is_main:
        output.tidy()
        files = output._finals()
    return ScoreSummary(inputs=len(inputs), already_done=len(inputs) - len(remaining),
                        scored=int(sum(v[0] for v in per_rank)), errors=int(sum(v[1] for v in per_rank)),
                        seconds=max(v[2] for v in per_rank), threshold=float(threshold), out=Path(out),
                        files=files, model_seconds=max(v[3] for v in per_rank),
                        wait_seconds=max(v[4] for v in per_rank), write_seconds=max(v[5] for v in per_rank),
                        processes=ctx.world_size, cpu_seconds=sum(v[6] for v in per_rank),
                        duplicates_removed=output.duplicates_removed)


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------

def _fit_images(model, card: dict, dataset: str | None, split: str, n: int, seed: int, ctx,
                root: str | os.PathLike | None = None) -> tuple[np.ndarray, str]:
    """``n`` random images (``seed``) of the fit dataset, prepared for ``model``: uint8 ``(N, S, S, C)``."""
    from rose_core.data import load_dataset, prepare_images

    name = dataset or card.get("dataset")
    if not name:
        raise CheckpointError("The checkpoint's card does not name its training dataset; pass --fit-dataset.")
    if n < 1:
        raise InvalidInput(f"The number of fit images must be >= 1, got {n}.")
    channels, size, _ = model.input_shape
    ds = _load_dataset_once(ctx, name, split, n=n, seed=seed, root=root)
    return prepare_images(ds.images, size, channels), f"{len(ds)} {name}/{split} images (seed {seed})"


def _run_fit(model, card: dict, out: Path, ctx, *, fisher: str, layers: str, normalization: str,
             fit_fraction: float, damping: float, batch_size: int, dataset: str | None, split: str, n: int,
             seed: int, progress: bool):
    """Fit (distributed when ``ctx`` is), save on rank 0; returns ``(scorer, calibration, description, seconds,
    CPU seconds summed over ranks)``."""
    from tqdm import tqdm

    from rose_core.distributed import fit_scorer, fit_work
    from rose_core.scorers.rose import RoseScorer

    scorer = RoseScorer(model, fisher=fisher, layers=layers, normalization=normalization,
                        fit_fraction=fit_fraction, damping=damping, batch_size=batch_size)
    images, what = _fit_images(model, card, dataset, split, n, seed, ctx)
    bar = tqdm(total=fit_work(len(images), scorer, ctx), unit="img", file=sys.stderr,
               disable=not (progress and ctx.is_main),
               desc=f"fitting ROSE-{fisher.upper()}" + (f" (rank 0 of {ctx.world_size})" if ctx.is_distributed else ""))
    t0, c0 = time.perf_counter(), time.process_time()
    calibration = fit_scorer(scorer, images, ctx, progress=bar.update)
    seconds = time.perf_counter() - t0
    cpu_seconds = sum(v[0] for v in ctx.all_gather_floats([time.process_time() - c0]))
    bar.close()
    err = None
    if ctx.is_main:
        try:
            save_fit(scorer, calibration, out)
        except OSError as exc:
            err = InvalidInput(f"Cannot write the fit to {out}: {exc}")
    ctx.agree(err)
    return scorer, calibration, what, seconds, cpu_seconds


def _load_model(args, ctx):
    from rose_core.checkpoint import load_model

    model, card = load_model(args.checkpoint, device=ctx.device)
    if not callable(getattr(model, "per_sample_loss", None)) or not hasattr(model, "scored_layers"):
        raise CheckpointError(f"{args.checkpoint} is a {card.get('kind')!r} checkpoint, not a generative model.")
    return model, card


def _check_common_args(args) -> None:
    """Checks shared by ``fit`` and ``score`` (before any model is loaded; the numbers first: they need no
    import of torch or of the dataset registry, so they fail within a fraction of a second)."""
    from rose_core import cli_checks as c

    c.at_least("--batch-size", args.batch_size, 1)
    c.at_least("--seed", args.seed, 0)
    c.in_range("--dist-timeout", args.dist_timeout, 0.0, math.inf, lo_open=True, hi_open=True)
    if args.report:
        c.writable_folder("--report", Path(args.report).parent)


def _check_model_args(args) -> None:
    """``--checkpoint`` and ``--device`` (these import torch)."""
    from rose_core import cli_checks as c

    c.checkpoint_exists("--checkpoint", args.checkpoint)
    c.device_spec("--device", args.device)


def _check_fit_args(args) -> None:
    """``fit``: options and the output location, before the model is loaded (one-line errors)."""
    from rose_core import cli_checks as c

    _check_common_args(args)
    c.at_least("--n-images", getattr(args, "n_images", None), 1, optional=True)
    c.in_range("--fit-fraction", getattr(args, "fit_fraction", None), 0.0, 1.0, lo_open=True, hi_open=True,
               optional=True)
    c.in_range("--damping", getattr(args, "damping", None), 0.0, math.inf, hi_open=True, optional=True)
    _check_model_args(args)
    if args.dataset is None:   # the checkpoint's training set: its card names it (a small JSON read)
        from rose_core.checkpoint import read_card

        c.known_dataset("the checkpoint's dataset", read_card(args.checkpoint).get("dataset"), args.split)
    c.known_dataset("--dataset", args.dataset, args.split)
    c.writable_stem("--out", args.out, (".json", ".safetensors", ".calibration.npy"))


def _check_score_args(args) -> None:
    """``score``: options, inputs named and the output location, before the model is loaded."""
    from rose_core import cli_checks as c

    _check_common_args(args)
    c.in_range("--tpr", args.tpr, 0.0, 1.0, lo_open=True)
    c.finite("--threshold", args.threshold, optional=True)
    c.at_least("--flush-rows", args.flush_rows, 1)
    c.at_least("--workers", args.workers, 0, optional=True)
    c.at_least("--limit", args.limit, 0, optional=True)
    c.at_least("--fit-images", args.fit_images, 1)
    check_output_location(args.out, int(os.environ.get("WORLD_SIZE", "1")) > 1)   # WORLD_SIZE: set by torchrun
    _check_model_args(args)
    c.known_dataset("--dataset", args.dataset, args.split)
    c.known_dataset("--fit-dataset", args.fit_dataset, "train")
    if args.fit != "auto":
        from rose_core.checkpoint import card_path

        if not card_path(args.fit).exists():
            c.writable_stem("--fit", args.fit, (".json", ".safetensors", ".calibration.npy"))


def _lock_output(out: str, ctx) -> OutputLock | None:
    """Rank 0 takes the output lock (collective: every rank raises the same error when it is held)."""
    lock, err = None, None
    if ctx.is_main:
        try:
            lock = OutputLock(out, command="score").acquire()
        except RoseError as exc:
            err = exc
    ctx.agree(err)
    return lock


def _report(path: str | None, summary: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(summary, indent=2, default=str) + "\n")


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
        scorer, calibration, what, seconds, cpu_seconds = _run_fit(
            model, card, Path(args.out), ctx, fisher=args.fisher, layers=args.layers,
            normalization=args.normalization, fit_fraction=args.fit_fraction, damping=args.damping,
            batch_size=args.batch_size, dataset=args.dataset, split=args.split, n=args.n_images, seed=args.seed,
            progress=not args.quiet)
        if ctx.is_main:
            from rose_core.checkpoint import card_path

            n = scorer.n_fisher + (scorer.n_norm if scorer.normalization == "separate" else 0)
            print(f"fitted ROSE-{scorer.fisher_kind.upper()} on {what} with {ctx.describe()}: "
                  f"{scorer.n_fisher} Fisher + {scorer.n_norm} normalisation images in {seconds:.1f} s "
                  f"({n / seconds:.1f} images/s); wrote {card_path(args.out)} (+ .safetensors, .calibration.npy)")
            _report(args.report, {"command": "fit", "processes": ctx.world_size, "backend": ctx.backend,
                                  "images": n, "n_fisher": scorer.n_fisher, "n_norm": scorer.n_norm,
                                  "seconds": seconds, "images_per_second": n / seconds, "cpu_seconds": cpu_seconds,
                                  "fit": str(card_path(args.out)), "fit_id": fit_id(scorer)})
        ctx.barrier()
        return 0
    finally:
        shutdown(ctx)


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
    ``(scorer, calibration or None, fit path, how)``."""
    from rose_core.checkpoint import card_path
    from rose_core.scorers.rose import RoseScorer

    auto = args.fit == "auto"
    dataset = args.fit_dataset or card.get("dataset") or ""
    path = auto_fit_path(args.checkpoint, args.fisher, dataset, args.fit_images, args.seed) if auto else Path(args.fit)
    exists = card_path(path).exists()
    ctx.check_same(exists, f"whether the fit {card_path(path)} exists")
    err, scorer, reason = None, None, None
    if exists:
        try:
            scorer = RoseScorer.load(path, model, device=ctx.device)
            calibration = load_calibration(path)
        except CheckpointError as exc:
            if not auto:
                err = CheckpointError(f"--fit {path}: {exc}")
            else:
                reason = str(exc)
                scorer = None
    ctx.agree(err)
    ctx.check_same(scorer is None, "whether the fit could be loaded")
    if scorer is not None:
        return scorer, calibration, path, "loaded"
    if reason and ctx.is_main:
        log.warning("The automatic fit %s is not used (%s); fitting again.", path, reason)
    scorer, calibration, what, seconds, _ = _run_fit(
        model, card, path, ctx, fisher=args.fisher, layers="default", normalization="separate", fit_fraction=0.5,
        damping=1e-8, batch_size=args.batch_size, dataset=args.fit_dataset, split="train", n=args.fit_images,
        seed=args.seed, progress=not args.quiet)
    if ctx.is_main:
        print(f"fitted ROSE-{scorer.fisher_kind.upper()} on {what} in {seconds:.1f} s; saved {card_path(path)}",
              file=sys.stderr)
    return scorer, calibration, path, "fitted"


def _cmd_score(args: argparse.Namespace) -> int:
    _check_score_args(args)   # before the imports below: a bad number fails before torch is even imported
    from rose_core.checkpoint import card_path
    from rose_core.distributed import init_distributed, shutdown
    from rose_core.metrics import threshold_at_tpr

    ctx = init_distributed(device=args.device, timeout_minutes=args.dist_timeout)
    lock = None
    try:
        lock = _lock_output(args.out, ctx)   # a second writer stops here, before the model is loaded
        err, inputs, model, card = None, None, None, None
        try:
            inputs = _resolve_inputs(args, ctx)
            model, card = _load_model(args, ctx)
        except RoseError as exc:
            err = exc
        ctx.agree(err)
        ctx.check_same_keys(inputs.keys, "the list of inputs (every rank must see the same files)")
        scorer, calibration, fit_path, how = _get_fit(args, model, card, ctx)
        if args.threshold is not None:
            threshold, source = float(args.threshold), "--threshold"
        elif calibration is None:
            raise CheckpointError(
                f"The fit {card_path(fit_path)} has no calibration scores ({_calibration_path(fit_path).name}, "
                "written by `python -m rose_core fit`), so the verdict threshold is unknown: pass --threshold, "
                "or refit with `python -m rose_core fit`.")
        else:
            threshold = threshold_at_tpr(calibration, args.tpr)
            source = (f"TPR {args.tpr:g} of {len(calibration)} in-distribution calibration scores "
                      f"(the fit's normalisation split, {_calibration_path(fit_path)})")
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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model checkpoint (stem or .json card)")
    p.add_argument("--fisher", choices=["ekfac", "diag"], default="ekfac")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward/backward pass (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random subset of fit images")
    p.add_argument("--device", default="auto", help="auto (cuda:<local rank> if available, else cpu), cpu, cuda")
    p.add_argument("--dist-timeout", type=float, default=30.0,
                   help="minutes a collective may wait for the other processes (torchrun runs)")
    p.add_argument("--report", default=None, help="also write the summary as JSON to this file (rank 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register_commands(sub) -> None:
    """Add ``fit`` and ``score`` to the CLI's sub-parsers (``rose_core.cli._EXTRA_COMMANDS``)."""
    p = sub.add_parser(
        "fit", help="fit the ROSE scorer (one process, or several with torchrun)",
        description="Fit ROSE's Fisher and normalisation on in-distribution images of a registry dataset. "
                    "Under torchrun each rank fits its shard and the sums are all-reduced; rank 0 writes "
                    "<out>.safetensors, <out>.json and <out>.calibration.npy.")
    _common(p)
    p.add_argument("--out", required=True, help="fit path (fit.safetensors, fit.json or the stem)")
    p.add_argument("--n-images", type=int, default=2000,
                   help="in-distribution images, a random subset (--seed); not '--n': torchrun would take it for "
                        "an abbreviation of its own --nnodes/--nproc-per-node")
    p.add_argument("--dataset", default=None, help="registry dataset (default: the checkpoint's training set)")
    p.add_argument("--split", default="train")
    p.add_argument("--layers", default="default", choices=["default", "all"])
    p.add_argument("--normalization", default="separate", choices=["separate", "same"])
    p.add_argument("--fit-fraction", type=float, default=0.5)
    p.add_argument("--damping", type=float, default=1e-8)
    p.set_defaults(func=_cmd_fit, batch_size=128)

    p = sub.add_parser(
        "score", help="score images into Parquet (one process, or several with torchrun)",
        description="Stream images through ROSE into Parquet: one row per image with the ROSE score, per-layer "
                    "raw and z-scores, NLL, verdict and error. Resumable; see rose_core.batch_score.")
    _common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", default=None, help="folder of images (recursive)")
    src.add_argument("--list", default=None, help="text file with one image path per line")
    src.add_argument("--dataset", default=None, help="registry dataset to score")
    p.add_argument("--split", default="test", help="split of --dataset (default test)")
    p.add_argument("--ext", default=None, help="only files with these extensions, e.g. png,jpg (--input)")
    p.add_argument("--limit", type=int, default=None, help="only the first N inputs")
    p.add_argument("--fit", default="auto",
                   help="ROSE fit path; 'auto' (default) or a path that does not exist: fit on the checkpoint's "
                        "training set and save it there (auto: under results/cache/fits/)")
    p.add_argument("--fit-images", type=int, default=2000, help="training images for a new fit")
    p.add_argument("--fit-dataset", default=None, help="dataset of a new fit (default: the checkpoint's)")
    p.add_argument("--out", required=True,
                   help="scores.parquet (one process), or a directory of part-<rank>.parquet (torchrun)")
    p.add_argument("--tpr", type=float, default=0.95, help="in-distribution TPR of the verdict threshold")
    p.add_argument("--threshold", type=float, default=None, help="use this ROSE threshold instead")
    p.add_argument("--workers", type=int, default=None, help="decoding processes per rank (default: spare cores, <= 4)")
    p.add_argument("--flush-rows", type=int, default=4096, help="rows buffered before a segment is written")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output instead of resuming")
    p.set_defaults(func=_cmd_score)
