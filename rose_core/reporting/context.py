"""What every report section reads: the :class:`Context` (bundles, checkpoints folder, the VAE and
Glow bundles the paper's tables are about) and the Markdown helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rose_core.methods import method_short as title  # noqa: F401  (the report's name for a method)
from rose_core.results import Results

__all__ = ["NOT_RUN", "Context", "fmt", "md_table", "title", "label", "experiment", "best_variant", "ratio"]

NOT_RUN = "_Not run for this checkpoint._"


# --------------------------------------------------------------------------------------------
# Context and Markdown helpers
# --------------------------------------------------------------------------------------------

@dataclass
class Context:
    root: Path
    checkpoints: Path
    bundles: dict[str, Results]
    vae: Results | None
    glow: Results | None
    vae_cifar10: Results | None = None
    """The CIFAR-10 VAE's bundle (``vae-cifar10``, trained on the 5,085-image subset), if any."""
    glow_cifar10: Results | None = None
    """The CIFAR-10 Glow's bundle (``glow-cifar10``, trained on the same subset), if any."""

    @classmethod
    def of(cls, root: Path, checkpoints: Path, bundles: dict[str, Results]) -> "Context":
        return cls(root, checkpoints, bundles, _main(bundles, "vae-fmnist", "vae"), _main(bundles, "glow-fmnist", "glow"),
                   bundles.get("vae-cifar10"), bundles.get("glow-cifar10"))


def _main(bundles: dict[str, Results], name: str, kind: str) -> Results | None:
    """The bundle ``name``, else the first Fashion-MNIST bundle of that kind."""
    return bundles.get(name) or next((b for b in bundles.values() if b.checkpoint_card().get("kind") == kind
                                      and b.checkpoint_card().get("dataset") == "fashion-mnist"), None)


def fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{float(v):.{nd}f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def label(b: Results, ds: str) -> str:
    """An OOD set's name, with † when the bundle's manifest marks it as an offline stand-in."""
    if ds == "overall":
        return "overall"
    return f"{ds} †" if b.ood_info().get(ds, {}).get("stand_in") else ds


def experiment(b: Results, name: str) -> dict:
    return b.meta.get("experiments", {}).get(name) or {}


def _mnist(b: Results, method: str) -> float:
    """MNIST AUROC with NaN as -1, for picking the best variant."""
    v = b.metric(method, "mnist")
    return -1 if math.isnan(v) else v


TABLE7_ROWS = {"InvConv": "rose-diag", "Full": "rose-diag:layers=all"}
"""Table 7's rows (a Glow's ROSE-DIAG on its InvConv layers vs on every convolution) and their methods."""


def has_table7(b: Results) -> bool:
    """Whether the bundle holds Table 7's all-layer rows (preset ``glow-layers``)."""
    return TABLE7_ROWS["Full"] in b.metric_methods()


def best_variant(b: Results) -> list[str]:
    """The ROSE-EKFAC variant with the highest MNIST AUROC (as a one-element list), if any."""
    variants = [m for m in b.metric_methods() if m.startswith("rose-ekfac:")]
    return [max(variants, key=lambda m: _mnist(b, m))] if variants else []


def ratio(b: Results) -> float | None:
    """ROSE-EKFAC images/s over Likelihood Regret's, from the bundle's throughput table."""
    r = b.images_per_s()
    if r.get("rose-ekfac") and r.get("likelihood-regret"):
        return r["rose-ekfac"] / r["likelihood-regret"]
    return None
