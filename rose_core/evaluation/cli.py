"""``python -m rose_core evaluate`` (registered in :mod:`rose_core.cli`): every argument is
checked before a model loads, and a bad one is one line on stderr with exit status 2
(:class:`rose_core.errors.InvalidInput`)."""

from __future__ import annotations

import json
import shlex
import sys
import time
from typing import Any, Sequence

import pandas as pd

from rose_core.errors import InvalidInput
from rose_core.evaluation.presets import PRESETS
from rose_core.evaluation.settings import DEFAULT_CAPS, EvalSettings
from rose_core.results import results_root
from rose_core.methods import (ROSE_AGG_OPTIONS, ROSE_FIT_OPTIONS, ROSE_LEGACY_OPTIONS, parse_method, parse_value,
                               split_methods)

ROSE_SETTINGS = ROSE_FIT_OPTIONS + ROSE_LEGACY_OPTIONS + ROSE_AGG_OPTIONS
"""Keys ``--rose KEY=VALUE`` accepts."""


def _kv_list(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InvalidInput(f"{what} {item!r} must look like KEY=VALUE.")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _numbers(text: str | None, option: str, cast) -> list | None:
    if text is None:
        return None
    try:
        return [cast(v) for v in _csv(text)]
    except ValueError:
        raise InvalidInput(f"{option} must be comma-separated numbers, got {text!r}.") from None


def _methods(text: str | None, option: str) -> list[str] | None:
    names = split_methods(text)
    for m in names or []:
        try:
            parse_method(m)
        except ValueError as exc:
            raise InvalidInput(f"{option}: {exc}") from None
    return names


def _datasets(names: Sequence[str] | None, option: str) -> None:
    from rose_core import cli_checks
    from rose_core.data import get_card, is_available

    for name in names or []:
        cli_checks.known_dataset(option, name)
        if not is_available(name):
            raise InvalidInput(f"{option}: the dataset {name!r} is not available here ({get_card(name).source}); "
                               f"build it with `python -m rose_core data {name}`.")


def settings_from_args(args, kind: str) -> tuple[list[str], EvalSettings]:
    """The presets and the settings of an ``evaluate`` command line, every value checked
    (no model, no dataset loaded)."""
    from rose_core import cli_checks

    presets = _csv(args.preset) or (["table2"] if kind == "vae" else ["table5"])
    for p in presets:
        if p not in PRESETS:
            raise InvalidInput(f"--preset: unknown preset {p!r}; expected one of {', '.join(PRESETS)}.")
    for option, value, minimum in [("--n-in", args.n_in, 1), ("--n-ood", args.n_ood, 1), ("--n-fit", args.n_fit, 2),
                                   ("--k", args.k, 1), ("--batch-size", args.batch_size, 1),
                                   ("--overall-per-set", args.overall_per_set, 1), ("--repeats", args.repeats, 1),
                                   ("--n-per-set", args.n_per_set, 1), ("--n-norm", args.n_norm, 2),
                                   ("--n-eval-in", args.n_eval_in, 1), ("--n-eval-per-set", args.n_eval_per_set, 1),
                                   ("--throughput-n", args.throughput_n, 1), ("--min-seconds", args.min_seconds, 0)]:
        cli_checks.at_least(option, value, minimum, optional=option in ("--n-in", "--repeats", "--n-per-set"))
    if args.fisher not in ("ekfac", "diag"):
        raise InvalidInput(f"--fisher must be ekfac or diag, got {args.fisher!r}.")
    for option, values in (("--strengths", _numbers(args.strengths, "--strengths", float)),
                           ("--sizes", _numbers(args.sizes, "--sizes", int))):
        for v in values or []:
            cli_checks.at_least(option, v, 1 if option == "--sizes" else 0)
    methods = _methods(args.methods, "--methods")
    _methods(args.brightness_methods, "--brightness-methods")
    _datasets(_csv(args.ood_sets), "--ood-sets")
    _datasets(_csv(args.brightness_sets), "--brightness-sets")
    caps = dict(DEFAULT_CAPS)
    for k, v in _kv_list(args.cap, "--cap").items():
        _methods(k, "--cap")
        try:
            caps[k] = int(v)
        except ValueError:
            raise InvalidInput(f"--cap {k}={v}: the cap must be a whole number of images.") from None
        cli_checks.at_least(f"--cap {k}", caps[k], 1)
    only = {k: _csv(v) for k, v in _kv_list(args.only, "--only").items()}
    for k, sets in only.items():
        _methods(k, "--only")
        _datasets(sets, f"--only {k}")
    rose = {k: parse_value(v) for k, v in _kv_list(args.rose, "--rose").items()}
    bad = sorted(set(rose) - set(ROSE_SETTINGS))
    if bad:
        raise InvalidInput(f"--rose takes {', '.join(ROSE_SETTINGS)}; not {', '.join(bad)}.")
    cli_checks.device_spec("--device", args.device)
    cli_checks.writable_folder("--results", results_root(args.results))
    settings = EvalSettings(
        n_in=args.n_in if args.n_in is not None else (5000 if kind == "vae" else 1000), n_ood=args.n_ood,
        ood_sets=_csv(args.ood_sets), methods=methods, seed=args.seed, n_fit=args.n_fit, caps=caps,
        method_sets=only, overall_per_set=args.overall_per_set, k=args.k, rose=rose, batch_size=args.batch_size,
        device=args.device)
    return presets, settings


def _preset_options(preset: str, args) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if preset == "brightness":
        if args.strengths:
            opts["strengths"] = _numbers(args.strengths, "--strengths", float)
        if args.repeats:
            opts["repeats"] = args.repeats
        opts["n"] = args.n_per_set
        opts["methods"] = split_methods(args.brightness_methods)
        opts["ood_sets"] = _csv(args.brightness_sets)
    elif preset == "fisher-samples":
        if args.sizes:
            opts["sizes"] = _numbers(args.sizes, "--sizes", int)
        if args.repeats:
            opts["repeats"] = args.repeats
        opts.update(fisher=args.fisher, n_norm=args.n_norm, n_eval_in=args.n_eval_in,
                    n_eval_per_set=args.n_eval_per_set)
    elif preset == "throughput":
        opts.update(n=args.throughput_n, min_seconds=args.min_seconds)
    elif preset == "perturbations":
        opts["train_missing"] = args.train_missing
    return opts


def _summary(preset: str, out) -> str | None:
    if isinstance(out, dict):
        return json.dumps(out, indent=2, default=str)
    if not isinstance(out, pd.DataFrame) or out.empty:
        return None
    if preset == "stress":
        return out.pivot_table(index=["group", "dataset"], columns="method", values="flagged").round(3).to_string() \
            + "\n(fraction flagged at the 95 % TPR threshold of the calibration half; AUROC in stress.parquet)"
    if "auroc" in out.columns and "method" in out.columns and "ood_set" in out.columns:
        view = out[out["repeat"] == 0] if "repeat" in out.columns else out
        if preset == "brightness":
            return view.pivot_table(index=["method", "ood_set"], columns="strength", values="auroc").round(3).to_string()
        return view.pivot_table(index="ood_set", columns="method", values="auroc").round(3).to_string()
    if preset == "fisher-samples":
        return out[out["ood_set"] == "overall"].groupby("n_fit")["auroc"].agg(["mean", "std", "count"]).round(4).to_string()
    return out.round(4).to_string()


def cli_evaluate(args) -> int:
    """Handler of ``python -m rose_core evaluate``; prints a short summary per preset."""
    from rose_core import cli_checks
    from rose_core.checkpoint import read_card
    from rose_core.evaluation.harness import Evaluation

    cli_checks.checkpoint_exists("--checkpoint", args.checkpoint)
    kind = read_card(args.checkpoint)["kind"]
    if kind == "classifier" or "figure6" in (_csv(args.preset) or []):
        return _evaluate_classifier(args, kind)
    presets, settings = settings_from_args(args, kind)
    ev = Evaluation(args.checkpoint, args.results, settings, show_progress=not args.quiet)
    for preset in presets:
        t0 = time.perf_counter()
        out = getattr(ev, preset.replace("-", "_"))(**_preset_options(preset, args))
        print(f"== {preset} on {ev.name}: {time.perf_counter() - t0:.0f} s -> {ev.bundle.folder}")
        text = _summary(preset, out)
        if text:
            print(text)
    if "evaluate" in sys.argv:
        cmd = "python -m rose_core evaluate " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("evaluate") + 1:])
        ev._set("commands", cmd, time.strftime("%Y-%m-%dT%H:%M:%S"))
        ev._write_manifest()
    for what, why in ev.bundle.manifest.get("missing", {}).items():
        print(f"skipped {what}: {why}")
    return 0


def _evaluate_classifier(args, kind: str) -> int:
    """``evaluate --preset figure6`` on a classifier checkpoint (:mod:`rose_core.evaluation.figure6`):
    ``--n-fit`` Fisher images, ``--n-norm`` calibration images, ``--n-in`` (default 500) and ``--n-ood``."""
    from rose_core import cli_checks
    from rose_core.evaluation.figure6 import figure6

    presets = _csv(args.preset) or ["figure6"]
    if kind != "classifier" or presets != ["figure6"]:
        raise InvalidInput(f"--preset figure6 is the one preset for classifier checkpoints; {args.checkpoint} is a "
                           f"{kind!r} checkpoint and --preset is {args.preset or 'the default'}.")
    for option, value in (("--n-fit", args.n_fit), ("--n-norm", args.n_norm), ("--n-in", args.n_in or 500),
                          ("--n-ood", args.n_ood), ("--batch-size", args.batch_size)):
        cli_checks.at_least(option, value, 2 if option != "--batch-size" else 1)
    _datasets(_csv(args.ood_sets), "--ood-sets")
    cli_checks.writable_folder("--results", results_root(args.results))
    t0 = time.perf_counter()
    out = figure6(args.checkpoint, args.results, n_fisher=args.n_fit, n_calibration=args.n_norm,
                  n_in=args.n_in or 500, n_ood=args.n_ood, ood_sets=_csv(args.ood_sets) or None,
                  batch_size=args.batch_size, seed=args.seed)
    print(f"== figure6 on {args.checkpoint}: {time.perf_counter() - t0:.0f} s")
    print(out.pivot(index="layer", columns="ood_set", values="auroc").round(3).to_string())
    return 0
