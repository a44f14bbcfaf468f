"""The recipe's encoder on five paths, interleaved on one machine (issue "Fast enough for
archives"): torch float32 (``cpu_bf16=off``, the extractor before this issue), torch under
bfloat16 autocast (``cpu_bf16=auto`` on a CPU with native bf16: the default now), torch with
``compute_type=int8``, ONNX Runtime float32 and ONNX Runtime int8 (dynamic quantisation of
the exported encoder). Features: ``whisper:backend=torch,layer=[2,3,4],pooling=mean,
level=rms``.

    .venv/bin/python benchmarks/bench_encoder_paths.py [--files 150] [--rounds 3] [--grid]
        [--write]

``--grid`` also extracts every corpus on the three torch paths (each in its own temporary
store: float32 and bf16 share an id) and scores the recipe at k = 0 on the 25 grid tasks
(``bench_grid.py``): the accuracy half of the tolerance.

Per corpus (EMO-DB, RAVDESS; the first ``--files`` files of each, decoded once beforehand):
seconds of audio per second of compute (x real time, median over rounds; decoding excluded,
log-mel included), and the cosine between each path's pooled vector and torch float32's per
utterance (min and median). Threads: 2 for every path (torch intra-op, onnxruntime
intra-op).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import DEFAULT_CORPORA, load_manifest, write_section

SPEC = "whisper:backend=torch,layer=[2,3,4],pooling=mean,level=rms"


#: The torch paths: extra spec parameters.
TORCH_PATHS = {"torch fp32 (cpu_bf16=off)": ",cpu_bf16=off",
               "torch bf16 autocast (cpu_bf16=auto)": "",
               "torch int8 (compute_type=int8)": ",compute_type=int8"}


def torch_path(extra: str):
    from emobridge.features.registry import build_extractor

    ext = build_extractor(SPEC + extra)
    ext.load()
    return lambda waves: ext.extract_batch(waves, 16_000)


def grid_means(corpora: Path, root: Path) -> list[str]:
    """The recipe's k = 0 mean UA over the grid on each torch path's features."""
    from _common import extract_features
    from bench_grid import CORPORA, tasks
    from emobridge.methods import EmotionData, build_method
    from emobridge.metrics import unweighted_average_recall

    manifests = {n: load_manifest(corpora, n) for n in CORPORA}
    classes = ("anger", "happiness", "neutral", "sadness")
    means, lines = {}, []
    for name, extra in TORCH_PATHS.items():
        feats = extract_features(root / name.split()[1], manifests, SPEC + extra, workers=1)
        data = {n: EmotionData.from_manifest(manifests[n], feats[n], classes) for n in CORPORA}
        uas = []
        for src, tgt in tasks(list(CORPORA)):
            source = EmotionData.concat([data[s] for s in src])
            fitted = build_method("recommended").fit(source, data[tgt].without_labels())
            uas.append(100 * unweighted_average_recall(data[tgt].labels,
                                                       fitted.predict(data[tgt])))
        means[name] = float(np.mean(uas))
        ref = means[next(iter(TORCH_PATHS))]
        lines.append(f"| {name} | {means[name]:.2f} | {means[name] - ref:+.2f} |")
        print(lines[-1], flush=True)
    return ["", "Recipe k = 0 mean UA over the 25 grid tasks on each path's features:", "",
            "| path | mean UA | vs float32 |", "|---|---|---|", *lines]


def onnx_paths(folder: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from emobridge.inference import onnx as runner

    fp32 = runner.OnnxRecognizer(folder, threads=2)
    quantize_dynamic(str(folder / "encoder.onnx"), str(folder / "encoder-int8.onnx"),
                     weight_type=QuantType.QInt8)
    int8 = runner.OnnxRecognizer(folder, threads=2)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    int8.encoder = ort.InferenceSession(str(folder / "encoder-int8.onnx"), options,
                                        providers=["CPUExecutionProvider"])
    return {"onnxruntime fp32": lambda waves: [fp32.features(w) for w in waves],
            "onnxruntime int8": lambda waves: [int8.features(w) for w in waves]}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    import torch

    from emobridge.audio import load_audio
    from emobridge.inference.export import export_onnx
    from emobridge.inference.recognizer import Recognizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    ap.add_argument("--files", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(Recognizer.default(), Path(tmp) / "export")
        paths = {name: torch_path(extra) for name, extra in TORCH_PATHS.items()}
        paths.update(onnx_paths(Path(tmp) / "export"))
        lines = ["| corpus | path | x real time | cosine to torch fp32 (min / median) |",
                 "|---|---|---|---|"]
        for corpus in ("emodb", "ravdess"):
            m = load_manifest(args.corpora, corpus).head(args.files)
            waves = [load_audio(p, 16_000) for p in m["path"]]
            seconds = sum(len(w) for w in waves) / 16_000
            times = {name: [] for name in paths}
            feats = {}
            for _ in range(args.rounds):  # interleaved: every path once per round
                for name, run in paths.items():
                    t0 = time.perf_counter()
                    feats[name] = run(waves)
                    times[name].append(time.perf_counter() - t0)
            ref = feats[next(iter(TORCH_PATHS))]
            for name in paths:
                cos = [cosine(a, b) for a, b in zip(feats[name], ref, strict=True)]
                speed = seconds / statistics.median(times[name])
                lines.append(f"| {corpus} ({len(waves)} files, {seconds / 60:.1f} min) | "
                             f"{name} | {speed:.0f}x | {min(cos):.5f} / "
                             f"{statistics.median(cos):.5f} |")
                print(lines[-1], flush=True)
        if args.grid:
            torch.set_num_threads(1)
            lines += grid_means(args.corpora, Path(tmp))
    body = "\n".join(["## Encoder paths (`benchmarks/bench_encoder_paths.py`)", "",
                      f"Recipe features `{SPEC}` on 2 threads, {args.rounds} interleaved "
                      "rounds (median), decoding excluded, log-mel included.", "", *lines])
    print(body)
    if args.write:
        write_section("encoder-paths", body)


if __name__ == "__main__":
    main()
