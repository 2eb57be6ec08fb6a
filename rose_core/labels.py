"""Display names for the app, charts and tables: methods, datasets, perturbations, metrics.

Method names come from the method registry (:func:`rose_core.methods.method_title`, re-exported
here as ``method_label``).

Plain functions of names (no Streamlit, no plotting), so a chart drawn in a notebook is labelled
like the app's. Dataset names come from the dataset registry's cards: a stand-in is always called
a stand-in and never carries the name of the dataset it replaces.
"""

from __future__ import annotations

from rose_core.errors import RoseError
from rose_core.methods import method_title as method_label  # noqa: F401  (the app's name for a method)

__all__ = ["PERTURBATION_LABELS", "METRIC_LABELS", "method_label", "dataset_label", "dataset_short", "stand_in_note",
           "perturbation_label", "JPEG_NOTE", "CLASSIFIER_TITLES", "classifier_rank"]

PERTURBATION_LABELS = {
    "brightness": ("Brightness", "brightness factor (×)"),
    "svd": ("SVD blur", "K (smallest singular values dropped)"),
    "dct": ("DCT blur", "K (lowest frequencies kept per axis)"),
    "gaussian": ("Gaussian blur", "strength"),
    "random": ("Random pixels", "μ (fraction of pixels replaced)"),
}
"""Perturbation → (title, axis title of its strength)."""
CLASSIFIER_TITLES = {"basic-cnn": "Basic CNN", "vgg11": "VGG-11", "resnet18": "ResNet-18"}
"""Classifier architecture (``rose_core.models.classifiers.ARCHITECTURES``) → display name, in the paper's
Figure 6 order (shallow to deep)."""


def classifier_rank(architecture: str) -> int:
    """Position of ``architecture`` in the Figure 6 order; unknown ones last."""
    order = list(CLASSIFIER_TITLES)
    return order.index(architecture) if architecture in order else len(order)


METRIC_LABELS = {"auroc": "AUROC", "auprc_in": "AUPRC (in-dist. positive)",
                 "auprc_out": "AUPRC (OOD positive)", "fpr80": "FPR at 80% TPR", "fpr95": "FPR at 95% TPR"}


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


JPEG_NOTE = ("JPEG is lossy, and its re-encoding artefacts are a real distribution shift for these models: every "
             "detector, the likelihood included, flags many Fashion-MNIST test images once they are re-encoded as "
             "JPEG (quality 75 or 95), so a JPEG of an in-distribution image may be called OOD.")
"""Said wherever JPEG images meet a verdict: the Score page's uploads, the stress suite's covariate group."""
