"""Which input standardisation a neural method should use by default (``NeuralMethod``'s
``normalise``), measured on the grid's 25 tasks.

    .venv/bin/python benchmarks/bench_neural_normalise.py [--variant confounded] [--write]

Protocol as the grid's k = 0 columns (``bench_grid.py``): whole source corpora -> whole
target corpus, transductive (the target is the unlabelled pool and the test set; its labels
only score). ``source_only`` with the MLP head on RMS-levelled Whisper-base layer-3 mean
vectors (the grid's ``rms3`` features), the grid config's training settings (60 epochs,
batch 32, Adam 1e-3, class-balanced loss), seeds 0-2, with each ``normalise`` mode. A mode
is chosen leave-one-corpus-out (best mean over the tasks of the other four targets, scored
on the held-out one). ``--variant confounded`` replaces every target by the grid's
confounded-speakers variant (``variants.py``: each target speaker keeps mostly one emotion),
where per-speaker statistics can erase the emotion.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _common import REPO, write_section
from bench_grid import choose_leave_one_corpus_out, grid_inputs, task_name, tasks
from emobridge.fileio import write_text_atomic

MODES = ("global", "per_corpus", "per_speaker")
SEEDS = 3
PARAMS = {"epochs": 60, "batch_size": 32, "lr": 0.001, "class_weight": "balanced",
          "backbone": "mlp"}


def measure(data: dict, names: list[str], cache: Path, variant: str | None) -> dict:
    from emobridge.methods import EmotionData
    from variants import variant_rows

    done = json.loads(cache.read_text()) if cache.exists() else {}
    for i, (src, tgt) in enumerate(tasks(names)):
        for seed in range(SEEDS):
            key = f"{'+'.join(src)}>{tgt}|{seed}"
            if key in done:
                continue
            source = EmotionData.concat([data[s]["rms3"] for s in src])
            target = data[tgt]["rms3"]
            if variant:
                target = target.subset(variant_rows(variant, target.labels, target.speakers,
                                                    len(target.classes), rotate=i))
            done[key] = score(source, target, seed)
            write_text_atomic(cache, json.dumps(done))
            print(key, {k: round(v, 1) for k, v in done[key].items()}, flush=True)
    return done


def score(source, target, seed: int) -> dict[str, float]:
    from emobridge.methods import build_method
    from emobridge.metrics import unweighted_average_recall

    out = {}
    for mode in MODES:
        fitted = build_method("source_only", normalise=mode, seed=seed, **PARAMS).fit(
            source, target.without_labels())
        out[mode] = 100 * unweighted_average_recall(target.labels, fitted.predict(target))
    return out


def report(done: dict, names: list[str], shipped: str, variant: str | None) -> str:
    per = {t: {m: float(np.mean([done[f"{'+'.join(t[0])}>{t[1]}|{s}"][m]
                                 for s in range(SEEDS)])) for m in MODES}
           for t in tasks(names)}
    chosen, nested = choose_leave_one_corpus_out(per, MODES, names)
    lines = ["| task | " + " | ".join(MODES) + " |", "|---|" + "---|" * len(MODES)]
    lines += [f"| {task_name(*t)} | " + " | ".join(f"{per[t][m]:.1f}" for m in MODES) + " |"
              for t in per]
    lines.append("| **mean** | " + " | ".join(
        f"**{np.mean([per[t][m] for t in per]):.1f}**" for m in MODES) + " |")
    title = ("## Default standardisation of neural methods (`benchmarks/"
             f"bench_neural_normalise.py`): {variant or 'clean'} targets")
    return "\n".join([
        title, "", "`source_only` (MLP head, RMS-levelled Whisper-base layer-3 mean vectors, 60 "
        f"epochs, class-balanced loss) on the grid's 25 tasks, k = 0, mean UA % over {SEEDS} "
        "seeds, with each `normalise` mode.", "", *lines, "",
        "Chosen leave-one-corpus-out (held-out target: mode): "
        + ", ".join(f"{n}: {m}" for n, m in chosen.items())
        + f"; nested estimate {np.mean(nested):.1f}. Shipped default: `{shipped}`."])


def main() -> None:
    import inspect

    from emobridge.methods.neural import NeuralMethod

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=["confounded"])
    ap.add_argument("--write", action="store_true")
    args, names, data = grid_inputs(ap)
    suffix = f"-{args.variant}" if args.variant else ""
    cache = REPO / "benchmarks" / "out" / f"neural_normalise{suffix}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    shipped = inspect.signature(NeuralMethod.__init__).parameters["normalise"].default
    body = report(measure(data, names, cache, args.variant), names, shipped, args.variant)
    print(body)
    if args.write:
        write_section(f"neural-normalise{suffix}", body)


if __name__ == "__main__":
    main()
