"""The web page in a real headless Chromium: load it, upload generated WAVs, read the
rendered label, probability bars and results table, adapt to the batch and download the CSV
(skipped, with the reason, where no browser exists)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emobridge.inference.service import create_app
from tests.inference_browser import PipeBrowser, find_browser
from tests.inference_fixtures import (
    CLASSES,
    running_server,
    shared_adaptable_bundle,
    shared_tiny_bundle,
    tone,
    user_folder,
)

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


def rows_by(browser, page, expression: str):
    """``expression`` (of ``tr``) for every row of the results table."""
    return browser.evaluate(page, f"[...document.querySelectorAll('#rows tr')].map(tr => "
                                  f"{expression})")


def test_batch_table_adaptation_and_csv(browser, tmp_path_factory, tmp_path):
    """Many files at once: one row each with bars (a non-audio file's error in its row); the
    batch adapts and the rows are relabelled; later clips use the domain; CSV download."""
    import csv
    import os

    from emobridge import Recognizer

    rec = Recognizer.load(shared_adaptable_bundle(tmp_path_factory))
    paths = user_folder(tmp_path / "batch", n_per_class=2)
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")
    adapted, table = rec.adapt_predict(paths, names=[p.name for p in paths])
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.allow_downloads(downloads)
    with running_server(create_app(rec)) as url:
        page = browser.open(url + "/")
        browser.wait_for(page, f"document.querySelectorAll('#head th').length === "
                               f"{len(CLASSES) + 6}")
        browser.set_files(page, "#file", [*paths, notes])
        browser.wait_for(page, "document.querySelectorAll('#rows tr').length === 17 && "
                               "!document.querySelector('#rows tr[data-status=pending]')")
        assert rows_by(browser, page, "tr.children[1].textContent") == [
            p.name for p in paths] + ["notes.txt"]
        assert rows_by(browser, page, "tr.querySelectorAll('td.p .fill').length") == [
            len(CLASSES)] * 16 + [0]
        assert rows_by(browser, page, "tr.querySelector('td.emotion')?.firstChild.textContent"
                       )[:16] == [rec.predict(p).label for p in paths]
        assert "notes.txt: not an audio file" in browser.evaluate(
            page, "document.querySelector('#rows tr:last-child td.err').textContent")

        browser.evaluate(page, "document.getElementById('adapt').click()")
        summary = browser.wait_for(page, "document.getElementById('summary').textContent"
                                         ".startsWith('Adapted to 16 recordings') && "
                                         "document.getElementById('summary').textContent")
        assert "new recordings use this adapted domain" in summary
        assert rows_by(browser, page, "tr.dataset.adapted") == ["1"] * 16 + ["0"]
        assert rows_by(browser, page, "tr.querySelector('td.emotion')?.firstChild.textContent"
                       )[:16] == list(table["emotion"])
        assert any("16 recordings" in w for w in browser.evaluate(
            page, "[...document.querySelectorAll('#warnings li')].map(li => li.textContent)"))

        clip = tone(tmp_path / "later.wav", "happiness", duration_s=0.6)
        browser.set_file(page, "#file", clip)
        browser.wait_for(page, "document.querySelector('#rows tr:last-child')?.dataset"
                               ".status === 'done'")
        last = browser.evaluate(page, "[...document.querySelector('#rows tr:last-child')"
                                      ".children].map(td => td.textContent)")
        assert last[1] == "later.wav" and last[-1] == "adapted domain"
        assert last[3] == adapted.predict(clip).label

        # a drop (the page's own WAV encoder makes the file; no folder entries here)
        browser.evaluate(page, """(() => {
            const n = 8000, wave = new Float32Array(n);
            for (let i = 0; i < n; i++) wave[i] = 0.3 * Math.sin(2 * Math.PI * 200 * i / 16000);
            const dt = new DataTransfer();
            dt.items.add(new File([encodeWav([wave], 16000)], 'dropped.wav'));
            document.getElementById('drop').dispatchEvent(
                new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        })()""")
        browser.wait_for(page, "document.querySelectorAll('#rows tr').length === 19 && "
                               "!document.querySelector('#rows tr[data-status=pending]')")
        assert rows_by(browser, page, "tr.dataset.status")[-1] == "done"

        expected_csv = browser.evaluate(page, "tableCsv()")
        browser.evaluate(page, "document.getElementById('csv').click()")
        saved = downloads / "emobridge-results.csv"
        _wait_for_file(saved)
        assert saved.read_text(encoding="utf-8").replace("\r\n", "\n") == \
            expected_csv.replace("\r\n", "\n")
        if os.environ.get("EMOBRIDGE_SCREENSHOT"):  # for a person to look at
            browser.screenshot(page, Path(os.environ["EMOBRIDGE_SCREENSHOT"]))
    with saved.open(newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == 19 and list(records[0])[:3] == ["file", "duration_s", "emotion"]
    assert [r["emotion"] for r in records[:16]] == list(table["emotion"])
    assert {r["model"] for r in records[:16]} == {"adapted to this batch"}
    assert records[16]["file"] == "notes.txt" and "not an audio file" in records[16]["error"]
    assert records[17]["model"] == "adapted domain" and records[18]["file"] == "dropped.wav"
    assert abs(sum(float(records[0][f"p_{c}"]) for c in CLASSES) - 1) < 1e-3


def _wait_for_file(path: Path, timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():  # Chromium writes a .crdownload first, then renames it
        assert time.monotonic() < deadline, f"no download at {path}"
        time.sleep(0.05)
    return True
