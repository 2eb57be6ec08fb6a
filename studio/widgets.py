"""The furniture every page shares: page setup and sidebar, the model picker, messages for a
missing results bundle and the button that computes it here."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitAPIException

from rose_core.errors import RoseError
from studio import state
from studio.paths import checkpoints_dir, evaluate_command, results_dir

PAGES = [  # (script relative to app.py, label, icon)
    ("app.py", "Home", ":material/home:"),
    ("pages/1_score_images.py", "Score images", ":material/image_search:"),
    ("pages/2_likelihood_vs_rose.py", "Likelihood vs ROSE", ":material/bar_chart:"),
    ("pages/3_roc_curves.py", "ROC curves", ":material/show_chart:"),
    ("pages/4_layer_auroc.py", "Layer-wise AUROC", ":material/grid_on:"),
    ("pages/5_robustness.py", "Robustness", ":material/contrast:"),
    ("pages/6_methods.py", "Methods", ":material/balance:"),
    ("pages/7_your_data.py", "Your data", ":material/folder_open:"),
    ("pages/8_classifiers.py", "Classifiers", ":material/stacked_line_chart:"),
]
ICON = Path(__file__).with_name("icon.png")
"""The browser tab's icon (a flower, drawn for the app)."""
INSTALL_HINT = "pip install -e '.[app]'  (or: pip install -r requirements.txt)"


# --------------------------------------------------------------------------------------------
# Page setup and the model picker
# --------------------------------------------------------------------------------------------

def page_setup(title: str) -> None:
    """First call of every page: page config, and the shared sidebar (page links, model picker).

    The app uses Streamlit's ``pages/`` folder; its default navigation is replaced by these links
    (``client.showSidebarNavigation`` off, also set in ``.streamlit/config.toml``) so the labels
    and icons are the same whichever page a visitor opens first.
    """
    # a local icon file: a ":material/…:" icon is fetched by the browser from fonts.gstatic.com (offline: an error)
    st.set_page_config(page_title=f"{title} · ROSE Studio", page_icon=str(ICON), layout="wide")
    for option, value in (("client.showSidebarNavigation", False), ("client.toolbarMode", "minimal")):
        try:
            st.set_option(option, value)
        except StreamlitAPIException:  # a runtime that refuses to set it here: .streamlit/config.toml applies
            pass
    keep_widget_choices(skip=PAGE_PREFIX.get(title))
    with st.sidebar:
        st.markdown("### ROSE Studio")
        for script, label, icon in PAGES:
            st.page_link(script, label=label, icon=icon)
        st.divider()
    sidebar_model_picker()


KEPT_PREFIXES = ("score_", "lvr_", "roc_", "layer_", "rob_", "methods_")
"""Keys of the pages' widgets whose choices are kept when the user visits another page."""
NOT_KEPT = ("score_files", "score_clear", "score_csv")
"""Widgets whose value cannot be set (uploader, buttons): the uploads are kept by :mod:`studio.uploads`."""


PAGE_PREFIX = {"Score images": "score_", "Likelihood vs ROSE": "lvr_", "ROC curves": "roc_",
               "Layer-wise AUROC": "layer_", "Robustness": "rob_", "Methods": "methods_"}


def keep_widget_choices(skip: str | None = None) -> None:
    """Keep the pages' widget choices across navigation: Streamlit forgets the value of a widget that a
    run does not draw, unless the key is written again in that run (its documented workaround). The
    current page's own widgets (prefix ``skip``) are drawn in this run, so they are left alone
    (writing them would make Streamlit warn about a default value set twice)."""
    for key in list(st.session_state):
        if (isinstance(key, str) and key.startswith(KEPT_PREFIXES) and not key.startswith(NOT_KEPT)
                and not (skip and key.startswith(skip))):
            try:
                st.session_state[key] = st.session_state[key]
            except StreamlitAPIException:
                pass


def _on_pick() -> None:
    st.session_state["model_choice"] = st.session_state["model_picker"]


def sidebar_model_picker() -> str | None:
    """The model selectbox in the sidebar (the same on every page); returns the checkpoint name.

    The choice lives in ``st.session_state["model_choice"]`` (a plain key, kept across pages)."""
    cards = state.cards()
    if not cards:
        st.sidebar.error(f"No model checkpoints in `{checkpoints_dir()}`.")
        return None
    names = state.model_order(cards)
    choice = st.session_state.get("model_choice")
    choice = choice if choice in names else names[0]
    st.session_state["model_choice"] = choice

    def fmt(name: str) -> str:
        c = cards[name]
        return f"{name} ({c['kind'].upper()}, {c.get('dataset', '?')})"

    # the widget is created anew on each page (its id depends on the page), so its default is the choice
    st.sidebar.selectbox("Model", names, index=names.index(choice), key="model_picker", format_func=fmt,
                         on_change=_on_pick,
                         help="Generative models in the checkpoints folder (the .json card and its "
                              ".safetensors weights). The choice applies to every page.")
    left_out = state.helpers()
    if left_out:
        st.sidebar.caption("Not listed (helper models used by a baseline, not models to analyse): "
                           + "; ".join(f"`{n}`: {why}" for n, why in sorted(left_out.items())) + ".")
    return choice


def current_model() -> tuple[str, dict] | None:
    """``(name, card)`` of the model picked in the sidebar, or None after explaining what is missing."""
    cards = state.cards()
    if not cards:
        st.error(f"No model checkpoint found in `{checkpoints_dir()}`. The shipped checkpoints are "
                 "`checkpoints/vae-fmnist` and `checkpoints/glow-fmnist` (from `git checkout -- checkpoints`); "
                 "train one with `python -m rose_core train --help`.")
        return None
    name = st.session_state.get("model_choice")
    if name not in cards:
        name = state.model_order(cards)[0]
    return name, cards[name]


def open_page(title: str) -> tuple[str, dict]:
    """The opening of every sub-page: page setup, title and the picked model's ``(name, card)``;
    stops the page (after :func:`current_model` explained why) when no model can be picked."""
    page_setup(title)
    st.title(title)
    picked = current_model()
    if picked is None:
        st.stop()
    return picked


# --------------------------------------------------------------------------------------------
# A missing results bundle
# --------------------------------------------------------------------------------------------

def missing_bundle_message(name: str, what: str = "This page", preset: str | None = None) -> None:
    """Say what is missing, what computing it takes (what it computes, a time estimate when a manifest
    records one, what it writes, how to undo it); with ``preset``, also offer to compute it here."""
    folder = f"results/{name}/"
    committed = state.committed_experiments(name, str(results_dir()))
    lines = [f"{what}: this model's results bundle `{folder}` does not hold this experiment yet. It is computed "
             f"by\n\n```\n{evaluate_command(name, preset)}\n```"]
    if preset:
        lines.append(f"That runs the harness's `{preset}` preset: {_preset_text(preset)}.")
        est = state.preset_estimate(name, preset)
        if est:
            lines.append(f"Time: {state.duration_text(est[0])} ({est[1]}).")
    lines.append(f"It writes into `{folder}` (tables and manifest.json). "
                 + (f"The committed bundle has this experiment: `git checkout -- {folder}` restores it, and undoes "
                    "a new run." if committed is not None and preset in committed else
                    f"To undo, restore the committed bundle with `git checkout -- {folder}` and delete any new table "
                    "it added."
                    if committed is not None else f"To undo, delete `{folder}` (it is not under version control)."))
    st.info("\n\n".join(lines))
    if preset:
        compute_button(name, preset)


def _preset_text(preset: str) -> str:
    try:
        from rose_core.evaluation import PRESETS
    except ImportError:
        return "see `python -m rose_core evaluate --help`"
    return PRESETS.get(preset, "see `python -m rose_core evaluate --help`")


def require_bundle(name: str, tables: tuple[str, ...], what: str = "This page", preset: str | None = None):
    """The bundle of ``name`` when it has ``tables``, else None after :func:`missing_bundle_message`."""
    b = state.bundle(name)
    if not b.exists or not all(b.has(t) for t in tables):
        missing_bundle_message(name, what, preset)
        return None
    return b


def _settings_for(name: str, preset: str):
    """Evaluation settings: those of the bundle's manifest when there is one (so its cached units are
    reused), else the harness's defaults for the model kind (as ``python -m rose_core evaluate``)."""
    from dataclasses import fields

    from rose_core.evaluation import EvalSettings

    known = {f.name for f in fields(EvalSettings)}
    saved = {k: v for k, v in (state.bundle(name).meta.get("settings") or {}).items() if k in known}
    if preset in ("table2", "table5"):
        saved.pop("methods", None)  # the full comparison: every method of the model kind
    if "n_in" not in saved and state.model_kind(name) == "glow":
        saved["n_in"] = 1000
    return EvalSettings(**saved)


def compute_button(name: str, preset: str) -> None:
    """A button that runs the harness preset here, with a progress bar, then reloads the page.
    Where the harness cannot be imported, says which module is missing and how to install it."""
    try:
        from rose_core.evaluation import PRESETS, run_preset
    except ImportError as exc:
        st.warning(f"Computing it here needs the evaluation harness, which cannot be imported: "
                   f"{exc.name or 'a module'} is missing ({exc}). Install the project's dependencies with "
                   f"`{INSTALL_HINT}`, or run the command above in a terminal where they are installed.",
                   icon=":material/extension_off:")
        return
    if preset not in PRESETS:
        st.warning(f"The harness has no preset `{preset}` (it has {', '.join(sorted(PRESETS))}); run the "
                   "command above with one of those.")
        return
    est = state.preset_estimate(name, preset)
    when = f", {state.duration_text(est[0])}" if est else ""
    stopped = st.session_state.pop(f"compute_{preset}_cancelled", False)
    if stopped:
        st.info(f"Cancelled {preset}. Every unit the harness finished before the cancel is stored whole in "
                f"`results/{name}/` (each table is written to a temporary file and then renamed) and is reused by the "
                "next run; the unit in progress was dropped and the experiment is not marked as run.",
                icon=":material/cancel:")
    if not st.button(f"Compute {preset} here{when}; writes results/{name}/", key=f"compute_{preset}",
                     help=f"{PRESETS[preset]}. Runs the evaluation harness on this machine and writes its tables "
                          f"into results/{name}/" + (f" ({est[1]})" if est else "; no manifest records how long "
                                                     "it takes") + ". Keep the page open; Cancel stops it."):
        return
    slot = st.empty()
    with slot.container():
        bar = st.progress(0.0, text=f"Starting {preset} on {name}")
        st.button("Cancel", key=f"cancel_compute_{preset}", icon=":material/cancel:",
                  on_click=lambda: st.session_state.__setitem__(f"compute_{preset}_cancelled", True),
                  help="Stop after the unit in progress: finished units stay stored (whole) and are reused next time.")

    def progress(done: int, total: int, message: str) -> None:
        bar.progress(min(max(done / total, 0.0), 1.0) if total else 0.0, text=f"{preset}: {message} ({done}/{total})")

    try:
        run_preset(preset, checkpoints_dir() / name, results=results_dir(), settings=_settings_for(name, preset),
                   progress=progress, show_progress=False)
    except (RoseError, ValueError, OSError, RuntimeError, KeyError) as exc:
        slot.empty()
        st.error(f"Computing {preset} failed: {exc}. Run `{evaluate_command(name, preset)}` in a terminal "
                 "to see the full log.")
        return
    slot.empty()
    st.rerun()
