"""``--executor ray`` on a real local Ray instance (``ray.init(num_cpus=2)``, one per
module): cells as Ray tasks, extraction sharded over Ray tasks into one store, results
identical to the local executor, resuming, failed cells, interrupts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emobridge.cli import main
from emobridge.corpora import make_manifest, write_manifest
from emobridge.experiments import run_experiment
from emobridge.experiments.config import validate_config
from emobridge.experiments.executors import RayExecutor
from emobridge.experiments.results import CellKey, Task
from emobridge.experiments.runner import CellJob
from emobridge.features import FeatureStore, build_extractor
from tests.test_pipeline_cells import METHOD, _cfg
from tests.test_store_concurrency import SPEC, make_audio, verify_store

ray = pytest.importorskip("ray")

#: what may differ between two runs of the same cell: wall-clock times
_TIMES = {"finished", "seconds", "time_s", "started", "timing"}


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def _strip_times(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _strip_times(v) for k, v in doc.items() if k not in _TIMES}
    if isinstance(doc, list):
        return [_strip_times(v) for v in doc]
    return doc


def _config(tmp: Path, name: str, seeds: list[int], store: str | None = None):
    data = _cfg(tmp, seeds=seeds, threads=1, output_dir=str(tmp / name))
    data["features"]["store"] = str(tmp / f"store-{store or name}")  # own extraction
    data["methods"] = [{**METHOD, "params": {**METHOD["params"], "epochs": 2}}]
    return validate_config(data, "test")


def _cells(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {d.name: json.loads((d / "metrics.json").read_text())
            for d in sorted((run_dir / "cells").iterdir()) if (d / "metrics.json").exists()}


@pytest.fixture(scope="module")
def runs(ray_instance, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    local_cfg, ray_cfg = _config(tmp, "local", [0, 1]), _config(tmp, "ray", [0, 1])
    lines: list[str] = []
    local = run_experiment(local_cfg, log=None)
    remote = run_experiment(ray_cfg, executor="ray", log=lines.append)
    return tmp, local_cfg, ray_cfg, local, remote, lines


def test_ray_grid_identical_to_local(runs) -> None:
    tmp, local_cfg, ray_cfg, local, remote, lines = runs
    assert (local.n_run, remote.n_run, remote.n_failed) == (2, 2, 0)
    assert json.loads((remote.run_dir / "run.json").read_text())["executor"] == "ray"
    assert any(line.startswith("ray: 2 cell task(s)") for line in lines)
    assert any(line.startswith("[2/2] ") for line in lines)  # progress per cell
    # The run's extraction stage ran in Ray tasks into its own store.
    assert any(line.startswith("features logmel:") and " 24 computed" in line
               for line in lines)
    a, b = _cells(local.run_dir), _cells(remote.run_dir)
    assert list(a) == list(b) and len(a) == 2
    for cell in a:  # same cell hashes, same metrics to the last digit
        assert a[cell]["cell_hash"] == b[cell]["cell_hash"]
        assert _strip_times(a[cell]) == _strip_times(b[cell])
        ea = np.load(local.run_dir / "cells" / cell / "embedding.npz")
        eb = np.load(remote.run_dir / "cells" / cell / "embedding.npz")
        for key in ea.files:
            assert np.array_equal(ea[key], eb[key])
    assert local.table.equals(remote.table)
    # Features extracted by Ray tasks equal the local ones.
    eid = next(iter(b.values()))["feature_id"]
    manifest = remote.run_dir / "manifest.csv"
    fa = FeatureStore(local_cfg.features.store).load(manifest, eid)
    fb = FeatureStore(ray_cfg.features.store).load(manifest, eid)
    assert len(fb) == 24
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb, strict=True))


def test_ray_resumes_finished_cells(runs) -> None:
    tmp, _, _, _, remote, _ = runs
    again = run_experiment(_config(tmp, "ray", [0, 1]), executor="ray", log=None)
    assert (again.n_skipped, again.n_run) == (2, 0)


def test_ray_failed_cell_is_recorded(runs) -> None:
    tmp, _, ray_cfg, _, remote, _ = runs
    key = CellKey("aa-to-bb", "logmel", "src", 0, 7)
    job = CellJob(key, Task("aa-to-bb", ("aa",), "bb"), "h", str(remote.run_dir),
                  str(tmp / "no-such-manifest.csv"), str(ray_cfg.features.store), "x",
                  ("anger",), ray_cfg)
    lines: list[str] = []
    [outcome] = RayExecutor().run([job], 1, False, lines.append, None)
    assert outcome.status == "failed" and "no-such-manifest" in outcome.error
    folder = remote.run_dir / "cells" / key.id
    assert (folder / "error.json").exists() and (folder / "traceback.txt").exists()
    assert "FAILED" in lines[-1]


def test_features_extract_cli_ray(ray_instance, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    paths = make_audio(tmp_path / "audio", 12)
    manifest = write_manifest(make_manifest(
        {"path": p, "corpus": "toy", "language": "it", "speaker": "toy:1", "gender": "f",
         "label": "neu", "emotion": "neutral", "duration_s": 0.1, "sample_rate": 16_000}
        for p in paths), tmp_path / "manifest.parquet")[0]
    assert main(["features", "extract", str(manifest), "-e", SPEC, "-o",
                 str(tmp_path / "ray"), "--executor", "ray", "--shards", "4",
                 "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "12 computed" in out
    counts = verify_store(tmp_path / "ray", paths)  # every entry checked
    assert counts == {"keys": 12, "entries": 12, "shards": 4}
    assert main(["features", "extract", str(manifest), "-e", SPEC, "-o",
                 str(tmp_path / "local"), "--batch-size", "3"]) == 0
    ext = build_extractor(SPEC)
    a = FeatureStore(tmp_path / "ray").load(paths, ext)
    b = FeatureStore(tmp_path / "local").load(paths, ext)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # same batches


@ray.remote(num_cpus=0.5)
def _ray_writer(root: str, paths: list[str]) -> int:
    rep = FeatureStore(root, flush_every=1).extract(paths, SPEC, progress=False)
    return rep.computed


def test_concurrent_ray_task_writers(ray_instance, tmp_path: Path) -> None:
    """Ray tasks writing overlapping audio into one store at once, then every entry."""
    paths = make_audio(tmp_path / "audio", 16)
    slices = [paths[i * 4: i * 4 + 6] for i in range(4)]
    computed = ray.get([_ray_writer.remote(str(tmp_path / "store"), s) for s in slices])
    assert sum(computed) >= 16
    written = sorted({p for s in slices for p in s})
    counts = verify_store(tmp_path / "store", written)
    assert counts["keys"] == len(written) and counts["entries"] == sum(computed)


def test_ray_interrupt_cancels_outstanding_cells(runs) -> None:
    """Ctrl-C: queued cells cancelled, running ones killed, finished ones kept. Near the
    end of the module: the killed workers must be started again."""
    tmp = runs[0]
    cfg = _config(tmp, "interrupted", [0, 1, 2], store="ray")
    raised = []

    def log(line: str) -> None:
        if line.startswith("[1/3]") and not raised:
            raised.append(line)
            raise KeyboardInterrupt  # Ctrl-C as the first cell finishes

    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, executor="ray", log=log)
    time.sleep(1.0)  # the cancelled workers are killed asynchronously
    finished = _cells(cfg.output_dir)
    assert 1 <= len(finished) < 3  # the finished cell is kept, the rest was cancelled
    again = run_experiment(cfg, executor="ray", log=None)
    assert again.n_skipped == len(finished) and again.n_run == 3 - len(finished)


def test_ray_dead_worker_is_recorded(runs) -> None:
    """A cell whose Ray worker exits hard is recorded as failed (as a dead local worker).
    Last in the module: the worker is gone, the next task would wait for a new one."""
    from emobridge.experiments.executors import _ray_outcome

    @ray.remote(max_retries=0)
    def die() -> None:
        import os

        os._exit(1)

    tmp, _, ray_cfg, _, remote, _ = runs
    job = CellJob(CellKey("aa-to-bb", "logmel", "src", 0, 8), Task("aa-to-bb", ("aa",), "bb"),
                  "h", str(remote.run_dir), "m.csv", "store", "x", ("anger",), ray_cfg)
    outcome = _ray_outcome(ray, die.remote(), job)
    assert outcome.status == "failed" and outcome.error.startswith("Ray worker failed")
    assert (remote.run_dir / "cells" / job.key.id / "error.json").exists()


def test_a_real_gcs_address_passes_the_reachability_check(ray_instance):
    from emobridge.raycluster import check_reachable

    # the GCS listens on every interface: probed through loopback, this machine only
    port = ray_instance.get_runtime_context().gcs_address.rpartition(":")[2]
    check_reachable(f"127.0.0.1:{port}", timeout_s=5.0)  # gRPC answers the HTTP/2 preface
