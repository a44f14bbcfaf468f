"""Feature extraction throughput and feature-store reload time on EMO-DB.

For each extractor spec: compute throughput on decoded audio (utterances/s and x real time:
audio seconds per second of compute), the cold end-to-end store extraction (hashing, decoding
with ``--threads`` workers, compute, writing) and the warm-cache reload of all of EMO-DB's
features through a fresh :class:`FeatureStore`. Writes its section of ``benchmarks/RESULTS.md``
(between ``<!-- features:start -->`` and ``<!-- features:end -->``, atomically).

Targets: log-mel >= 500x real time; reloading EMO-DB features of any extractor < 1 s.

HF encoders (HuBERT / wav2vec 2.0 / WavLM) are not benchmarked: only tiny random models exist
offline. The Whisper extractor is included by default when ``whisper:backend=ct2`` builds
(the hook: :data:`WHISPER_SPECS`); pass ``--extractors`` to choose. Example::

    .venv/bin/python benchmarks/bench_features.py --extractors logmel logmel:preset=byols \\
        opensmile:feature_set=eGeMAPSv02
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from _common import write_section

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO / ".." / "shared" / "corpora" / "emodb"
RESULTS = REPO / "benchmarks" / "RESULTS.md"

BASE_SPECS = [
    "logmel:preset=nnpm",
    "logmel:preset=byols",
    "opensmile:feature_set=eGeMAPSv02",
    "opensmile:feature_set=emobase",
    "opensmile:feature_set=ComParE_2016",
]
#: Whisper specs benchmarked when the whisper extractor builds (written in parallel).
WHISPER_SPECS = ["whisper:backend=ct2", "whisper:backend=torch"]


def default_specs() -> list[str]:
    """The base specs plus Whisper's when ``build_extractor`` accepts them."""
    from emobridge.errors import EmobridgeError
    from emobridge.features import build_extractor

    specs = list(BASE_SPECS)
    for spec in WHISPER_SPECS:
        try:
            build_extractor(spec)
        except (EmobridgeError, ImportError) as exc:
            print(f"skipping {spec}: {exc}")
        else:
            specs.append(spec)
    return specs


def bench(spec: str, manifest, waves_by_rate: dict, store_root: Path, threads: int,
          batch_size: int, repeats: int = 2) -> dict:
    """Figures of one extractor."""
    from emobridge.audio import load_audio
    from emobridge.features import FeatureStore, build_extractor

    ext = build_extractor(spec)
    rate = ext.sample_rate_hz
    if rate not in waves_by_rate:
        waves_by_rate[rate] = [load_audio(p, rate) for p in manifest["path"]]
    waves = waves_by_rate[rate]
    audio_s = sum(w.size for w in waves) / rate
    ext.extract_batch(waves[:batch_size], rate)  # warm up (model load, caches)
    compute_s = cpu_s = float("inf")
    for _ in range(repeats):  # best of `repeats`: other jobs on shared cores add noise
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(0, len(waves), batch_size):
            ext.extract_batch(waves[i:i + batch_size], rate)
        compute_s = min(compute_s, time.perf_counter() - start)
        cpu_s = min(cpu_s, time.process_time() - cpu_start)

    store = FeatureStore(store_root)
    report = store.extract(manifest, ext, workers=threads, batch_size=batch_size,
                           progress=False)
    reloads = []
    for _ in range(3):
        start = time.perf_counter()
        feats = FeatureStore(store_root).load(manifest, ext)
        reloads.append(time.perf_counter() - start)
    n_bytes = int(store.list().set_index("extractor_id").loc[ext.id, "bytes"])
    return {
        "spec": spec, "id": ext.id, "shape": "x".join(map(str, feats[0].shape)),
        "n": len(waves), "audio_s": audio_s,
        "utt_per_s": len(waves) / compute_s, "x_rt": audio_s / compute_s,
        "x_rt_cpu": audio_s / cpu_s,
        "store_x_rt": audio_s / report.seconds, "store_s": report.seconds,
        "reload_s": reloads[0], "reload_best_s": min(reloads), "bytes": n_bytes,
    }


def render(rows: list[dict], corpus: Path, threads: int, batch_size: int, repeats: int) -> str:
    import torch

    audio_s = rows[0]["audio_s"] if rows else 0.0
    lines = [
        "## Feature extraction (`benchmarks/bench_features.py`)",
        "",
        f"EMO-DB ({rows[0]['n'] if rows else 0} utterances, {audio_s / 60:.1f} min of audio), "
        f"{threads} threads (torch {torch.__version__}, {platform.processor() or 'cpu'}), "
        f"batch size {batch_size}, compute best of {repeats} passes; run "
        f"{time.strftime('%Y-%m-%d %H:%M')}, 1-min load average at the end "
        f"{os.getloadavg()[0]:.1f} (other jobs share the cores: figures are lower "
        "bounds when it exceeds the thread count). "
        "*compute*: extractor on decoded audio; *store*: cold `FeatureStore.extract` (hash, "
        f"decode with {threads} workers, compute, write); *reload*: all features through a "
        "fresh `FeatureStore.load` (first / best of 3, page cache warm). x RT = audio seconds "
        "per wall-clock second; *x RT per CPU s* = audio seconds per CPU second of the process "
        "(all threads), less sensitive than wall-clock time to other jobs on shared cores. "
        "Targets: log-mel >= 500x RT, reload < 1 s.",
        "",
        "| extractor | shape | compute utt/s | compute x RT | x RT per CPU s | store x RT "
        "| reload s | size |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['spec']}` | {r['shape']} | {r['utt_per_s']:.0f} | {r['x_rt']:.0f} | "
            f"{r['x_rt_cpu']:.0f} | "
            f"{r['store_x_rt']:.0f} | {r['reload_s']:.2f} / {r['reload_best_s']:.2f} | "
            f"{r['bytes'] / 2**20:.1f} MiB |")
    lines += ["", "HF encoders are not benchmarked (no real checkpoints offline)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS,
                        help="EMO-DB folder (default: ../shared/corpora/emodb)")
    parser.add_argument("--extractors", nargs="+", default=None,
                        help="extractor specs (default: log-mel, openSMILE and Whisper)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="compute passes (best kept)")
    parser.add_argument("--limit", type=int, default=None, help="first N utterances only")
    parser.add_argument("--store", type=Path, default=None,
                        help="store folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from emobridge.corpora import get_reader

    torch.set_num_threads(args.threads)
    scan = get_reader("emodb")(args.corpus).scan()
    manifest = scan.manifest
    if args.limit:
        manifest = manifest.iloc[: args.limit].reset_index(drop=True)
    if manifest.empty:
        raise SystemExit(f"no EMO-DB utterances under {args.corpus}")
    specs = args.extractors or default_specs()
    store_root = args.store or Path(tempfile.mkdtemp(prefix="bench_features_"))
    waves_by_rate: dict = {}
    rows = []
    try:
        for spec in specs:
            row = bench(spec, manifest, waves_by_rate, store_root, args.threads,
                        args.batch_size, args.repeats)
            print(f"{spec}: {row['utt_per_s']:.0f} utt/s, {row['x_rt']:.0f}x RT compute "
                  f"({row['x_rt_cpu']:.0f}x per CPU s), "
                  f"{row['store_x_rt']:.0f}x RT store, reload {row['reload_s']:.3f} s "
                  f"(best {row['reload_best_s']:.3f} s)", flush=True)
            rows.append(row)
    finally:
        if args.store is None:
            shutil.rmtree(store_root, ignore_errors=True)
    text = render(rows, args.corpus, args.threads, args.batch_size, args.repeats)
    print(text)
    if not args.no_write:
        write_section("features", text, args.results)
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
