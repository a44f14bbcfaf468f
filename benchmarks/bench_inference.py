"""Inference benchmark: ``emobridge predict`` speed and ``emobridge serve`` under load.

1. ``emobridge predict`` with the default model (or ``--model``) over the EMO-DB folder:
   x real time (audio seconds / wall seconds, goal >= 40x on 2 cores) and the time from
   command start to the first result (one file, goal < 5 s).
2. Loopback load test against ``emobridge serve``: ``--requests`` (500) 3-s clips from
   ``--clients`` (4) concurrent clients, bounded by ``--max-seconds``: p50 / p95 latency
   (goal p95 < 1 s), errors (goal 0), server RSS before, during and after.
3. ``--bad`` (50) bad uploads of each kind (empty, not audio, too large, too long, no file
   field): all must get a 4xx, and the server must still be healthy.
4. The default model's leave-one-corpus-out UA, from its model card.

Writes the ``inference`` section of benchmarks/RESULTS.md (``--no-write`` prints only).
``--quick`` runs a small version (a few files and requests) as a smoke test.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import DEFAULT_CORPORA, REPO, free_port, rss_mb, write_section

PYTHON = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep
       + os.environ.get("PYTHONPATH", "")}


def cli(*args: str) -> list[str]:
    return [PYTHON, "-m", "emobridge.cli", *args]


def audio_seconds(paths: list[Path]) -> float:
    import soundfile as sf

    return float(sum(sf.info(str(p)).duration for p in paths))


def bench_predict(folder: Path, model: list[str], limit: int | None, out: Path
                  ) -> dict[str, Any]:
    """x real time over ``folder`` and start-to-first-result on one file."""
    files = sorted(folder.rglob("*.flac")) + sorted(folder.rglob("*.wav"))
    if limit:
        files = files[:limit]
        listing = out / "files.txt"
        listing.write_text("\n".join(map(str, files)) + "\n")
        target = str(listing)
    else:
        target = str(folder)
    t0 = time.perf_counter()
    subprocess.run(cli("predict", *model, files[0].as_posix(), "--no-progress"), env=ENV,
                   check=True, capture_output=True)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(cli("predict", *model, target, "--stats", "bundle", "--no-progress",
                       "-o", str(out / "predictions.csv")), env=ENV, check=True,
                   capture_output=True)
    wall = time.perf_counter() - t0
    seconds = audio_seconds(files)
    return {"files": len(files), "audio_s": seconds, "wall_s": wall,
            "x_real_time": seconds / wall, "first_result_s": first}


def clip_bytes(path: Path, seconds: float = 3.0, rate: int | None = None) -> bytes:
    """``path`` cut or looped to ``seconds``, as WAV bytes (at ``rate`` when given)."""
    import soundfile as sf
    import soxr

    wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if rate and rate != sr:
        wave, sr = soxr.resample(wave, sr, rate), rate
    n = int(seconds * sr)
    wave = np.resize(wave, n) if len(wave) < n else wave[:n]
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def start_server(model: list[str], port: int) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cli("serve", *model, "--port", str(port), "--max-upload-mb", "1",
                                "--max-duration-s", "30", "--max-queue", "16"),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"emobridge serve exited: {proc.stderr.read().decode()[-500:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("emobridge serve did not answer within 120 s")


def load_test(url: str, clips: list[bytes], pid: int, requests: int, clients: int,
              max_seconds: float) -> dict[str, Any]:
    """``requests`` uploads from ``clients`` threads, stopped after ``max_seconds``."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    rss = [rss_mb(pid)]
    lock = threading.Lock()
    counter = iter(range(requests))
    stop = time.monotonic() + max_seconds

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            for i in counter:
                if time.monotonic() > stop:
                    return
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{url}/v1/predict",
                                  files={"file": ("clip.wav", clips[i % len(clips)])})
                    ok = r.status_code == 200
                    reason = f"{r.status_code} {r.text[:80]}"
                except httpx.HTTPError as exc:
                    ok, reason = False, f"{type(exc).__name__}: {exc}"
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if not ok:
                        errors.append(reason)
                    if len(latencies) % 100 == 0:
                        rss.append(rss_mb(pid))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    rss.append(rss_mb(pid))
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    return {"requests": len(latencies), "clients": clients, "wall_s": wall,
            "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
            "errors": len(errors), "first_errors": errors[:3], "rss_mb": rss}


def bad_uploads(url: str, n: int, good: Path) -> dict[str, Any]:
    """``n`` bad uploads of each kind; the status codes seen and the health afterwards."""
    import httpx

    kinds = {
        "empty": {"files": {"file": ("e.wav", b"")}},
        "not_audio": {"files": {"file": ("x.wav", b"hello, not audio" * 64)}},
        "too_large": {"files": {"file": ("big.wav", os.urandom(2 * 1024 * 1024))}},
        "too_long": {"files": {"file": ("long.wav", clip_bytes(good, 35.0, rate=8000))}},
        "no_file_field": {"data": {"segment": "none"}},
    }
    seen: dict[str, dict[int, int]] = {}
    with httpx.Client(timeout=60) as http:
        for kind, request in kinds.items():
            codes: dict[int, int] = {}
            for _ in range(n):
                code = http.post(f"{url}/v1/predict", **request).status_code
                codes[code] = codes.get(code, 0) + 1
            seen[kind] = codes
        healthy = http.get(f"{url}/v1/health").json().get("status") == "ok"
        still = http.post(f"{url}/v1/predict",
                          files={"file": ("ok.wav", clip_bytes(good))}).status_code
    all_4xx = all(400 <= c < 500 for codes in seen.values() for c in codes)
    return {"codes": seen, "all_4xx": all_4xx, "healthy": healthy and still == 200}


def report(pred: dict[str, Any], load: dict[str, Any], bad: dict[str, Any],
           card: dict[str, Any], args: argparse.Namespace) -> str:
    loco = card.get("leave_one_corpus_out") or {}
    loco_rows = "\n".join(f"| {k} | {100 * v['ua']:.1f} | {100 * v['wa']:.1f} | {v['n']} |"
                          for k, v in loco.items()) or "| (not in the card) | | | |"
    rss = ", ".join(f"{x:.0f}" for x in load["rss_mb"])
    codes = "; ".join(f"{k}: {v}" for k, v in bad["codes"].items())
    what = f"`emobridge predict` over EMO-DB ({pred['files']} files, {pred['audio_s']:.0f} s)"
    speed = f"{pred['x_real_time']:.1f}x real time ({pred['wall_s']:.1f} s)"
    latency = f"p50 {load['p50_s']:.3f} s, p95 {load['p95_s']:.3f} s ({load['wall_s']:.0f} s)"
    return f"""## Inference (`benchmarks/bench_inference.py`{' --quick' if args.quick else ''})

Model: {card.get('method')} over {json.dumps(card.get('extractor', {}).get('name'))} features
({args.model or 'the default model'}); {os.cpu_count()} CPU cores.

| measure | value | goal |
|---|---|---|
| {what} | {speed} | >= 40x |
| command start to first result (one file) | {pred['first_result_s']:.2f} s | < 5 s |
| load test: {load['requests']} x 3-s clips, {load['clients']} clients | {latency} | p95 < 1 s |
| load test errors | {load['errors']} | 0 |
| server RSS (MB) before, every 100 requests, after | {rss} | no growth trend |
| bad uploads ({args.bad} of each kind): status codes | {codes} | all 4xx |
| server healthy after the bad uploads | {bad['healthy']} | yes |

Default model, leave-one-corpus-out (from its card):

| held-out corpus | UA % | WA % | utterances |
|---|---|---|---|
{loco_rows}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpora-root", type=Path, default=DEFAULT_CORPORA)
    p.add_argument("--model", type=Path, default=None, help="bundle (default: the default)")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--bad", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="20 files, 40 requests, 5 bad each")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.bad, args.max_seconds = 40, 5, 120.0
    model = ["--model", str(args.model)] if args.model else []
    folder = args.corpora_root / "emodb"
    out = REPO / "benchmarks" / "out" / "inference"
    out.mkdir(parents=True, exist_ok=True)
    card = json.loads(subprocess.run(cli("model", "info", *model, "--json"), env=ENV,
                                     check=True, capture_output=True, text=True).stdout)
    pred = bench_predict(folder, model, 20 if args.quick else None, out)
    print(f"predict: {pred}", flush=True)
    files = sorted(folder.rglob("*.flac"))[:50]
    clips = [clip_bytes(f) for f in files]
    port = free_port()
    server = start_server(model, port)
    try:
        url = f"http://127.0.0.1:{port}"
        load = load_test(url, clips, server.pid, args.requests, args.clients,
                         args.max_seconds)
        print(f"load: {load}", flush=True)
        bad = bad_uploads(url, args.bad, files[0])
        print(f"bad uploads: {bad}", flush=True)
    finally:
        server.terminate()
        server.wait(20)
    text = report(pred, load, bad, card, args)
    print(text)
    if not args.no_write:
        write_section("inference", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
