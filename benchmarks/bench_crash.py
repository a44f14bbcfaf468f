"""Crash consistency (issue "Reliability beyond a fixed list", item 2): SIGKILL commands at
random moments, check what they left on disk, resume, and compare with an uninterrupted run.

    .venv/bin/python benchmarks/bench_crash.py [--kills 100] [--only SCENARIO] [--seed 0]
                                               [--exec] [--write]

Scenarios (each on a small synthetic corpus, ``emobridge.synthetic``: 2 languages x 4
speakers x 4 emotions x ``--utterances`` (1) = 32 clips of about 1.4 s, generated once):

* ``extract``: ``emobridge features extract`` (eGeMAPS functionals) into an empty store.
* ``writers``: two ``features extract`` processes on one empty store at once (overlapping
  two thirds of the manifest each, the middle third in both); one or both are killed (drawn
  at random, each at its own moment), a survivor must finish with status 0.
* ``run``: ``emobridge run --jobs 2`` (features into an empty store, then 4 cells, two
  small MLP methods x 2 seeds, in 2 spawned worker processes, then tables and report).
* ``train``: ``emobridge train --resume`` (source_only MLP, 40 epochs, a checkpoint per
  epoch) from a filled store into an empty output folder.

Per scenario: one uninterrupted reference run (its outputs kept, its wall time T), then
``--kills`` iterations on a fresh state: start the command in its own process group, wait a
time drawn uniformly from [0, T] (seeded), SIGKILL the whole group (a command that ended
first counts as "finished before the kill"), then check what is on disk: every store entry
verifies (the store's own bounds and CRC-32 check, ``FeatureStore._entry_array``; shape and
values equal to the reference's entry, finite), every shard index, spec.json, hashes.json
and every output file under its final name parses completely (JSON, CSV, Parquet, NPZ,
safetensors, checkpoints with ``load_checkpoint``, bundles with ``read_bundle_meta``); then
the same command runs again to completion (status 0) and its results are compared with the
reference: features bitwise (every manifest row through ``FeatureStore.load``), ``run``
every cell's metrics.json (without timestamps and timings) and results.csv, ``train``
metrics.json, predictions.csv and the bundle's arrays (bitwise).

How commands start: each is ``emobridge.cli.main(argv)`` (what the ``emobridge`` script
runs) in a process forked from a server that imported emobridge, torch and scikit-learn
once, in its own session; so the ~3 s of imports of a fresh interpreter are not paid twice
per kill and the kill moments fall on the command's work (``run``'s cell workers are still
spawned fresh by ``run`` itself). ``--exec`` starts fresh interpreters instead (the kill
window then includes the imports; about 3x slower). The extraction commands use
``--batch-size 2`` and the store flushes every ``--flush-every`` (2) entries instead of
256 (``FeatureStore.__init__``'s default, patched in the command's own process), so that
a kill finds shards half written; ``--flush-every 0`` keeps the shipped default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from _common import REPO, write_section

PYTHON = str(REPO / ".venv" / "bin" / "python")
SCENARIOS = ("extract", "writers", "run", "train")
SPEC = "opensmile:feature_set=eGeMAPSv02"
#: The CLI with the store's flush interval lowered (``{flush}`` entries).
CLI = """import sys
from emobridge.features import store
_init = store.FeatureStore.__init__
def _init_small_flushes(self, root, **kw):
    kw.setdefault("flush_every", {flush})
    _init(self, root, **kw)
store.FeatureStore.__init__ = _init_small_flushes
from emobridge.cli import main
sys.exit(main(sys.argv[1:]))
"""
RUN_CONFIG = """name: crash
corpora:
  - {{id: synthetic, reader: synthetic, path: {corpus},
     options: {{languages: [aa, bb], speakers_per_language: {speakers},
               utterances_per_speaker_per_emotion: {utterances}, seed: 0}}}}
taxonomy: {{label_set: 4class}}
protocol:
  domain: language
  pairs: [{{source: aa, target: bb}}]
  source_split: {{train: 2, validation: 1, test: 1}}
  target_split: {{train: 2, validation: 1, test: 1}}
  few_shot: [0]
features:
  extractors: ["{spec}"]
  store: ${{CRASH_STORE}}
methods:
  - {{name: src, method: source_only, target_labels: none,
     params: {{epochs: 15, batch_size: 8, backbone_params: {{hidden_dims: [32]}}}}}}
  - {{name: upper, method: supervised, target_labels: all,
     params: {{epochs: 15, batch_size: 8, backbone_params: {{hidden_dims: [32]}}}}}}
seeds: [0, 1]
device: cpu
threads: 1
report: {{embeddings: false, tsne: false, bootstrap: 50}}
"""


# ---------------------------------------------------------------------- processes

#: Process groups started and not yet reaped (killed when the benchmark itself stops).
LIVE: set[int] = set()


def _patch_flushes(flush: int) -> None:
    """Make the store flush every ``flush`` entries (in the command's own process)."""
    from emobridge.features import store

    init = store.FeatureStore.__init__

    def init_small_flushes(self: Any, root: Any, **kw: Any) -> None:
        kw.setdefault("flush_every", flush)
        init(self, root, **kw)

    store.FeatureStore.__init__ = init_small_flushes


def _forked_command(argv: list[str], log: str, env: dict[str, str], flush: int) -> None:
    """A command in a child of the fork server: its own session (process group), output to
    ``log``, then ``emobridge.cli.main(argv)``, as the ``emobridge`` script does."""
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(REPO)
    if flush > 0:
        _patch_flushes(flush)
    from emobridge.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def _noop() -> None:
    pass


#: What the fork server imports once (the commands' own imports, torch included).
PRELOAD = ["emobridge.cli", "emobridge.commands.features", "emobridge.commands.run",
           "emobridge.commands.train", "emobridge.features.store",
           "emobridge.features.extractors", "emobridge.experiments.runner",
           "emobridge.methods.runner", "emobridge.inference.bundle", "torch", "sklearn",
           "__main__"]


@dataclass
class Proc:
    """A started command: a ``subprocess.Popen`` (``--exec``) or a fork server's child."""

    handle: Any
    log: Path
    started: float

    @property
    def pid(self) -> int:
        return self.handle.pid

    @property
    def returncode(self) -> int | None:
        if isinstance(self.handle, subprocess.Popen):
            return self.handle.returncode
        return self.handle.exitcode

    def _wait(self, timeout: float | None) -> int | None:
        if isinstance(self.handle, subprocess.Popen):
            try:
                return self.handle.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        self.handle.join(timeout)
        return self.handle.exitcode

    def kill_at(self, t: float) -> bool:
        """SIGKILL the group ``t`` s after the start; False when it ended before."""
        if self._wait(max(0.0, self.started + t - time.perf_counter())) is not None:
            LIVE.discard(self.pid)
            return False
        self.kill_now()
        return True

    def finish(self, timeout: float = 600) -> int:
        rc = self._wait(timeout)
        if rc is None:
            self.kill_now()
            return -9
        LIVE.discard(self.pid)
        return rc

    def kill_now(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:  # a fork server's child not in its own session yet
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self._wait(None)
        _wait_group_gone(self.pid)

    def tail(self, n: int = 3) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return " / ".join(lines[-n:])[-400:]


class Launcher:
    """Starts ``emobridge`` commands, each in its own process group: forked from a server
    that imported emobridge once (default), or as fresh interpreters (``exec``)."""

    def __init__(self, flush: int, exec_: bool) -> None:
        self.flush = flush
        self.exec = exec_
        self.ctx: Any = None
        if not exec_:
            import multiprocessing

            self.ctx = multiprocessing.get_context("forkserver")
            self.ctx.set_forkserver_preload(PRELOAD)
            warm = self.ctx.Process(target=_noop)  # the server starts and imports now
            warm.start()
            warm.join()

    def start(self, argv: list[str], log: Path, env: dict[str, str]) -> Proc:
        if self.ctx is not None:
            p = self.ctx.Process(target=_forked_command, args=(argv, str(log), env,
                                                               self.flush))
            t0 = time.perf_counter()
            p.start()
            LIVE.add(p.pid)
            return Proc(p, log, t0)
        cmd = ([PYTHON, "-c", CLI.format(flush=self.flush)] if self.flush > 0
               else [str(REPO / ".venv" / "bin" / "emobridge")])
        fh = open(log, "wb")  # noqa: SIM115 - the child keeps its copy
        try:  # own session = own process group: the kill reaches spawned workers too
            t0 = time.perf_counter()
            p = subprocess.Popen([*cmd, *argv], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                 cwd=str(REPO), start_new_session=True)
        finally:
            fh.close()
        LIVE.add(p.pid)
        return Proc(p, log, t0)


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no process of the group is left (workers die with their parent)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.02)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    LIVE.discard(pgid)


# ---------------------------------------------------------------------- checks


def store_arrays(root: Path) -> dict[tuple[str, str], np.ndarray]:
    """(extractor id, content hash) -> array of every entry of a finished store."""
    from emobridge.features.store import FeatureStore

    store = FeatureStore(root)
    out: dict[tuple[str, str], np.ndarray] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        maps: dict[str, Any] = {}
        for key, entry in store._catalog(folder.name).items():
            arr = store._entry_array(folder.name, entry, maps, True)
            assert arr is not None, f"reference store {root}: {key} fails its CRC"
            out[(folder.name, key)] = arr.copy()
    return out


def check_store(root: Path, ref: dict[tuple[str, str], np.ndarray]
                ) -> tuple[int, int, list[str]]:
    """(entries that verify, entries that do not, problems) of the store at ``root``.

    An entry verifies when the store's own check passes (inside its data file, CRC-32 of
    its bytes, ``FeatureStore._entry_array``), its shape and values equal the reference's
    entry for the same audio, and it is finite. Also checked: every shard index, spec.json
    and hashes.json under its final name parses, and no index names bytes past the end
    of its data file. Temporary files (a kill's leftovers) are allowed."""
    from emobridge.features.store import _HASHES_FILE, FeatureStore, _read_index

    good, bad, problems = 0, 0, []
    if not root.is_dir():
        return good, bad, problems
    store = FeatureStore(root)
    if (root / _HASHES_FILE).exists():
        try:
            json.loads((root / _HASHES_FILE).read_text())
        except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
            problems.append(f"{_HASHES_FILE} unreadable: {type(exc).__name__}: {exc}")
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        eid = folder.name
        if (folder / "spec.json").exists():
            try:
                json.loads((folder / "spec.json").read_text())
            except ValueError as exc:
                problems.append(f"{eid}/spec.json partial: {exc}")
        maps: dict[str, Any] = {}
        for index in sorted(folder.glob("shard-*.json")):
            try:
                doc = json.loads(index.read_text())
                data = folder / doc["data"]
                size = data.stat().st_size if data.exists() else 0
                if doc["data_bytes"] > size:
                    problems.append(f"{index.name}: names {doc['data_bytes']} bytes, data "
                                    f"file holds {size}")
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"{index.name}: partial index: {type(exc).__name__}: {exc}")
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                entries = _read_index(index)
            for key, entry in entries.items():
                arr = store._entry_array(eid, entry, maps, True)
                want = ref.get((eid, key))
                why = None
                if arr is None:
                    why = "fails its CRC or lies past the end of the data file"
                elif want is None:
                    why = "is not in the reference store"
                elif arr.shape != want.shape:
                    why = f"shape {arr.shape}, reference {want.shape}"
                elif not np.isfinite(arr).all():
                    why = "is not finite"
                elif not np.array_equal(arr, want):
                    why = "differs from the reference"
                if why is None:
                    good += 1
                else:
                    bad += 1
                    problems.append(f"{index.name}: entry {key[:12]} {why}")
        maps.clear()
    return good, bad, problems


def check_outputs(folder: Path) -> list[str]:
    """Problems with files under their final names in an output folder: each must parse
    completely (temporary files and the appended run.log are left alone)."""
    import yaml
    from safetensors.numpy import load_file

    from emobridge.inference.bundle import read_bundle_meta
    from emobridge.training.checkpoints import load_checkpoint

    problems: list[str] = []
    if not folder.is_dir():
        return problems
    for f in sorted(folder.rglob("*")):
        if not f.is_file() or f.name.startswith("."):
            continue
        rel = f.relative_to(folder)
        try:
            if f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".csv":
                pd.read_csv(f)
            elif f.suffix == ".parquet":
                pd.read_parquet(f)
            elif f.suffix == ".npz":
                with np.load(f) as z:
                    [z[k] for k in z.files]
            elif f.suffix == ".safetensors":
                load_file(str(f))
            elif f.suffix == ".pt":
                load_checkpoint(f)
            elif f.suffix in (".yaml", ".yml"):
                yaml.safe_load(f.read_text())
            if f.name == "bundle.json":
                read_bundle_meta(f.parent)  # format and every file's checksum
        except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
            problems.append(f"{rel}: {type(exc).__name__}: {str(exc)[:200]}")
    return problems


def _strip(doc: Any, drop: tuple[str, ...] = ("finished", "timing", "environment",
                                               "time_s")) -> Any:
    """``doc`` without timestamps and timings (they differ between any two runs)."""
    if isinstance(doc, dict):
        return {k: _strip(v, drop) for k, v in doc.items() if k not in drop}
    if isinstance(doc, list):
        return [_strip(v, drop) for v in doc]
    return doc


def _json(path: Path) -> Any:
    return _strip(json.loads(path.read_text()))


def compare_features(root: Path, ref_root: Path, manifest: Path) -> list[str]:
    """Every manifest row's features in ``root`` (read with ``FeatureStore.load``) equal
    the reference's bitwise."""
    from emobridge.features.registry import build_extractor
    from emobridge.features.store import FeatureStore

    eid = build_extractor(SPEC).id
    ref = FeatureStore(ref_root).load(manifest, eid)
    try:
        got = FeatureStore(root).load(manifest, eid)
    except Exception as exc:  # noqa: BLE001 - a missing entry is the finding
        return [f"load: {type(exc).__name__}: {str(exc)[:200]}"]
    diff = [i for i, (a, b) in enumerate(zip(got, ref, strict=True))
            if a.shape != b.shape or not np.array_equal(a, b)]
    return [f"{len(diff)} rows differ from the reference (first row {diff[0]})"] if diff else []


def compare_run(out: Path, ref: Path) -> list[str]:
    problems = []
    for cell in sorted((ref / "cells").iterdir()):
        mine = out / "cells" / cell.name / "metrics.json"
        if not mine.exists():
            problems.append(f"{cell.name}: no metrics.json")
        elif _json(mine) != _json(cell / "metrics.json"):
            problems.append(f"{cell.name}: metrics differ")
    a, b = pd.read_csv(out / "results.csv"), pd.read_csv(ref / "results.csv")
    if not a.equals(b):
        problems.append("results.csv differs")
    return problems


def compare_train(out: Path, ref: Path) -> list[str]:
    from safetensors.numpy import load_file

    problems = []
    if _json(out / "metrics.json") != _json(ref / "metrics.json"):
        problems.append("metrics.json differs")
    if (out / "predictions.csv").read_bytes() != (ref / "predictions.csv").read_bytes():
        problems.append("predictions.csv differs")
    for name in ("model.safetensors", "memory.safetensors"):
        a, b = load_file(str(out / "model" / name)), load_file(str(ref / "model" / name))
        if a.keys() != b.keys() or any(not np.array_equal(a[k], b[k]) for k in a):
            problems.append(f"model/{name} differs")
    return problems


# ---------------------------------------------------------------------- scenarios


@dataclass
class Tally:
    scenario: str
    ref_s: float = 0.0
    kills: int = 0
    mid_run: int = 0
    before: int = 0
    partial: int = 0  # kills that left work half done (some entries / cells / epochs)
    verified: int = 0
    corrupt: int = 0
    resumed: int = 0
    equal: int = 0
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def fail(self, i: int, what: str, problems: list[str]) -> None:
        if problems:
            self.failures.append(f"{self.scenario} #{i}: {what}: " + "; ".join(problems[:3]))


class Bench:
    def __init__(self, work: Path, launcher: Launcher, seed: int) -> None:
        self.work = work
        self.rng = random.Random(seed)
        self.env = dict(os.environ)
        self.launcher = launcher
        self.corpus = work / "corpus"
        self.eid = ""

    # -- data ----------------------------------------------------------------------------

    def prepare(self, speakers: int, utterances: int) -> None:
        from emobridge.features.registry import build_extractor
        from emobridge.synthetic import generate_corpus

        m = generate_corpus(self.corpus, languages=("aa", "bb"),
                            speakers_per_language=speakers,
                            utterances_per_speaker_per_emotion=utterances, seed=0)
        m.to_csv(self.work / "all.csv", index=False)
        third = len(m) // 3
        m.iloc[: len(m) - third].to_csv(self.work / "writer_a.csv", index=False)
        m.iloc[third:].to_csv(self.work / "writer_b.csv", index=False)
        for lang in ("aa", "bb"):
            m[m["language"] == lang].to_csv(self.work / f"{lang}.csv", index=False)
        (self.work / "run.yaml").write_text(RUN_CONFIG.format(
            corpus=self.corpus, spec=SPEC, speakers=speakers, utterances=utterances))
        self.eid = build_extractor(SPEC).id
        print(f"corpus: {len(m)} clips, {m['duration_s'].sum() / 60:.1f} min -> {self.work}",
              flush=True)

    def extract_cmd(self, store: Path, manifest: str = "all.csv") -> list[str]:
        return ["features", "extract", str(self.work / manifest), "-e", SPEC,
                "-o", str(store), "--no-progress", "--batch-size", "2"]

    def run_cmd(self, out: Path) -> list[str]:
        return ["run", str(self.work / "run.yaml"), "--out", str(out), "--jobs", "2"]

    def train_cmd(self, out: Path) -> list[str]:
        return ["train",
                "--source", str(self.work / "aa.csv"), "--target", str(self.work / "bb.csv"),
                "--store", str(self.work / "train-store"), "-e", SPEC, "-m", "source_only",
                "-p", "epochs=40", "-p", "patience=0", "-p", "batch_size=8",
                "-p", 'backbone_params={"hidden_dims": [32]}', "--seed", "0",
                "--device", "cpu", "--resume", "-o", str(out)]

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
        return self.launcher.start(argv, log, env or self.env)

    def _complete(self, cmd: list[str], log: Path, env: dict[str, str] | None = None
                  ) -> tuple[int, float, Proc]:
        p = self.start(cmd, log, env)
        rc = p.finish()
        return rc, time.perf_counter() - p.started, p

    def _reference(self, name: str, cmd: list[str], log: Path,
                   env: dict[str, str] | None = None) -> float:
        rc, t, p = self._complete(cmd, log, env)
        if rc != 0:
            raise SystemExit(f"{name}: the reference run failed ({rc}): {p.tail()}")
        return t

    # -- scenarios -----------------------------------------------------------------------

    def extract(self, kills: int) -> Tally:
        tally = Tally("extract")
        ref_store = self.work / "ref-extract"
        tally.ref_s = self._reference("extract", self.extract_cmd(ref_store),
                                      self.work / "ref-extract.log")
        ref = store_arrays(ref_store)
        n = len(ref)
        for i, it in self._iterations(tally, kills):
            store = it / "store"
            p = self.start(self.extract_cmd(store), it / "kill.log", self.env)
            killed = p.kill_at(self.rng.uniform(0, tally.ref_s))
            self._after_kill(tally, i, killed, [p], store, ref, n)
            rc, _, q = self._complete(self.extract_cmd(store), it / "resume.log")
            self._after_resume(tally, i, rc, q, store, ref,
                               partial(compare_features, store, ref_store,
                                       self.work / "all.csv"))
        return tally

    def writers(self, kills: int) -> Tally:
        tally = Tally("writers")
        ref_store = self.work / "ref-writers"
        t0 = time.perf_counter()
        pair = [self.start(self.extract_cmd(ref_store, m), self.work / f"ref-{m}.log")
                for m in ("writer_a.csv", "writer_b.csv")]
        if any(p.finish() != 0 for p in pair):
            raise SystemExit(f"writers: a reference writer failed: {pair[0].tail()} | "
                             f"{pair[1].tail()}")
        tally.ref_s = time.perf_counter() - t0
        ref = store_arrays(ref_store)
        n = len(ref)
        for i, it in self._iterations(tally, kills):
            store = it / "store"
            which = self.rng.choice(("a", "b", "both"))
            times = [self.rng.uniform(0, tally.ref_s) for _ in range(2)]
            pair = [self.start(self.extract_cmd(store, f"writer_{w}.csv"), it / f"kill-{w}.log")
                    for w in ("a", "b")]
            killed, survivors = [], []
            for w, p, t in sorted(zip(("a", "b"), pair, times, strict=True),
                                  key=lambda x: x[2]):
                if which in (w, "both"):
                    killed.append(p.kill_at(t))
                else:
                    survivors.append(p)
            for p in survivors:
                rc = p.finish()
                if rc != 0:
                    tally.fail(i, "the writer that was not killed failed", [f"rc {rc}",
                                                                            p.tail()])
            self._after_kill(tally, i, any(killed), pair, store, ref, n)
            again = [self.start(self.extract_cmd(store, f"writer_{w}.csv"),
                                it / f"resume-{w}.log", self.env) for w in ("a", "b")]
            rcs = [p.finish() for p in again]
            rc, q = next(((rc, p) for p, rc in zip(again, rcs, strict=True) if rc != 0),
                         (0, again[0]))
            self._after_resume(tally, i, rc, q, store, ref,
                               partial(compare_features, store, ref_store,
                                       self.work / "all.csv"))
        return tally

    def run(self, kills: int) -> Tally:
        tally = Tally("run")
        ref_out = self.work / "ref-run"
        env = {**self.env, "CRASH_STORE": str(self.work / "ref-run-store")}
        tally.ref_s = self._reference("run", self.run_cmd(ref_out), self.work / "ref-run.log",
                                      env)
        ref = store_arrays(self.work / "ref-run-store")
        n_cells = len(list((ref_out / "cells").iterdir()))
        for i, it in self._iterations(tally, kills):
            out, store = it / "out", it / "store"
            env = {**self.env, "CRASH_STORE": str(store)}
            p = self.start(self.run_cmd(out), it / "kill.log", env)
            killed = p.kill_at(self.rng.uniform(0, tally.ref_s))
            done = len(list(out.glob("cells/*/metrics.json")))
            self._after_kill(tally, i, killed, [p], store, ref, len(ref), out=out,
                             half=0 < done < n_cells or None)
            rc, _, q = self._complete(self.run_cmd(out), it / "resume.log", env)
            self._after_resume(tally, i, rc, q, store, ref, partial(compare_run, out, ref_out),
                               out=out)
        return tally

    def train(self, kills: int) -> Tally:
        tally = Tally("train")
        store = self.work / "train-store"
        if not store.exists():
            rc, _, p = self._complete(self.extract_cmd(store), self.work / "train-store.log")
            if rc != 0:
                raise SystemExit(f"train: extraction failed: {p.tail()}")
        ref = store_arrays(store)
        ref_out = self.work / "ref-train"
        tally.ref_s = self._reference("train", self.train_cmd(ref_out),
                                      self.work / "ref-train.log")
        for i, it in self._iterations(tally, kills):
            out = it / "out"
            p = self.start(self.train_cmd(out), it / "kill.log", self.env)
            killed = p.kill_at(self.rng.uniform(0, tally.ref_s))
            half = (out / "checkpoints" / "last.pt").exists() and not (
                out / "metrics.json").exists()
            self._after_kill(tally, i, killed, [p], store, ref, len(ref), out=out,
                             half=half)
            rc, _, q = self._complete(self.train_cmd(out), it / "resume.log")
            self._after_resume(tally, i, rc, q, store, ref, partial(compare_train, out, ref_out),
                               out=out)
        return tally

    # -- shared steps --------------------------------------------------------------------

    def _iterations(self, tally: Tally, kills: int) -> Iterator[tuple[int, Path]]:
        """Each kill's index and fresh work folder; times the iteration and reports
        progress when the caller's loop body is done."""
        for i in range(kills):
            t0 = time.perf_counter()
            it = self.work / "it"
            shutil.rmtree(it, ignore_errors=True)
            it.mkdir()
            yield i, it
            tally.seconds.append(time.perf_counter() - t0)
            self._progress(tally, i, kills)

    def _after_kill(self, tally: Tally, i: int, killed: bool, procs: list[Proc], store: Path,
                    ref: dict, n: int, out: Path | None = None,
                    half: bool | None = None) -> None:
        tally.kills += 1
        if killed:
            tally.mid_run += 1
        else:
            tally.before += 1
            for p in procs:
                if p.returncode not in (0, -signal.SIGKILL):
                    tally.fail(i, "finished before the kill with an error",
                               [f"rc {p.returncode}", p.tail()])
        good, bad, problems = check_store(store, ref)
        tally.verified += good
        tally.corrupt += bad
        if out is not None:
            problems += check_outputs(out)
        tally.fail(i, "after the kill", problems)
        if half is None:
            half = 0 < good < n
        tally.partial += bool(half)

    def _after_resume(self, tally: Tally, i: int, rc: int, proc: Proc, store: Path,
                      ref: dict, compare: Any, out: Path | None = None) -> None:
        if rc != 0:
            tally.fail(i, f"resume exited {rc}", [proc.tail()])
            return
        good, bad, problems = check_store(store, ref)
        if out is not None:
            problems += check_outputs(out)
        if problems:
            tally.fail(i, "after the resume", problems)
            return
        tally.resumed += 1
        diff = compare()
        if diff:
            tally.fail(i, "results differ from the uninterrupted run", diff)
        else:
            tally.equal += 1

    @staticmethod
    def _progress(tally: Tally, i: int, kills: int) -> None:
        if (i + 1) % 10 == 0 or i + 1 == kills:
            print(f"  {tally.scenario}: {i + 1}/{kills} kills, {tally.mid_run} mid-run, "
                  f"{tally.resumed} resumed, {tally.equal} equal, {len(tally.failures)} "
                  f"failures, {np.mean(tally.seconds):.1f} s per iteration", flush=True)


# ---------------------------------------------------------------------- report


def report(tallies: list[Tally], args: argparse.Namespace, n_clips: int,
           total_s: float) -> str:
    lines = ["| scenario | kills | killed mid-run | finished before kill | left half done | "
             "entries verified | corrupt entries | resumed ok | results equal | "
             "reference run (s) | mean iteration (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in tallies:
        lines.append(f"| {t.scenario} | {t.kills} | {t.mid_run} | {t.before} | {t.partial} | "
                     f"{t.verified} | {t.corrupt} | {t.resumed}/{t.kills} | "
                     f"{t.equal}/{t.kills} | {t.ref_s:.1f} | {np.mean(t.seconds):.1f} |")
    failures = [f for t in tallies for f in t.failures]
    projected = sum(t.ref_s + 100 * np.mean(t.seconds) for t in tallies)
    flushing = (f"`--batch-size 2` and a store flush every {args.flush_every} entries "
                "(patched `FeatureStore.__init__` default; 256 as shipped), so that kills find "
                "half-written shards" if args.flush_every > 0 else "the shipped flush settings")
    starting = ("fresh interpreters (`--exec`)" if args.exec else
                "`emobridge.cli.main(argv)` in processes forked from a server that imported "
                "emobridge and torch once (the kill window is the command's work, not its "
                "~3 s of imports; `run` spawns its cell workers fresh)")
    body = [
        "## Crash consistency (`benchmarks/bench_crash.py`)", "",
        f"SIGKILL of the command's whole process group at a moment drawn uniformly from "
        f"[0, reference wall time] (seed {args.seed}), {args.kills} kills per scenario, on a "
        f"synthetic corpus of {n_clips} clips (eGeMAPS functionals). Commands: {starting}. "
        f"Extraction: {flushing}. Scenarios: `features extract` into an empty store "
        "(`extract`); two `features extract` on one empty store, overlapping two thirds of "
        "the manifest each, one or both killed, the survivor must finish (`writers`); "
        "`run --jobs 2`: extraction, 4 MLP cells in 2 workers, report (`run`); "
        "`train --resume`: source_only MLP, 40 epochs, a checkpoint per epoch (`train`). "
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, {total_s / 60:.1f} min on "
        f"{os.cpu_count()} CPU cores.", "",
        "Checked after each kill: every store entry passes the store's own check (bounds and "
        "CRC-32), has the reference's shape and values and is finite; every shard index, "
        "spec.json, hashes.json and output file under its final name parses completely "
        "(JSON, CSV, NPZ, safetensors, checkpoints, bundle checksums). Then the same "
        "command runs to completion (status 0) and is compared with the uninterrupted run: "
        "every feature row bitwise, every cell's metrics.json (timestamps and timings left "
        "out) and results.csv, train's metrics.json, predictions.csv and model arrays "
        "bitwise. \"Left half done\": kills after which some but not all entries (run: or "
        "cells; train: a checkpoint but no metrics) were on disk. \"Entries verified\": "
        "summed over the checks after the kills.", "", *lines, "",
        f"Failures: {len(failures)}." if not failures else
        f"Failures: {len(failures)} (first {min(5, len(failures))}):",
        *[f"- {f}" for f in failures[:5]],
    ]
    if args.kills != 100:
        body += ["", f"Projected time of 100 kills per scenario: {projected / 60:.0f} min."]
    return "\n".join(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--only", choices=SCENARIOS, action="append",
                    help="run this scenario (repeatable; default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flush-every", type=int, default=2,
                    help="store flush interval in the extraction commands (0: as shipped)")
    ap.add_argument("--exec", action="store_true",
                    help="start every command as a fresh interpreter (adds its ~3 s of "
                    "imports to every start and to the kill window) instead of forking it "
                    "from a server that imported emobridge once")
    ap.add_argument("--speakers", type=int, default=4, help="per language")
    ap.add_argument("--utterances", type=int, default=1, help="per speaker and emotion")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where to work (default: a temporary folder, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--write", action="store_true", help="write the 'crash' section")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_crash-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # one thread per command (before the fork server starts: it and its children inherit)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ["PYTHONWARNINGS"] = "ignore"
    try:
        bench = Bench(work, Launcher(args.flush_every, args.exec), args.seed)
        bench.prepare(args.speakers, args.utterances)
        tallies = []
        for name in args.only or SCENARIOS:
            print(f"{name}:", flush=True)
            tallies.append(getattr(bench, name)(args.kills))
            print(f"  reference {tallies[-1].ref_s:.1f} s", flush=True)
        n_clips = len(pd.read_csv(work / "all.csv"))
    finally:
        for pgid in list(LIVE):  # interrupted: leave no command running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    body = report(tallies, args, n_clips, time.perf_counter() - start)
    print(body)
    if args.write:
        write_section("crash", body)
    if any(t.failures for t in tallies):
        sys.exit(1)


if __name__ == "__main__":
    main()
