"""The HTTP service on a real uvicorn server (free loopback port), requests with httpx."""

from __future__ import annotations

import tempfile
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from emobridge.errors import ConfigError
from emobridge.inference.service import ServiceLimits, create_app
from tests.inference_fixtures import CLASSES, running_server, shared_tiny_bundle, tone


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    return shared_tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory):
    from emobridge import Recognizer

    return Recognizer.load(shared_tiny_bundle(tmp_path_factory))


def post(url: str, content: bytes, name: str = "a.wav", **data: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", files={"file": (name, content, "audio/wav")},
                      data=data, timeout=30)


def test_predict_health_model_and_page(recognizer, tmp_path):
    wav = tone(tmp_path / "a.wav", "sadness", duration_s=1.0).read_bytes()
    with running_server(create_app(recognizer)) as url:
        health = httpx.get(f"{url}/v1/health").json()
        assert health["status"] == "ok" and health["model"] == "source_only"
        card = httpx.get(f"{url}/v1/model").json()
        assert card["classes"] == list(CLASSES) and card["intended_use"] == "tests only"
        body = post(url, wav).json()
        assert body["emotion"] in CLASSES and body["duration_s"] == pytest.approx(1.0)
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert body["stats"] == "bundle" and "segments" not in body
        timeline = post(url, tone(tmp_path / "b.wav", duration_s=4.0).read_bytes(),
                        segment="fixed", window="2", hop="1").json()
        assert [(s["start_s"], s["end_s"]) for s in timeline["segments"]] == [
            (0, 2), (1, 3), (2, 4)]
        page = httpx.get(url)
        assert page.status_code == 200 and "v1/predict" in page.text


def test_bad_uploads_get_4xx_with_a_reason(recognizer, tmp_path, monkeypatch):
    limits = ServiceLimits(max_upload_bytes=100_000, max_duration_s=2.0)
    long_wav = tone(tmp_path / "long.wav", duration_s=2.5).read_bytes()  # 80 kB, 2.5 s
    big = tone(tmp_path / "big.wav", duration_s=4.0).read_bytes()  # 128 kB
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, np.float32), 16_000)
    cases = [
        (post, b"", 400, "empty"),
        (post, b"this is not audio at all", 415, "not an audio file"),
        (post, big, 413, "larger than the limit"),
        (post, long_wav, 413, "longer than the limit of 2 s"),
        (post, silent.read_bytes(), 422, "silent"),
    ]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "spool"))
    (tmp_path / "spool").mkdir()
    with running_server(create_app(recognizer, limits)) as url:
        for send, content, status, reason in cases:
            response = send(url, content)
            assert response.status_code == status, (reason, response.text)
            assert reason in response.json()["error"]
        no_field = httpx.post(f"{url}/v1/predict", data={"segment": "vad"})
        assert no_field.status_code == 400 and "file" in no_field.json()["error"]
        other = httpx.post(f"{url}/v1/predict", files={"audio": ("a.wav", big[:1000])})
        assert other.status_code == 400 and "named 'file'" in other.json()["error"]
        bad_segment = post(url, long_wav[:20_000], segment="words")
        assert bad_segment.status_code == 400 and "segment" in bad_segment.json()["error"]
        ok = post(url, tone(tmp_path / "ok.wav").read_bytes())
        assert ok.status_code == 200  # still serving
        assert httpx.get(f"{url}/v1/health").json()["pending"] == 0
    assert list((tmp_path / "spool").iterdir()) == []  # no upload left behind


def test_full_queue_gets_503_with_retry_after_and_timeout_504(recognizer, tmp_path):
    slow = tone(tmp_path / "slow.wav", duration_s=12.0).read_bytes()
    limits = ServiceLimits(max_concurrent=1, max_queue=0, retry_after_s=3)
    with running_server(create_app(recognizer, limits)) as url:
        first: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: first.append(
            post(url, slow, segment="fixed", window="3", hop="0.05")))
        worker.start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v1/health").json()["pending"] == 0:
            assert time.monotonic() < deadline and worker.is_alive()
            time.sleep(0.005)
        busy = post(url, slow[:40_000])
        worker.join(30)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "3"
        assert "busy" in busy.json()["error"]
        assert first[0].status_code == 200 and len(first[0].json()["segments"]) > 150
    with running_server(create_app(recognizer, ServiceLimits(timeout_s=0.01))) as url:
        late = post(url, slow, segment="fixed", window="3", hop="0.05")
        assert late.status_code == 504 and "longer than" in late.json()["error"]
        health = httpx.get(f"{url}/v1/health").json()
        assert health["status"] == "ok" and health["pending"] == 1  # still holds its slot
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/v1/health").json()["pending"]:  # let it finish
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_limits_are_checked():
    with pytest.raises(ConfigError, match="max_concurrent"):
        ServiceLimits(max_concurrent=0).check()
