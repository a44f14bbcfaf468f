"""``emobridge serve [--model BUNDLE] [--host 127.0.0.1] [--port 8000]``: the HTTP service and
its web page (see :mod:`emobridge.inference.service`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from emobridge.errors import ConfigError

Opt = typer.Option


def serve(
    model: Annotated[Path | None, Opt("--model", "-m", help="Model bundle folder (default: "
                                      "the model shipped with emobridge).")] = None,
    host: Annotated[str, Opt("--host", help="Address to listen on (127.0.0.1: this machine "
                             "only; 0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, Opt("--port", min=0, max=65535, help="TCP port.")] = 8000,
    max_upload_mb: Annotated[float, Opt("--max-upload-mb", help="Largest upload.")] = 25.0,
    max_duration_s: Annotated[float, Opt("--max-duration-s",
                                         help="Longest audio accepted.")] = 600.0,
    max_concurrent: Annotated[int, Opt("--max-concurrent", min=1,
                                       help="Predictions run at once (and, in a lane of "
                                       "their own, adaptation batches).")] = 1,
    max_queue: Annotated[int, Opt("--max-queue", min=0, help="Requests waiting for a slot "
                                  "before the server answers 503.")] = 8,
    timeout_s: Annotated[float, Opt("--timeout-s", help="Longest a request may wait and "
                                    "run (504 after).")] = 60.0,
    max_adapt_files: Annotated[int, Opt("--max-adapt-files", help="Most recordings in one "
                                        "POST /v1/adapt.")] = 500,
    max_adapt_duration_s: Annotated[float, Opt("--max-adapt-duration-s", help="Most seconds "
                                               "of audio in one adaptation.")] = 7200.0,
    max_adapt_mb: Annotated[float, Opt("--max-adapt-mb", help="Largest upload of one "
                                       "adaptation (all its files).")] = 512.0,
    adapt_timeout_s: Annotated[float, Opt("--adapt-timeout-s", help="Longest an adaptation "
                                          "may wait and run (504 after).")] = 1800.0,
    domain_ttl_s: Annotated[float, Opt("--domain-ttl-s", help="Seconds an adapted domain "
                                       "stays usable after its adaptation.")] = 3600.0,
    max_domains: Annotated[int, Opt("--max-domains", help="Adapted domains kept in memory "
                                    "(the oldest is dropped).")] = 16,
    device: Annotated[str, Opt("--device", help="cpu, cuda, cuda:N, mps or auto.")] = "cpu",
) -> None:
    """Serve POST /v1/predict, POST /v1/adapt, GET /v1/health, GET /v1/model and the web
    page at /."""
    from emobridge.inference.recognizer import Recognizer
    from emobridge.inference.service import ServiceLimits, create_app
    from emobridge.runtime import limit_malloc_arenas, resolve_device

    try:
        import uvicorn
    except ImportError:
        raise ConfigError("emobridge serve needs the service extra: pip install "
                          "'emobridge[service]'") from None
    options = {"--max-upload-mb": max_upload_mb, "--max-duration-s": max_duration_s,
               "--timeout-s": timeout_s, "--max-adapt-files": max_adapt_files,
               "--max-adapt-duration-s": max_adapt_duration_s, "--max-adapt-mb": max_adapt_mb,
               "--adapt-timeout-s": adapt_timeout_s, "--domain-ttl-s": domain_ttl_s,
               "--max-domains": max_domains}
    for option, value in options.items():  # checked here to name the option, not the field
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{option}={value!r} must be a positive number")
    limits = ServiceLimits(max_upload_bytes=_mib(max_upload_mb),
                           max_duration_s=max_duration_s, max_concurrent=max_concurrent,
                           max_queue=max_queue, timeout_s=timeout_s,
                           max_adapt_files=max_adapt_files,
                           max_adapt_duration_s=max_adapt_duration_s,
                           max_adapt_bytes=_mib(max_adapt_mb), adapt_timeout_s=adapt_timeout_s,
                           domain_ttl_s=domain_ttl_s, max_domains=max_domains).check()
    limit_malloc_arenas()  # before uvicorn's threads: resident memory stays flat for hours
    used = resolve_device(device)
    rec = Recognizer.load(model, device=used) if model is not None \
        else Recognizer.default(device=used)
    rec.extractor  # noqa: B018 -- build the extractor before the first request
    app = create_app(rec, limits)
    typer.echo(f"serving {rec.card.get('method')} ({', '.join(rec.classes)}) on "
               f"http://{host}:{port}/  (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _mib(megabytes: float) -> int:
    """Bytes of ``megabytes`` MiB (at least 1: a tiny positive value stays a limit)."""
    return max(1, int(megabytes * 1024 * 1024))


def register(app: typer.Typer) -> None:
    """Add ``serve`` as a top-level command."""
    app.command("serve")(serve)
