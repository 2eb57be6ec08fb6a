"""How fast the real app answers in a real browser, for the shipped VAE.

Starts ``streamlit run app.py`` (``scripts/screenshots.py``'s :func:`serve`) and drives Debian's
Chromium with Playwright (:func:`launch_browser`), in one browser session as a user would:

* ``cold_start_s``: from starting the server process to a rendered Home (its title, the key
  figure's two charts, the script finished);
* ``first_render_s[page]``: from clicking the page's sidebar link to the page rendered (its title,
  no "Running…" status, no progress bar);
* ``widget_change_s[page: change]``: from one widget change (brightness slider, OOD picker, …) to
  the page showing its effect and the script finished.

A page counts as rendered when Streamlit's status widget is gone and the expected text is on the
page (polled every 50 ms). The machine's load average (1, 5, 15 min) is recorded before and after;
``--note`` records anything else about the run (e.g. a paused background job). Writes
``results/benchmarks/app.json``.

Usage::

    .venv/bin/python benchmarks/bench_app.py [--model vae-fmnist] [--note "..."] [--out results/benchmarks/app.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("rose_screenshots", REPO / "scripts" / "screenshots.py")
shots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shots)

TARGETS = {"cold_start_s": 10.0, "first_render_s": 5.0, "widget_change_s": 2.0}
"""The issue's targets (seconds): cold start to Home, a page's first render, a widget change."""

_IDLE = """([text, title]) => {
    if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
    if (document.querySelector('[data-testid="stProgress"]')) return false;
    if (title && ![...document.querySelectorAll('h1')].some(h => h.innerText.includes(title))) return false;
    return !text || document.body.innerText.includes(text);
}"""


def wait_rendered(page, text: str = "", title: str = "", timeout: float = 240_000) -> float:
    """Wait until ``title`` is an h1, ``text`` is on the page and the script has finished; the time then."""
    page.wait_for_function(_IDLE, arg=[text, title], polling=50, timeout=timeout)
    return time.perf_counter()


def _select(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
    box.locator('input[role="combobox"]').click()
    page.get_by_role("option").filter(has_text=option).first.click()


def _radio(page, option: str) -> None:
    page.locator('[data-testid="stRadio"] label').filter(has_text=option).first.click()


def _goto(page, label: str):
    return lambda: page.locator('[data-testid="stSidebar"] a').filter(has_text=label).first.click()


def measure(page, action, text: str = "", title: str = "", settle_ms: int = 300) -> float:
    """Seconds from ``action()`` to the page rendered with ``text``; the status widget needs a moment to
    appear after a click, so the wait starts once it showed up or ``settle_ms`` passed."""
    t0 = time.perf_counter()
    action()
    try:
        page.wait_for_selector('[data-testid="stStatusWidget"]', timeout=settle_ms)
    except Exception:  # noqa: BLE001 - a run faster than the status widget's delay
        pass
    return round(wait_rendered(page, text, title) - t0, 2)


def _slider_left(page, steps: int):
    def act():
        slider = page.get_by_role("slider").first
        slider.focus()
        for _ in range(steps):
            slider.press("ArrowLeft")
    return act


def _number(page, label: str, value: int):
    def act():
        box = page.locator('[data-testid="stNumberInput"]').filter(has_text=label).first.locator("input")
        box.fill(str(value))
        box.press("Enter")
    return act


def run(model: str, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    first: dict[str, float] = {}
    changes: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t_start = time.perf_counter()
        with shots.serve(log=Path(tmp) / "streamlit.log", timeout=120) as url, sync_playwright() as p:
            browser = shots.launch_browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(240_000)
            page.goto(url)
            page.locator(".js-plotly-plot").nth(1).wait_for()
            cold = round(wait_rendered(page, f"Model: {model}") - t_start, 2)
            print(f"cold start to Home: {cold} s", flush=True)

            pages = [("Score images", "Upload one or more images"), ("Likelihood vs ROSE", "Histograms:"),
                     ("ROC curves", "Conventions"), ("Layer-wise AUROC", "Best single layer"),
                     ("Robustness", "AUROC at 1.0× brightness"), ("Methods", "Stress suite")]
            for label, text in pages:
                first[label] = measure(page, _goto(page, label), text, title=label)
                print(f"{label}: first render {first[label]} s", flush=True)
                for k in range(repeats):  # widget changes on this page, back and forth
                    for change, action, expect in _changes(page, label, k):
                        changes.setdefault(f"{label}: {change}", []).append(measure(page, action, expect))
                        print(f"{label}: {change} {changes[f'{label}: {change}'][-1]} s", flush=True)
            browser.close()
    return {"cold_start_s": cold, "first_render_s": first,
            "widget_change_s": {k: max(v) for k, v in changes.items()},
            "widget_change_all_s": changes}


def _changes(page, label: str, k: int) -> list[tuple[str, object, str]]:
    """(what changes, the action, text on the page once it took effect); ``k`` alternates directions."""
    if label == "Score images":  # round 0: 6 samples then 32; round 1: 32 (kept) then 6
        n = 32 if k % 2 == 0 else 6
        return [("dataset samples", lambda: _radio(page, "Dataset samples"), "image(s) scored"),
                (f"{n} dataset samples", _number(page, "How many", n), f"{n} image(s) scored"),
                ("TPR slider", _slider_left(page, 1), "image(s) scored"),
                ("back to uploads", lambda: _radio(page, "Upload files"), "Upload one or more images")]
    if label == "Likelihood vs ROSE":
        return [("OOD picker", lambda: _select(page, "OOD set", "Letters" if k % 2 == 0 else "MNIST"), "Histograms:")]
    if label == "ROC curves":
        return [("OOD picker", lambda: _select(page, "OOD set", "Letters" if k % 2 == 0 else "MNIST"), "Conventions")]
    if label == "Layer-wise AUROC":
        return [("Fisher radio", lambda: _radio(page, "DIAG" if k % 2 == 0 else "EKFAC"), "Best single layer")]
    if label == "Robustness":
        return [("brightness slider 1.0× → 0.8×" if k == 0 else "brightness slider one more step",
                 _slider_left(page, 1), f"AUROC at {0.8 - 0.2 * k:.1f}× brightness"),
                ("OOD picker", lambda: _select(page, "OOD set", "LFW faces" if k % 2 == 0 else "MNIST"),
                 "brightness of")]
    if label == "Methods":
        return [("metric radio", lambda: _radio(page, "AUPRC" if k % 2 == 0 else "AUROC"), "per OOD set")]
    return []


def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vae-fmnist")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of widget changes per page (the slowest is kept)")
    ap.add_argument("--note", default="", help="recorded as is, e.g. what else ran on the machine")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "app.json")
    args = ap.parse_args(argv)
    if not Path(shots.CHROMIUM).exists():
        print(f"{shots.CHROMIUM} is missing: install it with `apt-get install -y chromium`.", file=sys.stderr)
        return 1
    import streamlit

    load_before = os.getloadavg()
    timings = run(args.model, args.repeats)
    load_after = os.getloadavg()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    out = {"command": "python benchmarks/bench_app.py" + (f" --model {args.model}" if args.model != "vae-fmnist" else ""),
           "model": args.model, "browser": "Debian Chromium (headless) via Playwright, viewport 1400×1000",
           "streamlit": streamlit.__version__, "commit": commit, **_machine(),
           "load_avg_before": [round(v, 2) for v in load_before], "load_avg_after": [round(v, 2) for v in load_after],
           "note": args.note, "targets_s": TARGETS, **timings}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: out[k] for k in ("cold_start_s", "first_render_s", "widget_change_s")}, indent=2,
                     ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
