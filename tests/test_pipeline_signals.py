"""`emobridge run --jobs 2` killed (SIGTERM, kill -9): no pool worker or resource tracker
outlives it. A real subprocess, found through /proc (Linux only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_cells import _cfg

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

SRC = Path(__file__).resolve().parents[1] / "src"
# What `emobridge run CONFIG --jobs 2 --out OUT` does, minus the CLI's exit-code mapping
# (KeyboardInterrupt -> 130 "interrupted" is cli.main's job).
SCRIPT = ("import sys\nfrom emobridge.experiments import load_config, run_experiment\n"
          "cfg = load_config(sys.argv[1], output_dir=sys.argv[2])\n"
          "try:\n    run_experiment(cfg, jobs=2, log=None)\nexcept KeyboardInterrupt:\n"
          "    print('interrupted', file=sys.stderr)\n    sys.exit(130)\n")


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a live process, ``None`` when gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[1]), fields[0]) if fields[0] != "Z" else None


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _stat(int(entry.name))
            if info is not None and info[0] == pid:
                out.append(int(entry.name))
    return out


def _workers_ready(pid: int) -> list[int]:
    """The parent's children once two pool workers have run their initializer (torch is
    imported there, after the parent-death signal is armed)."""
    kids = _children(pid)
    ready = []
    for kid in kids:
        try:
            cmdline = Path(f"/proc/{kid}/cmdline").read_bytes()
            maps = Path(f"/proc/{kid}/maps").read_text()
        except OSError:
            continue
        if b"spawn_main" in cmdline and "libtorch" in maps:
            ready.append(kid)
    return kids if len(ready) >= 2 else []


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """Two long cells (many epochs) over features extracted beforehand."""
    from emobridge.experiments import load_config
    from emobridge.experiments.runner import _extract_features, _plan

    root = tmp_path_factory.mktemp("signals")
    slow = {**_cfg(root)["methods"][0], "params": {"epochs": 100000, "batch_size": 4}}
    cfg = _cfg(root, methods=[slow], seeds=[0, 1])
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = load_config(path, output_dir=root / "warm")
    (root / "warm").mkdir()
    _extract_features(loaded, _plan(loaded, root / "warm", lambda line: None), "cpu", False,
                      lambda line: None)
    return path


def _start(config: Path, out: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(config), str(config.parent / out)],
                            env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_workers(proc: subprocess.Popen) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = _workers_ready(proc.pid)
        if kids:
            return kids
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the pool workers did not start")


def _assert_gone(pids: list[int], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_stat(p) for p in pids):
        time.sleep(0.1)
    alive = [p for p in pids if _stat(p)]
    for p in alive:  # do not leave them behind for the next test
        os.kill(p, signal.SIGKILL)
    assert not alive, f"still running: {alive}"


def test_killed_runs_leave_no_workers(config: Path) -> None:
    # Both runs at once: the test then takes one start-up, not two.
    procs = {signum: _start(config, f"out_{signum}")
             for signum in (signal.SIGTERM, signal.SIGKILL)}
    kids = {signum: _wait_workers(proc) for signum, proc in procs.items()}
    for signum, proc in procs.items():
        proc.send_signal(signum)  # workers and the resource tracker must follow
    rcs = {signum: proc.wait(timeout=20) for signum, proc in procs.items()}
    _assert_gone([pid for pids in kids.values() for pid in pids])
    assert rcs[signal.SIGKILL] == -signal.SIGKILL
    assert rcs[signal.SIGTERM] == 130
    assert "interrupted" in procs[signal.SIGTERM].stderr.read().decode()
    assert "interrupted: finished cells are kept" in (
        config.parent / f"out_{signal.SIGTERM}" / "run.log").read_text()
