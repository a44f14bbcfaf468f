"""The HTTP service (``emobridge serve``): a FastAPI app around one :class:`Recognizer`.

Endpoints: ``POST /v1/predict`` (multipart field ``file``; optional ``segment`` =
``none`` | ``vad`` | ``fixed``, ``window``, ``hop``, and ``domain``, also accepted as a query
parameter), ``POST /v1/adapt`` (many ``file`` fields, optional ``speakers`` = ``auto`` |
``none``: adapts the model to that batch without labels and answers an adapted-domain id for
later predictions), ``GET /v1/health``, ``GET /v1/model`` (the model card) and ``GET /`` (the
web page).

Limits (:class:`ServiceLimits`): upload size (413), audio duration (413), files, bytes and
hours of one adaptation batch (413), concurrent inferences with a bounded queue (503 with
``Retry-After`` when full; adaptations run in a lane of their own, so a prediction never
waits behind an adaptation that may take minutes), a request timeout (504; adaptations have
their own) and adapted domains kept in memory (a time-to-live and a count,
the oldest evicted). A bad upload gets a 4xx with ``{"error": reason}`` and the server keeps
serving. Uploads stay in memory (Starlette spools a large part to an anonymous temporary
file, closed and so removed when the request ends); nothing is written elsewhere.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations
# (``request: Request``, imported inside create_app) at definition time.
import asyncio
import io
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emobridge.errors import ConfigError, EmobridgeError

__all__ = ["DomainRegistry", "ServiceLimits", "create_app"]

STATIC = Path(__file__).resolve().parent / "static"
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and small fields beside the file
_PART_OVERHEAD = 1024  # headers of one file part of a batch (boundary, disposition, type)
_MAX_NAME = 200  # characters of an uploaded file name kept for display


@dataclass
class ServiceLimits:
    """What one server accepts; every value is an ``emobridge serve`` option."""

    max_upload_bytes: int = 25 * 1024 * 1024
    max_duration_s: float = 600.0
    max_concurrent: int = 1
    max_queue: int = 8
    timeout_s: float = 60.0
    retry_after_s: int = 2
    #: One adaptation batch: files, seconds of audio and bytes of upload (each file also
    #: within ``max_upload_bytes`` and ``max_duration_s``). The decoded batch stays in
    #: memory while it adapts: 2 h at 16 kHz is about 460 MB of float32.
    max_adapt_files: int = 500
    max_adapt_duration_s: float = 2 * 3600.0
    max_adapt_bytes: int = 512 * 1024 * 1024
    adapt_timeout_s: float = 1800.0
    #: Adapted domains: seconds each lives after its adaptation, and how many are kept.
    domain_ttl_s: float = 3600.0
    max_domains: int = 16

    def check(self) -> "ServiceLimits":
        """``self`` when every limit is a finite positive number (``max_queue`` may be 0);
        else :class:`ConfigError` naming the limit."""
        for name, value in asdict(self).items():
            low = 0 if name == "max_queue" else 1e-9
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < low:
                raise ConfigError(f"service limit {name}={value!r} must be a number >= "
                                  f"{low:g}")
        return self


class UploadError(Exception):
    """A request the service refuses: HTTP ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def probe_upload(data: bytes, name: str, limits: ServiceLimits) -> float:
    """An upload's duration in seconds, read from its header (nothing decoded);
    :class:`UploadError` when empty, not audio or longer than ``limits.max_duration_s``."""
    import soundfile as sf

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
    return duration


def decode_upload(data: bytes, name: str, limits: ServiceLimits, rate: int) -> np.ndarray:
    """An upload's bytes as a mono waveform at ``rate``; :class:`UploadError` when empty,
    not decodable audio or too long (checked from the header before decoding)."""
    import soundfile as sf

    from emobridge.audio import prepare_waveform

    probe_upload(data, name, limits)
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
    domain = form.get("domain")
    return {"segment": segment, "window": window, "hop": hop,
            "domain": domain if isinstance(domain, str) and domain else None}


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


def _display_name(filename: str | None) -> str:
    """An uploaded file's base name, bounded (it is echoed in tables and errors)."""
    name = Path(filename or "upload").name or "upload"
    return name if len(name) <= _MAX_NAME else name[:_MAX_NAME - 3] + "..."


async def _capped(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """``stream`` until more than ``limit`` bytes came (a chunked body has no length to
    check first): then 413, before anything more is read or spooled."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise UploadError(413, f"upload larger than the limit of {limit} bytes for one "
                              "adaptation")
        yield chunk


async def _read_batch(request: Any, limits: ServiceLimits) -> Any:
    """The parsed multipart form of an adaptation request (its files spooled by Starlette;
    the caller closes it); 413 beyond the batch's bytes or file count, 400 if malformed."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    limit = (limits.max_adapt_bytes + _FORM_OVERHEAD
             + _PART_OVERHEAD * limits.max_adapt_files)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise UploadError(413, f"upload of {int(length)} bytes is larger than the limit of "
                          f"{limit} bytes for one adaptation")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadError(400, "send the recordings as multipart/form-data, each in a field "
                          "named 'file'")
    parser = MultiPartParser(request.headers, _capped(request.stream(), limit),
                             max_files=limits.max_adapt_files, max_fields=8)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        if str(exc).startswith("Too many files"):
            raise UploadError(413, f"more than {limits.max_adapt_files} files in one "
                              "adaptation") from None
        raise UploadError(400, f"malformed multipart upload ({exc})") from None


def _batch_files(form: Any) -> tuple[list[Any], str]:
    """The uploads of an adaptation form, in order, and its ``speakers`` option."""
    uploads = []
    for key, value in form.multi_items():
        if isinstance(value, str):
            continue
        if key != "file":
            raise UploadError(400, f"{_display_name(value.filename)}: file fields must be "
                              f"named 'file', not {key[:40]!r}")
        uploads.append(value)
    if not uploads:
        raise UploadError(400, "no files: send the recordings in multipart fields named "
                          "'file'")
    speakers = str(form.get("speakers") or "auto").strip().lower()
    if speakers not in ("auto", "none"):
        raise UploadError(400, f"speakers={speakers[:40]!r}: use auto or none")
    return uploads, speakers


def _read_part(upload: Any, limits: ServiceLimits) -> tuple[bytes, str]:
    """One spooled upload's bytes (at most the per-file limit) and display name."""
    name = _display_name(upload.filename)
    upload.file.seek(0)
    data = upload.file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise UploadError(413, f"{name}: larger than the limit of {limits.max_upload_bytes} "
                          "bytes")
    return data, name


def _decode_batch(uploads: list[Any], limits: ServiceLimits, rate: int
                  ) -> tuple[list[np.ndarray], list[str]]:
    """Every upload as a waveform at ``rate`` with its name. Sizes, formats and durations
    are checked from the headers first, so a refused batch decodes nothing; one file's bytes
    are in memory at a time (runs in a worker thread)."""
    total_bytes, total_s = 0, 0.0
    for upload in uploads:  # header pass
        data, name = _read_part(upload, limits)
        total_bytes += len(data)
        if total_bytes > limits.max_adapt_bytes:
            raise UploadError(413, f"{name}: the batch passes the limit of "
                              f"{limits.max_adapt_bytes} bytes for one adaptation")
        total_s += probe_upload(data, name, limits)
        if total_s > limits.max_adapt_duration_s:
            raise UploadError(413, f"{name}: the batch passes the limit of "
                              f"{limits.max_adapt_duration_s:g} s of audio for one "
                              "adaptation")
    waves, names = [], []
    for upload in uploads:
        data, name = _read_part(upload, limits)
        waves.append(decode_upload(data, name, limits, rate))
        names.append(name)
    return waves, names


def _adapt(recognizer: Any, waves: list[np.ndarray], names: list[str], speakers: str
           ) -> tuple[Any, Any]:
    """The adapted recognizer and its table for one batch (runs in a worker thread)."""
    from emobridge.runtime import release_free_memory

    rate = recognizer.sample_rate_hz
    try:
        return recognizer.adapt_predict([(w, rate) for w in waves], names=names,
                                        speakers=speakers)
    finally:  # what the adaptation allocated and freed goes back to the system
        release_free_memory()


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python values and non-finite floats as
    ``None`` (the JSON response refuses NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray)
                                       else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _rows(table: Any, classes: tuple[str, ...]) -> list[dict[str, Any]]:
    """An adaptation table as the response's rows, one per uploaded file."""
    rows = []
    for record in table.to_dict(orient="records"):
        rows.append(_jsonable({
            "path": record.get("path"), "duration_s": record.get("duration_s"),
            "emotion": record.get("emotion"),
            "probabilities": {c: record.get(f"p_{c}") for c in classes},
            "speaker": record.get("speaker"), "stats": record.get("stats"),
            "adaptation": record.get("adaptation")}))
    return rows


class DomainRegistry:
    """Adapted recognizers under random ids, each kept ``ttl_s`` seconds after its
    adaptation; at most ``max_domains`` (adding one more evicts the oldest). Lives in memory:
    a restart forgets every domain."""

    ID_LENGTH = 22  # secrets.token_urlsafe(16): 128 random bits
    _ID = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, ttl_s: float, max_domains: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_domains = max_domains
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def _purge(self, now: float) -> None:
        while self._items and next(iter(self._items.values()))[0] <= now:
            self._items.popitem(last=False)  # insertion order is expiry order (fixed TTL)

    def add(self, recognizer: Any) -> str:
        """Keep ``recognizer``; its new id."""
        with self._lock:
            now = self._clock()
            self._purge(now)
            while len(self._items) >= self.max_domains:
                self._items.popitem(last=False)
            domain_id = secrets.token_urlsafe(16)
            self._items[domain_id] = (now + self.ttl_s, recognizer)
            return domain_id

    def get(self, domain_id: str) -> Any:
        """The recognizer of ``domain_id``: 400 for a malformed id, 404 for an unknown,
        expired or evicted one."""
        if len(domain_id) != self.ID_LENGTH or not self._ID.fullmatch(domain_id):
            raise UploadError(400, f"domain={domain_id[:40]!r} is not a domain id ("
                              f"{self.ID_LENGTH} characters of A-Z a-z 0-9 _ -)")
        with self._lock:
            self._purge(self._clock())
            item = self._items.get(domain_id)
        if item is None:
            raise UploadError(404, f"domain {domain_id} is unknown or has expired (domains "
                              f"live {self.ttl_s:g} s, at most {self.max_domains} at once); "
                              "adapt again")
        return item[1]

    def __len__(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len(self._items)


class _Ticket:
    """A place in the gate, released exactly once (when the work ends, or by the caller
    when the request fails before reaching the gate)."""

    def __init__(self, gate: "_Gate", batch: bool) -> None:
        self.gate = gate
        self.batch = batch
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.gate.pending -= 1
            self.gate.batches -= self.batch


class _Gate:
    """Two lanes. Predictions: at most ``max_concurrent`` at once, ``max_queue`` more
    waiting; the rest are refused. Adaptations: at most ``max_concurrent`` batches held (in
    memory) at once, each taking its place before its upload is read. The lanes run side by
    side (sharing the CPU) because an adaptation can take minutes: in one lane every
    prediction behind it would wait, or time out. A timed-out request keeps its slot until
    its thread finishes (a thread cannot be stopped), so the limits hold."""

    def __init__(self, limits: ServiceLimits) -> None:
        self.limits = limits
        self.pending = 0
        self.running = 0
        self.batches = 0
        self.semaphores: dict[bool, asyncio.Semaphore] = {}

    def reserve(self, batch: bool = False) -> _Ticket:
        """A place in the lane's queue, or 503 with ``Retry-After`` when there is none."""
        limits = self.limits
        predictions = self.pending - self.batches
        if (self.batches >= limits.max_concurrent if batch
                else predictions >= limits.max_concurrent + limits.max_queue):
            raise UploadError(503, "the server is busy; retry later",
                              {"Retry-After": str(limits.retry_after_s)})
        self.pending += 1
        self.batches += batch
        return _Ticket(self, batch)

    async def run(self, func: Any, *args: Any, ticket: _Ticket | None = None,
                  timeout_s: float | None = None, what: str = "prediction") -> Any:
        """``func(*args)`` in a worker thread once a slot is free; 504 after ``timeout_s``
        (default ``limits.timeout_s``). Takes over ``ticket`` (else reserves a place)."""
        from starlette.concurrency import run_in_threadpool

        ticket = ticket or self.reserve()
        lane = self.semaphores.setdefault(ticket.batch,
                                          asyncio.Semaphore(self.limits.max_concurrent))
        timeout_s = self.limits.timeout_s if timeout_s is None else timeout_s

        async def slot() -> Any:
            try:
                async with lane:
                    self.running += 1
                    try:
                        return await run_in_threadpool(func, *args)
                    finally:
                        self.running -= 1
            finally:
                ticket.release()

        task = asyncio.ensure_future(slot())
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except asyncio.TimeoutError:
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise UploadError(504, f"the {what} took longer than {timeout_s:g} s") from None


def create_app(recognizer: Any, limits: ServiceLimits | None = None) -> Any:
    """The FastAPI application serving ``recognizer`` within ``limits``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    limits = (limits or ServiceLimits()).check()
    gate = _Gate(limits)
    domains = DomainRegistry(limits.domain_ttl_s, limits.max_domains)
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
                "running": gate.running, "pending": gate.pending, "domains": len(domains),
                "limits": asdict(limits)}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return recognizer.card

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, Any]:
        data, name, options = await _read_upload(request, limits)
        domain_id = _domain_option(request.query_params.get("domain"), options["domain"])
        rec = domains.get(domain_id) if domain_id else recognizer
        # decoding and resampling off the event loop (other requests keep being answered)
        wave = await run_in_threadpool(decode_upload, data, name, limits, rec.sample_rate_hz)
        del data
        try:
            result = await gate.run(_infer, rec, wave, name, options)
        except EmobridgeError as exc:
            raise UploadError(422, str(exc)) from None
        return {**result, "domain": domain_id} if domain_id else result

    @app.post("/v1/adapt")
    async def adapt(request: Request) -> dict[str, Any]:
        return await _adapt_request(request, recognizer, limits, gate, domains)

    return app


async def _adapt_request(request: Any, recognizer: Any, limits: ServiceLimits, gate: _Gate,
                         domains: DomainRegistry) -> dict[str, Any]:
    """``POST /v1/adapt``: read and decode the batch, adapt in the gate, keep the domain.
    Answers ``domain``, ``expires_in_s``, ``adaptation`` (the adapted recognizer's record),
    ``warnings``, ``errors`` (recordings left out: name -> reason) and ``rows`` (one per
    recording: path, duration_s, emotion, probabilities, speaker, stats, adaptation)."""
    from starlette.concurrency import run_in_threadpool

    ticket = gate.reserve(batch=True)  # before the upload: a busy server reads nothing
    try:
        form = await _read_batch(request, limits)
        try:
            uploads, speakers = _batch_files(form)
            waves, names = await run_in_threadpool(_decode_batch, uploads, limits,
                                                   recognizer.sample_rate_hz)
        finally:
            await form.close()
    except BaseException:
        ticket.release()
        raise
    try:
        adapted, table = await gate.run(_adapt, recognizer, waves, names, speakers,
                                        ticket=ticket, timeout_s=limits.adapt_timeout_s,
                                        what="adaptation")
    except EmobridgeError as exc:
        raise UploadError(422, str(exc)) from None
    return {"domain": domains.add(adapted), "expires_in_s": limits.domain_ttl_s,
            "adaptation": _jsonable(adapted.adaptation),
            "warnings": [str(w) for w in table.attrs.get("warnings", [])],
            "errors": _jsonable(table.attrs.get("errors", {})),
            "rows": _rows(table, recognizer.classes)}


def _domain_option(query: str | None, field: str | None) -> str | None:
    """The ``domain`` of a prediction, from the query string or the form (not both,
    unless equal)."""
    if query and field and query != field:
        raise UploadError(400, "domain given twice with different values (query and form)")
    return query or field
