"""The review page in a real headless Chromium against a live server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import librosa
import pytest

from tests.conftest import SAMPLE_RATE, white_noise, write_audio
from tests.live_server import running_server

KEY = "review-page-key"
ARTIFACTS = Path(os.environ.get("TUNETRACE_TEST_ARTIFACTS", "test-artifacts"))


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (Debian: chromium)")
def test_upload_shows_the_reference_and_the_evidence(
    tmp_path: Path, built_catalogue: Path, songs: dict
) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    catalogue = tmp_path / "catalogue"
    shutil.copytree(built_catalogue, catalogue)
    audio = librosa.effects.time_stretch(songs["song5"][: 18 * SAMPLE_RATE], rate=0.9)
    upload = write_audio(tmp_path / "suspicious.flac", audio)
    noise = write_audio(tmp_path / "noise.flac", white_noise(2))
    with (
        running_server(catalogue, api_keys=f"{KEY}:read", workers=1) as base_url,
        playwright_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(base_url + "/")
        page.get_by_label("Key with the read role").fill(KEY)
        page.get_by_role("button", name="Remember key").click()
        page.get_by_label("Audio file to check").set_input_files(str(upload))
        page.get_by_role("button", name="Check", exact=True).press(
            "Enter"
        )  # keyboard, not a mouse click
        verdict = page.locator("#verdict")
        try:
            verdict.wait_for(state="visible", timeout=60_000)
        except playwright_api.TimeoutError:
            pytest.fail(f"no verdict; the page says: {page.locator('#status').inner_text()!r}")
        assert "album/song5" in verdict.inner_text()
        row = page.locator("#matches tbody tr").first
        tempo = float(row.locator("td").nth(2).inner_text().rstrip("\u00d7"))
        assert tempo == pytest.approx(0.9, abs=0.02)
        image = page.locator("#evidence")
        image.wait_for(state="visible", timeout=60_000)
        assert page.evaluate("document.getElementById('evidence').naturalWidth") > 500
        assert "album/song5" in image.get_attribute("alt")
        assert page.locator("#caution").is_hidden()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-page.png"), full_page=True)
        # a noise upload matches nothing, and the page says how little that proves
        page.get_by_label("Audio file to check").set_input_files(str(noise))
        page.get_by_role("button", name="Check", exact=True).press("Enter")
        page.get_by_text("No probable copy found").wait_for(state="visible", timeout=60_000)
        caution = page.locator("#caution")
        caution.wait_for(state="visible", timeout=10_000)
        assert "non-tonal" in caution.inner_text()
        # the key survives a reload: it is entered once
        page.reload()
        assert page.get_by_label("Key with the read role").input_value() == KEY
        browser.close()
    assert (ARTIFACTS / "review-page.png").stat().st_size > 10_000
