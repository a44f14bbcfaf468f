"""The web page in a real headless Chromium: load it, upload a generated WAV, read the
rendered label and probability bars (skipped, with the reason, where no browser exists)."""

from __future__ import annotations

import pytest

from emobridge.inference.service import create_app
from tests.inference_browser import PipeBrowser, find_browser
from tests.inference_fixtures import CLASSES, running_server, shared_tiny_bundle, tone

BROWSER = find_browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no chromium / google-chrome on PATH (.ci/run installs Debian's "
    "chromium with apt-get; set EMOBRIDGE_CHROMIUM to use another)")


@pytest.fixture
def browser(tmp_path):
    assert BROWSER is not None
    chrome = PipeBrowser(BROWSER, tmp_path / "profile")
    yield chrome
    chrome.close()


def test_upload_shows_label_bars_and_timeline(browser, tmp_path_factory, tmp_path):
    from emobridge import Recognizer

    rec = Recognizer.load(shared_tiny_bundle(tmp_path_factory))
    short = tone(tmp_path / "clip.wav", "sadness", duration_s=1.0)
    long = tone(tmp_path / "long.wav", "neutral", duration_s=5.0)
    expected = rec.predict(short).label
    with running_server(create_app(rec)) as url:
        page = browser.open(url + "/")
        browser.wait_for(page, "document.readyState === 'complete' && "
                         "document.getElementById('model').textContent.includes('source_only')")
        browser.set_file(page, "#file", short)
        label = browser.wait_for(page, "document.getElementById('label').textContent")
        assert label == expected
        bars = browser.evaluate(page, "[...document.querySelectorAll('#bars .name')]"
                                ".map(e => e.textContent)")
        assert sorted(bars) == sorted(CLASSES)
        # a timeline for long audio: fixed windows drawn as one line per class
        browser.evaluate(page, "document.getElementById('segment').value = 'fixed'")
        browser.set_file(page, "#file", long)
        lines = browser.wait_for(page, "document.querySelectorAll('#timeline polyline')"
                                 ".length")
        assert lines == len(CLASSES)
        assert browser.evaluate(page, "document.getElementById('error').textContent") == ""
