"""How :func:`emobridge.cli.main` reports mistakes: one line and a status, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import typer

from emobridge import cli
from emobridge.cli import main
from emobridge.errors import EmobridgeWarning, InterruptedRun

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``emobridge`` entry point in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "emobridge.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


@pytest.mark.parametrize(("args", "expected"), [
    (["train", "--foo"], "No such option: --foo"),
    (["train"], "Missing option '--source'"),
    (["run", "--jobs", "0", "x.yaml"], "'--jobs'"),
    (["nope"], "No such command 'nope'"),
    (["features", "extract"], "Missing argument 'manifest'"),
    (["features", "extract", "m.csv", "-e", "logmel", "-o", "s", "--workers", "abc"],
     "'--workers'"),
])
def test_usage_errors_are_one_line_and_exit_2(args: list[str], expected: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err
    assert "\n" not in err and "Traceback" not in err
    assert "--help" in err  # where to look next


def test_usage_error_through_the_real_entry_point() -> None:
    proc = _cli("train", "--foo")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "No such option: --foo" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "features" in capsys.readouterr().out
    assert main(["features", "extract", "--help"]) == 0
    assert "--skip-errors" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert "emobridge" in capsys.readouterr().out


def test_group_without_command_shows_help_and_exits_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["features"]) == 2
    captured = capsys.readouterr()
    assert "extract" in captured.out + captured.err
    assert "Traceback" not in captured.err


def _failing_command(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def boom() -> None:
        raise exc

    @app.command()
    def other() -> None:  # two commands: typer then expects the command name
        pass

    return app


@pytest.mark.parametrize(("exc", "status", "expected"), [
    (KeyboardInterrupt(), 130, "interrupted"),
    (InterruptedRun("3 of 8 cells done; rerun to continue"), 130,
     "interrupted: 3 of 8 cells done"),
    (OSError(30, "Read-only file system", "/data/out/run.json"), 1,
     "error: /data/out/run.json: Read-only file system"),
    (OSError(28, "No space left on device", "/data/store/shard.f32"), 1,
     "error: /data/store/shard.f32: No space left on device"),
    (PermissionError(13, "Permission denied", "/root/x"), 1,
     "error: /root/x: Permission denied"),
    (typer.Exit(3), 3, ""),
])
def test_interrupts_and_os_faults(exc: BaseException, status: int, expected: str,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "app", _failing_command(exc))
    assert main(["boom"]) == status
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert err.count("\n") <= 1


def test_emobridge_warning_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    app = typer.Typer()

    @app.command()
    def warn() -> None:
        warnings.warn("corpus toy has one speaker", EmobridgeWarning, stacklevel=1)

    @app.command()
    def other() -> None:
        pass

    monkeypatch.setattr(cli, "app", app)
    before = warnings.showwarning
    assert main(["warn"]) == 0
    assert capsys.readouterr().err == "warning: corpus toy has one speaker\n"
    assert warnings.showwarning is before  # restored for library users


def _file_size_limit(limit_bytes: int) -> None:
    """In the child: writes past ``limit_bytes`` fail with EFBIG, as on a full disk."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


def test_a_write_fault_is_one_line_naming_the_file(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    done = subprocess.run(
        [sys.executable, "-m", "emobridge.cli", "synth", str(out), "--speakers", "2",
         "--utterances", "1"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")},
        preexec_fn=lambda: _file_size_limit(4_000))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[-1].startswith(f"error: {out}") and ".wav: cannot write audio" in lines[-1]
    assert not list(out.rglob("*.tmp*"))  # the partial file was removed


def test_atomic_writes_name_the_file_a_failed_write_was_for(tmp_path: Path) -> None:
    import errno

    from emobridge.fileio import atomic_open, write_text_atomic

    target = tmp_path / "x.json"
    with pytest.raises(OSError) as caught, atomic_open(target) as fh:
        fh.write("{}")
        raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises
    assert caught.value.filename == str(target) and not target.exists()
    assert list(tmp_path.iterdir()) == []
    folder = tmp_path / "taken"  # the rename onto a folder fails: named, not the temp file
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(OSError) as caught:
        write_text_atomic(folder, "x")
    assert caught.value.filename == str(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifos_and_devices_are_refused_not_read(tmp_path: Path) -> None:
    """A FIFO would block a reader and /dev/zero never ends: each is one error, at once
    (run in a child with a timeout, so a regression fails instead of hanging the suite)."""
    os.mkfifo(tmp_path / "pipe.wav")
    os.mkfifo(tmp_path / "pipe.csv")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    script = f"""
import sys
from pathlib import Path
from emobridge.audio import file_hash, load_audio
from emobridge.corpora.manifest import read_manifest
from emobridge.errors import EmobridgeError
from emobridge.fileio import check_regular_file, read_json
root = Path({str(tmp_path)!r})
(root / "big.json").write_text("[" + "0," * 100 + "0]")
for call in (lambda: load_audio(root / "pipe.wav"), lambda: read_manifest(root / "pipe.csv"),
             lambda: read_json(root / "zero.json", "missing"),
             lambda: file_hash(root / "pipe.wav"),
             lambda: check_regular_file(root / "big.json", max_bytes=100)):
    try:
        call()
    except (EmobridgeError, OSError) as exc:
        print(type(exc).__name__, exc)
"""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 5, (done.stdout, done.stderr)
    assert lines[0] == f"AudioError {tmp_path / 'pipe.wav'}: cannot read audio header (not a " \
                       "regular file)"
    assert lines[1] == f"CorpusError manifest {tmp_path / 'pipe.csv'} could not be read: not a " \
                       "regular file"
    assert lines[2] == f"EmobridgeError {tmp_path / 'zero.json'}: unreadable (not a regular file)"
    assert lines[3].startswith("OSError") and "not a regular file" in lines[3]
    assert "203 bytes, more than the 100 read" in lines[4]
    (tmp_path / "ok.wav").write_bytes((tmp_path / "big.json").read_bytes())  # not audio
    shown = _cli("predict", str(tmp_path), "--skip-errors")  # the folder walk lists the FIFO
    assert "pipe.wav: cannot read audio header (not a regular file)" in shown.stderr
