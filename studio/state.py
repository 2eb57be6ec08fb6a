"""What the app keeps between reruns and sessions.

- model cards and dataset availability (``st.cache_data``, short TTL: new files appear);
- results bundles: one lenient :class:`rose_core.results.Results` per version of the bundle's files,
  shared by all sessions (a damaged table reads as empty, with a warning saying how to recompute it);
- long computations (:func:`computed`): run once per key for the whole server, with a progress bar;
- the live scorer of a checkpoint, kept under :func:`live_key`: the checkpoint's name, the SHA-256 of
  its weights and of the bundle's ROSE fit (which carries its calibration), the folders it reads. Results computed
  with a scorer are keyed on that too, never on ``id()`` (Python reuses ids of freed objects).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import streamlit as st

from rose_core.allocator import reuse_freed_memory
from rose_core.checkpoint import list_checkpoints, read_card, weights_path
from rose_core.errors import RoseError
from rose_core.results import Results
from studio.paths import checkpoints_dir, data_dir, env_int, results_dir

reuse_freed_memory()   # once per server process: every page imports this module (see rose_core.allocator)

log = logging.getLogger("studio")
MODEL_KINDS = ("vae", "glow")
"""Checkpoint kinds the app analyses (those of :data:`rose_core.live.MODEL_KINDS`; repeated here so the first
page does not import the live scorer and torch with it)."""
MAX_STORED = 256
"""Most results of long computations kept (live scorers excluded)."""


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def helper_role(card: dict) -> str | None:
    """Why a generative checkpoint is a helper of another method rather than a model to analyse, from its
    card: its ``role`` (e.g. the Likelihood Ratio's background model), or training on noise-corrupted
    images (a non-zero ``noise_fraction``); None for a standalone model."""
    if card.get("role"):
        return str(card["role"])
    noise = card.get("noise_fraction")
    if isinstance(noise, (int, float)) and noise > 0:
        return f"trained with {noise:.0%} of its pixels replaced by noise (a background model)"
    return None


@st.cache_data(ttl=15, show_spinner=False)
def model_cards(folder: str) -> dict[str, dict]:
    """Cards of the generative-model checkpoints (VAE, Glow) in ``folder``, by name, helpers included."""
    cards = {}
    for p in list_checkpoints(folder):
        try:
            card = read_card(p)
        except RoseError:
            continue
        if card.get("kind") in MODEL_KINDS:
            cards[p.name[: -len(".json")]] = card
    return cards


def cards() -> dict[str, dict]:
    """The models a user can analyse: generative checkpoints that are not helpers (:func:`helper_role`).
    Models trained on the user's own images (``user-*``, the Your data page) read their dataset from the
    registry, so the imported datasets are registered first (:func:`rose_core.user_data.register_user_datasets`)."""
    from rose_core.user_data import register_user_datasets

    register_user_datasets(data_dir())
    return {n: c for n, c in model_cards(str(checkpoints_dir())).items() if helper_role(c) is None}


def helpers() -> dict[str, str]:
    """Helper checkpoints left out of the model picker, with the reason (:func:`helper_role`)."""
    return {n: r for n, c in model_cards(str(checkpoints_dir())).items() if (r := helper_role(c)) is not None}


def model_order(cards: dict[str, dict]) -> list[str]:
    """Those with a bundle first, then the paper's main model kind (the VAE), then those trained on
    Fashion-MNIST (the paper's lead benchmark, where likelihood fails most plainly: the app opens on
    it), then by name."""
    def key(name: str):
        return (not Results.for_checkpoint(name, results_dir()).exists, cards[name].get("kind") != "vae",
                cards[name].get("dataset") != "fashion-mnist", name)
    return sorted(cards, key=key)


def model_kind(name: str) -> str | None:
    return cards().get(name, {}).get("kind")


def main_preset(name: str) -> str:
    """The harness preset of the methods × OOD sets table for this model: table2 (VAE) or table5 (Glow)."""
    return "table5" if model_kind(name) == "glow" else "table2"


def default_fisher(name: str) -> str:
    """The paper's Fisher approximation for the model: DIAG for Glow (its InvConv layers), EKFAC for the VAE."""
    return "diag" if model_kind(name) == "glow" else "ekfac"


def fisher_order(name: str, available=("ekfac", "diag")) -> list[str]:
    first = default_fisher(name)
    return sorted(available, key=lambda f: f != first)


# --------------------------------------------------------------------------------------------
# Results bundles
# --------------------------------------------------------------------------------------------

def signature(folder: Path) -> tuple:
    """Name, mtime and size of every file in ``folder``: changes whenever the harness rewrites one."""
    if not folder.exists():
        return ()
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.is_file()))


class AppResults(Results):
    """A lenient :class:`Results` that shows a warning for a table it cannot read."""

    def table(self, name: str) -> pd.DataFrame:
        frame = super().table(name)
        if name in self.problems:
            st.warning(self.problems[name])
        return frame

    @property
    def meta(self) -> dict:
        m = super().meta
        if "manifest" in self.problems:
            st.warning(self.problems["manifest"])
        return m


@st.cache_resource(show_spinner=False, max_entries=16)
def _bundle(folder: str, signature: tuple) -> AppResults:
    return AppResults(Path(folder), strict=False)


def bundle(name: str) -> AppResults:
    """The results bundle of checkpoint ``name`` (shared, reloaded when its files change)."""
    folder = results_dir() / name
    return _bundle(str(folder), signature(folder))


def all_bundles() -> dict[str, AppResults]:
    """Every results bundle in the results folder (a folder with a manifest), by checkpoint name."""
    root = results_dir()
    if not root.is_dir():
        return {}
    return {d.name: bundle(d.name) for d in sorted(root.iterdir()) if (d / "manifest.json").is_file()}


# --------------------------------------------------------------------------------------------
# Long computations: shared across sessions, with a visible progress bar while they run
# --------------------------------------------------------------------------------------------

@st.cache_resource(show_spinner=False)
def _store() -> dict:
    """Process-wide results of long computations (cleared by Streamlit's "Clear cache")."""
    return {"_lock": threading.Lock(), "_key_locks": {}}


CANCELLED = "_cancelled_computations"
"""Session key: the tags (:func:`computation_tag`) of computations this browser session cancelled."""


def computation_tag(key: tuple) -> str:
    """A short, stable name of a computation's key (for widget keys and the cancelled set)."""
    return digest(repr(key))[:16]


def cancel(tag: str) -> None:
    """``on_click`` of a computation's Cancel button. The click reruns the page; Streamlit stops the
    running script at its next progress update, before the result is stored; this mark keeps the
    rerun from starting the computation again."""
    st.session_state.setdefault(CANCELLED, set()).add(tag)


def resume(tag: str) -> None:
    """``on_click`` of "Run it again": forget the cancellation."""
    st.session_state.setdefault(CANCELLED, set()).discard(tag)


def is_cancelled(key: tuple) -> bool:
    return computation_tag(key) in st.session_state.get(CANCELLED, set())


def cancel_button(tag: str, what: str) -> None:
    """The Cancel button drawn under a running computation's progress bar."""
    st.button("Cancel", key=f"cancel_{tag}", on_click=cancel, args=(tag,), icon=":material/cancel:",
              help=f"Stop {what} at its next progress step. Nothing half-done is kept: the result is stored only "
                   "when the computation finishes.")


def cancelled_note(tag: str, label: str, effect: str = "") -> None:
    """What the page says after a cancellation, with a button to run it after all."""
    st.info(f"Cancelled: {label}. Nothing was stored{'; ' + effect if effect else ''}.", icon=":material/cancel:")
    st.button("Run it again", key=f"resume_{tag}", on_click=resume, args=(tag,), icon=":material/replay:")


def computed(key: tuple, compute: Callable[[Callable[[float, str], None]], Any], label: str,
             cancelled: str = "") -> Any:
    """``compute(progress)`` once per ``key`` for the whole server, showing ``st.progress`` and a Cancel button
    while it runs. Returns None when this session cancelled it (after :func:`cancelled_note`, which names
    ``cancelled``: what the page shows instead); the value is stored only when ``compute`` returns, so a
    cancelled computation leaves nothing behind and the next request starts it from the beginning."""
    store = _store()
    if key in store:
        return store[key]
    tag = computation_tag(key)
    if tag in st.session_state.get(CANCELLED, set()):
        cancelled_note(tag, label, cancelled)
        return None
    with store["_lock"]:
        done = [k for k in store if isinstance(k, tuple) and k[0] != "live"]
        for old in done[: max(0, len(done) - MAX_STORED)]:  # oldest first (dicts keep insertion order)
            store.pop(old, None)
        lock = store["_key_locks"].setdefault(key, threading.Lock())
    with lock:
        if key in store:
            return store[key]
        slot = st.empty()
        with slot.container():
            bar = st.progress(0.0, text=label)
            cancel_button(tag, label[:1].lower() + label[1:])
        try:
            value = compute(lambda f, m: bar.progress(min(max(float(f), 0.0), 1.0), text=f"{label} — {m}"))
        finally:
            slot.empty()
        store[key] = value
        return value


def digest(*parts: bytes | str | np.ndarray) -> str:
    """SHA-256 of strings, bytes and arrays (shape included)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.shape).encode())
            p = np.ascontiguousarray(p).tobytes()
        h.update(p.encode() if isinstance(p, str) else p)
    return h.hexdigest()


@st.cache_data(show_spinner=False, max_entries=64)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hash(path: Path) -> str | None:
    """SHA-256 of a file's content (computed once per mtime and size), or None when it is missing."""
    try:
        s = path.stat()
    except OSError:
        return None
    return _file_sha256(str(path), s.st_mtime_ns, s.st_size)


def live_sizes() -> dict[str, int]:
    """Fit-size overrides of the live scorer from ``$ROSE_LIVE_N_FISHER`` / ``$ROSE_LIVE_N_CALIBRATION``
    (unset: the project's default definition, :mod:`rose_core.defaults`; set them only for quick
    trials and tests, since the verdict is then not the default scorer's)."""
    out = {}
    for key, env in (("n_fisher", "ROSE_LIVE_N_FISHER"), ("n_calibration", "ROSE_LIVE_N_CALIBRATION")):
        if os.environ.get(env):
            out[key] = env_int(env, 2)
    return out


def live_key(name: str, fisher: str, verdict: str | None = None) -> tuple | None:
    """The identity of the live scorer of ``name``: weights, ROSE fit and calibration inputs, by content,
    and the verdict test (``None``: the model kind's default, :func:`rose_core.defaults.default_verdict`); None when the
    checkpoint is missing. Equal keys give equal scores."""
    card = checkpoints_dir() / f"{name}.json"
    weights = file_hash(weights_path(card))
    if weights is None or not card.exists():
        return None
    fits = results_dir() / name / "fits"
    fit = file_hash(fits / f"rose-{fisher}.json")
    fit_weights = file_hash(fits / f"rose-{fisher}.safetensors")
    from rose_core.defaults import default_verdict

    if verdict is None:
        try:
            verdict = default_verdict(json.loads(card.read_text()).get("kind"))
        except (OSError, ValueError):
            verdict = default_verdict(None)
    return ("live", name, fisher, weights, fit, fit_weights, str(results_dir()), str(data_dir()),
            tuple(sorted(live_sizes().items())), verdict)


def scorer_identity(name: str, fisher: str) -> dict:
    """SHA-256 of the model's weights and of the bundle's ROSE fit (as :func:`rose_core.live.scorer_identity`,
    hashed once per file version)."""
    fits = results_dir() / name / "fits"
    return {"weights": file_hash(weights_path(checkpoints_dir() / f"{name}.json")),
            "fit": file_hash(fits / f"rose-{fisher}.json"), "fit_weights": file_hash(fits / f"rose-{fisher}.safetensors")}


@st.cache_data(show_spinner=False, max_entries=8)
def _robustness_table(folder: str, mtime_ns: int) -> dict | None:
    from rose_core.live import read_robustness_table

    return read_robustness_table(folder)


def precomputed_robustness(name: str, fisher: str, n: int, seed: int, ood_set: str, factor: float):
    """``(row, table)``: the live brightness AUROCs of ``results/<name>/live_robustness.json``
    (``python -m studio.precompute``) for one OOD set and factor, when that file was computed by the scorer
    this server would use (same weights, bundle fit, image counts and seed; no fit-size overrides); else None."""
    from rose_core.live import ROBUSTNESS_FILE, robustness_lookup

    if live_sizes():
        return None
    folder = results_dir() / name
    try:
        mtime = (folder / ROBUSTNESS_FILE).stat().st_mtime_ns
    except OSError:
        return None
    table = _robustness_table(str(folder), mtime)
    row = robustness_lookup(table, scorer_identity(name, fisher), f"rose-{fisher}", n, seed, ood_set, factor)
    return (row, table) if row is not None else None


@st.cache_data(show_spinner=False, max_entries=32)
def dataset_sample(dataset: str, n: int, seed: int, data_root: str):
    """uint8 images of ``load_dataset(dataset, "test", n=n, seed=seed)`` (cached per server)."""
    from rose_core.data import load_dataset

    return load_dataset(dataset, "test", n=n, seed=seed, root=data_root).images


def live_scorer(name: str, fisher: str = "ekfac", verdict: str | None = None):
    """The :class:`rose_core.live.LiveScorer` of a checkpoint (loaded, fitted or read from the bundle once
    per server and :func:`live_key`), or None after showing what is missing and how to get it."""
    from rose_core.live import LiveScorer

    path = checkpoints_dir() / f"{name}.json"
    key = live_key(name, fisher, verdict)
    if key is None:
        st.error(f"The checkpoint `{path}` is missing. Restore the shipped checkpoints with "
                 "`git checkout -- checkpoints`, or train one with `python -m rose_core train --help`.")
        return None
    store = _store()
    for old in [k for k in store if isinstance(k, tuple) and k[:3] == key[:3] and k[:-1] != key[:-1]]:
        store.pop(old, None)  # an outdated scorer of this model (new weights, fit or bundle): free its memory
    try:
        return computed(key, lambda progress: LiveScorer(path, fisher, results=results_dir(), data_root=data_dir(),
                                                         verdict=verdict, progress=progress, **live_sizes()),
                        f"Preparing ROSE-{fisher.upper()} for {name}", cancelled="this page needs it to score images")
    except RoseError as exc:
        st.error(f"ROSE cannot be prepared for `{name}`: {exc}")
        if "dataset" in str(exc).lower():
            st.info("Build the dataset caches with `make data` (or `python -m rose_core data --all`).")
        return None
    except (OSError, RuntimeError, ValueError) as exc:  # e.g. a model that diverged to NaN during the fit
        st.error(f"ROSE cannot be prepared for `{name}` ({type(exc).__name__}: {exc}). Check the checkpoint with "
                 f"`python -m rose_core datasets` and the logs; the other pages still work.")
        return None


def warm_up(name: str) -> None:
    """Load the default live scorer of ``name`` (the model and the bundle's ROSE fit; never a new fit) in a
    background thread, once per server, so the Score page finds it ready. Called at the end of the first page,
    after it has rendered. Any problem is left to the page that needs the scorer, which shows it."""
    store = _store()
    with store["_lock"]:
        started = store.setdefault("_warming", set())
        if name in started:
            return
        started.add(name)
    fisher, path, sizes = default_fisher(name), checkpoints_dir() / f"{name}.json", live_sizes()
    results, data = results_dir(), data_dir()

    def work() -> None:
        from rose_core.live import LiveScorer

        try:
            key = live_key(name, fisher)
            if key is None:
                return
            with store["_lock"]:
                lock = store["_key_locks"].setdefault(key, threading.Lock())
            with lock:
                if key not in store:
                    live = LiveScorer(path, fisher, results=results, data_root=data, allow_fit=False, **sizes)
                    # torch's first backward pass is several times slower than the next: pay it here
                    live.score(np.zeros((2, live.image_size, live.image_size, live.channels), np.uint8))
                    store[key] = live
        except (RoseError, OSError, RuntimeError, ValueError) as exc:
            log.info("Warm-up of %s's live scorer skipped: %s", name, exc)

    threading.Thread(target=work, name=f"rose-warm-up-{name}", daemon=True).start()


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

@st.cache_data(ttl=60, show_spinner=False)
def datasets_table(data_root: str) -> pd.DataFrame:
    from rose_core.data import dataset_names, get_card, is_available

    rows = []
    for n in dataset_names():
        c = get_card(n)
        rows.append({"dataset": n, "title": c.title, "real data": c.real,
                     "stands in for": c.stands_in_for or "", "available here": is_available(n, "test", data_root),
                     "source": c.source, "how to get it": c.how_to_get})
    return pd.DataFrame(rows)


def available_datasets(data_root: str | None = None) -> list[str]:
    t = datasets_table(str(data_root or data_dir()))
    return list(t.loc[t["available here"], "dataset"])


# --------------------------------------------------------------------------------------------
# What computing a missing experiment here would take
# --------------------------------------------------------------------------------------------

MAIN_PRESETS = ("table2", "table5")


def _manifest_seconds(manifest: dict, preset: str) -> float | None:
    """Seconds the manifest records for ``preset``: for the main table, the measured time of its
    unperturbed units of the default methods (no ``method:option`` variants) and ROSE fits (what a run from scratch costs); else the wall time of the
    preset's last run. None when it records none."""
    if preset in MAIN_PRESETS:
        units = (manifest.get("cache") or {}).values()
        secs = sum(float(u.get("seconds") or 0) for u in units if isinstance(u, dict)
                   and u.get("perturbation") == "none" and ":" not in str(u.get("method", ""))
                   and not str(u.get("dataset", "")).startswith("stress-"))
        secs += sum(float(f.get("fit_seconds") or 0) for f in (manifest.get("fits") or {}).values()
                    if isinstance(f, dict))
        return secs or None
    exp = (manifest.get("experiments") or {}).get(preset)
    wall = exp.get("wall_s") if isinstance(exp, dict) else None
    return float(wall) if isinstance(wall, (int, float)) and wall > 0 else None


def preset_estimate(name: str, preset: str) -> tuple[float, str] | None:
    """``(seconds, where it was measured)`` for running ``preset`` on ``name``: from its own bundle's
    manifest, else from another bundle of the same model kind; None when no manifest records it."""
    from rose_core.results import bundles

    kind = model_kind(name)
    own = bundle(name).meta if bundle(name).exists else {}
    candidates = [(name, own)] + [(n, b.meta) for n, b in bundles(results_dir(), strict=False).items() if n != name]
    for other, manifest in candidates:
        card = (manifest.get("checkpoint") or {}).get("card") or {}
        if other != name and card.get("kind") != kind:
            continue
        secs = _manifest_seconds(manifest, preset)
        if secs is None:
            continue
        env = manifest.get("environment") or {}
        where = f"{env.get('device', '?')}, {thread_text(env.get('threads'))}" if env else "this machine"
        whose = "this model's" if other == name else f"`{other}`'s (same model kind)"
        how = "measured compute time of its units and fits" if preset in MAIN_PRESETS else "last run"
        return secs, f"{how} in {whose} manifest, on {where}"
    return None


def thread_text(n) -> str:
    """``1 thread``, ``2 threads``; ``? threads`` when unknown."""
    return "1 thread" if n == 1 else f"{n if n is not None else '?'} threads"


def duration_text(seconds: float) -> str:
    """``about 40 s``, ``about 12 min``, ``about 1.3 h``."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


@st.cache_data(ttl=60, show_spinner=False)
def committed_experiments(name: str, results_folder: str) -> frozenset[str] | None:
    """The experiments of ``name``'s bundle as committed in git (HEAD), or None when the bundle is not
    under version control (a results folder outside the repository, or never committed)."""
    import json
    import subprocess

    from studio.paths import REPO

    folder = Path(results_folder).resolve() / name
    try:
        rel = folder.relative_to(REPO)
    except ValueError:
        return None
    try:
        out = subprocess.run(["git", "-C", str(REPO), "show", f"HEAD:{rel.as_posix()}/manifest.json"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    try:
        return frozenset((json.loads(out.stdout).get("experiments") or {}))
    except ValueError:
        return None
