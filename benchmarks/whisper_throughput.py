"""Whisper base encoder: throughput (x real time) and agreement of the CTranslate2 and torch routes.

Reads EMO-DB FLAC files (``--corpora``, default ``../shared/corpora``), runs the offline
Whisper base through several extractor settings, prints a markdown report and writes it to
the ``whisper`` section of RESULTS.md. Settings are timed in interleaved rounds and the
fastest round counts, so load from other processes on a shared machine hurts every setting
alike. Example::

    .venv/bin/python benchmarks/whisper_throughput.py --n-files 100 --threads 2
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _common import RESULTS, write_section


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
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timed passes per setting; the fastest counts")
    parser.add_argument("--skip-30s", action="store_true", help="skip the 30-s-window settings")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import ctranslate2
    import torch

    from emobridge.audio import load_audio
    from emobridge.features.extractors.whisper import WhisperExtractor

    torch.set_num_threads(args.threads)
    files = sorted((args.corpora / "emodb" / "wav").glob("*.flac"))[: args.n_files]
    if not files:
        raise SystemExit(f"no EMO-DB files under {args.corpora / 'emodb' / 'wav'}")
    waves = [load_audio(f) for f in files]
    seconds = [w.size / 16_000 for w in waves]
    n, n30 = len(waves), min(args.n_files_30s, len(waves))
    load_before = os.getloadavg()[0]

    def ext(**kw) -> WhisperExtractor:
        return WhisperExtractor(num_threads=args.threads, **{"pooling": "none", **kw})

    def per_utt(e: WhisperExtractor, k: int) -> Callable[[], list[np.ndarray]]:
        return lambda: [e.extract(w, 16_000) for w in waves[:k]]

    def batched(e: WhisperExtractor, k: int) -> Callable[[], list[np.ndarray]]:
        return lambda: e.extract_batch(waves[:k], 16_000)

    ct2_int8 = ext(backend="ct2")

    def ct2_padded_batches() -> list[np.ndarray]:
        # CTranslate2 has no attention mask: padding a batch to its longest member changes
        # the features. Timed only to see what such batching would gain (not used).
        model = ct2_int8.load()
        mels = [ct2_int8._mel_windows(w, i)[0] for i, w in enumerate(waves)]
        order = sorted(range(n), key=lambda j: mels[j][0].shape[1])
        out: list[np.ndarray] = [np.empty(0)] * n
        for s in range(0, n, 8):
            group = order[s: s + 8]
            width = max(mels[j][0].shape[1] for j in group)
            batch = np.stack([np.pad(mels[j][0].numpy(),
                                     ((0, 0), (0, width - mels[j][0].shape[1])))
                              for j in group]).astype(np.float32)
            enc = np.asarray(model.encode(ctranslate2.StorageView.from_array(batch),
                                          to_cpu=True))
            for row, j in enumerate(group):
                out[j] = enc[row, : mels[j][1]]
        return out

    settings: dict[str, tuple[int, Callable[[], list[np.ndarray]]]] = {
        "ct2 int8, utterance window, per utterance": (n, per_utt(ct2_int8, n)),
        "ct2 int8, batches of 8 padded to the longest (inexact, not used)":
            (n, ct2_padded_batches),
        "ct2 float32, utterance window, per utterance":
            (n, per_utt(ext(backend="ct2", compute_type="float32"), n)),
        "torch float32, last layer, mean pooling, batch_size=1":
            (n, batched(ext(backend="torch", pooling="mean", batch_size=1), n)),
        "torch float32, last layer, mean pooling, batch_size=8 (length-sorted, masked)":
            (n, batched(ext(backend="torch", pooling="mean", batch_size=8), n)),
        "torch float32, last layer, frames, batch_size=1":
            (n, batched(ext(backend="torch", batch_size=1), n)),
        "torch float32, all 7 hidden states (layer='mean'), batch_size=8":
            (n, batched(ext(backend="torch", layer="mean", batch_size=8), n)),
    }
    if not args.skip_30s:
        settings.update({
            "ct2 int8, 30-s window, batch_size=1":
                (n30, batched(ext(backend="ct2", input_window="30s", batch_size=1), n30)),
            "ct2 int8, 30-s window, batch_size=4":
                (n30, batched(ext(backend="ct2", input_window="30s", batch_size=4), n30)),
            "torch float32, 30-s window, batch_size=1":
                (n30, batched(ext(backend="torch", input_window="30s", batch_size=1), n30)),
        })

    best = dict.fromkeys(settings, math.inf)
    cpu = dict.fromkeys(settings, math.inf)
    outputs: dict[str, list[np.ndarray]] = {}
    for round_ in range(args.rounds + 1):
        for label, (_, fn) in settings.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            out = fn()
            if round_ == 0:  # warm-up round (model loading), not timed
                outputs[label] = out
                continue
            best[label] = min(best[label], time.perf_counter() - start)
            cpu[label] = min(cpu[label], time.process_time() - start_cpu)
            print(f"round {round_}: {label}: {sum(seconds[:settings[label][0]]) / best[label]:.1f}"
                  f" x RT", flush=True)

    lines = [f"Whisper base, {n} EMO-DB files ({sum(seconds):.0f} s audio, "
             f"{min(seconds):.1f}-{max(seconds):.1f} s each), {args.threads} threads; fastest "
             f"of {args.rounds} interleaved rounds; load average {load_before:.1f} before, "
             f"{os.getloadavg()[0]:.1f} after (other processes share the CPU: figures are "
             "lower bounds).", "",
             "| route | files | x real time (wall) | audio s per CPU s |", "|---|---|---|---|"]
    for label, (k, _) in settings.items():
        audio = sum(seconds[:k])
        lines.append(f"| {label} | {k} | {audio / best[label]:.1f} | {audio / cpu[label]:.1f} |")

    def frame_cos(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
        per_file = [float(np.mean(_cos(x, y))) for x, y in zip(a, b, strict=False)]
        return float(np.mean(per_file)), float(np.min(per_file))

    def mean_cos(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
        per_file = [float(_cos(x.mean(0), y.mean(0))) for x, y in zip(a, b, strict=False)]
        return float(np.mean(per_file)), float(np.min(per_file))

    o = outputs
    torch_frames = o["torch float32, last layer, frames, batch_size=1"]
    pairs = [
        ("ct2 float32 vs torch float32, per frame",
         frame_cos(o["ct2 float32, utterance window, per utterance"], torch_frames)),
        ("ct2 int8 vs torch float32, per frame",
         frame_cos(o["ct2 int8, utterance window, per utterance"], torch_frames)),
        ("ct2 int8 vs torch float32, mean-pooled",
         mean_cos(o["ct2 int8, utterance window, per utterance"], torch_frames)),
        ("ct2 int8 padded batches vs ct2 int8 alone, per frame",
         frame_cos(o["ct2 int8, batches of 8 padded to the longest (inexact, not used)"],
                   o["ct2 int8, utterance window, per utterance"])),
        ("torch masked batches of 8 vs batch_size=1, mean-pooled",
         frame_cos(o["torch float32, last layer, mean pooling, batch_size=8 (length-sorted, "
                     "masked)"], o["torch float32, last layer, mean pooling, batch_size=1"])),
    ]
    if not args.skip_30s:
        torch_30 = o["torch float32, 30-s window, batch_size=1"]
        pairs += [
            ("utterance vs 30-s window (torch), per frame", frame_cos(torch_frames[:n30],
                                                                      torch_30)),
            ("utterance vs 30-s window (torch), mean-pooled", mean_cos(torch_frames[:n30],
                                                                       torch_30)),
            ("ct2 int8 vs torch float32, both 30-s window, per frame",
             frame_cos(o["ct2 int8, 30-s window, batch_size=1"], torch_30)),
        ]
    lines += ["", "| cosine (last layer) | mean over files | min over files |", "|---|---|---|"]
    lines += [f"| {label} | {m:.5f} | {lo:.5f} |" for label, (m, lo) in pairs]
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_write:
        write_section("whisper", "## Whisper base: throughput and CT2 / torch agreement "
                      "(`benchmarks/whisper_throughput.py`)\n\n" + report, args.results)


if __name__ == "__main__":
    main()
