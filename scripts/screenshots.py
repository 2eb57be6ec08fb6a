"""Screenshots of the main pages of the real app, for the README: ``make screenshots``.

Starts ``streamlit run app.py`` on a free port of 127.0.0.1, drives Debian's
Chromium with Playwright and writes ``docs/screenshots/<page>.png``. On the
Score page it uploads a real MNIST digit and a real Fashion-MNIST image.

    python scripts/screenshots.py [--out docs/screenshots] [--pages home score ...]

:func:`serve` and :func:`launch_browser` are reused by ``tests/test_browser.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = {  # name -> url path of the page
    "home": "",
    "score": "score_images",
    "likelihood": "likelihood_vs_rose",
    "roc": "roc_curves",
    "layers": "layer_auroc",
    "robustness": "robustness",
    "methods": "methods",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(env: dict[str, str] | None = None, timeout: float = 90.0, log: Path | None = None) -> Iterator[str]:
    """Run the app with ``streamlit run`` on a free local port; yields its URL; stops it afterwards."""
    port = free_port()
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {proc.returncode} before serving"
                                   + (f"; see {log}" if log else ""))
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app did not answer on {url}/_stcore/health within {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if log:
            out.close()


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)


def wait_idle(page, timeout: float = 300_000) -> None:
    """Wait until the app has finished running the script (no 'Running…' status, no progress bar)."""
    page.wait_for_timeout(800)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " && !document.querySelector('[data-testid=\"stProgress\"]')", timeout=timeout)
    page.wait_for_timeout(800)


_CONTENT_HEIGHT = """() => Math.max(...['stMain', 'stAppViewContainer', 'stMainBlockContainer']
    .map(id => document.querySelector(`[data-testid="${id}"]`))
    .filter(Boolean).map(el => el.scrollHeight), document.body.scrollHeight)"""


def full_height_screenshot(page, path: Path, width: int = 1400, max_height: int = 8000) -> None:
    """Streamlit scrolls inside its main container, so a "full page" screenshot needs a viewport
    as tall as the content: grow it until the height is stable (charts render late), shoot, restore."""
    old = page.viewport_size
    height = 0
    for _ in range(6):
        new = int(min(max(page.evaluate(_CONTENT_HEIGHT) + 40, 600), max_height))
        if new == height:
            break
        height = new
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(1500)
    page.screenshot(path=str(path), full_page=True)
    if old:
        page.set_viewport_size(old)


def sample_pngs(folder: Path) -> list[Path]:
    """A real MNIST test digit and a real Fashion-MNIST test image as PNG files in ``folder``."""
    from PIL import Image

    from rose_core.data import load_dataset

    data_root = os.environ.get("ROSE_DATA") or REPO / "data"
    folder.mkdir(parents=True, exist_ok=True)
    digit = load_dataset("mnist", "test", root=data_root).images[0, ..., 0]          # a 7
    boot = load_dataset("fashion-mnist", "test", root=data_root).images[0, ..., 0]   # an ankle boot
    paths = [folder / "mnist-digit-7.png", folder / "fashion-mnist-ankle-boot.png"]
    Image.fromarray(digit).save(paths[0])
    Image.fromarray(boot).save(paths[1])
    return paths


def take(url: str, out: Path, pages: list[str], files: list[Path]) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
        try:
            for name in pages:
                page.goto(f"{url}/{PAGES[name]}")
                page.wait_for_selector("h1", timeout=120_000)
                wait_idle(page)
                if name == "score":
                    page.set_input_files('input[type="file"]', [str(f) for f in files])
                    page.get_by_text("image(s) scored").wait_for(timeout=600_000)
                    wait_idle(page)
                path = out / f"{name}.png"
                full_height_screenshot(page, path)
                written.append(path)
                print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}", flush=True)
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    ap.add_argument("--pages", nargs="+", choices=list(PAGES), default=list(PAGES))
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`.", file=sys.stderr)
        return 1
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = sample_pngs(Path(tmp))
        with serve(log=Path(tmp) / "streamlit.log") as url:
            take(url, args.out, args.pages, files)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
