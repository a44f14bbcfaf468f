"""The grid runner: every (task, feature, method, few-shot k, seed) cell of a config.

:func:`run_experiment` loads the corpora into one manifest, applies each corpus's own
mapping and then the label set, extracts every feature once (in this process, into the
feature store), then runs the cells, one at a time or in ``jobs`` worker processes, and
finally writes the tables, figures and the HTML report (see
:mod:`emobridge.experiments.results` for the folder layout).

Per cell (:mod:`emobridge.experiments.cells`, run by the executors of
:mod:`emobridge.experiments.executors`), :func:`emobridge.protocols.assemble_cell` (the
same function ``emobridge train`` uses) splits source and target by speaker
(``protocol.source_split`` / ``target_split``, checked for shared speakers and shared
audio), draws ``k`` labelled target utterances from the target training speakers (all of
them stay in the unlabelled pool) and picks the validation rows;
:func:`emobridge.methods.runner.fit_and_evaluate` fits the method (built with the cell's
seed and the run's device) and scores it on the target test speakers (and the source test
speakers when there are any). The cell's ``metrics.json`` is written atomically; a cell
that raises is recorded (``error.json`` + ``traceback.txt``) and the others go on unless
``fail_fast``.

Resumption: a cell whose ``metrics.json`` is valid and carries the hash of the cell's
current settings is skipped, so rerunning an interrupted (or extended) config only computes
what is missing; changing a method's parameters re-runs that method's cells.

Interruption: SIGINT / SIGTERM stop the workers and raise :class:`KeyboardInterrupt`
(finished cells are kept); workers exit on their own when the parent process dies.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from emobridge import __version__
from emobridge.errors import ConfigError, CorpusError
from emobridge.experiments.cells import (
    CellJob,
    CellOutcome,
    ExperimentError,
    Log,
    cell_folder,
    cell_rows,
    execute_cell,
)
from emobridge.experiments.config import (
    ExperimentConfig,
    MethodConfig,
    ProtocolConfig,
    check_name,
    task_name,
)
from emobridge.experiments.executors import make_executor
from emobridge.experiments.results import (
    CellKey,
    Task,
    aggregate,
    cells_frame,
    collect,
    read_cell_metrics,
    write_tables,
)
from emobridge.fileio import atomic_path, write_json_atomic, write_text_atomic

#: Names importable from here; ``CellJob``, ``CellOutcome``, ``ExperimentError``,
#: ``cell_folder``, ``cell_rows`` and ``execute_cell`` live in
#: :mod:`emobridge.experiments.cells`.
__all__ = ["CELL_VERSION", "CellJob", "CellOutcome", "ExperimentError", "RunSummary",
           "cell_folder", "cell_hash", "cell_rows", "execute_cell", "expand_cells",
           "expand_tasks", "git_commit", "load_corpora", "method_ks", "run_experiment"]

#: Bumped when what a cell computes from the same settings changes (so old results re-run).
CELL_VERSION = 2


# ---------------------------------------------------------------------- corpora


def _read_corpus(cfg: ExperimentConfig, index: int, log: Log) -> tuple[pd.DataFrame,
                                                                        pd.DataFrame]:
    """The reader's manifest of one configured corpus and its scan problems."""
    from emobridge.corpora.base import get_reader
    from emobridge.corpora.manifest import read_manifest
    from emobridge.synthetic import load_or_generate

    c = cfg.corpora[index]
    problems = pd.DataFrame(columns=["corpus", "path", "reason"])
    if c.reader == "synthetic":
        existed = (Path(c.path) / "synthetic.json").exists()
        t0 = time.perf_counter()
        manifest = load_or_generate(c.path, corpus=c.id, **c.synthetic_options.model_dump())
        if not existed:
            log(f"{c.id}: generated a synthetic corpus of {len(manifest)} utterances in "
                f"{c.path} ({time.perf_counter() - t0:.1f} s)")
        return manifest, problems
    if c.reader == "manifest":
        return read_manifest(c.path), problems
    try:
        reader = get_reader(c.reader)(c.path, **c.options)
    except TypeError as exc:
        raise ConfigError(f"corpora.{index} ({c.id}): reader {c.reader!r}: {exc}") from None
    result = reader.scan(strict=c.strict)
    if result.problems:
        problems = pd.DataFrame([{"corpus": c.id, "path": p.path, "reason": p.reason}
                                 for p in result.problems])
        log(f"{c.id}: {len(result.problems)} unusable files skipped (listed in "
            "scan_problems.csv)")
    return result.manifest, problems


def _corpus_manifest(cfg: ExperimentConfig, index: int, log: Log) -> tuple[pd.DataFrame,
                                                                            pd.DataFrame]:
    """Manifest of one configured corpus (ids and speakers namespaced by the corpus id, the
    corpus's own label mapping applied) and its scan problems."""
    from emobridge.methods.runner import apply_corpus_mapping

    c = cfg.corpora[index]
    manifest, problems = _read_corpus(cfg, index, log)
    if manifest.empty:
        raise CorpusError(f"corpora.{index} ({c.id}): no usable utterances under {c.path}")
    manifest = manifest.copy()
    original = manifest["corpus"].astype(str)
    manifest["speaker"] = [
        f"{c.id}:{spk[len(corp) + 1:] if spk.startswith(corp + ':') else spk}"
        for spk, corp in zip(manifest["speaker"].astype(str), original, strict=True)
    ]
    manifest["corpus"] = c.id
    if c.language:
        manifest["language"] = c.language
    manifest, note = apply_corpus_mapping(manifest, c.mapping)
    if note:
        log(f"{c.id}: {note}")
    return manifest, problems


def load_corpora(cfg: ExperimentConfig, log: Log = print) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                   str]:
    """All corpora in one manifest mapped to the label set.

    Returns ``(manifest, scan problems, label-set summary)``; the manifest has a fresh
    ``RangeIndex`` (features are aligned with it) and a ``label_index`` column. A file
    listed by two corpora (also through another path to it) raises :class:`ConfigError`.
    """
    from emobridge.corpora.manifest import validate_manifest

    frames, problems = [], []
    for i in range(len(cfg.corpora)):
        m, p = _corpus_manifest(cfg, i, log)
        frames.append(m)
        problems.append(p)
    combined = pd.concat(frames, ignore_index=True)
    real = combined["path"].astype(str).map(os.path.realpath)
    dup = real.duplicated()
    if dup.any():
        path = real[dup].iloc[0]
        owners = sorted(set(combined.loc[real == path, "corpus"]))
        if len(owners) == 1:
            raise ConfigError(f"corpus {owners[0]!r} lists {path} twice (through two paths)")
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


def _domain_values(cfg: ExperimentConfig, manifest: pd.DataFrame) -> list[str]:
    """The source / target domains present, each checked as a folder-name component."""
    column = cfg.protocol.domain
    present = list(dict.fromkeys(manifest[column].astype(str)))
    values = ([c.id for c in cfg.corpora if c.id in present] if column == "corpus"
              else sorted(present))
    for v in values:
        check_name(v, column)  # a reader's language code becomes part of cell folders
    return values


def expand_tasks(cfg: ExperimentConfig, manifest: pd.DataFrame) -> list[Task]:
    """The source -> target tasks of the protocol over the domains present in ``manifest``."""
    p = cfg.protocol
    column = p.domain
    values = _domain_values(cfg, manifest)
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
    pairs = [Task(task_name((s,), t), (s,), t) for s in values for t in values if s != t]
    loo = [Task(task_name(tuple(v for v in values if v != t), t),
                tuple(v for v in values if v != t), t) for t in values]
    if p.pairs == "all_pairs":
        return pairs
    if p.pairs == "leave_one_out":
        return loo
    return pairs + (loo if len(values) > 2 else [])  # all_pairs_and_leave_one_out


def method_ks(method: MethodConfig, protocol: ProtocolConfig) -> list[int | str]:
    """The few-shot sizes a method runs at."""
    if method.target_labels == "few_shot":
        return list(method.few_shot if method.few_shot is not None else protocol.few_shot)
    return [0] if method.target_labels == "none" else ["all"]


def expand_cells(cfg: ExperimentConfig, tasks: list[Task]) -> list[CellKey]:
    """Every cell, in the order task, feature, method, k, seed (a method only on its
    ``features`` when it lists them). Two cells with one id (one
    folder) raise :class:`ConfigError`: one would overwrite the other's results."""
    keys = [CellKey(task.name, feature.label, method.label, k, seed)
            for task in tasks for feature in cfg.feature_specs for method in cfg.methods
            if method.features is None or feature.label in method.features
            for k in method_ks(method, cfg.protocol) for seed in cfg.seeds]
    seen: set[str] = set()
    for key in keys:
        if key.id in seen:
            raise ConfigError(f"two cells share the id {key.id!r} (and its folder); give "
                              "tasks, extractors and methods distinct names")
        seen.add(key.id)
    return keys


def cell_hash(cfg: ExperimentConfig, key: CellKey, task: Task, classes: tuple[str, ...]) -> str:
    """Hash of everything a cell's result depends on (so a changed setting re-runs it)."""
    p = cfg.protocol
    method = cfg.method(key.method)
    return cfg.digest({
        "version": CELL_VERSION,
        "key": key.as_dict(), "sources": task.sources, "target": task.target,
        "domain": p.domain, "classes": classes,
        "feature": cfg.feature(key.feature).as_spec(),
        "method": {"method": method.method, "params": method.params,
                   "target_labels": method.target_labels},  # not few_shot: k is in the key
        # target_folds left out while unset: hashes of runs made before it existed hold
        "protocol": p.model_dump(mode="json", exclude={"pairs", "few_shot"} | (
            {"target_folds"} if p.target_folds is None else set())),
        "taxonomy": cfg.taxonomy.model_dump(mode="json"),
        "corpora": [c.model_dump(mode="json") for c in cfg.corpora],
        "bootstrap": cfg.report.bootstrap, "max_points": cfg.report.max_points,
    })


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
    #: audio files left out because they could not be decoded (``skip_errors``)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)


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
    from emobridge.fileio import file_lock

    with file_lock(run_dir / ".lock") as held:
        if not held:
            raise ExperimentError(f"{run_dir} is in use by another `emobridge run`")
        yield


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into :class:`KeyboardInterrupt` for the block (as Ctrl-C), so both stop
    the workers and keep finished cells. Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


@dataclass
class _Plan:
    """What a run computes: the manifest, the tasks, every cell and the pending ones."""

    manifest: pd.DataFrame
    classes: tuple[str, ...]
    tasks: dict[str, Task]
    keys: list[CellKey]
    hashes: dict[CellKey, str]
    pending: list[CellKey]


def _plan(cfg: ExperimentConfig, run_dir: Path, logger: Log) -> _Plan:
    """Load the corpora, expand the grid and find the cells not finished yet."""
    manifest, problems, label_summary = load_corpora(cfg, logger)
    classes = tuple(cfg.taxonomy.build().classes)
    if not problems.empty:
        with atomic_path(run_dir / "scan_problems.csv") as tmp:
            problems.to_csv(tmp, index=False)
    logger(f"{len(manifest)} utterances, {manifest['speaker'].nunique()} speakers, "
           f"classes {list(classes)}; {label_summary}")
    tasks = expand_tasks(cfg, manifest)
    by_name = {t.name: t for t in tasks}
    keys = expand_cells(cfg, tasks)
    hashes = {k: cell_hash(cfg, k, by_name[k.task], classes) for k in keys}
    pending = [k for k in keys
               if read_cell_metrics(cell_folder(run_dir, k), hashes[k]) is None]
    logger(f"{len(tasks)} task(s), {len(keys)} cell(s): {len(keys) - len(pending)} already "
           f"finished (skipped), {len(pending)} to run")
    return _Plan(manifest, classes, by_name, keys, hashes, pending)


def _extract_features(cfg: ExperimentConfig, plan: _Plan, device: str, progress: bool,
                      logger: Log, executor: str = "local"
                      ) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Extract the features the pending cells need (``executor`` ``ray``: sharded over the
    Ray session the run holds). Returns the feature id per label and the files skipped as
    undecodable (``cfg.skip_errors``; otherwise they raise)."""
    from emobridge.features.distributed import extract_with_ray
    from emobridge.features.registry import build_extractor
    from emobridge.features.store import FeatureStore

    store = FeatureStore(cfg.features.store)
    feature_ids: dict[str, str] = {}
    skipped: dict[str, str] = {}
    needed = {k.feature for k in plan.pending}
    for spec in cfg.feature_specs:
        extractor = build_extractor(spec.as_spec(), device=device)
        feature_ids[spec.label] = extractor.id
        if spec.label in needed:
            if executor == "ray":
                report = extract_with_ray(store, plan.manifest, extractor,
                                          num_cpus=cfg.threads or 1,
                                          skip_errors=cfg.skip_errors)
            else:
                report = store.extract(plan.manifest, extractor, progress=progress,
                                       skip_errors=cfg.skip_errors)
            logger(f"features {spec.label}: {report.summary()}")
            for path, reason in report.failures:
                skipped.setdefault(path, reason)
    if skipped:
        logger(f"skip_errors: {len(skipped)} audio file(s) left out of every cell (listed in "
               "skipped_files.csv)")
    return feature_ids, sorted(skipped.items())


def _write_cell_manifest(run_dir: Path, plan: _Plan, skipped: list[tuple[str, str]]) -> Path:
    """Write the manifest the cells read, without skipped files (rows renumbered: the
    cells' features are aligned with its index)."""
    from emobridge.corpora.manifest import write_manifest

    if skipped:
        gone = {p for p, _ in skipped}
        plan.manifest = plan.manifest[~plan.manifest["path"].isin(gone)].reset_index(drop=True)
        with atomic_path(run_dir / "skipped_files.csv") as tmp:
            pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(tmp, index=False)
    path = run_dir / "manifest.csv"
    write_manifest(plan.manifest, path)
    return path


def _start_info(cfg: ExperimentConfig, device: str, jobs: int, executor: str
                ) -> dict[str, Any]:
    return {
        "name": cfg.name, "emobridge_version": __version__,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "host": platform.node(), "device": device, "device_requested": cfg.device,
        "jobs": jobs, "executor": executor, "skip_errors": cfg.skip_errors,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_experiment(
    cfg: ExperimentConfig,
    jobs: int = 1,
    fail_fast: bool = False,
    log: Log | None = print,
    progress: bool = False,
    executor: str | None = None,
    address: str | None = None,
) -> RunSummary:
    """Run every cell of ``cfg`` not finished yet, then write tables, figures and the report.

    Parameters
    ----------
    cfg:
        A validated config (:func:`~emobridge.experiments.config.load_config`); results go
        to ``cfg.output_dir``, which must be new, empty or an earlier run's folder (marked
        by its ``run.json``).
    jobs:
        Worker processes for the cells (1: in this process); features are extracted here.
    fail_fast:
        Stop at the first failed cell (:class:`ExperimentError`); else record it, go on.
    log:
        Called with each progress line (``None``: silent); lines also go to ``run.log``.
    progress:
        Show progress bars during feature extraction.
    executor, address:
        ``local`` (default) or ``ray`` (each cell a Ray task, extraction sharded over Ray
        tasks; see :mod:`emobridge.experiments.executors`) and the Ray cluster's address;
        ``None`` takes the config's ``executor`` / ``address``.

    Failed cells are listed in :attr:`RunSummary.failures` (the CLI exits with 1).
    SIGINT / SIGTERM stop the workers and raise :class:`KeyboardInterrupt`; finished cells
    stay on disk for the next run.
    """
    from emobridge.fileio import prepare_output_dir
    from emobridge.runtime import resolve_device

    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    executor = executor or cfg.executor
    cells_executor = make_executor(executor, jobs, address or cfg.address)
    device = resolve_device(cfg.device)
    run_dir = prepare_output_dir(cfg.output_dir, marker="run.json", what="output_dir",
                                 allow=(".lock",))
    started = time.perf_counter()
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // jobs)
    with _run_lock(run_dir), _sigterm_interrupts(), cells_executor.session(threads):
        info = _start_info(cfg, device, jobs, executor)
        write_json_atomic(run_dir / "run.json", info)
        logger = _Logger(run_dir / "run.log", log)
        logger(f"run {cfg.name} -> {run_dir} (device {device})")
        write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
        t0 = time.perf_counter()
        plan = _plan(cfg, run_dir, logger)
        info["corpora_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        feature_ids, skipped = _extract_features(cfg, plan, device, progress, logger, executor)
        manifest_path = _write_cell_manifest(run_dir, plan, skipped)
        info.update(features_s=time.perf_counter() - t0, n_skipped_files=len(skipped))
        jobs_list = [CellJob(k, plan.tasks[k.task], plan.hashes[k], str(run_dir),
                             str(manifest_path), str(cfg.features.store), feature_ids[k.feature],
                             plan.classes, cfg, device, len(skipped)) for k in plan.pending]
        t0 = time.perf_counter()
        try:
            outcomes = cells_executor.run(jobs_list, threads, fail_fast, logger, plan.manifest)
        except KeyboardInterrupt:
            logger("interrupted: finished cells are kept; rerun to compute the rest")
            raise
        info["cells_s"] = time.perf_counter() - t0
        summary = _finish(cfg, run_dir, plan, outcomes, info, logger, started)
        summary.skipped_files = skipped
    return summary


def _finish(cfg: ExperimentConfig, run_dir: Path, plan: _Plan, outcomes: list[CellOutcome],
            info: dict[str, Any], logger: Log, started: float) -> RunSummary:
    """Collect every cell, write tables, report and the final ``run.json``."""
    from emobridge.experiments.report import write_report

    t0 = time.perf_counter()
    failures = [o for o in outcomes if o.status != "ok"]
    n_skipped = len(plan.keys) - len(plan.pending)
    records = collect(run_dir, [(k, plan.tasks[k.task], plan.hashes[k]) for k in plan.keys])
    table = aggregate(records, cfg.report.bootstrap)
    write_tables(run_dir, table, cells_frame(records))
    info.update({
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_cells": len(plan.keys), "n_skipped": n_skipped,
        "n_run": len(outcomes) - len(failures), "n_failed": len(failures),
        "seconds": time.perf_counter() - started, "n_utterances": len(plan.manifest),
        "classes": list(plan.classes),
        "tasks": [{"name": t.name, "sources": list(t.sources), "target": t.target}
                  for t in plan.tasks.values()],
    })
    report_path = write_report(run_dir, cfg, records, table, info, logger)
    info["report_s"] = time.perf_counter() - t0
    info["seconds"] = time.perf_counter() - started
    write_json_atomic(run_dir / "run.json", info)
    skipped_note = (f", {info['n_skipped_files']} audio file(s) skipped"
                    if info.get("n_skipped_files") else "")
    logger(f"done in {info['seconds']:.1f} s: {info['n_run']} run, {n_skipped} skipped, "
           f"{len(failures)} failed{skipped_note}; report: {report_path}")
    return RunSummary(run_dir, len(plan.keys), n_skipped, info["n_run"], len(failures),
                      info["seconds"], report_path, table, failures)
