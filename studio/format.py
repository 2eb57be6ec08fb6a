"""Formatting for display: styled tables, rates, enlarged images (no Streamlit)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd


def best_styled(table: pd.DataFrame, lower_better: bool = False, digits: int = 3):
    """A Styler of ``table`` shown as text with "—" for missing values (Streamlit would print None)
    and the best value of each column in green."""
    num = table.astype(float)
    best = num.eq(num.min() if lower_better else num.max()) & num.notna()
    text = num.map(lambda v: "—" if pd.isna(v) else f"{v:.{digits}f}")
    return text.style.apply(lambda _: np.where(best.to_numpy(), "background-color: #c7e9c0", ""), axis=None)


BEST = "background-color: #c7e9c0"
"""The best value of a row or column, in green."""


def by_method_tables(table: pd.DataFrame, lower_better: bool = False, per: int = 5, digits: int = 3,
                     fmt=None, mark_best: bool = True, label: str = "OOD set") -> list:
    """``table`` (methods × sets) turned into sets × methods and split into Stylers of at most ``per`` method columns,
    so that each fits a narrow page without scrolling sideways. Missing values read "—"; with ``mark_best``, the best
    method of each set (row), across all the pieces, is green. ``fmt`` formats a value (default: ``digits`` decimals);
    ``label`` heads the first column (the sets)."""
    num = table.astype(float).T
    if num.empty:
        return []
    best = num.eq(num.min(axis=1) if lower_better else num.max(axis=1), axis=0) & num.notna() & mark_best
    show = fmt or (lambda v: f"{v:.{digits}f}")
    text = num.map(lambda v: "—" if pd.isna(v) else show(v))
    pieces = np.array_split(np.arange(num.shape[1]), int(np.ceil(num.shape[1] / per)))
    out = []
    for idx in pieces:  # the sets as a first column (sized to its names, unlike a grid's index), shown without index
        piece = text.iloc[:, idx].reset_index()
        piece.columns = [label] + list(piece.columns[1:])
        mask = np.column_stack([np.zeros(len(piece), bool), best.iloc[:, idx].to_numpy()])
        out.append(piece.style.apply(lambda _, m=mask: np.where(m, BEST, ""), axis=None).hide(axis="index"))
    return out


def table_height(n_rows: int) -> int:
    """Pixels for a data grid showing ``n_rows`` rows and its header without scrolling (35 px a row)."""
    return 35 * (n_rows + 1) + 3


def number_text(v, digits: int = 3) -> str:
    """A number with ``digits`` decimals, "—" when missing (a NumberColumn would print None)."""
    return "—" if v is None or pd.isna(v) else f"{float(v):.{digits}f}"


def device_text(device: str) -> str:
    """A recorded device with correct grammar: ``cpu (1 threads)`` → ``cpu (1 thread)``."""
    return re.sub(r"\b1 threads\b", "1 thread", str(device))


def rate_text(v: float | None) -> str:
    """Images per second with sensible digits: 1414, 19.3, 0.0173."""
    if v is None or not np.isfinite(v):
        return "—"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.3g}"


def export_name(model: str, fisher: str, verdict: str) -> str:
    """The Score page's CSV file name: one per model, Fisher and verdict test (``rose-vae-fmnist-ekfac-rose.csv``)."""
    return f"rose-{model}-{fisher}-{verdict.replace('+', '-')}.csv"


def upscale(image: np.ndarray, size: int = 128) -> np.ndarray:
    """Nearest-neighbour enlargement of a small uint8 (H, W, C) image for display."""
    from PIL import Image

    a = image[..., 0] if image.shape[-1] == 1 else image
    return np.asarray(Image.fromarray(a).resize((size, size), Image.NEAREST))


def detector_blocks(table: pd.DataFrame, set_names: dict[str, str]) -> list[tuple[str, str, object]]:
    """:func:`rose_core.reporting.classifiers.detector_comparison` cut into one narrow table per model (a
    page at 1000 px has room for about seven short columns): ``(model, image counts, Styler)`` with the
    columns method, one AUROC per set (headed by ``set_names[set]``), mean AUROC, mean FPR95 and images/s.
    The "(pytorch-ood)" suffix is dropped (the caption says where the detectors come from); within a block
    the best value of each AUROC column and the lowest mean FPR95 are green."""
    out = []
    aurocs = [c for c in table.columns if c.startswith("AUROC ")]
    for model, part in table.groupby("model", sort=False):
        num = part[aurocs + ["mean AUROC", "mean FPR95"]].astype(float)
        best = num.eq(num.max()) & num.notna()
        best["mean FPR95"] = num["mean FPR95"].eq(num["mean FPR95"].min()) & num["mean FPR95"].notna()
        text = num.map(lambda v: "—" if pd.isna(v) else f"{v:.3f}")
        text.insert(0, "method", part["method"].str.replace(" (pytorch-ood)", "", regex=False).to_numpy())
        text["img/s"] = part["images/s"].map(rate_text).to_numpy()
        text = text.rename(columns={**{f"AUROC {s}": n for s, n in set_names.items()}, "mean AUROC": "mean",
                                    "mean FPR95": "FPR95"}).reset_index(drop=True)
        mask = np.column_stack([np.zeros(len(text), bool), best.to_numpy(), np.zeros(len(text), bool)])
        styler = text.style.apply(lambda _, m=mask: np.where(m, BEST, ""), axis=None).hide(axis="index")
        counts = ", ".join(dict.fromkeys(part["n in / n OOD"]))
        out.append((str(model), counts, styler))
    return out
