"""The grid runner: every (task, feature, method, few-shot k, seed) cell of a config.

:func:`run_experiment` loads the corpora into one manifest, applies the label set, extracts
every feature once (in this process, into the feature store), then runs the cells, one at a
time or in ``jobs`` worker processes, and finally writes the tables, figures and the HTML
report (see :mod:`emobridge.experiments.results` for the folder layout).

Per cell: the source and target domains are split by speaker (``protocol.source_split`` /
``target_split``, checked for shared speakers), ``k`` labelled target utterances are drawn
from the target training speakers (the rest of them is the unlabelled pool), the method is
built with the cell's seed and the run's device, fitted, and evaluated on the target test
speakers (and on the source test speakers when there are any). The cell's ``metrics.json``
is written atomically; a cell that raises is recorded (``error.json`` + ``traceback.txt``)
and the others go on unless ``fail_fast``.

Resumption: a cell whose ``metrics.json`` is valid and carries the hash of the cell's
current settings is skipped, so rerunning an interrupted (or extended) config only computes
what is missing; changing a method's parameters re-runs that method's cells.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emobridge import __version__
from emobridge.errors import ConfigError, CorpusError, EmobridgeError
from emobridge.experiments.config import (
    ExperimentConfig,
    FeatureSpec,
    MethodConfig,
    ProtocolConfig,
    task_name,
)
from emobridge.experiments.results import (
    CellKey,
    Task,
    aggregate,
    cell_dir,
    cells_frame,
    collect,
    read_cell_metrics,
    write_cell_error,
    write_cell_metrics,
    write_embedding,
    write_tables,
)
from emobridge.fileio import atomic_path, write_json_atomic, write_text_atomic

try:  # advisory lock on the run folder (POSIX)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

Log = Callable[[str], None]


class ExperimentError(EmobridgeError):
    """A run could not complete: a cell failed under ``fail_fast``, or cells failed."""


# ---------------------------------------------------------------------- corpora


def _corpus_manifest(cfg: ExperimentConfig, index: int, log: Log) -> tuple[pd.DataFrame,
                                                                            pd.DataFrame]:
    """Manifest of one configured corpus (ids and speakers namespaced by the corpus id)
    and its scan problems."""
    from emobridge.corpora.base import get_reader
    from emobridge.corpora.manifest import read_manifest
    from emobridge.synthetic import load_or_generate

    c = cfg.corpora[index]
    problems = pd.DataFrame(columns=["corpus", "path", "reason"])
    where = f"corpora.{index} ({c.id})"
    if c.reader == "synthetic":
        opts = c.synthetic_options
        existed = (Path(c.path) / "synthetic.json").exists()
        t0 = time.perf_counter()
        manifest = load_or_generate(c.path, corpus=c.id, **opts.model_dump())
        if not existed:
            log(f"{c.id}: generated a synthetic corpus of {len(manifest)} utterances in "
                f"{c.path} ({time.perf_counter() - t0:.1f} s)")
    elif c.reader == "manifest":
        manifest = read_manifest(c.path)
    else:
        try:
            reader = get_reader(c.reader)(c.path, **c.options)
        except TypeError as exc:
            raise ConfigError(f"{where}: reader {c.reader!r}: {exc}") from None
        result = reader.scan(strict=c.strict)
        manifest = result.manifest
        if result.problems:
            problems = pd.DataFrame([{"corpus": c.id, "path": p.path, "reason": p.reason}
                                     for p in result.problems])
            log(f"{c.id}: {len(result.problems)} unusable files skipped (listed in "
                "scan_problems.csv)")
    if manifest.empty:
        raise CorpusError(f"{where}: no usable utterances under {c.path}")
    manifest = manifest.copy()
    original = manifest["corpus"].astype(str)
    manifest["speaker"] = [
        f"{c.id}:{spk[len(corp) + 1:] if spk.startswith(corp + ':') else spk}"
        for spk, corp in zip(manifest["speaker"].astype(str), original, strict=True)
    ]
    manifest["corpus"] = c.id
    if c.language:
        manifest["language"] = c.language
    return manifest, problems


def load_corpora(cfg: ExperimentConfig, log: Log = print) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                   str]:
    """All corpora in one manifest mapped to the label set.

    Returns ``(manifest, scan problems, label-set summary)``; the manifest has a fresh
    ``RangeIndex`` (features are aligned with it) and a ``label_index`` column.
    """
    from emobridge.corpora.manifest import validate_manifest

    frames, problems = [], []
    for i in range(len(cfg.corpora)):
        m, p = _corpus_manifest(cfg, i, log)
        frames.append(m)
        problems.append(p)
    combined = pd.concat(frames, ignore_index=True)
    dup = combined["path"].duplicated()
    if dup.any():
        path = combined.loc[dup, "path"].iloc[0]
        owners = sorted(set(combined.loc[combined["path"] == path, "corpus"]))
        raise ConfigError(f"corpora {owners} both contain {path}: list each corpus once")
    combined = validate_manifest(combined, "combined manifest")
    label_set = cfg.taxonomy.build()
    kept, report = label_set.apply(combined)
    if kept.empty:
        raise CorpusError(f"no utterance is inside the label set {list(label_set.classes)} "
                          f"({report.summary()})")
    problems_frame = pd.concat([p for p in problems if not p.empty] or [problems[0]],
                               ignore_index=True)
    return kept.reset_index(drop=True), problems_frame, report.summary()


def expand_tasks(cfg: ExperimentConfig, manifest: pd.DataFrame) -> list[Task]:
    """The source -> target tasks of the protocol over the domains present in ``manifest``."""
    p = cfg.protocol
    column = p.domain
    present = list(dict.fromkeys(manifest[column].astype(str)))
    if column == "corpus":
        values = [c.id for c in cfg.corpora if c.id in present]
    else:
        values = sorted(present)
    if isinstance(p.pairs, list):
        tasks = []
        for i, pair in enumerate(p.pairs):
            for key, names in (("source", pair.sources), ("target", (pair.target,))):
                missing = [n for n in names if n not in values]
                if missing:
                    raise ConfigError(
                        f"protocol.pairs.{i}.{key}: no utterances with {column} "
                        f"{', '.join(map(repr, missing))} (present: {', '.join(values)})")
            tasks.append(Task(pair.name or task_name(pair.sources, pair.target),
                              pair.sources, pair.target))
        return tasks
    if len(values) < 2:
        raise ConfigError(f"protocol.pairs: {p.pairs} needs at least two values of {column}, "
                          f"the corpora have {values}")
    if p.pairs == "all_pairs":
        return [Task(task_name((s,), t), (s,), t) for s in values for t in values if s != t]
    # leave_one_out
    out = []
    for t in values:
        sources = tuple(v for v in values if v != t)
        out.append(Task(task_name(sources, t), sources, t))
    return out


def method_ks(method: MethodConfig, protocol: ProtocolConfig) -> list[int | str]:
    """The few-shot sizes a method runs at."""
    if method.target_labels == "few_shot":
        return list(method.few_shot if method.few_shot is not None else protocol.few_shot)
    return [0] if method.target_labels == "none" else ["all"]


def expand_cells(cfg: ExperimentConfig, tasks: list[Task]) -> list[CellKey]:
    """Every cell, in the order task, feature, method, k, seed."""
    return [CellKey(task.name, feature.label, method.label, k, seed)
            for task in tasks for feature in cfg.feature_specs for method in cfg.methods
            for k in method_ks(method, cfg.protocol) for seed in cfg.seeds]


def cell_hash(cfg: ExperimentConfig, key: CellKey, task: Task, classes: tuple[str, ...]) -> str:
    """Hash of everything a cell's result depends on (so a changed setting re-runs it)."""
    p = cfg.protocol
    method = cfg.method(key.method)
    return cfg.digest({
        "key": key.as_dict(), "sources": task.sources, "target": task.target,
        "domain": p.domain, "classes": classes,
        "feature": cfg.feature(key.feature).as_spec(),
        "method": {"method": method.method, "params": method.params,
                   "target_labels": method.target_labels},  # not few_shot: k is in the key
        "protocol": p.model_dump(mode="json", exclude={"pairs", "few_shot"}),
        "taxonomy": cfg.taxonomy.model_dump(mode="json"),
        "corpora": [c.model_dump(mode="json") for c in cfg.corpora],
        "bootstrap": cfg.report.bootstrap, "max_points": cfg.report.max_points,
    })


# ---------------------------------------------------------------------- one cell


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


@dataclass
class CellOutcome:
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


@dataclass
class Partitions:
    """The speaker-disjoint pieces of one cell."""

    source_train: pd.DataFrame
    source_validation: pd.DataFrame
    source_test: pd.DataFrame
    target_train: pd.DataFrame
    target_validation: pd.DataFrame
    target_test: pd.DataFrame

    def sizes(self) -> dict[str, dict[str, int]]:
        return {name: {"utterances": len(f), "speakers": int(f["speaker"].nunique())}
                for name, f in vars(self).items()}


def make_partitions(manifest: pd.DataFrame, task: Task, protocol: ProtocolConfig,
                    seed: int) -> Partitions:
    """Split source and target domains by speaker (seeded) and check independence."""
    from emobridge.protocols import check_speaker_independence, speaker_split

    column = manifest[protocol.domain].astype(str)
    source = manifest[column.isin(task.sources)]
    target = manifest[column == task.target]
    if source.empty or target.empty:
        side = "source" if source.empty else "target"
        raise ConfigError(f"task {task.name}: no {side} utterances")
    split_seed = protocol.split_seed if protocol.split_seed is not None else seed
    s = speaker_split(source, protocol.source_split.as_tuple(), split_seed, protocol.stratify_by)
    t = speaker_split(target, protocol.target_split.as_tuple(), split_seed, protocol.stratify_by)
    parts = Partitions(s.train, s.validation, s.test, t.train, t.validation, t.test)
    check_speaker_independence(vars(parts))
    return parts


def _seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _subsample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(frame) <= n:
        return frame
    rng = np.random.default_rng(seed)
    return frame.iloc[np.sort(rng.choice(len(frame), n, replace=False))]


def _run_cell(job: CellJob) -> dict[str, Any]:
    from emobridge.methods import EmotionData, build_method
    from emobridge.metrics import evaluate, silhouette_by_label
    from emobridge.protocols import few_shot_subset

    cfg, key = job.config, job.key
    t_start = time.perf_counter()
    manifest = _cached_manifest(job.manifest_path)
    feats = _cached_features(job, manifest)
    parts = make_partitions(manifest, job.task, cfg.protocol, key.seed)
    classes = job.classes

    def data(rows: pd.DataFrame, labelled: bool = True) -> EmotionData | None:
        if rows is None or rows.empty:
            return None
        return EmotionData.from_manifest(rows, [feats[i] for i in rows.index], classes,
                                         labelled=labelled)

    pool = parts.target_train
    if key.k == "all":
        labelled_rows, unlabelled_rows = pool, pool.iloc[0:0]
    elif int(key.k) > 0:
        labelled_rows = few_shot_subset(pool, int(key.k), key.seed)
        unlabelled_rows = pool.drop(index=labelled_rows.index)
    else:
        labelled_rows, unlabelled_rows = pool.iloc[0:0], pool
    validation_rows = {
        "source": [parts.source_validation], "target": [parts.target_validation],
        "both": [parts.source_validation, parts.target_validation], "none": [],
    }[cfg.protocol.validation]
    validation_frame = (pd.concat(validation_rows) if validation_rows
                        else manifest.iloc[0:0])

    method_cfg = cfg.method(key.method)
    params = dict(method_cfg.params)
    from emobridge.methods.base import available_methods

    names = available_methods()[method_cfg.method].param_names()
    if "seed" in names:
        params["seed"] = key.seed
    if "random_state" in names:
        params["random_state"] = key.seed
    if "device" in names:
        params["device"] = cfg.device
    _seed_all(key.seed)
    method = build_method(method_cfg.method, **params)
    source_data = data(parts.source_train)
    if source_data is None:
        raise ConfigError(f"task {job.task.name}: the source split left no training speakers")
    t_fit = time.perf_counter()
    method.fit(source_data, data(unlabelled_rows, labelled=False), data(labelled_rows),
               data(validation_frame))
    fit_s = time.perf_counter() - t_fit

    n_boot = cfg.report.bootstrap
    test = data(parts.target_test)
    y_pred = np.asarray(method.predict(test))
    target_metrics = evaluate(test.labels, y_pred, classes, ci=n_boot > 0,
                              n_resamples=max(1, n_boot), seed=key.seed)
    predictions = {"target": {"y_true": test.labels, "y_pred": y_pred,
                              "ids": test.ids.tolist()}}
    source_metrics = None
    source_test = data(parts.source_test)
    if source_test is not None:
        s_pred = np.asarray(method.predict(source_test))
        source_metrics = evaluate(source_test.labels, s_pred, classes, ci=n_boot > 0,
                                  n_resamples=max(1, n_boot), seed=key.seed)
        predictions["source"] = {"y_true": source_test.labels, "y_pred": s_pred}

    # Embeddings of test utterances of both languages (the semi-supervised paper's Fig. 6):
    # target test plus the source test speakers, else source validation or training ones.
    silhouette, embedding_error = None, None
    source_rows = next(f for f in (parts.source_test, parts.source_validation,
                                    parts.source_train) if not f.empty)
    half = cfg.report.max_points // 2
    source_rows = _subsample(source_rows, min(half, cfg.protocol.max_source_points), key.seed)
    target_rows = _subsample(parts.target_test, cfg.report.max_points - len(source_rows),
                             key.seed)
    rows = pd.concat([target_rows, source_rows])
    try:
        emb = np.asarray(method.embed(data(rows)), dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(rows):
            raise EmobridgeError(f"embed() returned shape {emb.shape} for {len(rows)} rows")
        emotions = rows["emotion"].astype(str).to_numpy()
        languages = rows["language"].astype(str).to_numpy()
        silhouette = {
            "emotion": silhouette_by_label(emb, emotions),
            "language": silhouette_by_label(emb, languages),
            "emotion_target": silhouette_by_label(emb[: len(target_rows)],
                                                  emotions[: len(target_rows)]),
        }
        write_embedding(cell_dir(job.run_dir, key), emb, emotions, languages,
                        ["target"] * len(target_rows) + ["source"] * len(source_rows))
    except Exception as exc:  # reported in metrics.json and the report, not fatal
        embedding_error = f"{type(exc).__name__}: {exc}"

    history = list(getattr(method, "history_", None) or [])
    return {
        "cell": {**key.as_dict(), "sources": list(job.task.sources),
                 "target_domain": job.task.target, "method_class": method_cfg.method},
        "cell_hash": job.cell_hash,
        "classes": list(classes),
        "feature_id": job.feature_id,
        "method_params": method.get_params(),
        "target": target_metrics,
        "source": source_metrics,
        "silhouette": silhouette,
        "embedding_error": embedding_error,
        "history": history,
        "sizes": {**parts.sizes(), "target_labelled": len(labelled_rows),
                  "target_unlabelled": len(unlabelled_rows),
                  "validation": len(validation_frame)},
        "predictions": predictions,
        "timing": {"fit_s": fit_s, "total_s": time.perf_counter() - t_start},
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def execute_cell(job: CellJob) -> CellOutcome:
    """Run one cell and record its outcome on disk; never raises for a cell's own error."""
    start = time.perf_counter()
    directory = cell_dir(job.run_dir, job.key)
    try:
        payload = _run_cell(job)
        write_cell_metrics(directory, payload)
        return CellOutcome(job.key, "ok", time.perf_counter() - start,
                           ua=float(payload["target"]["ua"]))
    except Exception as exc:
        write_cell_error(directory, job.key, job.cell_hash, exc, traceback.format_exc())
        return CellOutcome(job.key, "failed", time.perf_counter() - start,
                           error=f"{type(exc).__name__}: {exc}")


def _init_worker(threads: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- the run


@dataclass
class RunSummary:
    """What :func:`run_experiment` did."""

    run_dir: Path
    n_cells: int
    n_skipped: int
    n_run: int
    n_failed: int
    seconds: float
    report: Path | None
    table: pd.DataFrame
    failures: list[CellOutcome] = field(default_factory=list)


def git_commit(path: Path) -> str | None:
    """The git commit of the source tree holding ``path`` (``+dirty`` when modified)."""
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head or None


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(run_dir / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExperimentError(f"{run_dir} is in use by another `emobridge run`") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _build_extractor(spec: FeatureSpec, device: str):
    import inspect

    from emobridge.features.registry import available_extractors, build_extractor

    params = dict(spec.params)
    cls = available_extractors().get(spec.name)
    if cls is not None and "device" in inspect.signature(cls.__init__).parameters \
            and "device" not in params:
        params["device"] = _resolve_device(device)
    return build_extractor({"name": spec.name, "params": params})


class _Logger:
    """Prints and appends to ``run.log`` with a timestamp."""

    def __init__(self, path: Path, echo: Log | None) -> None:
        self.path = path
        self.echo = echo

    def __call__(self, message: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {message}\n")
        if self.echo is not None:
            self.echo(message)


def run_experiment(
    cfg: ExperimentConfig,
    jobs: int = 1,
    fail_fast: bool = False,
    log: Log | None = print,
    progress: bool = False,
) -> RunSummary:
    """Run every cell of ``cfg`` not finished yet, then write tables, figures and the report.

    Parameters
    ----------
    cfg:
        A validated config (:func:`~emobridge.experiments.config.load_config`); results go
        to ``cfg.output_dir``.
    jobs:
        Worker processes for the cells (1: in this process). Feature extraction always runs
        here, before the cells.
    fail_fast:
        Stop at the first failed cell (raises :class:`ExperimentError`); otherwise failed
        cells are recorded and the rest runs.
    log:
        Called with each progress line (``None``: silent); lines also go to ``run.log``.
    progress:
        Show progress bars during feature extraction.

    Cells that failed are listed in :attr:`RunSummary.failures`; the caller decides whether
    that is an error (the CLI exits with status 1).
    """
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    run_dir = Path(cfg.output_dir)
    started = time.perf_counter()
    with _run_lock(run_dir):
        logger = _Logger(run_dir / "run.log", log)
        logger(f"run {cfg.name} -> {run_dir}")
        write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
        info: dict[str, Any] = {
            "name": cfg.name, "emobridge_version": __version__,
            "git_commit": git_commit(Path(__file__).resolve().parent),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "host": platform.node(), "device": cfg.device, "jobs": jobs,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(run_dir / "run.json", info)

        t0 = time.perf_counter()
        manifest, problems, label_summary = load_corpora(cfg, logger)
        classes = tuple(cfg.taxonomy.build().classes)
        from emobridge.corpora.manifest import write_manifest

        manifest_path = run_dir / "manifest.csv"
        write_manifest(manifest, manifest_path)
        if not problems.empty:
            with atomic_path(run_dir / "scan_problems.csv") as tmp:
                problems.to_csv(tmp, index=False)
        logger(f"{len(manifest)} utterances, {manifest['speaker'].nunique()} speakers, "
               f"classes {list(classes)}; {label_summary}")
        tasks = expand_tasks(cfg, manifest)
        task_by_name = {t.name: t for t in tasks}
        keys = expand_cells(cfg, tasks)
        hashes = {k: cell_hash(cfg, k, task_by_name[k.task], classes) for k in keys}
        pending = [k for k in keys if read_cell_metrics(cell_dir(run_dir, k), hashes[k]) is None]
        n_skipped = len(keys) - len(pending)
        logger(f"{len(tasks)} task(s), {len(keys)} cell(s): {n_skipped} already finished "
               f"(skipped), {len(pending)} to run")
        info["corpora_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        from emobridge.features.store import FeatureStore

        store = FeatureStore(cfg.features.store)
        feature_ids: dict[str, str] = {}
        needed = {k.feature for k in pending}
        for spec in cfg.feature_specs:
            extractor = _build_extractor(spec, cfg.device)
            feature_ids[spec.label] = extractor.id
            if spec.label in needed:
                report = store.extract(manifest, extractor, progress=progress)
                logger(f"features {spec.label}: {report.summary()}")
        info["features_s"] = time.perf_counter() - t0

        jobs_list = [CellJob(k, task_by_name[k.task], hashes[k], str(run_dir),
                             str(manifest_path), str(cfg.features.store), feature_ids[k.feature],
                             classes, cfg) for k in pending]
        t0 = time.perf_counter()
        threads = cfg.threads or max(1, (os.cpu_count() or 1) // jobs)
        outcomes = _execute(jobs_list, jobs, threads, fail_fast, logger, manifest)
        info["cells_s"] = time.perf_counter() - t0
        failures = [o for o in outcomes if o.status != "ok"]

        t0 = time.perf_counter()
        records = collect(run_dir, [(k, task_by_name[k.task], hashes[k]) for k in keys])
        table = aggregate(records, cfg.report.bootstrap)
        cells = cells_frame(records)
        write_tables(run_dir, table, cells)
        info.update({
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "n_cells": len(keys), "n_skipped": n_skipped, "n_run": len(outcomes) - len(failures),
            "n_failed": len(failures), "seconds": time.perf_counter() - started,
            "n_utterances": len(manifest), "classes": list(classes),
            "tasks": [{"name": t.name, "sources": list(t.sources), "target": t.target}
                      for t in tasks],
        })
        from emobridge.experiments.report import write_report

        report_path = write_report(run_dir, cfg, records, table, info, logger)
        info["report_s"] = time.perf_counter() - t0
        info["seconds"] = time.perf_counter() - started
        write_json_atomic(run_dir / "run.json", info)
        logger(f"done in {info['seconds']:.1f} s: {info['n_run']} run, {n_skipped} skipped, "
               f"{len(failures)} failed; report: {report_path}")
    return RunSummary(run_dir, len(keys), n_skipped, len(outcomes) - len(failures),
                      len(failures), info["seconds"], report_path, table, failures)


def _log_outcome(logger: Log, outcome: CellOutcome, done: int, total: int) -> None:
    if outcome.status == "ok":
        logger(f"[{done}/{total}] {outcome.key.id}: UA {outcome.ua * 100:.1f}% "
               f"({outcome.seconds:.1f} s)")
    else:
        logger(f"[{done}/{total}] {outcome.key.id}: FAILED {outcome.error} "
               f"({outcome.seconds:.1f} s)")


def _fail_fast_error(outcome: CellOutcome, run_dir: str) -> ExperimentError:
    d = Path(run_dir) / "cells" / outcome.key.id
    return ExperimentError(f"cell {outcome.key.id} failed: {outcome.error} "
                           f"(traceback: {d / 'traceback.txt'})")


def _execute(jobs_list: list[CellJob], jobs: int, threads: int, fail_fast: bool, logger: Log,
             manifest: pd.DataFrame) -> list[CellOutcome]:
    """Run the cells in this process (``jobs == 1``) or in ``jobs`` spawned workers, each
    with ``threads`` torch threads."""
    total = len(jobs_list)
    outcomes: list[CellOutcome] = []
    if not jobs_list:
        return outcomes
    if jobs == 1 or total == 1:
        import torch

        # In-process: seed the cache with the manifest already in memory.
        _CACHE[("manifest", jobs_list[0].manifest_path)] = manifest
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for job in jobs_list:
                outcome = execute_cell(job)
                outcomes.append(outcome)
                _log_outcome(logger, outcome, len(outcomes), total)
                if fail_fast and outcome.status != "ok":
                    raise _fail_fast_error(outcome, job.run_dir)
        finally:
            _CACHE.clear()
            torch.set_num_threads(previous_threads)
        return outcomes
    executor = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads,))
    futures: dict[Future, CellJob] = {executor.submit(execute_cell, j): j for j in jobs_list}
    try:
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for fut in done:
                job = futures[fut]
                try:
                    outcome = fut.result()
                except BrokenProcessPool as exc:
                    # The worker died (killed, out of memory): record it like a cell error.
                    outcome = CellOutcome(job.key, "failed", 0.0,
                                          error=f"worker process died: {exc}")
                    write_cell_error(cell_dir(job.run_dir, job.key), job.key, job.cell_hash,
                                     exc, traceback.format_exc())
                outcomes.append(outcome)
                _log_outcome(logger, outcome, len(outcomes), total)
                if fail_fast and outcome.status != "ok":
                    for other in remaining:
                        other.cancel()
                    raise _fail_fast_error(outcome, job.run_dir)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return outcomes
