"""Streaming batch scoring to Parquet (one process or ``torchrun``); the commands are in :mod:`rose_core.commands`.

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
  are the ROSE scores of the fit's calibration images — the held-out calibration half of the
  in-distribution test split for the default fit (:mod:`rose_core.defaults`) — stored in the fit
  itself. Threshold, TPR and their source are in the Parquet metadata.
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

import copy
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

from rose_core.errors import InvalidInput, RoseError
from rose_core.output_lock import lock_collectively
from rose_core.score_output import (FORMAT, KEY_INDEX, KEY_PATH, ScoreOutput,  # noqa: F401
                                     output_schema, read_scores)

__all__ = ["ImageInputs", "folder_inputs", "list_inputs", "dataset_inputs", "ScoreSummary", "score_inputs",
           "output_schema", "read_scores", "fit_id", "default_workers", "load_dataset_once"]

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


def load_dataset_once(ctx, name: str, split: str, **kwargs):
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
    ds = load_dataset_once(ctx, name, split, root=root)
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


def fit_id(scorer) -> str:
    """A short hash that identifies a fitted scorer (model weights, settings, normalisation): the
    Parquet metadata ``rose.fit_id``, so results of another fit are never mixed into one output."""
    from rose_core.scorers.rose import model_fingerprint

    blob = json.dumps({
        "model": model_fingerprint(scorer.model), "fisher": scorer.fisher_kind, "layers": scorer.layer_names,
        "damping": scorer.damping, "n_fisher": scorer.n_fisher, "n_norm": scorer.n_norm,
        "mean": [repr(float(v)) for v in scorer.norm_mean], "std": [repr(float(v)) for v in scorer.norm_std],
        "p": repr(scorer.p), "beta": scorer.beta, "aggregation": scorer.aggregation,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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

    @property
    def idle_fraction(self) -> float:
        """Share of the run the scorer spent waiting for decoded batches (``wait_seconds / seconds``;
        the slowest rank's): near 0 when the decoding workers keep the model busy."""
        return self.wait_seconds / self.seconds if self.seconds > 0 else float("nan")


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

    lock = lock_collectively(str(out), ctx)   # one writer per output: rank 0 holds it (re-entrant) for the job
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
    import rose_core.imageio  # noqa: F401,F811

    scorer = copy.copy(scorer)   # the caller's scorer keeps its batch size; the copy shares the fit
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
