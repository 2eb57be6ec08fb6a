"""Plain words for the app's jargon, in one place (no Streamlit).

:data:`TERMS` maps a short key to ``(term, explanation)``; pages pass :func:`tip` as a widget's or a
metric's ``help=`` tooltip, and the Home page lists them all (:func:`markdown`). :func:`layer_label`
turns a layer's module path (``logvar_head``, ``levels.0.10.invconv``) into readable words.
"""

from __future__ import annotations

import re

TERMS: dict[str, tuple[str, str]] = {
    "rose_score": (
        "ROSE score",
        "A z-score-like number: how many in-distribution standard deviations the most unusual layer's "
        "score is above normal. Each layer's score is standardised with the mean and standard deviation "
        "it has on in-distribution images, negative values are set to 0, and the largest is kept. 0 = no "
        "layer is above its in-distribution average; 3 = one layer is 3 standard deviations above it; "
        "higher = more out-of-distribution."),
    "z_score": (
        "per-layer z-score (σ)",
        "One layer's score minus its in-distribution mean, divided by its in-distribution standard deviation: "
        "how many standard deviations that layer is from normal images."),
    "p_value": (
        "p-value",
        "The share of held-out in-distribution images that look at least as unusual: 0.5 is ordinary, "
        "0.01 means only 1 % look as unusual."),
    "tpr": (
        "TPR (true-positive rate)",
        "Here: the fraction of in-distribution images the threshold keeps as in-distribution. A 95 % TPR "
        "threshold also flags about 5 % of genuine in-distribution images."),
    "auroc": (
        "AUROC",
        "Area under the ROC curve, with OOD as the positive class: the chance that a random OOD image scores "
        "higher than a random in-distribution image. 1 = perfect, 0.5 = a coin flip, below 0.5 = the score "
        "ranks OOD images as *more* in-distribution."),
    "auprc_in": (
        "AUPRC (in)",
        "Area under the precision-recall curve with the in-distribution images as the positive class (the "
        "paper's Table 4); 1 is perfect. AUPRC (out) takes the OOD images as positive."),
    "fpr80": (
        "FPR80",
        "False-positive rate at 80 % TPR: the fraction of in-distribution images flagged when the threshold "
        "catches 80 % of the OOD images. Lower is better."),
    "ekfac": (
        "EKFAC",
        "Eigenvalue-corrected Kronecker-factored approximation of the Fisher information: per layer, two "
        "small matrices (input and output sides) with corrected eigenvalues. Accurate, the paper's choice "
        "for the VAE."),
    "diag": (
        "DIAG",
        "The diagonal of the Fisher information: one number per weight. Cheaper than EKFAC and the paper's "
        "choice for Glow."),
    "fisher": (
        "Fisher information",
        "How much the model's loss on in-distribution images curves in each weight direction. ROSE measures "
        "an image's gradient in this metric: a large gradient in a direction the in-distribution data rarely "
        "moves means an unusual image."),
    "nll": (
        "NLL",
        "Negative log-likelihood of an image under the model, in nats (or bits per dimension); lower = the "
        "model finds it more likely."),
    "elbo_mu": (
        "−ELBO at z = μ",
        "The VAE's training loss evaluated at the encoder's mean latent code (no sampling): reconstruction "
        "error plus the KL term. An upper bound on the NLL, deterministic and fast."),
    "iwae": (
        "IWAE, k = 20",
        "Importance-weighted estimate of the VAE's NLL from 20 latent samples per image: a tighter estimate "
        "than the −ELBO, about k times the cost of the encoder-decoder pass."),
    "bits_per_dim": (
        "bits/dim",
        "NLL divided by the number of pixel values and by ln 2: comparable across image sizes."),
    "typicality": (
        "likelihood typicality",
        "A two-sided test of the NLL: flags images whose likelihood is atypically high *or* low compared with "
        "held-out in-distribution images (e.g. blank or noisy images)."),
    "layer": (
        "layer names",
        "The module paths of the scored layers. VAE: `encoder.0`, `encoder.2`, `encoder.5` = encoder "
        "convolutions 1–3, `mu_head` = μ head (latent mean), `logvar_head` = log σ² head (latent log-variance). "
        "Glow: `levels.L.S.invconv` = flow level L+1, step S+1, invertible 1×1 convolution."),
}


def tip(key: str) -> str:
    """The explanation of a term, for a ``help=`` tooltip."""
    term, text = TERMS[key]
    return f"**{term}**: {text}"


def tips(*keys: str) -> str:
    """Several explanations, one paragraph each."""
    return "\n\n".join(tip(k) for k in keys)


def markdown() -> str:
    """The whole glossary as a Markdown list (the Home page's expander)."""
    return "\n".join(f"- **{term}**: {text}" for term, text in TERMS.values())


_VAE_ENCODER = {0: 1, 2: 2, 5: 3}
"""The paper's VAE encoder: index in ``nn.Sequential`` → convolution number (``rose_core.models.vae``)."""


def layer_label(name: str) -> str:
    """Readable name of a scored layer: ``encoder.0`` → ``encoder conv 1``, ``logvar_head`` → ``log σ² head``,
    ``levels.0.10.invconv`` → ``flow level 1, step 11, 1×1 conv``; unknown names unchanged."""
    if name == "mu_head":
        return "μ head"
    if name == "logvar_head":
        return "log σ² head"
    m = re.fullmatch(r"encoder\.(\d+)", name)
    if m:
        i = int(m.group(1))
        return f"encoder conv {_VAE_ENCODER[i]}" if i in _VAE_ENCODER else f"encoder layer {i}"
    m = re.fullmatch(r"levels\.(\d+)\.(\d+)\.(\w+)", name)
    if m:
        part = {"invconv": "1×1 conv", "actnorm": "actnorm", "coupling": "coupling"}.get(m.group(3), m.group(3))
        return f"flow level {int(m.group(1)) + 1}, step {int(m.group(2)) + 1}, {part}"
    return name
