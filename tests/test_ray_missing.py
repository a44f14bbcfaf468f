"""``--executor`` / ``executor:`` without Ray installed, and bad executor settings: one clear
line, no traceback (runs whether or not the ray extra is installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from emobridge.cli import main
from emobridge.errors import ConfigError
from emobridge.experiments.config import validate_config
from emobridge.experiments.executors import LocalExecutor, make_executor
from emobridge.raycluster import RAY_MISSING
from tests.test_pipeline_cells import _cfg

MESSAGE = "--executor ray needs the ray extra: pip install emobridge[ray]"


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError


def _config_file(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_cfg(tmp_path, **overrides)))
    return path


def test_missing_ray_is_one_config_error(no_ray, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert RAY_MISSING == MESSAGE
    with pytest.raises(ConfigError, match=r"^--executor ray needs the ray extra"):
        make_executor("ray")
    assert main(["run", str(_config_file(tmp_path)), "--executor", "ray"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: {MESSAGE}"
    # `executor: ray` in the config: same line, nothing written.
    cfg = _config_file(tmp_path, executor="ray", output_dir=str(tmp_path / "out"))
    assert main(["run", str(cfg)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {MESSAGE}"
    assert not (tmp_path / "out").exists()
    assert main(["features", "extract", str(tmp_path / "m.csv"), "-e", "logmel", "-o",
                 str(tmp_path / "store"), "--executor", "ray"]) == 1
    assert capsys.readouterr().err.strip() == f"error: {MESSAGE}"


def test_executor_settings_are_checked(tmp_path: Path) -> None:
    assert isinstance(make_executor("local", 2), LocalExecutor)
    with pytest.raises(ConfigError, match="unknown executor 'spark'"):
        make_executor("spark")
    with pytest.raises(ConfigError, match="--address needs --executor ray"):
        make_executor("local", address="auto")
    with pytest.raises(ConfigError, match="executor"):
        validate_config(_cfg(tmp_path, executor="spark"), "grid.yaml", check_registries=False)
    with pytest.raises(ConfigError, match="address.*expected auto, ray://HOST:PORT"):
        validate_config(_cfg(tmp_path, executor="ray", address="http://x y"), "grid.yaml",
                        check_registries=False)
    cfg = validate_config(_cfg(tmp_path, executor="ray", address="ray://head:10001"),
                          "grid.yaml", check_registries=False)
    assert (cfg.executor, cfg.address) == ("ray", "ray://head:10001")
    assert validate_config(_cfg(tmp_path), "grid.yaml", check_registries=False).executor == \
        "local"


def test_cli_rejects_bad_executor_and_address(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = _config_file(tmp_path)
    assert main(["run", str(config), "--executor", "spark"]) == 1
    assert "unknown executor 'spark'; choose one of local, ray" in capsys.readouterr().err
    assert main(["run", str(config), "--address", "auto"]) == 1  # config says local
    assert "--address needs --executor ray" in capsys.readouterr().err


def test_an_address_nothing_answers_on_fails_at_once() -> None:
    import socket
    import time

    from emobridge.raycluster import check_reachable

    with socket.socket() as s:  # a port nobody listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="cannot reach"):
        check_reachable(f"ray://127.0.0.1:{port}")
    check_reachable("auto")  # resolved by Ray itself
    assert time.monotonic() - start < 10  # not Ray's minutes of retries


def test_a_port_without_ray_behind_it_fails_in_seconds() -> None:
    """A server that accepts connections but is no gRPC server (silent, or HTTP/1.1) is
    refused within the timeout (Ray itself takes 25 s); a real GCS passes
    (tests/test_ray_executor.py)."""
    import socket
    import threading
    import time

    from emobridge.raycluster import check_reachable

    def http_reply(server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    for reply in (None, http_reply):
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            if reply is not None:
                threading.Thread(target=reply, args=(server,), daemon=True).start()
            start = time.monotonic()
            with pytest.raises(ConfigError, match="does not answer as a Ray cluster"):
                check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=1.0)
            assert time.monotonic() - start < 3
