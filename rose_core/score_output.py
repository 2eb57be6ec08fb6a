"""The files of a scores output: schema, streaming segments, resuming, duplicates, location checks.

Used by :func:`rose_core.batch_score.score_inputs`; the layout and the resume rules are described
in :mod:`rose_core.batch_score`. What this module adds to them:

* :func:`check_output_location` refuses an ``--out`` that cannot be a scores output — an existing
  file that is not Parquet, an existing folder holding other files, a folder that cannot be
  written — before any model is loaded.
* **Duplicate rows** (the same key twice: left by versions without the output lock, when two
  processes wrote one output) are detected when a run resumes and removed, keeping the first row
  of each key (final files first, then segments, in name order). The count is logged and reported.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

from rose_core.errors import InvalidInput, RoseError

__all__ = ["FORMAT", "KEY_PATH", "KEY_INDEX", "output_schema", "read_scores", "check_output_location",
           "ScoreOutput"]

log = logging.getLogger(__name__)

FORMAT = "rose-batch-scores"
KEY_PATH, KEY_INDEX = "path", "index"
_SEGMENT = re.compile(r"^(?P<prefix>part(?:-\d{5})?)\.g(?P<gen>\d+)\.(?P<tag>[A-Za-z0-9_-]+)\.parquet$")
_PART = re.compile(r"^part-(?P<rank>\d{5})\.parquet$")


def check_output_location(out: str | os.PathLike, distributed: bool = False) -> None:
    """Raise :class:`InvalidInput` when ``out`` cannot hold a scores output (see the module docstring).

    Cheap (no Parquet is read): the CLI calls it before loading a model. Whether the folder
    around ``out`` is writable is checked when the output lock is created next to it.
    """
    out = Path(out)
    if out.is_file():
        if distributed:
            raise InvalidInput(f"--out {out} is a single Parquet file (from a one-process run); with several "
                               "processes --out must be a directory of parts. Use another --out.")
        with open(out, "rb") as fh:
            magic = fh.read(4)
        if magic != b"PAR1":
            raise InvalidInput(f"--out {out} exists and is not a Parquet file; it is not overwritten. "
                               "Choose another --out.")
    elif out.is_dir():
        other = sorted(p.name for p in out.iterdir()
                       if not (_PART.match(p.name) or p.name == "_partial" or p.name.startswith(".")))
        if other:
            shown = ", ".join(other[:3]) + (", …" if len(other) > 3 else "")
            raise InvalidInput(f"--out {out} is an existing folder that is not a scores output (it holds {shown}); "
                               "choose a new --out (a .parquet file, or a folder that does not exist yet).")
        if not os.access(out, os.W_OK | os.X_OK):
            raise InvalidInput(f"--out {out} is a folder this user cannot write to. Choose a writable location.")
    elif out.exists():
        raise InvalidInput(f"--out {out} exists and is neither a file nor a folder. Choose another --out.")



def output_schema(key_column: str, layer_names: Sequence[str], metadata: dict[str, str]):
    """The Parquet schema of a scores file (see the module docstring)."""
    import pyarrow as pa

    fields = [pa.field(key_column, pa.string() if key_column == KEY_PATH else pa.int64(), nullable=False),
              pa.field("rose_score", pa.float64()), pa.field("nll_nats", pa.float64()),
              pa.field("bits_per_dim", pa.float64()), pa.field("verdict", pa.string())]
    fields += [pa.field(f"raw[{n}]", pa.float64()) for n in layer_names]
    fields += [pa.field(f"z[{n}]", pa.float64()) for n in layer_names]
    fields.append(pa.field("error", pa.string()))
    return pa.schema(fields, metadata={k: str(v) for k, v in metadata.items()})


def read_scores(out: str | os.PathLike):
    """Read a scores output (a file or a directory of parts) as a pandas DataFrame."""
    import pandas as pd

    out = Path(out)
    if out.is_dir():
        parts = sorted(p for p in out.glob("part-*.parquet") if _PART.match(p.name))
        frames = [pd.read_parquet(p) for p in parts]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return pd.read_parquet(out)


_COMPAT_KEYS = ("rose.format", "rose.key", "rose.fit_id", "rose.threshold", "rose.layers")


class ScoreOutput:
    """The files of one output (a single Parquet file, or a directory of one part per rank).

    Collective methods must be called on every rank in the same order.
    """

    def __init__(self, out: Path, ctx, metadata: dict[str, str], schema, flush_rows: int) -> None:
        self.out, self.ctx, self.flush_rows = out, ctx, int(flush_rows)
        check_output_location(out, ctx.is_distributed)
        self.duplicates_removed = 0
        if out.exists() and not out.is_dir():
            self.dir_mode = False
        else:
            self.dir_mode = out.is_dir() or ctx.is_distributed or out.suffix.lower() != ".parquet"
        self.partial = out / "_partial" if self.dir_mode else out.with_name(out.name + ".partial")
        self.prefix = f"part-{ctx.rank:05d}" if self.dir_mode else "part"
        self.final = out / f"{self.prefix}.parquet" if self.dir_mode else out
        self.metadata = dict(metadata)
        self.schema = schema
        self.gen = 0
        self.seq = 0
        self._buffer: list = []
        self._buffered = 0

    # --- layout ------------------------------------------------------------------------------
    def _final_of(self, prefix: str) -> Path:
        return self.out / f"{prefix}.parquet" if self.dir_mode else self.out

    def _finals(self) -> list[Path]:
        if self.dir_mode:
            return sorted(p for p in self.out.glob("part-*.parquet") if _PART.match(p.name)) \
                if self.out.is_dir() else []
        return [self.out] if self.out.exists() else []

    def _segments(self) -> list[tuple[Path, str, int]]:
        if not self.partial.is_dir():
            return []
        found = []
        for p in sorted(self.partial.iterdir()):
            m = _SEGMENT.match(p.name)
            if m:
                found.append((p, m["prefix"], int(m["gen"])))
        return found

    @staticmethod
    def _meta(path: Path) -> dict[str, str]:
        import pyarrow.parquet as pq

        try:
            md = pq.read_schema(path).metadata or {}
        except Exception as exc:
            raise InvalidInput(f"The existing output file {path} cannot be read ({exc}); delete it or use "
                               "--overwrite.") from None
        return {k.decode(): v.decode() for k, v in md.items()}

    def _gen_of(self, prefix: str) -> int:
        f = self._final_of(prefix)
        return int(self._meta(f).get("rose.generation", "0")) if f.exists() else 0

    # --- set-up (collective) -------------------------------------------------------------------
    def prepare(self, overwrite: bool) -> set:
        """Rank 0 cleans up (``overwrite``; merged or orphaned segments), then every rank reads the keys
        already written. Returns that set; raises if the existing output is of another fit/threshold."""
        err = None
        if self.ctx.is_main:
            try:
                self._clean(overwrite)
                self._check_compatible()
                self.duplicates_removed = self._remove_duplicates()
            except (RoseError, OSError) as exc:
                err = exc if isinstance(exc, RoseError) else InvalidInput(f"Cannot prepare --out {self.out}: {exc}")
        self.ctx.agree(err)
        done, err = set(), None
        try:
            done = self._done_keys()
            own = [g for _, prefix, g in self._segments() if prefix == self.prefix]
            self.gen = max([self._gen_of(self.prefix)] + own) + 1
        except RoseError as exc:
            err = exc
        self.ctx.agree(err)
        return done

    def _clean(self, overwrite: bool) -> None:
        import shutil

        if overwrite:
            for f in self._finals():
                f.unlink()
            if self.partial.exists():
                shutil.rmtree(self.partial)
        if self.dir_mode:
            self.out.mkdir(parents=True, exist_ok=True)
        elif not self.out.parent.exists():
            self.out.parent.mkdir(parents=True, exist_ok=True)
        if not self.partial.is_dir():
            return
        for p in self.partial.iterdir():
            if p.name.endswith(".tmp"):
                p.unlink()  # an interrupted write
        gens: dict[str, int] = {}
        world = self.ctx.world_size
        for path, prefix, gen in self._segments():
            if prefix not in gens:
                gens[prefix] = self._gen_of(prefix)
            if gen <= gens[prefix]:
                path.unlink()   # merged into its final file before the previous run stopped
                continue
            if self.dir_mode and prefix != "part" and int(prefix[5:]) >= world:
                # A segment of a rank that no longer exists (fewer processes now): hand it to a live rank.
                target = f"part-{int(prefix[5:]) % world:05d}"
                if target not in gens:
                    gens[target] = self._gen_of(target)
                tag = _SEGMENT.match(path.name)["tag"]
                path.rename(self.partial / f"{target}.g{gens[target] + 1:04d}.from-{prefix}-{tag}.parquet")

    def _files(self) -> list[Path]:
        """Every file holding rows: the final files, then the segments (in name order)."""
        return self._finals() + [p for p, _, _ in self._segments()]

    def _check_compatible(self) -> None:
        """Raise when a file of the output was written with another fit, threshold, key or layers."""
        for f in self._files():
            md = self._meta(f)
            for k in _COMPAT_KEYS:
                if md.get(k) != self.metadata.get(k):
                    what = {"rose.fit_id": "another fit (or model)", "rose.threshold": "another threshold",
                            "rose.key": "another kind of input", "rose.layers": "other layers",
                            "rose.format": "another program"}[k]
                    raise InvalidInput(f"The existing output {f} was written with {what} "
                                       f"({k}: {md.get(k)!r}, now {self.metadata.get(k)!r}); rows of different "
                                       "runs are not mixed. Use --overwrite to replace it, or another --out.")

    def _keys_of(self, f: Path) -> list:
        import pyarrow.parquet as pq

        key = self.metadata["rose.key"]
        try:
            return pq.read_table(f, columns=[key]).column(key).to_pylist()
        except Exception as exc:
            raise InvalidInput(f"The existing output file {f} cannot be read ({exc}); delete it or use "
                               "--overwrite.") from None

    def _done_keys(self) -> set:
        self._check_compatible()
        done: set = set()
        for f in self._files():
            done.update(self._keys_of(f))
        return done

    def _remove_duplicates(self) -> int:
        """Rank 0: drop every row whose key already appeared (in an earlier file, or earlier in the same
        file), rewriting only the files that hold such rows, row group by row group. Returns the count."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = self._files()
        keys = [self._keys_of(f) for f in files]
        counts = Counter(k for col in keys for k in col)
        if all(c == 1 for c in counts.values()):
            return 0
        seen: set = set()
        removed = 0
        for f, col in zip(files, keys):
            keep = []
            for k in col:
                keep.append(k not in seen)
                seen.add(k)
            if all(keep):
                continue
            removed += keep.count(False)
            pf = pq.ParquetFile(f)
            tmp = self.partial / (f.name + ".dedupe.tmp")
            self.partial.mkdir(parents=True, exist_ok=True)
            start = 0
            with pq.ParquetWriter(tmp, pf.schema_arrow) as writer:
                for i in range(pf.num_row_groups):
                    group = pf.read_row_group(i)
                    mask = pa.array(keep[start:start + group.num_rows], type=pa.bool_())
                    start += group.num_rows
                    writer.write_table(group.filter(mask))
            os.replace(tmp, f)
        log.warning("Removed %d duplicate rows from %s (keys written twice, e.g. by two processes writing the "
                    "same output with a version that did not lock it); the first row of each key is kept.",
                    removed, self.out)
        return removed

    # --- writing -----------------------------------------------------------------------------
    def add(self, table) -> None:
        self._buffer.append(table)
        self._buffered += table.num_rows
        if self._buffered >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffered:
            return
        self.partial.mkdir(parents=True, exist_ok=True)
        self.seq += 1
        path = self.partial / f"{self.prefix}.g{self.gen:04d}.s{self.seq:06d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(pa.concat_tables(self._buffer), tmp)
        os.replace(tmp, path)
        self._buffer, self._buffered = [], 0

    def finish(self) -> Path:
        """Write the last rows, merge this rank's segments into its final file, delete them."""
        import pyarrow.parquet as pq

        self._flush()
        segments = [p for p, prefix, _ in self._segments() if prefix == self.prefix]
        if not segments and self.final.exists():
            return self.final
        md = dict(self.metadata, **{"rose.generation": str(self.gen)})
        schema = self.schema.with_metadata(md)
        # The merged file is written in the side folder (which readers of the output skip) and renamed.
        self.partial.mkdir(parents=True, exist_ok=True)
        tmp = self.partial / (self.final.name + ".tmp")
        with pq.ParquetWriter(tmp, schema) as writer:
            sources = ([self.final] if self.final.exists() else []) + segments
            for src in sources:
                pf = pq.ParquetFile(src)
                for i in range(pf.num_row_groups):
                    writer.write_table(pf.read_row_group(i).cast(schema))
        os.replace(tmp, self.final)
        for p in segments:
            p.unlink()
        return self.final

    def tidy(self) -> None:
        """Remove the empty side folder (rank 0, after every rank finished)."""
        try:
            self.partial.rmdir()
        except OSError:
            pass


