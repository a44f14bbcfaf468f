"""Whisper base encoder: throughput (x real time) and agreement of the CTranslate2 and torch routes.

Reads EMO-DB FLAC files (``--corpora``, default ``../shared/corpora``), runs the offline
Whisper base through several extractor settings and prints a markdown report (``--out`` also
writes it). Example::

    .venv/bin/python benchmarks/whisper_throughput.py --n-files 100 --threads 2
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "corpora")
    parser.add_argument("--n-files", type=int, default=100)
    parser.add_argument("--n-files-30s", type=int, default=20,
                        help="files for the slow 30-s-padded settings")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed passes per setting; the fastest counts (shared machines)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-30s", action="store_true", help="skip the 30-s-window settings")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from emobridge.audio import load_audio
    from emobridge.features.extractors.whisper import WhisperExtractor

    torch.set_num_threads(args.threads)
    files = sorted((args.corpora / "emodb" / "wav").glob("*.flac"))[: args.n_files]
    if not files:
        raise SystemExit(f"no EMO-DB files under {args.corpora / 'emodb' / 'wav'}")
    waves = [load_audio(f) for f in files]
    seconds = [w.size / 16_000 for w in waves]
    lines = [f"Whisper base, {len(files)} EMO-DB files ({sum(seconds):.0f} s audio, "
             f"{min(seconds):.1f}-{max(seconds):.1f} s each), {args.threads} threads, "
             f"{torch.get_num_threads()} torch threads, load average before the run "
             f"{os.getloadavg()[0]:.1f} (throughput on a shared machine is a lower bound).", "",
             "| route | files | x real time |", "|---|---|---|"]

    def run(label: str, ext: WhisperExtractor, n: int, batched: bool) -> list[np.ndarray]:
        ext.extract(waves[0], 16_000)  # load + warm up
        best = math.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            if batched:
                out = ext.extract_batch(waves[:n], 16_000)
            else:
                out = [ext.extract(w, 16_000) for w in waves[:n]]
            best = min(best, time.perf_counter() - start)
        rt = sum(seconds[:n]) / best
        lines.append(f"| {label} | {n} | {rt:.1f} |")
        print(lines[-1], flush=True)
        return out

    n, n30 = len(waves), min(args.n_files_30s, len(waves))
    common = dict(num_threads=args.threads, pooling="none")
    ct2_int8_ext = WhisperExtractor(backend="ct2", **common)
    ct2_int8 = run("ct2 int8, utterance window, per utterance", ct2_int8_ext, n, False)
    ct2_f32 = run("ct2 float32, utterance window, per utterance",
                  WhisperExtractor(backend="ct2", compute_type="float32", **common), n, False)
    torch_1 = run("torch float32, last layer, batch_size=1",
                  WhisperExtractor(backend="torch", batch_size=1, **common), n, True)
    run("torch float32, last layer, batch_size=8 (length-sorted, masked)",
        WhisperExtractor(backend="torch", batch_size=8, **common), n, True)
    torch_mean = run("torch float32, last layer, mean pooling, batch_size=1",
                     WhisperExtractor(backend="torch", batch_size=1, num_threads=args.threads),
                     n, True)
    run("torch float32, all layers (layer='mean'), batch_size=1",
        WhisperExtractor(backend="torch", layer="mean", batch_size=1, **common), n, True)
    if not args.skip_30s:
        ct2_30 = run("ct2 int8, 30-s window, batch_size=1",
                     WhisperExtractor(backend="ct2", input_window="30s", batch_size=1, **common),
                     n30, True)
        run("ct2 int8, 30-s window, batch_size=4",
            WhisperExtractor(backend="ct2", input_window="30s", batch_size=4, **common), n30,
            True)
        torch_30 = run("torch float32, 30-s window, batch_size=1",
                       WhisperExtractor(backend="torch", input_window="30s", batch_size=1,
                                        **common), n30, True)

    # CTranslate2 has no attention mask: padding a batch to its longest member changes the
    # features. Measured here only to see what batching would gain on this CPU.
    import ctranslate2

    model = ct2_int8_ext.load()
    mels = [ct2_int8_ext._mel_windows(w, i)[0][0] for i, w in enumerate(waves)]
    order = sorted(range(n), key=lambda j: mels[j].shape[1])
    best, padded_out = math.inf, [None] * n
    for _ in range(args.repeats):
        start = time.perf_counter()
        for s in range(0, n, 8):
            group = order[s: s + 8]
            width = max(mels[j].shape[1] for j in group)
            batch = np.stack([np.pad(mels[j].numpy(), ((0, 0), (0, width - mels[j].shape[1])))
                              for j in group]).astype(np.float32)
            enc = np.asarray(model.encode(ctranslate2.StorageView.from_array(batch),
                                          to_cpu=True))
            for row, j in enumerate(group):
                padded_out[j] = enc[row, : ct2_int8[j].shape[0]]
        best = min(best, time.perf_counter() - start)
    lines.insert(5, f"| ct2 int8, length-sorted batches of 8 padded to the longest (inexact, "
                    f"not used) | {n} | {sum(seconds[:n]) / best:.1f} |")
    print(lines[5], flush=True)

    def frame_cos(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
        per_file = [float(np.mean(_cos(x, y))) for x, y in zip(a, b, strict=False)]
        return float(np.mean(per_file)), float(np.min(per_file))

    def mean_cos(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
        per_file = [float(_cos(x.mean(0), y.mean(0))) for x, y in zip(a, b, strict=False)]
        return float(np.mean(per_file)), float(np.min(per_file))

    pairs = [
        ("ct2 float32 vs torch float32, per frame", frame_cos(ct2_f32, torch_1)),
        ("ct2 int8 vs torch float32, per frame", frame_cos(ct2_int8, torch_1)),
        ("ct2 int8 vs torch float32, mean-pooled", mean_cos(ct2_int8, torch_1)),
        ("ct2 int8 padded batches vs ct2 int8 alone, per frame", frame_cos(padded_out,
                                                                          ct2_int8)),
        ("torch mean pooling == mean of torch frames",
         (float(np.mean([_cos(m, f.mean(0)) for m, f in zip(torch_mean, torch_1,
                                                               strict=False)])), float("nan"))),
    ]
    if not args.skip_30s:
        pairs += [
            ("utterance vs 30-s window (torch), per frame", frame_cos(torch_1[:n30], torch_30)),
            ("utterance vs 30-s window (torch), mean-pooled", mean_cos(torch_1[:n30], torch_30)),
            ("ct2 int8 30-s window vs torch 30-s window, per frame", frame_cos(ct2_30, torch_30)),
        ]
    lines += ["", "| cosine (last layer) | mean over files | min over files |", "|---|---|---|"]
    lines += [f"| {label} | {m:.5f} | {lo:.5f} |" for label, (m, lo) in pairs]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        from emobridge.fileio import write_text_atomic

        write_text_atomic(args.out, report)


if __name__ == "__main__":
    main()
