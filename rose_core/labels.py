"""Display names for the app, charts and tables: methods, datasets, perturbations, metrics.

Plain functions of names (no Streamlit, no plotting), so a chart drawn in a notebook is labelled
like the app's. Dataset names come from the dataset registry's cards: a stand-in is always called
a stand-in and never carries the name of the dataset it replaces.
"""

from __future__ import annotations

from pathlib import Path

from rose_core.errors import RoseError

METHOD_LABELS = {
    "rose-ekfac": "ROSE (EKFAC)",
    "rose-diag": "ROSE (DIAG)",
    "nll": "NLL",
    "likelihood-ratio": "Likelihood Ratio",
    "likelihood-regret": "Likelihood Regret",
    "input-complexity-png": "Input Complexity (PNG)",
    "input-complexity-jp2": "Input Complexity (JPEG 2000)",
    "rnd": "RND",
}
PERTURBATION_LABELS = {
    "brightness": ("Brightness", "brightness factor (×)"),
    "svd": ("SVD blur", "K (smallest singular values dropped)"),
    "dct": ("DCT blur", "K (lowest frequencies kept per axis)"),
    "gaussian": ("Gaussian blur", "strength"),
    "random": ("Random pixels", "μ (fraction of pixels replaced)"),
}
"""Perturbation → (title, axis title of its strength)."""
METRIC_LABELS = {"auroc": "AUROC", "auprc_in": "AUPRC (in-dist. positive)",
                 "auprc_out": "AUPRC (OOD positive)", "fpr80": "FPR at 80% TPR", "fpr95": "FPR at 95% TPR"}


def method_label(method: str) -> str:
    """Readable name of a bundle method: ``rose-ekfac`` → ``ROSE (EKFAC)``; options of the harness's
    variants are summarised, e.g. ``rnd:path=checkpoints/rnd-fmnist-dct`` → ``RND (DCT)``,
    ``rose-ekfac:p=2`` → ``ROSE (EKFAC) [p=2]``."""
    base, _, opts = str(method).partition(":")
    label = METHOD_LABELS.get(base, base)
    if not opts:
        return label
    extras = []
    for item in opts.split(","):
        key, _, value = item.partition("=")
        if key in ("path", "background", "rnd"):
            stem = Path(value).name.lower()
            pert = next((p for p in PERTURBATION_LABELS if p != "brightness" and stem.endswith("-" + p)), None)
            extras.append(PERTURBATION_LABELS[pert][0].replace(" blur", "").replace("Random pixels", "Random")
                          if pert else stem)
        else:
            extras.append(item)
    return f"{label} ({', '.join(extras)})" if all("=" not in e for e in extras) else f"{label} [{', '.join(extras)}]"


def _card_or_none(name: str):
    """The registry card of ``name``, or None for names the registry does not know."""
    from rose_core.data import get_card

    try:
        return get_card(name)
    except (RoseError, KeyError):
        return None


def dataset_label(name: str) -> str:
    """``mnist`` → ``MNIST``; stand-ins say so; ``overall`` → ``Overall``; unknown names unchanged."""
    if name == "overall":
        return "Overall"
    card = _card_or_none(name)
    if card is None:
        return name
    return card.title if card.real or "stand-in" in card.title.lower() else f"{card.title} (stand-in)"


def dataset_short(name: str) -> str:
    """A compact column label: the title of a real dataset (``MNIST``), else the registry name
    (``letters-fonts``), so a stand-in never carries the name of the dataset it replaces."""
    if name == "overall":
        return "Overall"
    card = _card_or_none(name)
    if card is None:
        return name
    return card.title if card.real and not card.stands_in_for and len(card.title) <= 16 else name


def stand_in_note(names) -> str:
    """'letters-fonts = Letters A–J from fonts (NotMNIST stand-in); …' for the stand-ins among ``names``."""
    return "; ".join(f"{n} = {dataset_label(n)}" for n in names if n != "overall" and dataset_short(n) == n)


def perturbation_label(perturbation: str) -> tuple[str, str]:
    """(title, strength axis title) of a perturbation; unknown ones by their name."""
    return PERTURBATION_LABELS.get(perturbation, (perturbation, "strength"))
