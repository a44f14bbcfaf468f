"""Service soak (issue "Reliability beyond a fixed list"): ``emobridge serve`` with the
default model under 4 clients sending a mix of requests for ``--minutes`` (30).

    .venv/bin/python benchmarks/bench_soak.py [--minutes 30] [--clients 4] [--write]

Mix (each client draws the next request at random): 60 % good clips (3-s EMO-DB
utterances), 10 % long clips (25 s: EMO-DB utterances joined), 20 % bad uploads (empty,
random bytes, truncated FLAC, a text file), 10 % adaptations (20 good clips to
``/v1/adapt``, then one ``/v1/predict?domain=ID``). Per 5-minute window: p50 / p95 / p99
latency of good clips, answers by status, 5xx other than the 503 / 504 of a full queue, and
the server's resident memory (``/proc/PID/status``) at the end of the window. Goals: p95 <
1 s on good clips, no unexpected 5xx, resident memory within 10 % of the second window's
(after warm-up).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from _common import DEFAULT_CORPORA, REPO, free_port, load_manifest, rss_mb, write_section

WINDOW_S = 300.0


def _clips(corpora: Path) -> tuple[list[bytes], bytes]:
    """3-s-ish EMO-DB clips as FLAC bytes, and one 25-s clip."""
    import soundfile as sf

    m = load_manifest(corpora, "emodb")
    m = m[(m["duration_s"] > 2.0) & (m["duration_s"] < 3.5)].head(60)
    waves = [sf.read(p, dtype="float32")[0] for p in m["path"]]

    def flac(wave: np.ndarray) -> bytes:
        buf = io.BytesIO()
        sf.write(buf, wave, 16_000, format="FLAC")
        return buf.getvalue()

    return [flac(w) for w in waves], flac(np.concatenate(waves)[:25 * 16_000])


def _bad(rng: random.Random, good: bytes) -> tuple[str, bytes, str]:
    kind = rng.choice(["empty", "random", "truncated", "text"])
    if kind == "empty":
        return "a.wav", b"", "audio/wav"
    if kind == "random":
        return "a.wav", rng.randbytes(rng.randint(10, 5000)), "audio/wav"
    if kind == "truncated":
        return "a.flac", good[:rng.randint(10, len(good) // 3)], "audio/flac"
    return "notes.txt", b"not audio at all\n" * 20, "text/plain"


def client(url: str, stop: float, seed: int, clips: list[bytes], long_clip: bytes,
           log: list[tuple[float, str, int, float]], lock: threading.Lock) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=120) as http:
        while time.time() < stop:
            draw, t0 = rng.random(), time.time()
            if draw < 0.6:
                kind = "good"
                r = http.post("/v1/predict", files={"file": ("a.flac", rng.choice(clips),
                                                             "audio/flac")})
            elif draw < 0.7:
                kind = "long"
                r = http.post("/v1/predict", files={"file": ("a.flac", long_clip,
                                                             "audio/flac")})
            elif draw < 0.9:
                kind = "bad"
                r = http.post("/v1/predict", files={"file": _bad(rng, rng.choice(clips))})
            else:
                kind = "adapt"
                files = [("file", (f"{i}.flac", c, "audio/flac"))
                         for i, c in enumerate(rng.sample(clips, 20))]
                r = http.post("/v1/adapt", files=files)
                if r.status_code == 200:
                    domain = r.json().get("domain")
                    r = http.post(f"/v1/predict?domain={domain}",
                                  files={"file": ("a.flac", clips[0], "audio/flac")})
            with lock:
                log.append((t0, kind, r.status_code, time.time() - t0))


def report(log: list, rss: list[tuple[float, float]], start: float, minutes: float,
           clients: int) -> str:
    lines = ["| window (min) | good p50 / p95 / p99 (s) | requests | answers by status | "
             "unexpected 5xx | server RSS (MB) |", "|---|---|---|---|---|---|"]
    windows = int(np.ceil(minutes * 60 / WINDOW_S))
    worst_p95, unexpected, rss_end = 0.0, 0, []
    for w in range(windows):
        lo, hi = start + w * WINDOW_S, start + (w + 1) * WINDOW_S
        part = [e for e in log if lo <= e[0] < hi]
        good = np.array([e[3] for e in part if e[1] == "good" and e[2] == 200])
        statuses: dict[int, int] = {}
        for e in part:
            statuses[e[2]] = statuses.get(e[2], 0) + 1
        bad5 = sum(n for s, n in statuses.items() if s >= 500 and s not in (503, 504))
        unexpected += bad5
        mem = [m for t, m in rss if lo <= t < hi]
        rss_end.append(mem[-1] if mem else float("nan"))
        p = np.percentile(good, [50, 95, 99]) if good.size else [np.nan] * 3
        worst_p95 = max(worst_p95, float(p[1]))
        lines.append(f"| {w * 5}-{(w + 1) * 5} | {p[0]:.3f} / {p[1]:.3f} / {p[2]:.3f} | "
                     f"{len(part)} | {dict(sorted(statuses.items()))} | {bad5} | "
                     f"{rss_end[-1]:.0f} |")
    ref = rss_end[1] if len(rss_end) > 1 else rss_end[0]
    drift = max(abs(m - ref) / ref for m in rss_end[1:]) if len(rss_end) > 1 else 0.0
    goals = ["| goal | measured | met |", "|---|---|---|",
             f"| p95 < 1 s on good clips (every window) | worst {worst_p95:.3f} s | "
             f"{'yes' if worst_p95 < 1 else 'no'} |",
             f"| no 5xx but the 503 / 504 of a full queue | {unexpected} | "
             f"{'yes' if unexpected == 0 else 'no'} |",
             f"| RSS within 10 % after warm-up (vs window 2) | largest change "
             f"{100 * drift:.1f} % | {'yes' if drift <= 0.10 else 'no'} |"]
    return "\n".join([
        "## Service soak (`benchmarks/bench_soak.py`)", "",
        f"`emobridge serve` (default model, default limits) for {minutes:g} min under "
        f"{clients} clients on 2 CPU cores: 60 % good 3-s clips, 10 % 25-s clips, 20 % bad "
        "uploads, 10 % adaptations (20 clips, then a prediction with the domain). Run "
        f"{time.strftime('%Y-%m-%d %H:%M')}.", "", *lines, "", *goals])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    clips, long_clip = _clips(args.corpora)
    port = free_port()
    server = subprocess.Popen([str(REPO / ".venv" / "bin" / "emobridge"), "serve", "--port",
                               str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        while True:
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        start = time.time()
        stop = start + args.minutes * 60
        log: list = []
        rss: list[tuple[float, float]] = []
        lock = threading.Lock()
        threads = [threading.Thread(target=client, args=(url, stop, i, clips, long_clip, log,
                                                         lock), daemon=True)
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        while time.time() < stop:
            rss.append((time.time(), rss_mb(server.pid)))
            time.sleep(10)
        for t in threads:
            t.join()
        rss.append((time.time() - 1e-3, rss_mb(server.pid)))
    finally:
        server.terminate()
        server.wait()
    body = report(log, rss, start, args.minutes, args.clients)
    print(body)
    if args.write:
        write_section("soak", body)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
