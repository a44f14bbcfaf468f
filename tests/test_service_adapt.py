"""POST /v1/adapt and adapted domains on a real uvicorn server (free loopback port), requests
with httpx: a batch of generated tones adapts, its domain labels later clips, and abusive
batches are refused with one line naming the file or the limit."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from emobridge.cli import main
from emobridge.errors import ConfigError
from emobridge.inference.service import DomainRegistry, ServiceLimits, UploadError, create_app
from tests.conftest import voiced_tone
from tests.inference_fixtures import (
    CLASSES,
    running_server,
    shared_adaptable_bundle,
    tone,
    user_folder,
)

DOMAIN_ID = re.compile(r"[A-Za-z0-9_-]{22}")


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory):
    from emobridge import Recognizer

    return Recognizer.load(shared_adaptable_bundle(tmp_path_factory))


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> list[Path]:
    """16 short recordings: two per class from two unseen 'speakers'."""
    return user_folder(tmp_path_factory.mktemp("user"), n_per_class=2)


def files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (p.name, p.read_bytes(), "audio/wav")) for p in paths]


def adapt(url: str, parts: list, **data: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/adapt", files=parts, data=data, timeout=60)


def predict(url: str, path: Path, query: str = "", **data: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict{query}", data=data, timeout=30,
                      files={"file": (path.name, path.read_bytes(), "audio/wav")})


def test_adapt_a_batch_then_predict_with_its_domain(recognizer, batch, tmp_path):
    local, table = recognizer.adapt_predict(
        [(sf.read(p, dtype="float32")[0], 16_000) for p in batch], names=[p.name for p in batch])
    with running_server(create_app(recognizer)) as url:
        response = adapt(url, files(batch), speakers="auto")
        assert response.status_code == 200, response.text
        body = response.json()
        assert DOMAIN_ID.fullmatch(body["domain"]) and body["expires_in_s"] == 3600
        assert body["adaptation"]["files"] == 16 and body["adaptation"]["warnings"]
        assert any("16 recordings" in w for w in body["warnings"])
        rows = body["rows"]
        assert [r["path"] for r in rows] == [p.name for p in batch]
        for row, expected in zip(rows, table.to_dict(orient="records"), strict=True):
            assert row["emotion"] == expected["emotion"] and row["speaker"] == expected["speaker"]
            assert row["emotion"] in CLASSES and list(row["probabilities"]) == list(CLASSES)
            assert row["probabilities"]["anger"] == pytest.approx(expected["p_anger"], abs=1e-6)
            assert row["adaptation"].startswith("transductive (16 files")
            assert row["duration_s"] == pytest.approx(0.4)
        assert httpx.get(f"{url}/v1/health").json()["domains"] == 1

        clip = tone(tmp_path / "clip.wav", "sadness", duration_s=0.6)
        expected = local.predict(clip)
        adapted = predict(url, clip, f"?domain={body['domain']}").json()
        assert adapted["domain"] == body["domain"] and adapted["stats"] == "adapted domain"
        assert adapted["emotion"] == expected.label
        assert adapted["probabilities"]["sadness"] == pytest.approx(
            expected.probabilities["sadness"], abs=1e-6)
        assert predict(url, clip, domain=body["domain"]).json() == adapted  # the form field
        plain = predict(url, clip).json()
        assert plain["stats"] == "bundle" and "domain" not in plain

        unknown = predict(url, clip, "?domain=" + "A" * 22)
        assert unknown.status_code == 404 and "A" * 22 in unknown.json()["error"]
        malformed = predict(url, clip, "?domain=../../etc")
        assert malformed.status_code == 400 and "not a domain id" in malformed.json()["error"]
        twice = predict(url, clip, f"?domain={body['domain']}", domain="B" * 22)
        assert twice.status_code == 400 and "twice" in twice.json()["error"]


def float_wav(path: Path, seconds: float) -> Path:
    """32-bit float WAV: four bytes a sample, so bytes and seconds limits part ways."""
    sf.write(path, voiced_tone(seconds, 200.0), 16_000, subtype="FLOAT")
    return path


def test_abusive_batches_are_refused_naming_the_file(recognizer, tmp_path):
    limits = ServiceLimits(max_adapt_files=3, max_adapt_duration_s=1.0, max_adapt_bytes=40_000)
    short = [tone(tmp_path / f"s{i}.wav", duration_s=0.2, seed=i) for i in range(3)]
    long = [tone(tmp_path / f"l{i}.wav", duration_s=0.4, seed=i) for i in range(3)]
    heavy = [float_wav(tmp_path / f"f{i}.wav", 0.4) for i in range(2)]  # 51 kB, 0.8 s
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    junk = b"x" * 150_000  # over the whole body's limit (40 kB + form overhead)
    cases = [
        (files(short + long[:1]), {}, 413, "more than 3 files"),
        (files(long), {}, 413, "l2.wav: the batch passes the limit of 1 s"),
        (files(heavy), {}, 413, "f1.wav: the batch passes the limit of 40000 bytes"),
        ([("file", ("big.wav", junk, "audio/wav"))], {}, 413, "larger than the limit"),
        (files(short[:1] + [text]), {}, 415, "notes.txt: not an audio file"),
        (files(short[:1]) + [("file", ("empty.wav", b"", "audio/wav"))], {}, 400,
         "empty.wav: the uploaded file is empty"),
        ([("audio", ("a.wav", short[0].read_bytes(), "audio/wav"))], {}, 400,
         "named 'file'"),
        (files(short), {"speakers": "everyone"}, 400, "speakers='everyone'"),
        (files(short), {}, 422, "got 3"),  # too few recordings to adapt (the recognizer says)
    ]
    with running_server(create_app(recognizer, limits)) as url:
        for parts, data, status, reason in cases:
            response = adapt(url, parts, **data)
            assert response.status_code == status, (reason, response.text)
            assert reason in response.json()["error"], response.text
        head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        chunked = httpx.post(f"{url}/v1/adapt", timeout=30, content=iter([head, junk, junk]),
                             headers={"content-type": "multipart/form-data; boundary=x"})
        assert chunked.status_code == 413 and "upload larger than" in chunked.json()["error"]
        fields_only = httpx.post(  # multipart, but only a field
            f"{url}/v1/adapt", headers={"content-type": "multipart/form-data; boundary=x"},
            content=b'--x\r\nContent-Disposition: form-data; name="speakers"\r\n\r\n'
                    b"auto\r\n--x--\r\n")
        assert fields_only.status_code == 400 and "no files" in fields_only.json()["error"]
        not_form = httpx.post(f"{url}/v1/adapt", content=b"{}")
        assert not_form.status_code == 400 and "multipart" in not_form.json()["error"]
        health = httpx.get(f"{url}/v1/health").json()
        assert health["pending"] == 0 and health["domains"] == 0
        assert predict(url, short[0]).status_code == 200  # still serving


def test_domains_expire_and_the_oldest_is_evicted(recognizer, batch, tmp_path):
    clock = [0.0]
    registry = DomainRegistry(ttl_s=10, max_domains=2, clock=lambda: clock[0])
    a, b = registry.add("a"), registry.add("b")
    assert registry.get(a) == "a" and len(registry) == 2
    c = registry.add("c")  # the oldest goes
    with pytest.raises(UploadError, match="unknown or has expired") as gone:
        registry.get(a)
    assert gone.value.status == 404 and registry.get(b) == "b" and registry.get(c) == "c"
    clock[0] = 10.0
    assert len(registry) == 0
    with pytest.raises(UploadError, match="not a domain id"):
        registry.get("a" * 21 + "!")

    clip = tone(tmp_path / "clip.wav")
    limits = ServiceLimits(max_domains=1, domain_ttl_s=1.5)
    with running_server(create_app(recognizer, limits)) as url:
        first, second = (adapt(url, files(batch), speakers="none").json()["domain"]
                         for _ in range(2))
        assert first != second
        assert predict(url, clip, f"?domain={first}").status_code == 404  # evicted
        assert predict(url, clip, f"?domain={second}").status_code == 200
        time.sleep(1.6)
        expired = predict(url, clip, f"?domain={second}")
        assert expired.status_code == 404 and "1.5 s" in expired.json()["error"]
        assert httpx.get(f"{url}/v1/health").json()["domains"] == 0


def blocking(release: threading.Event, entered: threading.Event):
    def work(*args, **kwargs):
        entered.set()
        assert release.wait(20)
        raise ConfigError("released")  # a one-line library error: 422

    return work


def test_busy_gate_gives_503_and_a_slow_adaptation_504(recognizer, batch, monkeypatch):
    release, entered = threading.Event(), threading.Event()
    monkeypatch.setattr(recognizer, "predict", blocking(release, entered))
    limits = ServiceLimits(max_concurrent=1, max_queue=0, retry_after_s=4)
    with running_server(create_app(recognizer, limits)) as url:
        first: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: first.append(predict(url, batch[0])))
        worker.start()
        assert entered.wait(10)
        busy = predict(url, batch[1])
        # adaptations have a lane of their own: a running prediction does not hold them up
        beside = adapt(url, files(batch), speakers="none")
        release.set()
        worker.join(20)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "4"
        assert "busy" in busy.json()["error"] and first[0].status_code == 422
        assert beside.status_code == 200, beside.text

    release, entered = threading.Event(), threading.Event()
    monkeypatch.setattr(recognizer, "adapt_predict", blocking(release, entered))
    limits = ServiceLimits(max_concurrent=1, max_queue=4, adapt_timeout_s=0.2)
    with running_server(create_app(recognizer, limits)) as url:
        late = adapt(url, files(batch))
        assert late.status_code == 504 and "adaptation took longer than 0.2 s" in late.text
        second = adapt(url, files(batch[:2]))  # the first batch still holds its memory
        assert second.status_code == 503 and "busy" in second.json()["error"]
        assert httpx.get(f"{url}/v1/health").json()["pending"] == 1
        release.set()
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v1/health").json()["pending"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert adapt(url, files(batch)).status_code == 422  # free again


def test_adaptation_limits_are_checked(capsys):
    for bad in ({"max_domains": 0}, {"domain_ttl_s": float("nan")},
                {"max_adapt_bytes": True}, {"adapt_timeout_s": -1.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ServiceLimits(**bad).check()
    assert main(["serve", "--port", "0", "--max-adapt-files", "0"]) == 1
    err = capsys.readouterr().err
    assert "--max-adapt-files=0 must be a positive number" in err and len(
        err.strip().splitlines()) == 1
    assert main(["serve", "--port", "0", "--domain-ttl-s", "inf"]) == 1
    assert "--domain-ttl-s=inf" in capsys.readouterr().err


def test_decoded_batch_matches_the_files(recognizer, tmp_path):
    """Stereo 44.1 kHz uploads are mixed down and resampled like single predictions."""
    path = tmp_path / "stereo.wav"
    wave = np.stack([voiced_tone(0.5, 220.0, 44_100)] * 2, axis=1)
    sf.write(path, wave, 44_100)
    from emobridge.inference.service import _decode_batch

    class Part:
        filename = "dir/../stereo.wav"
        file = open(path, "rb")  # noqa: SIM115 -- closed below

    try:
        waves, names = _decode_batch([Part], ServiceLimits(), 16_000)
    finally:
        Part.file.close()
    assert names == ["stereo.wav"] and waves[0].ndim == 1
    assert len(waves[0]) == pytest.approx(8000, abs=2)
