"""The real app in a real browser: ``streamlit run`` + Debian Chromium driven by Playwright.

Uploads a real MNIST digit and a real Fashion-MNIST image to the shipped Fashion-MNIST VAE and checks
that the digit is flagged OOD and the garment is not; moves the brightness slider and checks that the
AUROC chart changes; then visits every page at 1400 px and 1000 px wide, takes a full-page screenshot
and checks in the page that no table scrolls sideways, that no picker cuts the name it shows, that the chart
labels the app places do not overlap, and that the browser fetched nothing from outside (no failed request, no other host).
Screenshots go to the test's temporary folder. Skipped (with the reason) only when Chromium or
Playwright is missing.

The app runs as a user starts it (the default live scorer, read from the committed results bundle;
the Robustness page's precomputed live values), so nothing is fitted here.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("rose_screenshots", REPO / "scripts" / "screenshots.py")
shots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shots)

pytestmark = [
    pytest.mark.skipif(not Path(shots.CHROMIUM).exists(),
                       reason=f"{shots.CHROMIUM} is missing; install it with `apt-get install -y chromium` "
                              "(`make test` does so when run as root)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright is not installed"),
]
MODEL = "vae-fmnist"
WIDTHS = (1400, 1000)
LINKS = {"home": "Home", "score": "Score images", "likelihood": "Likelihood vs ROSE", "roc": "ROC curves",
         "layers": "Layer-wise AUROC", "robustness": "Robustness", "methods": "Methods", "your_data": "Your data",
         "classifiers": "Classifiers"}


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if not (REPO / "checkpoints" / f"{MODEL}.json").exists():
        pytest.fail(f"The shipped checkpoint checkpoints/{MODEL} is missing (git checkout -- checkpoints).")
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    with shots.serve(log=log) as url:
        yield url


@pytest.fixture(scope="module")
def traffic():
    """Requests to hosts other than the app's, and failed requests, over the whole module."""
    return {"outside": [], "failed": []}


@pytest.fixture(scope="module")
def page(app_url, traffic):
    from playwright.sync_api import sync_playwright

    app_host = urlparse(app_url).hostname

    def on_request(request):
        host = urlparse(request.url).hostname
        if host and host != app_host:
            traffic["outside"].append(request.url)

    def on_failed(request):
        # a page opened by its own URL first probes <page>/_stcore/health (404, then the root's): not a fetch
        traffic["failed"].append(f"{request.url}: {request.failure}")

    with sync_playwright() as p:
        browser = shots.launch_browser(p)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        pg.on("request", on_request)
        pg.on("requestfailed", on_failed)
        yield pg
        browser.close()


def test_home_then_upload_digit_and_garment(page, app_url, tmp_path):
    page.goto(app_url)
    page.get_by_text(f"Model: {MODEL}").wait_for()
    shots.wait_idle(page)
    assert page.get_by_role("heading", name="How ROSE works").is_visible()

    page.locator('[data-testid="stSidebar"] a').filter(has_text="Score images").click()
    page.get_by_text("Upload one or more images").wait_for()
    digit, garment = shots.sample_pngs(tmp_path / "inputs")
    page.set_input_files('input[type="file"]', [str(digit), str(garment)])
    page.get_by_text("2 image(s) scored").wait_for(timeout=300_000)
    shots.wait_idle(page)
    page.screenshot(path=str(tmp_path / "score.png"), full_page=True)

    cards = page.locator('[data-testid="stMarkdownContainer"]')  # each image's verdict block
    digit_card = cards.filter(has_text=digit.name).last.inner_text()
    garment_card = cards.filter(has_text=garment.name).last.inner_text()
    assert "OOD" in digit_card and "in-distribution" not in digit_card, digit_card
    assert "in-distribution" in garment_card, garment_card
    assert page.get_by_text("2 image(s) scored: 1 OOD, 1 in-distribution").is_visible()
    assert page.get_by_role("button", name="Download all results (CSV)").is_visible()
    assert page.get_by_role("heading", name="Compare two images").is_visible()
    assert (tmp_path / "score.png").stat().st_size > 10_000


def _chart_text(page, title: str) -> str:
    chart = page.locator(".js-plotly-plot", has_text=title)
    chart.wait_for(timeout=300_000)
    return chart.inner_text()


def test_brightness_slider_changes_the_chart(page, app_url, tmp_path):
    page.locator('[data-testid="stSidebar"] a').filter(has_text="Robustness").click()
    before = _chart_text(page, "AUROC at 1.0× brightness")
    shots.wait_idle(page)
    slider = page.get_by_role("slider").first
    slider.focus()
    for _ in range(3):  # steps of 0.2×: 1.0 → 0.4
        slider.press("ArrowLeft")
    _chart_text(page, "AUROC at 0.4× brightness")
    shots.wait_idle(page)
    after = _chart_text(page, "AUROC at 0.4× brightness")
    values = lambda text: re.findall(r"\d\.\d{3}", text)  # noqa: E731 - the bar labels
    assert values(before) and values(after) and values(before) != values(after), (before, after)
    assert page.get_by_text("0.4×").first.is_visible()
    assert page.get_by_text("live sample (precomputed)").first.is_visible()  # the committed table, said so


# in-page checks -------------------------------------------------------------------------------

_SIDEWAYS = """() => {
    // every table the page draws: st.dataframe (a scrolling grid) and st.table; a scroller wider than its box
    const out = [];
    for (const t of document.querySelectorAll('[data-testid="stDataFrame"], [data-testid="stTable"]')) {
        const boxes = [t, ...t.querySelectorAll('*')].filter(el => {
            const s = getComputedStyle(el);
            return ['auto', 'scroll'].includes(s.overflowX) && el.clientWidth > 0;
        });
        for (const el of boxes) {
            if (el.scrollWidth > el.clientWidth + 2) {
                const head = t.innerText.split('\\n')[0].slice(0, 60);
                out.push(`${head}: scrollWidth ${el.scrollWidth} > clientWidth ${el.clientWidth}`);
            }
        }
    }
    return out;
}"""

_TRUNCATED = """() => [...document.querySelectorAll('[data-testid="stSelectbox"] input')]
    .filter(el => el.scrollWidth > el.clientWidth + 1).map(el => `${el.getAttribute('aria-label')}: "${el.value}"`)"""

_OVERLAPS = """() => {
    // text labels placed on charts (scatter labels, bar labels): no two boxes in one chart intersect
    const out = [];
    for (const plot of document.querySelectorAll('.js-plotly-plot')) {
        const title = (plot.querySelector('.gtitle') || {}).textContent || '?';
        const boxes = [...plot.querySelectorAll('.textpoint text, .bartext')]
            .map(el => ({text: el.textContent, r: el.getBoundingClientRect()}))
            .filter(b => b.r.width > 0 && b.text);
        for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
            const a = boxes[i].r, b = boxes[j].r;
            const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
            const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
            if (w > 1 && h > 1) out.push(`${title}: "${boxes[i].text}" overlaps "${boxes[j].text}"`);
        }
    }
    return out;
}"""


def _visit(page, name: str, files: list[Path]) -> None:
    page.locator('[data-testid="stSidebar"] a').filter(has_text=LINKS[name]).first.click()
    page.wait_for_function("t => [...document.querySelectorAll('h1')].some(h => h.innerText.includes(t))",
                           arg="ROSE Studio" if name == "home" else LINKS[name])
    shots.wait_idle(page)
    if name == "score" and not page.get_by_text("image(s) scored").count():
        page.set_input_files('input[type="file"]', [str(f) for f in files])
        page.get_by_text("image(s) scored").wait_for(timeout=300_000)
        shots.wait_idle(page)
    page.locator(".js-plotly-plot").last.wait_for(state="attached", timeout=5_000) if \
        page.locator(".js-plotly-plot").count() else None


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_fits_its_width_without_overlaps_or_outside_fetches(page, app_url, traffic, width, tmp_path):
    files = shots.sample_pngs(tmp_path / "inputs")
    page.set_viewport_size({"width": width, "height": 1000})
    if not page.url.startswith(app_url):
        page.goto(app_url)
    problems = []
    for name in LINKS:
        _visit(page, name, files)
        shots.full_height_screenshot(page, tmp_path / f"{name}-{width}.png", width=width)
        problems += [f"{name} at {width} px: table scrolls sideways — {p}" for p in page.evaluate(_SIDEWAYS)]
        problems += [f"{name} at {width} px: {p}" for p in page.evaluate(_OVERLAPS)]
        problems += [f"{name} at {width} px: picker cuts its choice — {p}" for p in page.evaluate(_TRUNCATED)]
        assert (tmp_path / f"{name}-{width}.png").stat().st_size > 10_000
    assert not problems, "\n".join(problems)
    assert not traffic["outside"], f"fetched from outside: {traffic['outside']}"
    assert not [f for f in traffic["failed"] if "/_stcore/" not in f], traffic["failed"]
