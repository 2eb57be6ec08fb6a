"""The real app in a real browser: ``streamlit run`` + Debian Chromium driven by Playwright.

Uploads a real MNIST digit and a real Fashion-MNIST image to the shipped
Fashion-MNIST VAE and checks that the digit is flagged OOD and the garment is
not; moves the brightness slider and checks that the AUROC chart changes.
Screenshots go to the test's temporary folder. Skipped (with the reason) only
when Chromium or Playwright is missing.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

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


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if not (REPO / "checkpoints" / f"{MODEL}.json").exists():
        pytest.fail(f"The shipped checkpoint checkpoints/{MODEL} is missing (git checkout -- checkpoints).")
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    # A small live ROSE fit (300 Fisher images, 500 calibration images) keeps the test short (the
    # default definition fits on 10,000); the live robustness AUROC uses 32 + 32 images.
    env = {"ROSE_LIVE_N_FISHER": "300", "ROSE_LIVE_N_CALIBRATION": "500", "ROSE_LIVE_N": "32"}
    with shots.serve(env=env, log=log) as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = shots.launch_browser(p)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def test_home_then_upload_digit_and_garment(page, app_url, tmp_path):
    page.goto(app_url)
    page.get_by_text(f"Model: {MODEL}").wait_for()
    shots.wait_idle(page)
    assert page.get_by_role("heading", name="How ROSE works").is_visible()
    page.screenshot(path=str(tmp_path / "home.png"), full_page=True)

    page.goto(f"{app_url}/score_images")
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
    assert (tmp_path / "score.png").stat().st_size > 10_000


def _chart_text(page, title: str) -> str:
    chart = page.locator(".js-plotly-plot", has_text=title)
    chart.wait_for(timeout=300_000)
    return chart.inner_text()


def test_brightness_slider_changes_the_chart(page, app_url, tmp_path):
    page.goto(f"{app_url}/robustness")
    before = _chart_text(page, "AUROC at 1.0× brightness")
    shots.wait_idle(page)
    page.screenshot(path=str(tmp_path / "robustness-1.0.png"), full_page=True)
    slider = page.get_by_role("slider").first
    slider.focus()
    for _ in range(3):  # steps of 0.2×: 1.0 → 0.4
        slider.press("ArrowLeft")
    after = _chart_text(page, "AUROC at 0.4× brightness")
    shots.wait_idle(page)
    after = _chart_text(page, "AUROC at 0.4× brightness")
    page.screenshot(path=str(tmp_path / "robustness-0.4.png"), full_page=True)
    values = lambda text: re.findall(r"\d\.\d{3}", text)  # noqa: E731 - the bar labels
    assert values(before) and values(after) and values(before) != values(after), (before, after)
    assert page.get_by_text("0.4×").first.is_visible()
