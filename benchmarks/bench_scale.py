"""Local vs Ray on this machine, and what that projects to on a cluster.

Runs, with the same number of workers both ways (``--workers``, default 2):

* the quickstart grid (``configs/quickstart.yaml``; features extracted once beforehand, so
  only the cells are timed): ``run_experiment(jobs=W)`` vs ``executor="ray"`` on a local
  Ray instance of W CPUs (one torch thread per cell both ways); the cell metrics are
  compared (identical results);
* the extraction of the shared corpora: log-mel (every corpus) and Whisper base
  (EMO-DB): one local :meth:`FeatureStore.extract` (W decoding threads, W torch threads) vs
  :func:`~emobridge.features.distributed.extract_with_ray` (2 shards per CPU, one torch
  thread per task), each into a fresh store;
* Ray's own cost per task: empty tasks, submitted and collected like cells.

Then projects, from these figures, the wall time to extract Whisper-base features for
10,000 h of audio and to run a 1,000-cell grid on 10 and on 100 nodes of 16 cores, and names
the bottleneck. Writes the ``scale`` section of ``benchmarks/RESULTS.md``.

``--quick``: one seed and 10 epochs for the grid, 96 EMO-DB files for log-mel and 24 for
Whisper (a few minutes). Example::

    .venv/bin/python benchmarks/bench_scale.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_CORPORA, REPO, RESULTS, load_manifest, write_section

CORPORA = ("emodb", "emovo", "ravdess", "ased", "emotiontts")
LOGMEL = "logmel:preset=byols"
WHISPER = "whisper:backend=ct2,pooling=mean"
HOURS = 10_000
CELLS = 1_000
NODES = (10, 100)
CORES_PER_NODE = 16


def _grid_config(tmp: Path, quick: bool, name: str, store: Path):
    from emobridge.experiments.config import load_config

    cfg = load_config(REPO / "configs" / "quickstart.yaml", output_dir=tmp / name,
                      device="cpu")
    cfg.threads = 1
    cfg.features.store = store
    for c in cfg.corpora:
        c.path = tmp / "synthetic"
    if quick:
        cfg.seeds = [0]
        for m in cfg.methods:
            m.params["epochs"] = 10
    return cfg


def _cells(run_dir: Path) -> dict[str, dict]:
    out = {}
    for d in sorted((run_dir / "cells").iterdir()):
        doc = json.loads((d / "metrics.json").read_text())
        out[d.name] = {"hash": doc["cell_hash"], "target": doc["target"],
                       "history": [{k: v for k, v in h.items() if k != "time_s"}
                                   for h in doc.get("history", [])]}
    return out


def bench_grid(tmp: Path, quick: bool, workers: int) -> dict:
    """Cells only: local pool vs Ray tasks (the store is filled first)."""
    from emobridge.experiments import run_experiment

    store = tmp / "grid-store"
    warm = _grid_config(tmp, quick, "warm", store)
    warm.methods = warm.methods[:1]
    warm.seeds = warm.seeds[:1]
    run_experiment(warm, log=None)  # generates the corpus, extracts the features
    out = {}
    for executor in ("local", "ray"):
        cfg = _grid_config(tmp, quick, executor, store)
        t0 = time.perf_counter()
        summary = run_experiment(cfg, jobs=workers, executor=executor, log=None)
        info = json.loads((summary.run_dir / "run.json").read_text())
        out[executor] = {"wall_s": time.perf_counter() - t0, "cells_s": info["cells_s"],
                         "n_cells": summary.n_run, "failed": summary.n_failed}
        print(f"  grid {executor}: {summary.n_run} cells in {info['cells_s']:.1f} s",
              flush=True)
    out["identical"] = _cells(tmp / "local") == _cells(tmp / "ray")
    return out


def bench_extraction(tmp: Path, corpora: Path, quick: bool, workers: int) -> list[dict]:
    import pandas as pd

    from emobridge.features import FeatureStore, build_extractor
    from emobridge.features.distributed import extract_with_ray

    rows = []
    names = ("emodb",) if quick else CORPORA
    manifest = pd.concat([load_manifest(corpora, n) for n in names], ignore_index=True)
    for spec, limit in ((LOGMEL, 96 if quick else None), (WHISPER, 24 if quick else 535)):
        part = manifest if limit is None else manifest.iloc[:limit]
        if spec == WHISPER:
            part = part[part["corpus"] == "emodb"].iloc[: limit]
        ext = build_extractor(spec)
        row = {"spec": spec, "files": len(part), "audio_s": float(part["duration_s"].sum())}
        for executor in ("local", "ray"):
            root = tmp / f"x-{executor}-{len(rows)}"
            t0 = time.perf_counter()
            if executor == "local":
                rep = FeatureStore(root).extract(part, ext, workers=workers, progress=False)
            else:
                rep = extract_with_ray(root, part, spec)
            row[executor] = time.perf_counter() - t0
            assert rep.failed == 0 and rep.computed + rep.duplicates == len(part), rep.summary()
        a = FeatureStore(tmp / f"x-local-{len(rows)}").load(part, ext)
        b = FeatureStore(tmp / f"x-ray-{len(rows)}").load(part, ext)
        row["max_diff"] = max(float(abs(x - y).max()) for x, y in zip(a, b, strict=True))
        print(f"  extract {spec}: local {row['local']:.1f} s, ray {row['ray']:.1f} s",
              flush=True)
        rows.append(row)
    return rows


def _noop(i: int) -> int:
    return i


def bench_overhead(n: int = 200) -> float:
    """Seconds of Ray bookkeeping per task: n empty tasks submitted, waited for one at a
    time (as the runner does), divided by n."""
    import ray

    remote = ray.remote(_noop).options(num_cpus=1, max_retries=0)
    ray.get([remote.remote(i) for i in range(4)])  # workers started
    t0 = time.perf_counter()
    remaining = [remote.remote(i) for i in range(n)]
    while remaining:
        _, remaining = ray.wait(remaining, num_returns=1, timeout=0.5)
    return (time.perf_counter() - t0) / n


def projection(grid: dict, extraction: list[dict], overhead: float, workers: int) -> str:
    """The cluster estimates, from this machine's per-core figures."""
    whisper = next(r for r in extraction if r["spec"] == WHISPER)
    rt_per_core = whisper["audio_s"] / (whisper["ray"] * workers)  # audio s per core-second
    cell_core_s = grid["ray"]["cells_s"] * workers / grid["ray"]["n_cells"]
    feat_bytes_per_h = 512 * 4 * 3600 / 3.5  # pooled: one 512-float vector per ~3.5-s utt.
    frame_bytes_per_h = 512 * 4 * 50 * 3600  # frames (pooling none): 50 per second
    lines = [
        "| nodes x 16 cores | Whisper-base, 10,000 h | 1,000 cells (quickstart-sized) |",
        "|---|---|---|",
    ]
    for nodes in NODES:
        cores = nodes * CORES_PER_NODE
        t_extract = HOURS * 3600 / (rt_per_core * cores)
        waves = -(-CELLS // cores)
        t_grid = waves * cell_core_s + CELLS * overhead
        lines.append(f"| {nodes} x {CORES_PER_NODE} = {cores} | {t_extract / 3600:.1f} h "
                     f"({rt_per_core * cores:.0f}x real time) | {t_grid / 60:.1f} min "
                     f"({waves} wave(s) of {cell_core_s:.1f} core-s) |")
    frames_rate = frame_bytes_per_h / 3600 * rt_per_core * 100 * CORES_PER_NODE / 1e6
    lines += [
        "",
        f"Per-core figures measured here: Whisper base (CT2, mean-pooled) "
        f"{rt_per_core:.1f}x real time per core; a quickstart cell {cell_core_s:.1f} "
        f"core-seconds; Ray {overhead * 1e3:.1f} ms of bookkeeping per task. The estimates "
        "assume perfect scaling of these per-core rates (no GPU; a real paper cell trains "
        "on real corpora for longer: scale the grid column by its cell cost).",
        "",
        "What becomes the bottleneck: **compute** for Whisper, by far (audio decoding and "
        "BLAKE2b hashing run at thousands of x real time per core). The store writes are "
        f"small for pooled vectors ({feat_bytes_per_h * HOURS / 1e9:.2f} GB for 10,000 h) "
        f"but frame-level features (`pooling=none`, {frame_bytes_per_h * HOURS / 1e12:.1f} "
        f"TB) need about {frames_rate:.0f} MB/s of shared-filesystem bandwidth on 100 nodes. "
        "The driver hashes every file once before dispatch (~0.6 TB of FLAC for 10,000 h: "
        "tens of minutes from one node, in 8 threads) and passes the content hashes to the "
        "shard tasks; its hash cache (hashes.json, ~105 bytes plus the path per file, "
        "~1 GB and ~20 s to write or read for 5 million files of 80-character paths) is "
        "rewritten once per run. For grids, Ray's per-task cost is "
        "negligible next to a cell; the limit is the number of cells per wave (cells >= "
        "cores keeps every core busy).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.workers))
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING")
    startup = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    started = time.strftime("%Y-%m-%d %H:%M")
    try:
        grid = bench_grid(tmp, args.quick, args.workers)
        extraction = bench_extraction(tmp, args.corpora, args.quick, args.workers)
        overhead = bench_overhead()
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    body = _section(args, grid, extraction, overhead, startup, started)
    print(body)
    if not args.no_write:
        write_section("scale", body, args.results)


def _section(args: argparse.Namespace, grid: dict, extraction: list[dict], overhead: float,
             startup: float, started: str) -> str:
    import ray

    w = args.workers
    g = grid
    per_cell = (g["ray"]["cells_s"] - g["local"]["cells_s"]) / max(1, g["ray"]["n_cells"])
    lines = [
        "## Scaling out on Ray (`benchmarks/bench_scale.py`)",
        "",
        f"{'Quick run (--quick: 1 seed, 10 epochs, EMO-DB subsets)' if args.quick else 'Full run'}"
        f", {started}, {platform.machine()} with {os.cpu_count()} cores shared with other "
        f"jobs (1-min load {os.getloadavg()[0]:.1f} at the end), Ray {ray.__version__}, "
        f"{w} workers both ways. Ray startup (`ray.init`, local) {startup:.1f} s, not in "
        "the ratios. Goal: Ray within 1.3x of local here.",
        "",
        "| work | local s | Ray s | Ray / local | identical |",
        "|---|---|---|---|---|",
        f"| quickstart grid, {g['ray']['n_cells']} cells (cells only) | "
        f"{g['local']['cells_s']:.1f} | {g['ray']['cells_s']:.1f} | "
        f"{g['ray']['cells_s'] / g['local']['cells_s']:.2f} | "
        f"{'yes' if g['identical'] else 'NO'} |",
    ]
    for r in extraction:
        same = "yes" if r["max_diff"] == 0 else f"max diff {r['max_diff']:.1e}"
        lines.append(
            f"| extract `{r['spec']}`, {r['files']} files ({r['audio_s'] / 60:.1f} min) | "
            f"{r['local']:.1f} | {r['ray']:.1f} | {r['ray'] / r['local']:.2f} | "
            f"{same} |")
    lines += [
        "",
        f"Ray's scheduling cost: {overhead * 1e3:.1f} ms per empty task; per grid cell "
        f"{per_cell:.2f} s more than a local worker (worker start-up and torch import in "
        "each new Ray worker included).",
        "",
        "### Projection: 10 and 100 nodes of 16 cores",
        "",
        projection(grid, extraction, overhead, w),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
