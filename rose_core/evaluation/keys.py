"""Names and digests of what the harness caches: :class:`Unit` (one scored set), file and
object digests, and the dataset descriptions written to the manifest."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rose_core.checkpoint import sha256_file as file_sha256  # noqa: F401  (one file hash for the project)


def maybe_sha(path: Path | None) -> str | None:
    """SHA-256 of ``path``'s ``.safetensors`` weights, None when there is no such file."""
    if path is None:
        return None
    w = path.with_name(path.name + ".safetensors")
    return file_sha256(w) if w.exists() else None


def digest(obj: Any) -> str:
    """A short, stable digest of a JSON-able object (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def strength_key(strength: float | None) -> str:
    if strength is None or (isinstance(strength, float) and math.isnan(strength)):
        return "nan"
    return f"{float(strength):g}"


def same_strength(col: pd.Series, strength: float) -> pd.Series:
    if math.isnan(strength):
        return col.isna()
    return (col - strength).abs() < 1e-9


def dataset_role(card) -> str:
    """``real``, ``generated`` (noise, constant: made the paper's way), ``stand-in for X`` or
    ``real, standing in for X`` (for tables and the report)."""
    if card.stands_in_for:
        return ("real, standing in for " if card.real else "stand-in for ") + card.stands_in_for
    return "real" if card.real else "generated"


def card_dict(card) -> dict:
    d = asdict(card)
    d["role"] = dataset_role(card)
    d["stand_in"] = bool(card.stands_in_for)
    return d


@dataclass(frozen=True)
class Unit:
    """One scored set: a method on the images of a dataset under a perturbation setting
    (``perturbation="calibration"``: the unperturbed calibration half of the in-distribution test split)."""

    method: str
    dataset: str
    perturbation: str = "none"
    strength: float = math.nan
    repeat: int = 0

    @property
    def key(self) -> str:
        return f"{self.method}|{self.dataset}|{self.perturbation}|{strength_key(self.strength)}|{self.repeat}"

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        return ((frame["method"] == self.method) & (frame["dataset"] == self.dataset)
                & (frame["perturbation"] == self.perturbation) & same_strength(frame["strength"], self.strength)
                & (frame["repeat"] == self.repeat))
