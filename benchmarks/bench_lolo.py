"""Leave-one-language-out with Deep-WCCN (the wav2vec 2.0 + Deep-WCCN paper's table) on the
offline Whisper base: runs ``configs/lolo.yaml`` and writes the "lolo" section of
``benchmarks/RESULTS.md``.

Protocol (``configs/lolo.yaml``)
    Held-out German (EMO-DB), English (RAVDESS) and Italian (EMOVO), training on the other two
    (smaller language repeated to the size of the larger), label set ``4class``; source and
    target speakers split 3 : 1 : 1 into train / validation (early stopping, source) / test,
    one split per seed; ``--folds 5`` rotates the held-out language's speakers over 5 folds
    instead (the paper's protocol; every target utterance tested once per seed; 5 times the
    cost). Rows: eGeMAPS and emobase + random forest (100 trees, depth 5), each without and
    with a classical WCCN; frozen Whisper base layer 3 (statistics pooled) + the paper's head
    without and with Deep-WCCN; the top Whisper layer fine-tuned on cached layer-5 frames,
    without and with Deep-WCCN; +150 s and +300 s of labelled target speech for the frozen
    head with Deep-WCCN; and, not the paper's, the project's recommended recipe. UA and WA
    in %, mean ± std over the seeds; seconds per epoch and per run (one cell: every fold's
    fit); the silhouette of the target test embeddings by emotion (how compact the classes
    are, what Deep-WCCN is meant to improve).

Resumable: the grid runner skips finished cells, so an interrupted run continues where it
stopped (same ``--run-dir``). ``--quick`` is a smoke test (one seed, 2 folds, a few epochs,
small forests; its own run folder; prints without writing RESULTS.md unless ``--write``).

Example::

    .venv/bin/python benchmarks/bench_lolo.py ../shared/corpora --jobs 2
    .venv/bin/python benchmarks/bench_lolo.py ../shared/corpora --quick
    # the paper's rotated folds for the rows that are cheap on a CPU (own section)
    .venv/bin/python benchmarks/bench_lolo.py ../shared/corpora --jobs 2 --folds 5 \
        --only rf rf_wccn head head_wccn head_wccn_target
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, RESULTS, write_section

CONFIG = REPO / "configs" / "lolo.yaml"
DEFAULT_CORPORA = REPO.parent / "shared" / "corpora"
LANGUAGES = {"de": "DE", "en": "EN", "it": "IT"}
#: References measured the same way (whole training languages -> whole held-out language,
#: frozen Whisper-base mean vectors, per-corpus z, logistic regression), UA %.
REFERENCES = {"Whisper-base layer 3 mean + LR (reference)": {"de": 84.9, "en": 66.7,
                                                             "it": 67.0},
              "Whisper-base last layer mean + LR (reference)": {"de": 60.9, "en": 56.5,
                                                                "it": 56.5},
              "goal": {"de": 92.0, "en": 75.0, "it": 75.0},
              "paper: XLS-R 53 fine-tuned + Deep-WCCN (ENCH->DE, DECH->EN; GPU)": {
                  "de": 94.0, "en": 64.0}}
#: Rows compared without / with (Deep-)WCCN.
WCCN_PAIRS = (("rf", "rf_wccn"), ("head", "head_wccn"), ("ft", "ft_wccn"))


def quick_overrides(data: dict[str, Any]) -> dict[str, Any]:
    """The smoke-test variant of the config mapping: one seed, 3 folds, short training."""
    data = {**data, "seeds": [0], "protocol": {**data["protocol"], "target_folds": 3}}
    methods = []
    for m in data["methods"]:
        params = dict(m.get("params", {}))
        if m["method"] == "random_forest":
            params["n_estimators"] = 10
        else:
            params.update(epochs=2 if params.get("encoder") is None else 1, patience=None)
        methods.append({**m, "params": params})
    data["methods"] = methods
    data["report"] = {"bootstrap": 0, "tsne": False}
    return data


def load(args: argparse.Namespace):
    """The validated config, with ``--quick`` changes and the run folder."""
    from emobridge.experiments.config import expand_env, read_yaml, validate_config

    data = expand_env(read_yaml(CONFIG.read_text(encoding="utf-8"), str(CONFIG)), str(CONFIG))
    if args.folds:
        data = {**data, "protocol": {**data["protocol"], "target_folds": args.folds}}
    if args.only:
        unknown = set(args.only) - {m["name"] for m in data["methods"]}
        if unknown:
            raise SystemExit(f"--only: no method named {sorted(unknown)} in {CONFIG.name}")
        data = {**data, "methods": [m for m in data["methods"] if m["name"] in args.only]}
    if args.quick:
        data = quick_overrides(data)
    return validate_config(data, str(CONFIG), CONFIG.parent, output_dir=args.run_dir,
                           corpora_root=args.corpora, device=args.device)


def collect(run_dir: Path) -> list[dict[str, Any]]:
    """One record per finished cell of the run."""
    records = []
    for path in sorted((run_dir / "cells").glob("*/metrics.json")):
        m = json.loads(path.read_text(encoding="utf-8"))
        if m.get("status") != "ok":
            continue
        epochs = [h["time_s"] for h in m.get("history") or [] if "time_s" in h]
        sil = m.get("silhouette") or {}
        records.append({
            "target": m["cell"]["target_domain"], "feature": m["cell"]["feature"],
            "method": m["cell"]["method"], "k": str(m["cell"]["k"]),
            "seed": m["cell"]["seed"], "ua": m["target"]["ua"], "wa": m["target"]["wa"],
            "fit_s": m["timing"]["fit_s"], "epoch_s": float(np.mean(epochs)) if epochs
            else float("nan"), "silhouette": sil.get("emotion_target")})
    return records


def _stat(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], float) * scale
    if not len(arr):
        return "-"
    return f"{arr.mean():.{digits}f}" + (f" ± {arr.std():.{digits}f}" if len(arr) > 1 else "")


def _row_key(r: dict[str, Any]) -> tuple[str, str, str]:
    return r["method"], r["feature"], r["k"]


def render(records: list[dict[str, Any]], cfg, seconds: float, quick: bool) -> str:
    targets = sorted({r["target"] for r in records},
                     key=lambda t: (list(LANGUAGES).index(t) if t in LANGUAGES else 9, t))
    names = [LANGUAGES.get(t, t) for t in targets]
    order = [m.label for m in cfg.methods]
    keys = sorted({_row_key(r) for r in records},
                  key=lambda k: (order.index(k[0]) if k[0] in order else 99, k[1], k[2]))
    title = ("### Rotated folds (`bench_lolo.py --folds "
             f"{cfg.protocol.target_folds}`)" if cfg.protocol.target_folds else
             "## Leave-one-language-out with Deep-WCCN (`benchmarks/bench_lolo.py`)")
    lines = [
        title, "",
        "`configs/lolo.yaml` on the offline Whisper base: "
        + ("one 3 : 1 : 1 speaker split per seed, " if not cfg.protocol.target_folds else
           f"held-out language's speakers in {cfg.protocol.target_folds} rotated folds (every "
           "target utterance tested once per seed), ")
        + "training languages "
        "repeated to equal size, 4 classes; UA / WA in % mean ± std over "
        f"{len(cfg.seeds)} seed(s); s/epoch: mean epoch time; s/run: one cell (all folds)."
        + (" **Smoke test (`--quick`), not a result.**" if quick else "")
        + f" Run {time.strftime('%Y-%m-%d %H:%M')}, {seconds / 60:.1f} min of wall time in "
        "all (the sum over resumed invocations of this run folder).", "",
        "| method | features | target speech | " + " | ".join(f"->{n} UA" for n in names)
        + " | " + " | ".join(f"->{n} WA" for n in names)
        + " | s/epoch | s/run | target silhouette |",
        "|---|---|---|" + "---|" * (2 * len(names) + 3)]
    for key in keys:
        rows = [r for r in records if _row_key(r) == key]
        ua = [_stat([r["ua"] for r in rows if r["target"] == t]) for t in targets]
        wa = [_stat([r["wa"] for r in rows if r["target"] == t]) for t in targets]
        lines.append(f"| {key[0]} | {key[1]} | {'-' if key[2] == '0' else key[2]} | "
                     + " | ".join(ua + wa) + f" | {_stat([r['epoch_s'] for r in rows], 1)} | "
                     f"{_stat([r['fit_s'] for r in rows], 1, 0)} | "
                     f"{_stat([r['silhouette'] for r in rows], 1, 3)} |")
    for name, values in REFERENCES.items():
        lines.append(f"| {name} | | | " + " | ".join(
            f"{values[t]:.1f}" if t in values else "-" for t in targets)
            + " |" + " |" * (len(names) + 3))
    lines += ["", "Effect of (Deep-)WCCN: UA with minus UA without, points, per held-out "
              "language (k = 0); target silhouette with minus without.", "",
              "| rows | features | " + " | ".join(f"Δ->{n}" for n in names)
              + " | Δ silhouette |", "|---|---|" + "---|" * (len(names) + 1)]
    for without, with_ in WCCN_PAIRS:
        for feature in sorted({r["feature"] for r in records if r["method"] == with_}):
            def pick(method: str, t: str | None, field: str, feature: str = feature
                     ) -> list[float]:
                return [r[field] for r in records if r["method"] == method and r["k"] == "0"
                        and r["feature"] == feature and (t is None or r["target"] == t)]
            deltas = [_delta(pick(with_, t, "ua"), pick(without, t, "ua"), 100, 1)
                      for t in targets]
            sil = _delta(pick(with_, None, "silhouette"), pick(without, None, "silhouette"),
                         1, 3)
            lines.append(f"| {without} -> {with_} | {feature} | " + " | ".join(deltas)
                         + f" | {sil} |")
    return "\n".join(lines)


def wall_time(run_dir: Path, seconds: float) -> float:
    """Add this invocation's ``seconds`` to the run folder's record; the total so far."""
    from emobridge.fileio import write_json_atomic

    path = run_dir / "bench_wall_s.json"
    spent = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    spent.append(round(seconds, 1))
    write_json_atomic(path, spent)
    return float(sum(spent))


def _delta(a: list[float], b: list[float], scale: float, digits: int) -> str:
    a = [v for v in a if v is not None]
    b = [v for v in b if v is not None]
    if not a or not b:
        return "-"
    return f"{(np.mean(a) - np.mean(b)) * scale:+.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", nargs="?", type=Path, default=DEFAULT_CORPORA,
                        help="folder holding emodb/, ravdess/, emovo/")
    parser.add_argument("--quick", action="store_true", help="smoke test (see the docstring)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run in parallel")
    parser.add_argument("--folds", type=int, default=None,
                        help="rotate the held-out language's speakers over N folds")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="run only these methods of the config (e.g. the cheap rows "
                             "with --folds 5)")
    parser.add_argument("--device", default=None, help="override the config's device")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="run folder (default benchmarks/out/lolo[-folds][-quick]); "
                             "reused to resume")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--write", action="store_true", help="write RESULTS.md after --quick")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.run_dir is None:
        args.run_dir = REPO / "benchmarks" / "out" / ("lolo" + (
            f"-folds{args.folds}" if args.folds else "") + ("-quick" if args.quick else ""))

    from emobridge.experiments import run_experiment

    start = time.perf_counter()
    cfg = load(args)
    run_experiment(cfg, jobs=args.jobs)
    text = render(collect(Path(cfg.output_dir)), cfg,
                  wall_time(Path(cfg.output_dir), time.perf_counter() - start), args.quick)
    print(text)
    if not args.no_write and (args.write or not args.quick):
        # the rotated-folds run is its own section, beside the single-split table
        write_section("lolo-folds" if args.folds else "lolo", text, args.results)
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
