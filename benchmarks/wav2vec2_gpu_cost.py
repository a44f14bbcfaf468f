"""Cost of ``deep_wccn`` above an XLS-R-sized wav2vec 2.0 front end, with and without the
paper's auxiliary wav2vec 2.0 loss (``configs/lolo_xlsr.yaml``'s rows), on one device.

No checkpoint can be downloaded where this runs, so the model is XLS-R 53's architecture
(24 layers, width 1024, 315 M parameters) with random weights, and the inputs are random
front-end frames (512 dims, 80-200 frames, cropped to 100 = 2 s as the config does): the
figures are seconds and memory, not accuracy. Also times the log-mel extractor's first
(warm-up) and second call on the device against the CPU.

    python benchmarks/wav2vec2_gpu_cost.py --device cuda --out DIR  # DIR/wav2vec2_gpu_cost.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from emobridge.features.extractors.logmel import LogMel  # noqa: E402
from emobridge.methods import EmotionData, build_method  # noqa: E402

CLASSES = ("anger", "happiness", "neutral", "sadness")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def logmel_times(device: str, rng: np.random.Generator) -> dict[str, float]:
    waves = [rng.standard_normal(16_000 * 3).astype(np.float32) for _ in range(80)]
    out = {}
    for name, dev in (("first", device), ("second", device), ("cpu", "cpu")):
        start = time.perf_counter()
        LogMel(device=dev).extract_batch(waves, 16_000)
        _sync(dev)
        out[f"logmel_80x3s_{name}_s"] = time.perf_counter() - start
    return out


def xlsr_sized(folder: str) -> None:
    import transformers

    config = transformers.Wav2Vec2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, do_stable_layer_norm=True, feat_extract_norm="layer",
        conv_bias=True, codevector_dim=768, proj_codevector_dim=768)
    transformers.Wav2Vec2ForPreTraining(config).save_pretrained(folder)


def fit_cost(folder: str, data: EmotionData, ssl: float, device: str, epochs: int
             ) -> dict[str, object]:
    log = Path(folder) / f"log_{ssl}.csv"
    method = build_method("deep_wccn", encoder="hf", encoder_model=folder,
                          trainable_layers="all", ssl_loss_weight=ssl, crop_frames=100,
                          epochs=epochs, device=device, seed=0, log_csv=str(log))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    method.fit(data)
    _sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"seconds": time.perf_counter() - start, "peak_gib": peak,
            "history": log.read_text(encoding="utf-8")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--batches", type=int, default=30, help="batches of 14 per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    result: dict[str, object] = logmel_times(args.device, rng)
    n = 14 * args.batches
    feats = [rng.standard_normal((int(rng.integers(80, 200)), 512)).astype(np.float32)
             for _ in range(n)]
    data = EmotionData(feats, np.arange(n) % 4, [f"s{i % 6}" for i in range(n)],
                       ["de"] * (n // 2) + ["en"] * (n - n // 2), [f"{i}.wav" for i in range(n)],
                       CLASSES)
    with tempfile.TemporaryDirectory() as folder:
        xlsr_sized(folder)
        for ssl in (0.0, 1e-3):
            result[f"ssl_{ssl}"] = fit_cost(folder, data, ssl, args.device, args.epochs)
            print(ssl, result[f"ssl_{ssl}"], flush=True)
    result.update(device=args.device, utterances=n, epochs=args.epochs,
                  gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wav2vec2_gpu_cost.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
