"""``emobridge serve`` as a user starts it: a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from emobridge.cli import main
from emobridge.inference.recognizer import DEFAULT_MODEL_ENV
from tests.inference_fixtures import CLASSES, shared_tiny_bundle, tone

SRC = Path(__file__).resolve().parents[1] / "src"


def test_serve_without_a_default_model_says_how_to_build_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(tmp_path / "absent"))
    assert main(["serve", "--port", "0"]) == 1
    assert "build_default_model.py" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter imports torch and warms up the extractor
def test_serve_subprocess_default_model(tmp_path_factory, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, DEFAULT_MODEL_ENV: str(shared_tiny_bundle(tmp_path_factory)),
           "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "emobridge.cli", "serve", "--port",
                             str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        wav = tone(tmp_path / "a.wav", "anger").read_bytes()
        body = httpx.post(f"{url}/v1/predict", files={"file": ("a.wav", wav)},
                          timeout=30).json()
        assert body["emotion"] in CLASSES
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and f"127.0.0.1:{port}" in out
