"""The page in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Skips where no browser can be had (no ``/usr/bin/chromium``, no Playwright, or a
Chromium that does not start), saying why. The cloak runs 2 steps, and the
screenshot of the page after the cloak goes to the test's temporary folder;
``CLOAK_WEB_STEPS=preset`` runs the presets' own steps (a few seconds more on 2 CPU
cores) and saves the screenshot to ``docs/web-page.png``, which the README shows:
so an ordinary test run does not rewrite that committed file with a 2-step cloak.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloak.config import load_config
from cloak.web.app import create_app
from cloak.web.server import allowed_hosts, start_in_thread

REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO_ROOT / "docs" / "web-page.png"
CHROMIUM = Path(os.environ.get("CLOAK_CHROMIUM", "/usr/bin/chromium"))
STEPS = os.environ.get("CLOAK_WEB_STEPS", "2")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    """A headless Chromium, or a skip that says why there is none."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt install chromium, or set CLOAK_CHROMIUM=)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    with sync_api.sync_playwright() as playwright:
        try:
            instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        except Exception as err:  # a broken or sandboxed browser: nothing to test with
            pytest.skip(f"Chromium at {CHROMIUM} did not start: {err}")
        yield instance
        instance.close()


def test_page_cloaks_a_photo_in_a_real_browser(browser, astronaut, tmp_path):
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).save(photo, quality=92)
    overrides = ["device=cpu"] + ([] if STEPS == "preset" else [f"strength.steps={int(STEPS)}"])
    app = create_app(
        load_config(overrides, config_name="serve"), allowed_hosts=allowed_hosts("127.0.0.1"), overrides=overrides
    )
    server = start_in_thread(app, "127.0.0.1", 0)
    try:
        page = browser.new_page(viewport={"width": 1120, "height": 900}, accept_downloads=True)
        problems, requested = [], []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", lambda request: requested.append(request.url))

        page.goto(server.url)
        page.wait_for_selector('[data-steps="mid"]:has-text("steps")')  # the settings arrived
        assert page.is_checked('input[name="strength"][value="mid"]')
        page.set_input_files("#file-input", str(photo))
        page.wait_for_selector(".photo .badge.done", timeout=180_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.photo img.before, .photo img.after')]"
            ".every(img => img.complete && img.naturalWidth > 0)"
        )
        sizes = page.eval_on_selector_all(
            ".photo img.before, .photo img.after", "imgs => imgs.map(i => i.naturalWidth)"
        )
        assert sizes == [512, 512]
        assert "face model" in page.inner_text(".photo .faces")
        assert "Download astronaut-cloaked.jpg" in page.inner_text(".photo .download")

        page.fill(".photo .slider", "30")  # the slider moves the after image's edge
        assert "30%" in page.eval_on_selector(".photo img.after", "img => img.style.clipPath")
        page.click(".photo .tab[data-view='amplified']")
        page.wait_for_function("() => document.querySelector('.photo .amplified img').naturalWidth > 0")
        page.click(".photo .tab[data-view='compare']")
        page.fill(".photo .slider", "50")

        with page.expect_download() as download_info:
            page.click("#download-all")
        archive = download_info.value.path()
        with zipfile.ZipFile(archive) as z:
            assert "astronaut-cloaked.jpg" in z.namelist()
            cloaked = Image.open(io.BytesIO(z.read("astronaut-cloaked.jpg")))
            assert cloaked.format == "JPEG" and cloaked.size == (512, 512)
            difference = np.abs(np.asarray(cloaked.convert("RGB"), np.int16) - np.asarray(Image.open(photo), np.int16))
            assert difference.max() > 0, "the downloaded copy is not cloaked"

        assert not problems, f"the page logged errors (a CSP violation shows here): {problems}"
        assert all(url.startswith(server.url) for url in requested), "the page asked for something elsewhere"

        page.evaluate("window.scrollTo(0, 0)")
        shot = tmp_path / "web-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 0
        if STEPS == "preset":
            SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copyfile(shot, SCREENSHOT)
    finally:
        server.stop()
