"""The HTTP service (``emobridge serve``): a FastAPI app around one :class:`Recognizer`.

Endpoints: ``POST /v1/predict`` (multipart field ``file``; optional ``segment`` =
``none`` | ``vad`` | ``fixed``, ``window``, ``hop``), ``GET /v1/health``, ``GET /v1/model``
(the model card) and ``GET /`` (the web page).

Limits (:class:`ServiceLimits`): upload size (413), audio duration (413), concurrent
inferences with a bounded queue (503 with ``Retry-After`` when full) and a request timeout
(504). A bad upload gets a 4xx with ``{"error": reason}`` and the server keeps serving.
Uploads stay in memory (Starlette spools a large part to an anonymous temporary file, closed
and so removed when the request ends); nothing is written elsewhere.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations
# (``request: Request``, imported inside create_app) at definition time.
import asyncio
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emobridge.errors import ConfigError, EmobridgeError

__all__ = ["ServiceLimits", "create_app"]

STATIC = Path(__file__).resolve().parent / "static"
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and small fields beside the file


@dataclass
class ServiceLimits:
    """What one server accepts; every value is an ``emobridge serve`` option."""

    max_upload_bytes: int = 25 * 1024 * 1024
    max_duration_s: float = 600.0
    max_concurrent: int = 1
    max_queue: int = 8
    timeout_s: float = 60.0
    retry_after_s: int = 2

    def check(self) -> "ServiceLimits":
        for name, value in asdict(self).items():
            low = 0 if name == "max_queue" else 1e-9
            if not isinstance(value, (int, float)) or value < low:
                raise ConfigError(f"service limit {name}={value!r} must be >= {low:g}")
        return self


class UploadError(Exception):
    """A request the service refuses: HTTP ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def decode_upload(data: bytes, name: str, limits: ServiceLimits, rate: int) -> np.ndarray:
    """An upload's bytes as a mono waveform at ``rate``; :class:`UploadError` when empty,
    not decodable audio or too long (checked from the header before decoding)."""
    import soundfile as sf

    from emobridge.audio import prepare_waveform

    if not data:
        raise UploadError(400, f"{name}: the uploaded file is empty")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # libsndfile's errors for anything that is not audio
        raise UploadError(415, f"{name}: not an audio file this server can decode (WAV, "
                          "FLAC, OGG/Vorbis/Opus, MP3)") from None
    if info.samplerate <= 0 or info.frames <= 0:
        raise UploadError(400, f"{name}: the audio has no samples")
    duration = info.frames / info.samplerate
    if duration > limits.max_duration_s:
        raise UploadError(413, f"{name}: {duration:.1f} s of audio is longer than the "
                          f"limit of {limits.max_duration_s:g} s")
    try:
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return prepare_waveform(wave, sr, rate, source=name)
    except EmobridgeError as exc:
        raise UploadError(422, str(exc)) from None
    except Exception as exc:
        raise UploadError(415, f"{name}: cannot decode the audio ({exc})") from None


def _options(form: Any) -> dict[str, Any]:
    segment = str(form.get("segment") or "none").strip().lower()
    if segment not in ("none", "vad", "fixed"):
        raise UploadError(400, f"segment={segment!r}: use none, vad or fixed")
    try:
        window = float(form.get("window") or 3.0)
        hop = float(form.get("hop") or 1.0)
    except ValueError:
        raise UploadError(400, "window and hop must be numbers of seconds") from None
    if not (0.1 <= window <= 60 and 0.05 <= hop <= 60):
        raise UploadError(400, "window must be 0.1..60 s and hop 0.05..60 s")
    return {"segment": segment, "window": window, "hop": hop}


async def _read_upload(request: Any, limits: ServiceLimits
                       ) -> tuple[bytes, str, dict[str, Any]]:
    """The ``file`` field's bytes, its base name and the options of a multipart request;
    :class:`UploadError` for a body too large, not multipart, or without the field."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limits.max_upload_bytes + _FORM_OVERHEAD:
        raise UploadError(413, f"upload of {int(length)} bytes is larger than the limit of "
                          f"{limits.max_upload_bytes} bytes")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadError(400, "send the audio as multipart/form-data in a field named 'file'")
    try:
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise UploadError(400, "no file field: send the audio in a multipart field "
                                  "named 'file'")
            data = await upload.read(limits.max_upload_bytes + 1)
            name = Path(upload.filename or "upload").name
            options = _options(form)
    except UploadError:
        raise
    except Exception as exc:  # malformed multipart bodies
        raise UploadError(400, f"malformed multipart upload ({exc})") from None
    if len(data) > limits.max_upload_bytes:
        raise UploadError(413, f"{name}: larger than the limit of {limits.max_upload_bytes} "
                          "bytes")
    return data, name, options


def _infer(recognizer: Any, wave: np.ndarray, name: str, options: dict[str, Any]
           ) -> dict[str, Any]:
    """The response body for one decoded upload (runs in a worker thread)."""
    rate = recognizer.sample_rate_hz
    result = recognizer.predict((wave, rate)).as_dict()
    result["path"] = name
    if options["segment"] != "none":
        table = recognizer.timeline((wave, rate), segment=options["segment"],
                                    window_s=options["window"], hop_s=options["hop"])
        cols = [f"p_{c}" for c in recognizer.classes]
        result["segments"] = [
            {"start_s": r["start_s"], "end_s": r["end_s"], "emotion": r["emotion"],
             "probabilities": {c[2:]: r[c] for c in cols}}
            for r in table.to_dict(orient="records")]
    return result


class _Gate:
    """At most ``max_concurrent`` inferences at once, ``max_queue`` more waiting; the rest
    are refused. A timed-out request keeps its slot until its thread finishes (a thread
    cannot be stopped), so the limit holds."""

    def __init__(self, limits: ServiceLimits) -> None:
        self.limits = limits
        self.pending = 0
        self.running = 0
        self.semaphore: asyncio.Semaphore | None = None

    async def run(self, func: Any, *args: Any) -> Any:
        from starlette.concurrency import run_in_threadpool

        limits = self.limits
        if self.pending >= limits.max_concurrent + limits.max_queue:
            raise UploadError(503, "the server is busy; retry later",
                              {"Retry-After": str(limits.retry_after_s)})
        if self.semaphore is None:
            self.semaphore = asyncio.Semaphore(limits.max_concurrent)
        self.pending += 1

        async def slot() -> Any:
            try:
                async with self.semaphore:
                    self.running += 1
                    try:
                        return await run_in_threadpool(func, *args)
                    finally:
                        self.running -= 1
            finally:
                self.pending -= 1

        task = asyncio.ensure_future(slot())
        try:
            return await asyncio.wait_for(asyncio.shield(task), limits.timeout_s)
        except asyncio.TimeoutError:
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise UploadError(504, f"the prediction took longer than "
                              f"{limits.timeout_s:g} s") from None


def create_app(recognizer: Any, limits: ServiceLimits | None = None) -> Any:
    """The FastAPI application serving ``recognizer`` within ``limits``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    limits = (limits or ServiceLimits()).check()
    gate = _Gate(limits)
    app = FastAPI(title="emobridge", docs_url=None, redoc_url=None)

    @app.exception_handler(UploadError)
    async def _refused(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"error": exc.reason}, status_code=exc.status,
                            headers=exc.headers)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": recognizer.card.get("method"),
                "running": gate.running, "pending": gate.pending,
                "limits": asdict(limits)}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return recognizer.card

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, Any]:
        data, name, options = await _read_upload(request, limits)
        # decoding and resampling off the event loop (other requests keep being answered)
        wave = await run_in_threadpool(decode_upload, data, name, limits,
                                       recognizer.sample_rate_hz)
        del data
        try:
            return await gate.run(_infer, recognizer, wave, name, options)
        except EmobridgeError as exc:
            raise UploadError(422, str(exc)) from None

    return app
