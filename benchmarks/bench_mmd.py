"""Domain-adaptive transfer with MMD (Baklouti et al.) and distribution-matching losses.

Task (default): RAVDESS (en) -> EMO-DB (de), seven classes, the paper's task 3 (RAVDESS calm
is mapped to boredom, as the paper's seven classes pair them; surprise is dropped).
``--tasks`` adds ``emodb-ravdess-7`` (task 4) and ``ravdess-emodb-4`` (four classes).

Rows:

- VGG over log-mel images (``backbone=vgg``): ``tl`` (``source_only``: the VGG fine-tuned on
  the labelled source, the paper's "TL") and ``mmd`` (the ``mmd`` method: the same phase 1,
  then cross-entropy + lambda * MMD between source and target batches at the first FC
  layer). Random initialisation unless ``--vgg-weights`` names torchvision's ImageNet
  ``vgg*.pth`` of the same depth (then ``--vgg-width 1``).
- MLP over Whisper-base mean vectors and SNSA over log-mel: ``source_only``,
  ``source_only`` + ``domain_loss=mmd`` and + ``domain_loss=coral`` (at the embedding), and
  ``dann``, on the same features.

Protocol: speaker-independent (the paper splits utterances randomly 80 / 20). Source
speakers 80 / 20 training / validation (by seed, gender-stratified); target speakers 60 / 40
into an unlabelled adaptation pool and the test speakers. Validation (source speakers only)
early-stops the supervised (phase-1) training; no target label is read except for scoring.
UA / WA in % on the target test speakers, mean +- std over seeds. No hyper-parameter was
tuned on target labels (lambda = 1 for MMD and CORAL, median-heuristic bandwidth).

Resumable: every finished run is appended to ``--json`` (atomically); a rerun with the same
settings skips them (a run with other settings starts afresh). Writes the ``mmd`` section of
``benchmarks/RESULTS.md`` (between ``<!-- mmd:start -->`` and ``<!-- mmd:end -->``).

Full run (2 CPU cores; reduced VGG: depth 11, 48 x 48 images, width 0.25, FC 256, 1 x 1
pooling; epochs cut, see the options). Measured 2026-11-28 with the feature cache filled, on
2 CPU cores shared with other benchmarks: the fits summed to 65 min, 15 of them VGG, under 1
MLP and 50 SNSA over whole log-mel utterances (so ``--systems vgg mlp`` fits 30 minutes; the
default does not); Whisper-base extraction adds about 3 minutes to an empty cache. The
table's seconds per epoch say what a run took. Interrupted or over budget: rerun the same
command (finished runs are kept), or lower ``--seeds`` / the epochs::

    .venv/bin/python benchmarks/bench_mmd.py ../shared/corpora

Smoke test (tiny subset, one seed, one epoch each; writes RESULTS.md only with --write)::

    .venv/bin/python benchmarks/bench_mmd.py ../shared/corpora --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from _common import extract_features, load_manifest, write_section

HERE = Path(__file__).resolve().parent

FEATURES = {
    "logmel": "logmel:preset=nnpm,fixed_duration_s=null,trim_db=35,level=rms",
    "whisper": "whisper:model=base,backend=ct2,pooling=mean",
}
#: system -> (features, backbone, title)
SYSTEMS = {
    "vgg": ("logmel", "vgg", "VGG over log-mel images"),
    "mlp": ("whisper", "mlp", "MLP over Whisper-base mean"),
    "snsa": ("logmel", "snsa", "SNSA over log-mel"),
}
METHODS = {"vgg": ("tl", "mmd"), "mlp": ("source_only", "mmd", "coral", "dann"),
           "snsa": ("source_only", "mmd", "coral", "dann")}
#: task -> (source, target, label set)
TASKS = {
    "ravdess-emodb-7": ("ravdess", "emodb", "7class"),
    "emodb-ravdess-7": ("emodb", "ravdess", "7class"),
    "ravdess-emodb-4": ("ravdess", "emodb", "4class"),
}
MAPPINGS = {("ravdess", "7class"): {"calm": "boredom"}}
#: The paper's figures (UA = its UAR, WA = its accuracy, %): Table 6 (TL / DA-based TL,
#: task 3) and Table 4 (task 4). Random 80 / 20 utterance splits, VGG16 with ImageNet weights.
PAPER = {("ravdess-emodb-7", "tl"): (50.65, 50.47), ("ravdess-emodb-7", "mmd"): (58.01, 53.47),
         ("emodb-ravdess-7", "mmd"): (50.0, 50.0)}
#: Settings that change results: runs recorded with other values are not reused.
SETTINGS = ("limit", "vgg_depth", "vgg_image_size", "vgg_width", "vgg_fc_dim", "vgg_pool_size",
            "vgg_weights", "vgg_lr", "vgg_source_epochs", "vgg_adapt_epochs", "snsa_epochs",
            "mlp_epochs", "dann_epochs", "patience", "crop_frames", "mmd_weight",
            "coral_weight")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpora", type=Path, help="folder holding ravdess/ and emodb/")
    p.add_argument("--store", type=Path, default=HERE.parent / "cache" / "features")
    p.add_argument("--tasks", nargs="+", default=["ravdess-emodb-7"], choices=list(TASKS))
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--limit", type=int, default=None,
                   help="utterances per corpus (class-stratified; smoke tests)")
    p.add_argument("--vgg-depth", type=int, default=11, choices=[11, 13, 16, 19])
    p.add_argument("--vgg-image-size", type=int, default=48)
    p.add_argument("--vgg-width", type=float, default=0.25)
    p.add_argument("--vgg-fc-dim", type=int, default=256)
    p.add_argument("--vgg-pool-size", type=int, default=1)
    p.add_argument("--vgg-weights", type=str, default=None,
                   help="torchvision ImageNet state dict of the same depth (needs width 1)")
    p.add_argument("--vgg-lr", type=float, default=1e-4,
                   help="VGG learning rate, both phases (paper: 1e-4, for ImageNet weights)")
    p.add_argument("--vgg-source-epochs", type=int, default=8,
                   help="VGG phase 1 / TL epochs (paper: 400; early-stopped)")
    p.add_argument("--vgg-adapt-epochs", type=int, default=6,
                   help="mmd phase 2 epochs (paper: 50)")
    p.add_argument("--snsa-epochs", type=int, default=15)
    p.add_argument("--mlp-epochs", type=int, default=60)
    p.add_argument("--dann-epochs", type=int, default=None,
                   help="DANN epochs (default: those of its backbone)")
    p.add_argument("--patience", type=int, default=3,
                   help="early stopping on source validation UA (supervised phases)")
    p.add_argument("--crop-frames", type=int, default=200,
                   help="random training crop of log-mel utterances for SNSA (frames)")
    p.add_argument("--mmd-weight", type=float, default=1.0)
    p.add_argument("--coral-weight", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 70 utterances per corpus, seed 0, 1 epoch, tiny VGG")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--json", type=Path, default=None,
                   help="run records (default benchmarks/out/mmd.json, mmd_quick.json)")
    p.add_argument("--write", action="store_true",
                   help="with --quick / --limit: still write RESULTS.md")
    args = p.parse_args(argv)
    if args.quick:
        args.limit, args.seeds = args.limit or 70, [args.seeds[0]]
        args.vgg_source_epochs = args.vgg_adapt_epochs = args.snsa_epochs = 1
        args.mlp_epochs, args.dann_epochs = 2, 1
        args.vgg_image_size, args.vgg_width, args.vgg_fc_dim = 32, 0.125, 32
    if args.json is None:
        args.json = HERE / "out" / ("mmd_quick.json" if args.quick else "mmd.json")
    return args


# ----------------------------------------------------------------------------- data

def load_task_manifest(corpora: Path, name: str, label_set: str, limit: int | None):
    """A corpus mapped to ``label_set`` (RAVDESS calm -> boredom for seven classes);
    ``limit`` keeps a class-stratified subset (seed 0)."""
    from emobridge.corpora import LabelSet

    mapping = MAPPINGS.get((name, label_set))
    manifest = load_manifest(corpora, name, limit, label_set, mapping)
    return manifest, LabelSet.named(label_set, mapping).classes


def _data(frame, features: list, classes: tuple):
    from emobridge.methods import EmotionData

    # Partitions keep the manifest's RangeIndex, so the index picks the feature rows.
    return EmotionData.from_manifest(frame, [features[i] for i in frame.index], classes)


def split_task(task: str, manifests: dict, feats: dict, classes: tuple, seed: int) -> dict:
    """Speaker-independent pieces: source train / validation, unlabelled target pool, test."""
    from emobridge.protocols import cross_corpus_split

    source, target, _ = TASKS[task]
    split = cross_corpus_split(manifests[source], manifests[target],
                               target_ratios=(0.6, 0.0, 0.4), seed=seed,
                               source_validation_ratio=0.2)
    return {"source": _data(split.source_train, feats[source], classes),
            "validation": _data(split.source_validation, feats[source], classes),
            "pool": _data(split.target_train, feats[target], classes).without_labels(),
            "test": _data(split.target_test, feats[target], classes)}


# ----------------------------------------------------------------------------- runs

def vgg_params(args: argparse.Namespace) -> dict:
    params = {"depth": args.vgg_depth, "image_size": args.vgg_image_size,
              "width": args.vgg_width, "fc_dim": args.vgg_fc_dim,
              "pool_size": args.vgg_pool_size}
    if args.vgg_weights:
        params["weights"] = args.vgg_weights
    return params


def method_for(system: str, method: str, seed: int, args: argparse.Namespace):
    """``(registry name, parameters)`` of one row."""
    base = {"seed": seed, "device": "cpu", "patience": args.patience}
    if system == "vgg":
        base.update(backbone="vgg", backbone_params=vgg_params(args), normalise="none",
                    batch_size=16, lr=args.vgg_lr)
        if method == "tl":
            return "source_only", {**base, "epochs": args.vgg_source_epochs}
        return "mmd", {**base, "source_epochs": args.vgg_source_epochs, "source_lr": args.vgg_lr,
                       "epochs": args.vgg_adapt_epochs, "domain_loss_weight": args.mmd_weight}
    epochs = args.snsa_epochs if system == "snsa" else args.mlp_epochs
    base.update(backbone=SYSTEMS[system][1], normalise="per_corpus", batch_size=32, lr=1e-3,
                epochs=epochs)
    if system == "snsa":
        base["crop_frames"] = args.crop_frames
    if method == "dann":
        return "dann", {**base, "epochs": args.dann_epochs or epochs}
    if method in ("mmd", "coral"):
        weight = args.mmd_weight if method == "mmd" else args.coral_weight
        return "source_only", {**base, "domain_loss": method, "domain_loss_weight": weight}
    return "source_only", base


def run_one(system: str, method: str, seed: int, data: dict, args: argparse.Namespace) -> dict:
    """Fit, score on the target test speakers, time per epoch."""
    from emobridge.methods import build_method
    from emobridge.metrics import evaluate

    name, params = method_for(system, method, seed, args)
    t0 = time.perf_counter()
    model = build_method(name, **params).fit(data["source"], data["pool"],
                                             validation=data["validation"])
    elapsed = time.perf_counter() - t0
    res = evaluate(data["test"].labels, model.predict_proba(data["test"]), data["test"].classes,
                   ci=False)
    history = model.history_
    adapt = [r["time_s"] for r in history if r.get("phase") == "adapt"]
    return {"ua": 100 * res["ua"], "wa": 100 * res["wa"], "time_s": elapsed,
            "epochs_run": len(history),
            "s_per_epoch": float(np.mean([r["time_s"] for r in history])),
            "s_per_adapt_epoch": float(np.mean(adapt)) if adapt else None,
            "phase1": [None if r.get("val_ua") is None else round(r["val_ua"], 6)
                       for r in history if r.get("phase", "source") == "source"]}


#: Settings added after runs were recorded, with the value those runs used.
ADDED_SETTINGS = {"vgg_lr": 1e-4}


def _settings(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in SETTINGS}


def load_done(path: Path, settings: dict) -> list[dict]:
    """Runs recorded earlier with the same settings (a resumed benchmark skips them)."""
    if not path.exists():
        return []
    saved = json.loads(path.read_text(encoding="utf-8"))
    recorded = {**ADDED_SETTINGS, **saved.get("settings", {})}  # older records lack them
    if recorded != settings:
        print(f"{path}: recorded with other settings; starting afresh", flush=True)
        return []
    return list(saved.get("runs", []))


def run_all(args: argparse.Namespace) -> list[dict]:
    import torch

    from emobridge.fileio import write_json_atomic

    torch.set_num_threads(args.threads)
    settings = _settings(args)
    runs = load_done(args.json, settings)
    done = {(r["task"], r["system"], r["method"], r["seed"]) for r in runs}
    if done:
        print(f"resuming: {len(done)} runs already recorded in {args.json}", flush=True)
    for task in args.tasks:
        source, target, label_set = TASKS[task]
        loaded = {n: load_task_manifest(args.corpora, n, label_set, args.limit)
                  for n in (source, target)}
        manifests = {n: m for n, (m, _) in loaded.items()}
        classes = loaded[source][1]
        for kind in dict.fromkeys(SYSTEMS[s][0] for s in args.systems):
            todo = [(s, m, seed) for s in args.systems if SYSTEMS[s][0] == kind
                    for seed in args.seeds for m in METHODS[s]
                    if (task, s, m, seed) not in done]
            if not todo:
                continue
            feats = extract_features(args.store, manifests, FEATURES[kind], args.threads)
            for system, method, seed in todo:
                data = split_task(task, manifests, feats, classes, seed)
                record = {"task": task, "system": system, "method": method, "seed": seed,
                          **run_one(system, method, seed, data, args)}
                runs.append(record)
                write_json_atomic(args.json, {"settings": settings, "runs": runs})
                print(f"  {task} {system:<5} {method:<11} seed {seed}: UA {record['ua']:5.1f}"
                      f" WA {record['wa']:5.1f} ({record['time_s']:.0f} s, "
                      f"{record['s_per_epoch']:.1f} s/epoch)", flush=True)
    return runs


# ----------------------------------------------------------------------------- report

def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def _label(system: str, method: str) -> str:
    if system == "vgg":
        return {"tl": "TL (source_only)", "mmd": "mmd (DA-based TL)"}[method]
    return {"source_only": "source_only", "mmd": "source_only + domain_loss=mmd",
            "coral": "source_only + domain_loss=coral", "dann": "dann"}[method]


def _phase1_note(runs: list[dict]) -> str:
    """Whether mmd's phase 1 reproduced TL's training (same seed: same validation curve)."""
    pairs = [(a, b) for a in runs for b in runs
             if a["system"] == b["system"] == "vgg" and a["method"] == "tl"
             and b["method"] == "mmd" and (a["task"], a["seed"]) == (b["task"], b["seed"])]
    if not pairs:
        return ""
    same = sum(a["phase1"] == b["phase1"] for a, b in pairs)
    return (f"mmd's phase 1 is TL's training: identical source-validation curves in {same} of "
            f"{len(pairs)} (task, seed) pairs, so mmd's time includes TL's.")


def render(runs: list[dict], args: argparse.Namespace, total_s: float) -> str:
    seeds = sorted({r["seed"] for r in runs})
    weights = "ImageNet weights from " + args.vgg_weights if args.vgg_weights else \
        "random initialisation (no ImageNet weights file given)"
    lines = [
        "## Domain-adaptive transfer with MMD (Baklouti et al.) and distribution-matching "
        "losses",
        "",
        f"`benchmarks/bench_mmd.py`: speaker-independent (source speakers 80/20 train / "
        f"validation, target speakers 60 % unlabelled pool / 40 % test; the paper splits "
        f"utterances randomly 80/20, so its figures also test on speakers seen in training). "
        f"UA / WA in % on the target test speakers, mean ± std over seeds {seeds}. VGG "
        f"reduced for 2 CPU cores: depth {args.vgg_depth}, {args.vgg_image_size} x "
        f"{args.vgg_image_size} images, width x{args.vgg_width}, FC {args.vgg_fc_dim}, "
        f"{args.vgg_pool_size} x {args.vgg_pool_size} pooling, {weights} (paper: VGG16, 224 "
        f"x 224, ImageNet). Epochs: VGG phase 1 / TL {args.vgg_source_epochs} (paper 400), "
        f"mmd phase 2 {args.vgg_adapt_epochs} (paper 50), SNSA {args.snsa_epochs}, MLP "
        f"{args.mlp_epochs}, DANN {args.dann_epochs or 'as its backbone'}; patience "
        f"{args.patience} on source-validation UA. Adam, VGG lr {args.vgg_lr:g} batch 16 "
        f"(paper 1e-4), others "
        f"lr 1e-3 batch 32, per-corpus z-scoring (VGG: none, images are min-max scaled). "
        f"lambda: MMD {args.mmd_weight}, CORAL {args.coral_weight} (not tuned); MMD: Gaussian "
        f"kernel, biased estimate (paper eq. 2), median-heuristic bandwidth; VGG at the first "
        f"FC layer, SNSA / MLP at the embedding. Log-mel: `{FEATURES['logmel']}`; Whisper: "
        f"`{FEATURES['whisper']}`. Seven classes: RAVDESS calm mapped to boredom.",
        "",
    ]
    if args.limit:
        lines += [f"**Smoke run on {args.limit} utterances per corpus: not a result.**", ""]
    lines += ["| task | system | method | UA | WA | paper UA / WA | s / epoch | epochs run | "
              "seeds | best source-val UA |", "|---|---|---|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in runs):
        for system in dict.fromkeys(r["system"] for r in runs if r["task"] == task):
            for method in METHODS[system]:
                sel = [r for r in runs if (r["task"], r["system"], r["method"]) ==
                       (task, system, method)]
                if not sel:
                    continue
                paper = PAPER.get((task, method)) if system == "vgg" else None
                ref = f"{paper[0]:.1f} / {paper[1]:.1f}" if paper else "-"
                s_ep = np.mean([r["s_per_epoch"] for r in sel])
                adapt = [r["s_per_adapt_epoch"] for r in sel if r["s_per_adapt_epoch"]]
                s_txt = f"{s_ep:.1f}" + (f" (phase 2: {np.mean(adapt):.1f})" if adapt else "")
                lines.append(
                    f"| {task} | {SYSTEMS[system][2]} | {_label(system, method)} | "
                    f"{_cell([r['ua'] for r in sel])} | {_cell([r['wa'] for r in sel])} | "
                    f"{ref} | {s_txt} | {np.mean([r['epochs_run'] for r in sel]):.0f} | "
                    f"{len(sel)} | {_best_val(sel)} |")
    note = _phase1_note(runs)
    lines += ["", "Paper figures: Table 6 (task 3, TL 50.65 / 50.47, DA-based TL 58.01 / "
              "53.47; Table 4 gives 58 / 57 for the latter) and Table 4 (task 4, 50 / 50).",
              *([note] if note else []), "",
              f"Fits: {sum(r['time_s'] for r in runs) / 60:.1f} min in all (sum of the recorded "
              f"runs, resumed invocations included; this invocation {total_s / 60:.1f} min, "
              f"{args.threads} threads). Command: `{args.command}`."]
    return "\n".join(lines) + "\n"


def _best_val(runs: list[dict]) -> str:
    """Mean over runs of the best phase-1 (supervised) source-validation UA, in %."""
    best = [100 * max(r["phase1"]) for r in runs if r.get("phase1")]
    return f"{np.mean(best):.1f}" if best else "-"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.command = " ".join([".venv/bin/python", "benchmarks/bench_mmd.py",
                             *(sys.argv[1:] if argv is None else argv)])
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sys.path.insert(0, str(HERE.parent / "src"))
    t0 = time.perf_counter()
    runs = run_all(args)
    body = render(runs, args, time.perf_counter() - t0)
    print(body)
    if args.limit is None or args.write:
        write_section("mmd", body, args.results)
        print(f"wrote the mmd section of {args.results}")


if __name__ == "__main__":
    main()
