"""One cell of an experiment grid: what a worker needs, how it runs, how its outcome is told.

The runner (:mod:`emobridge.experiments.runner`) builds a :class:`CellJob` per pending cell
and the executors (:mod:`emobridge.experiments.executors`) run them, in this process, in
worker processes or as Ray tasks, each through :func:`execute_cell`, which writes the
cell's ``metrics.json`` (or ``error.json`` + ``traceback.txt``) under the run folder and
returns a :class:`CellOutcome`. Both report outcomes with :func:`log_outcome` and stop a
``fail_fast`` run with :func:`fail_fast_error`.

Per cell, :func:`emobridge.protocols.assemble_cell` (through :func:`cell_rows`) splits
source and target by speaker and draws the labelled target utterances;
:func:`emobridge.methods.runner.fit_and_evaluate` fits and scores the method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.experiments.config import ExperimentConfig, ProtocolConfig
from emobridge.experiments.results import (
    CellKey,
    Task,
    cell_dir,
    write_cell_error,
    write_cell_metrics,
    write_embedding,
)

__all__ = ["CellJob", "CellOutcome", "ExperimentError", "Log", "cell_folder", "cell_rows",
           "execute_cell", "fail_fast_error", "log_outcome", "preloaded_manifest"]

Log = Callable[[str], None]


class ExperimentError(EmobridgeError):
    """A run could not complete: a cell failed under ``fail_fast``, or cells failed."""


def cell_folder(run_dir: str | os.PathLike[str], key: CellKey) -> Path:
    """The cell's folder, refused unless it lies inside ``run_dir/cells`` (names are
    validated by the config schema; this guards against any that slipped through)."""
    folder = cell_dir(run_dir, key)
    root = (Path(run_dir) / "cells").resolve()
    if folder.resolve().parent != root:
        raise ConfigError(f"cell id {key.id!r} would write outside {root}")
    return folder


@dataclass(frozen=True)
class CellJob:
    """Everything a (possibly remote) worker needs to run one cell."""

    key: CellKey
    task: Task
    cell_hash: str
    run_dir: str
    manifest_path: str
    store: str
    feature_id: str
    classes: tuple[str, ...]
    config: ExperimentConfig
    #: the resolved torch device (never ``auto``)
    device: str = "cpu"
    #: audio files left out because they could not be decoded (``skip_errors``)
    skipped_files: int = 0


@dataclass
class CellOutcome:
    """What became of one cell: ``status`` ``ok`` (with its target ``ua``) or ``failed``
    (with a one-line ``error``), after ``seconds``."""

    key: CellKey
    status: str
    seconds: float
    ua: float | None = None
    error: str | None = None


#: Per-process cache: the manifest and the features of every row, loaded once per worker.
_CACHE: dict[tuple[str, ...], Any] = {}


def _cached_manifest(path: str) -> pd.DataFrame:
    key = ("manifest", path)
    if key not in _CACHE:
        from emobridge.corpora.manifest import read_manifest

        _CACHE[key] = read_manifest(path).reset_index(drop=True)
    return _CACHE[key]


def _cached_features(job: CellJob, manifest: pd.DataFrame) -> list[np.ndarray]:
    key = ("features", job.store, job.feature_id, job.manifest_path)
    if key not in _CACHE:
        from emobridge.features.store import FeatureStore

        _CACHE[key] = FeatureStore(job.store).load(manifest, job.feature_id)
    return _CACHE[key]


def cell_rows(manifest: pd.DataFrame, task: Task, protocol: ProtocolConfig, key: CellKey,
              fold: int | None = None):
    """The rows of one cell (:func:`emobridge.protocols.assemble_cell`) -> ``CellRows``;
    ``fold``: the target fold (``protocol.target_folds``)."""
    from emobridge.protocols import assemble_cell

    column = manifest[protocol.domain].astype(str)
    source = manifest[column.isin(task.sources)]
    target = manifest[column == task.target]
    if source.empty or target.empty:
        side = "source" if source.empty else "target"
        raise ConfigError(f"task {task.name}: no {side} utterances")
    return assemble_cell(
        source, target, k=key.k, validation=protocol.validation,
        seed=protocol.split_seed if protocol.split_seed is not None else key.seed,
        target_ratios=protocol.target_split.as_tuple(),
        source_ratios=protocol.source_split.as_tuple(), stratify_by=protocol.stratify_by,
        target_fold=None if fold is None else (fold, int(protocol.target_folds)))


def _build_cell_method(job: CellJob):
    """The cell's method, seeded with the cell's seed, on the run's device."""
    from emobridge.methods import build_method
    from emobridge.methods.base import available_methods
    from emobridge.runtime import seed_everything

    method_cfg = job.config.method(job.key.method)
    params = dict(method_cfg.params)
    names = available_methods()[method_cfg.method].param_names()
    for name, value in (("seed", job.key.seed), ("device", job.device)):
        if name in names:
            params[name] = value
    seed_everything(job.key.seed)
    return build_method(method_cfg.method, **params)


def _subsample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(frame) <= n:
        return frame
    rng = np.random.default_rng(seed)
    return frame.iloc[np.sort(rng.choice(len(frame), n, replace=False))]


def _embedding_step(job: CellJob, method: Any, rows: Any, to_data: Callable
                    ) -> tuple[dict[str, float] | None, str | None]:
    """Embed test utterances of both languages (the semi-supervised paper's Fig. 6): the
    target test speakers plus source test speakers, else source validation or training
    ones. Returns ``(silhouettes, error)``; a failure is reported, not fatal."""
    from emobridge.metrics import silhouette_by_label

    cfg, key, split = job.config, job.key, rows.split
    source_rows = next(f for f in (split.source_test, split.source_validation,
                                    split.source_train) if not f.empty)
    half = cfg.report.max_points // 2
    source_rows = _subsample(source_rows, min(half, cfg.protocol.max_source_points), key.seed)
    target_rows = _subsample(split.target_test, cfg.report.max_points - len(source_rows),
                             key.seed)
    both = pd.concat([target_rows, source_rows])
    try:
        emb = np.asarray(method.embed(to_data(both)), dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(both):
            raise EmobridgeError(f"embed() returned shape {emb.shape} for {len(both)} rows")
        emotions = both["emotion"].astype(str).to_numpy()
        languages = both["language"].astype(str).to_numpy()
        n_target = len(target_rows)
        silhouette = {
            "emotion": silhouette_by_label(emb, emotions),
            "language": silhouette_by_label(emb, languages),
            "emotion_target": silhouette_by_label(emb[:n_target], emotions[:n_target]),
        }
        write_embedding(cell_folder(job.run_dir, key), emb, emotions, languages,
                        ["target"] * n_target + ["source"] * len(source_rows))
        return silhouette, None
    except Exception as exc:  # reported in metrics.json and the report, not fatal
        return None, f"{type(exc).__name__}: {exc}"


@dataclass
class _CellFit:
    """A cell's fitted method and scores; with target folds, the last fold's method, rows,
    history and source scores (the source split does not depend on the fold), and the
    target test pieces and scores pooled over folds."""

    rows: Any
    data: Any
    method: Any
    result: dict[str, Any]
    fit_s: float
    folds: list[dict[str, Any]] | None = None


def _fit_cell(job: CellJob, manifest: pd.DataFrame, feats: list[np.ndarray]) -> _CellFit:
    """Fit and score the cell once, or once per target fold (``protocol.target_folds``)
    with the test predictions of every fold pooled: each target utterance tested once."""
    from emobridge.methods import EmotionData
    from emobridge.methods.runner import cell_data, fit_and_evaluate
    from emobridge.metrics import evaluate

    cfg, key = job.config, job.key
    n_folds = cfg.protocol.target_folds
    fits: list[_CellFit] = []
    for fold in [None] if n_folds is None else range(n_folds):
        rows = cell_rows(manifest, job.task, cfg.protocol, key, fold)
        data = cell_data(rows, lambda frame: [feats[i] for i in frame.index], job.classes)
        method = _build_cell_method(job)
        t_fit = time.perf_counter()
        result = fit_and_evaluate(method, data, cfg.report.bootstrap, seed=key.seed)
        fits.append(_CellFit(rows, data, method, result, time.perf_counter() - t_fit))
    if n_folds is None:
        return fits[0]
    last = fits[-1]
    test = EmotionData.concat([f.data.test for f in fits])
    proba = np.concatenate([f.result["test_proba"] for f in fits])
    present = set(test.labels.tolist())
    result = {**last.result, "test_proba": proba, "test": evaluate(
        test.labels, proba, job.classes, ci=cfg.report.bootstrap > 0,
        n_resamples=max(cfg.report.bootstrap, 1), seed=key.seed),
        "missing_classes": [c for i, c in enumerate(job.classes) if i not in present]}
    folds = [{"fold": i, "ua": f.result["test"]["ua"], "wa": f.result["test"]["wa"],
              "n": len(f.data.test), "fit_s": f.fit_s, "best_epoch": f.result["best_epoch"]}
             for i, f in enumerate(fits)]
    data = dataclasses.replace(last.data, test=test)
    return _CellFit(last.rows, data, last.method, result, sum(f.fit_s for f in fits), folds)


def _run_cell(job: CellJob) -> dict[str, Any]:
    from emobridge.methods import EmotionData

    cfg, key = job.config, job.key
    t_start = time.perf_counter()
    manifest = _cached_manifest(job.manifest_path)
    feats = _cached_features(job, manifest)
    fit = _fit_cell(job, manifest, feats)
    data, result, method, rows = fit.data, fit.result, fit.method, fit.rows
    predictions: dict[str, Any] = {"target": {
        "y_true": data.test.labels, "y_pred": result["test_proba"].argmax(axis=1),
        "ids": data.test.ids.tolist()}}
    if data.source_test is not None:
        predictions["source"] = {"y_true": data.source_test.labels,
                                 "y_pred": result["source_pred"]}
    if cfg.save_models:
        _save_cell_model(job, method, data, result)
    silhouette, embedding_error = _embedding_step(
        job, method, rows, lambda f: EmotionData.from_manifest(
            f, [feats[i] for i in f.index], job.classes))
    return {
        "cell": {**key.as_dict(), "sources": list(job.task.sources),
                 "target_domain": job.task.target,
                 "method_class": cfg.method(key.method).method},
        "cell_hash": job.cell_hash, "classes": list(job.classes),
        "feature_id": job.feature_id, "method_params": method.get_params(),
        "target": result["test"], "source": result["source"],
        "missing_classes": result["missing_classes"],
        "silhouette": silhouette, "embedding_error": embedding_error,
        "history": result["history"], "fit_report": result["fit_report"],
        "sizes": _sizes(rows), "predictions": predictions,
        "device": job.device, "skipped_files": job.skipped_files,
        **({} if fit.folds is None else {"folds": fit.folds}),
        "timing": {"fit_s": fit.fit_s, "total_s": time.perf_counter() - t_start},
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _save_cell_model(job: CellJob, method: Any, data: Any, result: dict[str, Any]) -> None:
    """``save_models: true``: the cell's method as a bundle in ``cells/<cell>/model``."""
    from emobridge.features import FeatureStore
    from emobridge.inference.bundle import save_bundle, training_summary

    spec = FeatureStore(job.store).spec(job.feature_id)
    training = training_summary(data.source, target=data.target_unlabelled,
                                metrics={"target_test": _headline(result["test"])})
    training["cell"] = job.key.as_dict()
    save_bundle(method, cell_folder(job.run_dir, job.key) / "model",
                extractor={"name": spec["name"], "params": spec.get("params", {})},
                training=training, label_set=str(job.config.taxonomy.label_set))


def _headline(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: scores[k] for k in ("ua", "wa", "macro_f1", "n") if k in scores}


def _sizes(rows: Any) -> dict[str, Any]:
    """Per-piece sizes as recorded in metrics.json (labelled / unlabelled / validation as
    utterance counts)."""
    sizes = rows.sizes()
    return {**{k: v for k, v in sizes.items() if k in rows.split.partitions()},
            "target_labelled": sizes["target_labelled"]["utterances"],
            "target_unlabelled": sizes["target_unlabelled"]["utterances"],
            "validation": sizes["validation"]["utterances"]}


def execute_cell(job: CellJob) -> CellOutcome:
    """Run one cell and record its outcome on disk; never raises for a cell's own error."""
    start = time.perf_counter()
    directory = cell_folder(job.run_dir, job.key)
    try:
        payload = _run_cell(job)
        write_cell_metrics(directory, payload)
        return CellOutcome(job.key, "ok", time.perf_counter() - start,
                           ua=float(payload["target"]["ua"]))
    except Exception as exc:
        write_cell_error(directory, job.key, job.cell_hash, exc, traceback.format_exc())
        return CellOutcome(job.key, "failed", time.perf_counter() - start,
                           error=f"{type(exc).__name__}: {exc}")



@contextlib.contextmanager
def preloaded_manifest(manifest_path: str, manifest: pd.DataFrame) -> Iterator[None]:
    """Within the block, cells run in this process take ``manifest`` (already in memory) as
    the one at ``manifest_path``; the block's end empties this process's cell cache."""
    _CACHE[("manifest", manifest_path)] = manifest
    try:
        yield
    finally:
        _CACHE.clear()


def log_outcome(logger: Log, outcome: CellOutcome, done: int, total: int) -> None:
    """Log one finished cell as ``[done/total] id: UA ...`` or ``... FAILED error``."""
    if outcome.status == "ok":
        logger(f"[{done}/{total}] {outcome.key.id}: UA {outcome.ua * 100:.1f}% "
               f"({outcome.seconds:.1f} s)")
    else:
        logger(f"[{done}/{total}] {outcome.key.id}: FAILED {outcome.error} "
               f"({outcome.seconds:.1f} s)")


def fail_fast_error(outcome: CellOutcome, run_dir: str) -> ExperimentError:
    """The error that stops a ``fail_fast`` run at the failed cell ``outcome``."""
    d = Path(run_dir) / "cells" / outcome.key.id
    return ExperimentError(f"cell {outcome.key.id} failed: {outcome.error} "
                           f"(traceback: {d / 'traceback.txt'})")
