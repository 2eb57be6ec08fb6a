"""The words of the Score page's verdict card (no Streamlit): which test fired, both p-values, and
what they mean in plain words.

The live scorer (:class:`rose_core.live.LiveScorer`) gives each image ``p_rose`` (ROSE's upper-tail
p-value), ``p_typicality`` (the two-sided likelihood typicality p-value), ``p_combined`` (their
combination by the verdict's rule), the ``verdict_test`` (``"rose"`` or ``"rose+typicality"``) and
``fired``: ``"rose"``, ``"typicality"``, ``"both"``, ``"joint"`` (only the two together) or
``"none"`` (in-distribution); see :mod:`rose_core.scorers.typicality`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TEST_NAMES = {"rose": "ROSE", "rose+typicality": "ROSE + likelihood typicality"}

_FIRED = {
    "rose": "ROSE fired: the model would have to change unusually much to fit this image.",
    "typicality": "Likelihood typicality fired: the model finds this image atypically likely or unlikely "
                  "(too smooth or too noisy, for example) compared with the held-out calibration images.",
    "both": "Both tests fired: the model would have to change unusually much to fit it, and its likelihood "
            "is atypical.",
    "joint": "Neither test alone is conclusive, but together their evidence is.",
    "none": "Neither test finds it unusual enough.",
}


@dataclass(frozen=True)
class Verdict:
    ood: bool
    headline: str
    """``OOD`` or ``in-distribution``, with the test that fired."""
    detail: str
    """Markdown: what fired and the p-values."""


def p_text(p: float) -> str:
    """A p-value with sensible digits (``—`` when there is none)."""
    if p is None or not math.isfinite(p):
        return "—"
    return f"{p:.4f}" if p >= 0.001 else f"{p:.1e}"


def describe(fired: str, p_rose: float, p_typicality: float, p_combined: float, verdict_test: str) -> Verdict:
    """The verdict of one image in words."""
    if fired not in _FIRED:
        raise ValueError(f"Unknown fired value {fired!r}; expected one of {', '.join(_FIRED)}.")
    if verdict_test not in TEST_NAMES:
        raise ValueError(f"Unknown verdict test {verdict_test!r}; expected one of {', '.join(TEST_NAMES)}.")
    ood = fired != "none"
    who = {"rose": "ROSE", "typicality": "typicality", "both": "ROSE and typicality",
           "joint": "ROSE + typicality together"}.get(fired)
    headline = f"OOD ({who} fired)" if ood else "in-distribution"
    lines = [_FIRED[fired],
             f"p-value ROSE **{p_text(p_rose)}** · typicality **{p_text(p_typicality)}**"
             + (f" · combined **{p_text(p_combined)}**" if verdict_test == "rose+typicality" else "")]
    if verdict_test == "rose":
        lines.append("The verdict uses ROSE alone; the typicality p-value is shown for information.")
    return Verdict(ood, headline, "  \n".join(lines))


RULES = {"min-p": "the smaller of the two doubled (Bonferroni's min-p rule)",
         "fisher": "the two combined by Fisher's method"}


def meaning(verdict_test: str, tpr: float, rule: str = "min-p") -> str:
    """One plain-words paragraph on what the p-values and the verdict mean."""
    if verdict_test not in TEST_NAMES:
        raise ValueError(f"Unknown verdict test {verdict_test!r}; expected one of {', '.join(TEST_NAMES)}.")
    reads = "ROSE's p-value alone" if verdict_test == "rose" else f"one p-value: {RULES.get(rule, rule)}"
    return (f"A p-value is the share of held-out in-distribution images (test images the model never trained "
            f"on, set apart for calibration) that look at least as unusual to that test: 0.5 is ordinary, 0.01 "
            f"means only 1 % look as "
            f"unusual. ROSE asks how much the model would have to change to fit the image; typicality asks whether "
            f"its likelihood is too high *or* too low compared with those images. The verdict "
            f"({TEST_NAMES[verdict_test]}) reads {reads}, with a threshold that keeps {tpr:.0%} of the held-out "
            f"in-distribution images in-distribution, so about {1 - tpr:.0%} of genuine in-distribution images "
            f"are flagged too.")
