"""The method vocabulary: every OOD method's id, names, model kinds and options, and the one
parser of method-spec strings.

A *method spec* is a method id optionally followed by options::

    rose-ekfac
    rose-ekfac:n_fisher=5000
    rose-ekfac:n_fit=10000,normalization=same      # an explicit variant of the harness
    rnd:path=checkpoints/rnd-fmnist-dct

:func:`parse_method` turns one into a :class:`MethodSpec` (id + options, with a normalised
name: lower-case id, options sorted, numbers written the short way), :func:`split_methods`
splits a comma-separated list of specs, and :func:`method_title` / :func:`method_short` give a
spec's display name (``ROSE (EKFAC) [n_fisher=5000]`` / ``ROSE-EKFAC [n_fisher=5000]``).

The harness (:mod:`rose_core.evaluation`), the scorer builder
(:mod:`rose_core.scorers.registry`), the report and the app all read this module; it imports
nothing of the project, so anything may import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Method", "METHODS", "MethodSpec", "parse_method", "format_method", "split_methods", "parse_value", "format_value",
           "method_title", "method_short", "method_order", "default_methods", "methods_for_kind",
           "ROSE_FIT_OPTIONS", "ROSE_LEGACY_OPTIONS", "ROSE_AGG_OPTIONS", "ROSE_IDS", "NLL_BASED"]

ROSE_FIT_OPTIONS = ("n_fisher", "layers", "damping")
"""Options of a ROSE spec that override fields of the project's default fit
(:func:`rose_core.defaults.default_rose`)."""
ROSE_LEGACY_OPTIONS = ("n_fit", "normalization", "fit_fraction")
"""Options that make a ROSE spec an explicit *training-split* variant (Fisher and normalisation on
``n_fit`` training images split by ``fit_fraction``, or on the same images with
``normalization=same``), as the harness fitted before the default was defined."""
ROSE_AGG_OPTIONS = ("p", "beta", "aggregation")
"""Options of the aggregation of the layer z-scores (no refit)."""

_ROSE_OPTIONS = ROSE_FIT_OPTIONS + ROSE_LEGACY_OPTIONS + ROSE_AGG_OPTIONS
_PATH_OPTIONS = ("path", "background")
"""Options whose value is a checkpoint path (shown by its perturbation or file name)."""
_PERTURBATION_NAMES = {"svd": "SVD", "dct": "DCT", "gaussian": "Gaussian", "random": "Random"}


@dataclass(frozen=True)
class Method:
    """One OOD method: ``id`` (as in specs and the results bundle), ``title`` (readable, the app),
    ``short`` (tables and the report), ``description``, the model ``kinds`` it applies to and the
    ``options`` a spec may carry. ``variant_short`` replaces ``short`` when a path option swaps the
    companion checkpoint (``SVD-RND`` with another RND is just an ``RND``)."""

    id: str
    title: str
    short: str
    description: str
    kinds: tuple[str, ...] = ("vae", "glow")
    options: tuple[str, ...] = ()
    variant_short: str | None = None


METHODS: dict[str, Method] = {m.id: m for m in (
    Method("rose-ekfac", "ROSE (EKFAC)", "ROSE-EKFAC",
           "ROSE with the EKFAC Fisher (the paper's method; the default for the VAE)", options=_ROSE_OPTIONS),
    Method("rose-diag", "ROSE (DIAG)", "ROSE-DIAG",
           "ROSE with the diagonal Fisher (the default for Glow, on its InvConv layers)", options=_ROSE_OPTIONS),
    Method("rose+typicality", "ROSE + typicality", "ROSE+Typ",
           "ROSE's test combined with a two-sided likelihood typicality test into one p-value, calibrated on "
           "the calibration half of the in-distribution test split",
           options=("fisher", "combine") + ROSE_FIT_OPTIONS + ROSE_AGG_OPTIONS),
    Method("typicality", "Likelihood typicality", "Typicality",
           "two-sided likelihood typicality test: the model's NLL atypically high or low relative to held-out "
           "in-distribution images", options=("fisher",) + ROSE_FIT_OPTIONS),
    Method("nll", "NLL", "NLL", "negative log-likelihood (IWAE k=20 for the VAE, exact for Glow)"),
    Method("likelihood-ratio", "Likelihood Ratio", "LRatio",
           "Likelihood Ratio (Ren et al. 2019); needs a background model", options=("background",)),
    Method("likelihood-regret", "Likelihood Regret", "LR(E)",
           "Likelihood Regret LR(E) (Xiao et al. 2020), VAE only", kinds=("vae",),
           options=("steps", "elbo_samples", "lr", "weight_decay")),
    Method("input-complexity-png", "Input Complexity (PNG)", "IC(png)",
           "Input Complexity with PNG (Serrà et al. 2020)"),
    Method("input-complexity-jp2", "Input Complexity (JPEG 2000)", "IC(jp2)",
           "Input Complexity with lossless JPEG 2000 (Serrà et al. 2020)"),
    Method("rnd", "RND", "SVD-RND", "SVD-RND (Choi & Chung 2020); needs a trained RND checkpoint",
           options=("path",), variant_short="RND"),
)}
"""Every method, in display order (ROSE first, then the baselines)."""

ROSE_IDS = ("rose-ekfac", "rose-diag")
NLL_BASED = ("nll", "likelihood-ratio", "input-complexity-png", "input-complexity-jp2")
"""Methods computed from the model's seeded NLL (the harness shares one NLL between them)."""

_DEFAULTS = {
    "vae": ("rose-ekfac", "rose-diag", "rose+typicality", "typicality", "nll", "likelihood-regret",
            "likelihood-ratio", "input-complexity-png", "input-complexity-jp2", "rnd"),
    "glow": ("rose-diag", "rose-ekfac", "rose+typicality", "typicality", "nll", "likelihood-ratio",
             "input-complexity-png", "input-complexity-jp2"),
}


def default_methods(kind: str) -> list[str]:
    """The methods the harness runs by default for a model kind (``vae``: the paper's Table 2 left plus
    SVD-RND; ``glow``: Table 2 right, ROSE-DIAG first, its default), ROSE + typicality and typicality
    beside ROSE and NLL."""
    if kind not in _DEFAULTS:
        raise ValueError(f"Unknown model kind {kind!r}; expected one of {', '.join(_DEFAULTS)}.")
    return list(_DEFAULTS[kind])


def methods_for_kind(kind: str) -> list[str]:
    """Every method id that applies to a model kind."""
    return [m.id for m in METHODS.values() if kind in m.kinds]


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------

def parse_value(v: str) -> Any:
    low = v.strip().lower()
    if low in ("inf", "infinity"):
        return math.inf
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v.strip()


def format_value(v: Any) -> str:
    if isinstance(v, float):
        if v == math.inf:
            return "inf"
        if v.is_integer():
            return str(int(v))
    return str(v)


@dataclass(frozen=True)
class MethodSpec:
    """A method id with options, e.g. ``rose-ekfac:p=2,aggregation=max`` (use :func:`parse_method`)."""

    name: str
    base: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def method(self) -> Method:
        return METHODS[self.base]

    @property
    def is_rose(self) -> bool:
        return self.base in ROSE_IDS

    @property
    def fisher(self) -> str | None:
        """``ekfac``/``diag`` for a ROSE spec (or a typicality spec that names one), else None."""
        if self.is_rose:
            return self.base.split("-", 1)[1]
        return self.opts.get("fisher")

    @property
    def is_main_rose(self) -> bool:
        """The plain ``rose-ekfac``/``rose-diag`` (their layers go to ``layers.parquet``)."""
        return self.is_rose and not self.options

    @property
    def is_legacy_rose(self) -> bool:
        """A ROSE spec fitted on training images (an ``n_fit``/``normalization``/``fit_fraction`` variant)."""
        return self.is_rose and any(k in self.opts for k in ROSE_LEGACY_OPTIONS)

    @property
    def title(self) -> str:
        return method_title(self)

    @property
    def short(self) -> str:
        return method_short(self)


def format_method(base: str, options: dict[str, Any] | Iterable[tuple[str, Any]] = ()) -> str:
    """The normalised spec string of ``base`` with ``options`` (sorted, numbers the short way)."""
    items = sorted(dict(options).items())
    return base + (":" + ",".join(f"{k}={format_value(v)}" for k, v in items) if items else "")


def parse_method(spec: str | MethodSpec) -> MethodSpec:
    """Parse ``id[:key=value,...]`` into a :class:`MethodSpec` with a normalised name.

    Raises ``ValueError`` naming the known ids or the allowed options when the id or an option is
    unknown, or an option is not ``key=value``.
    """
    if isinstance(spec, MethodSpec):
        return spec
    text = str(spec).strip()
    base, _, rest = text.partition(":")
    base = base.strip().lower().replace("_", "-")
    if base not in METHODS:
        raise ValueError(f"Unknown method {str(spec)!r}; expected one of {', '.join(METHODS)} "
                         "(optionally with options, e.g. rose-ekfac:p=2).")
    options: dict[str, Any] = {}
    if rest.strip():
        for item in rest.split(","):
            if "=" not in item:
                raise ValueError(f"Method option {item.strip()!r} in {str(spec)!r} must look like key=value.")
            k, v = item.split("=", 1)
            k = k.strip()
            if k in options:
                raise ValueError(f"Method option {k!r} is given twice in {str(spec)!r}.")
            options[k] = parse_value(v)
    allowed = METHODS[base].options
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"Method {base!r} takes no option(s) {', '.join(bad)}; "
                         f"allowed: {', '.join(allowed) or 'none'}.")
    if "fisher" in options and options["fisher"] not in ("ekfac", "diag"):
        raise ValueError(f"fisher= must be ekfac or diag, got {options['fisher']!r} in {str(spec)!r}.")
    items = tuple(sorted(options.items()))
    return MethodSpec(name=format_method(base, items), base=base, options=items)


def split_methods(text: str | None) -> list[str] | None:
    """Split a comma-separated list of specs whose entries may carry comma-separated options:
    ``"nll,rose-ekfac:p=2,aggregation=max,rose-diag"`` → ``["nll", "rose-ekfac:p=2,aggregation=max",
    "rose-diag"]`` (a ``key=value`` token without ``:`` continues the previous spec)."""
    if text is None:
        return None
    out: list[str] = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        if "=" in tok and ":" not in tok and out and ":" in out[-1]:
            out[-1] += "," + tok
        else:
            out.append(tok)
    return out


# --------------------------------------------------------------------------------------------
# Display names
# --------------------------------------------------------------------------------------------

def _path_summary(value: Any) -> str:
    """A checkpoint path shown by its perturbation (``…-dct`` → ``DCT``) or else its file name."""
    stem = Path(str(value)).name.lower()
    pert = next((p for p in _PERTURBATION_NAMES if stem.endswith("-" + p)), None)
    return _PERTURBATION_NAMES[pert] if pert else Path(str(value)).name


def _display(spec: str | MethodSpec, short: bool) -> str:
    try:
        s = parse_method(spec)
    except ValueError:  # a name from an older bundle: shown as it is
        return str(spec)
    m = s.method
    paths = [_path_summary(v) for k, v in s.options if k in _PATH_OPTIONS]
    rest = [f"{k}={format_value(v)}" for k, v in s.options if k not in _PATH_OPTIONS]
    name = (m.variant_short or m.short) if (short and paths) else (m.short if short else m.title)
    if paths:
        name += f" ({', '.join(paths)})"
    if rest:
        name += f" [{', '.join(rest)}]"
    return name


def method_title(spec: str | MethodSpec) -> str:
    """Readable name of a spec (the app): ``rose-ekfac`` → ``ROSE (EKFAC)``,
    ``rnd:path=checkpoints/rnd-fmnist-dct`` → ``RND (DCT)``, ``rose-ekfac:p=2`` → ``ROSE (EKFAC) [p=2]``.
    A string that is not a valid spec is returned unchanged."""
    return _display(spec, short=False)


def method_short(spec: str | MethodSpec) -> str:
    """Short name of a spec (tables, the report): ``rose-ekfac`` → ``ROSE-EKFAC``, ``rnd`` → ``SVD-RND``,
    ``rnd:path=…-dct`` → ``RND (DCT)``, ``rose-ekfac:n_fit=10000`` → ``ROSE-EKFAC [n_fit=10000]``."""
    return _display(spec, short=True)


def method_order(methods: Iterable[str]) -> list[str]:
    """Registry order (ROSE first, then the baselines), each method's variants after it, unknown last."""
    order = list(METHODS)

    def key(m: str) -> tuple:
        base = str(m).partition(":")[0]
        return (order.index(base) if base in order else len(order), ":" in str(m), str(m))

    return sorted(set(methods), key=key)
