"""Where the app reads from, and the commands it quotes.

Checkpoints from ``$ROSE_CHECKPOINTS`` (default ``<repo>/checkpoints``), results bundles from
``$ROSE_RESULTS`` (default ``<repo>/results``), dataset caches from ``$ROSE_DATA`` (default
``<repo>/data``). The live scorer is the project's default definition (:mod:`rose_core.defaults`);
``$ROSE_LIVE_N_FISHER`` / ``$ROSE_LIVE_N_CALIBRATION`` override its fit sizes for quick trials and
tests. The live robustness AUROC uses ``$ROSE_LIVE_N`` images per side (default 64).
"""

from __future__ import annotations

import os
from pathlib import Path

from rose_core.results import EVALUATE_CMD

REPO = Path(__file__).resolve().parents[1]


def checkpoints_dir() -> Path:
    return Path(os.environ.get("ROSE_CHECKPOINTS") or REPO / "checkpoints")


def results_dir() -> Path:
    return Path(os.environ.get("ROSE_RESULTS") or REPO / "results")


def data_dir() -> Path:
    return Path(os.environ.get("ROSE_DATA") or REPO / "data")


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment; ``default`` when unset or not a number."""
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def evaluate_command(name: str, preset: str | None = None) -> str:
    """The harness command that computes (part of) a checkpoint's results bundle."""
    cmd = EVALUATE_CMD.format(name=name)
    return cmd + (f" --preset {preset}" if preset else "")
