"""A tiny model bundle over generated tones, shared by the tests of emobridge.inference."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import voiced_tone, write_tone

CLASSES = ("anger", "happiness", "neutral", "sadness")
#: One pitch per class: a tone's class is learnable from its log-mel frames.
F0 = {"anger": 330.0, "happiness": 250.0, "neutral": 140.0, "sadness": 95.0}
EXTRACTOR = "logmel:preset=byols,n_mels=16"
TINY_SNSA = {"conv_channels": [4, 4], "kernel_size": 3, "lstm_hidden": 8, "attention_dim": 8,
             "dropout": 0.0}


def build_tiny_bundle(folder: Path, method: str = "source_only",
                      normalise: str = "global") -> Path:
    """Train ``method`` for a few epochs on 0.4-s tones and save it as a bundle."""
    from emobridge.features import build_extractor
    from emobridge.inference.bundle import save_bundle, training_summary
    from emobridge.methods import EmotionData, build_method

    ext = build_extractor(EXTRACTOR)
    feats, labels, speakers = [], [], []
    for i in range(24):
        label = i % 4
        wave = voiced_tone(0.4, F0[CLASSES[label]] * (1 + 0.02 * (i // 4)), seed=i)
        feats.append(ext.extract(wave, 16_000))
        labels.append(label)
        speakers.append(f"s{i % 3}")
    data = EmotionData(feats, labels, speakers, ["xx"] * 24, [str(i) for i in range(24)],
                       CLASSES)
    model = build_method(method, backbone_params=TINY_SNSA, epochs=8, batch_size=8,
                         lr=1e-2, device="cpu", seed=0, normalise=normalise).fit(data)
    return save_bundle(model, folder, extractor=EXTRACTOR, label_set="4class",
                       training=training_summary(data),
                       card={"intended_use": "tests only"})


#: Vector features of the adaptable bundle (88 eGeMAPS functionals: fast, two views of 44).
VECTOR_EXTRACTOR = "opensmile:feature_set=eGeMAPSv02"


def adaptable_source(n_speakers: int = 3, per_class: int = 4) -> tuple[Any, Any]:
    """Labelled source tones (pitch by class, shifted per speaker) and their vectors."""
    import numpy as np

    from emobridge.features import build_extractor
    from emobridge.methods import EmotionData

    ext = build_extractor(VECTOR_EXTRACTOR)
    feats, labels, speakers = [], [], []
    for s in range(n_speakers):
        for label in range(len(CLASSES)):
            for j in range(per_class):
                f0 = F0[CLASSES[label]] * (1 + 0.08 * s) * (1 + 0.01 * j)
                wave = voiced_tone(0.4, f0, seed=100 * s + 10 * label + j) * (0.5 + 0.2 * s)
                feats.append(ext.extract(wave, 16_000))
                labels.append(label)
                speakers.append(f"s{s}")
    n = len(feats)
    corpora = ["yy" if s == "s2" else "xx" for s in speakers]  # two corpora: a distance scale
    data = EmotionData(feats, labels, speakers, corpora, [str(i) for i in range(n)], CLASSES)
    return data, np.stack(feats)


def build_adaptable_bundle(folder: Path, speaker_embeddings: bool = True) -> Path:
    """A ``recommended`` bundle over :data:`VECTOR_EXTRACTOR` with a source memory (the
    same vectors stand in for speaker embeddings when ``speaker_embeddings``)."""
    from emobridge.inference.bundle import save_bundle, training_summary
    from emobridge.inference.memory import SourceMemory
    from emobridge.methods import build_method

    data, vectors = adaptable_source()
    model = build_method("recommended", views=2, rounds=[0.5], min_speaker_utterances=4,
                         max_iter=300).fit(data)
    memory = SourceMemory.from_data(data, vectors if speaker_embeddings else None,
                                    VECTOR_EXTRACTOR if speaker_embeddings else None)
    return save_bundle(model, folder, extractor=VECTOR_EXTRACTOR, label_set="4class",
                       training=training_summary(data), memory=memory,
                       card={"intended_use": "tests only"}, card_markdown="# test model\n")


_SHARED: dict[str, Path] = {}


def shared_adaptable_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One adaptable bundle per test session (a source memory with speaker embeddings)."""
    if "adaptable" not in _SHARED:
        _SHARED["adaptable"] = build_adaptable_bundle(
            tmp_path_factory.mktemp("adaptable") / "model")
    return _SHARED["adaptable"]


def user_folder(folder: Path, n_per_class: int = 6, shift: float = 1.15) -> list[Path]:
    """A user's recordings: tones of every class from two unseen 'speakers', pitch shifted
    by ``shift`` (a new domain); names carry the class for checks, never for the method."""
    paths = []
    for s in range(2):
        for emotion in CLASSES:
            for j in range(n_per_class):
                path = folder / f"u{s}_{emotion}_{j}.wav"
                write_tone(path, 0.4, F0[emotion] * shift * (1 + 0.1 * s) * (1 + 0.01 * j),
                           seed=1000 + 97 * s + j)
                paths.append(path)
    return paths


def shared_tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny bundle per test session (each test module wraps it in a fixture)."""
    if "bundle" not in _SHARED:
        _SHARED["bundle"] = build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "model")
    return _SHARED["bundle"]


def tone(path: Path, emotion: str = "anger", duration_s: float = 0.5, seed: int = 0) -> Path:
    return write_tone(path, duration_s=duration_s, f0_hz=F0[emotion], seed=seed)


__all__ = ["CLASSES", "EXTRACTOR", "F0", "VECTOR_EXTRACTOR", "build_adaptable_bundle",
           "build_tiny_bundle", "running_server", "shared_adaptable_bundle",
           "shared_tiny_bundle", "tone", "user_folder"]


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """``app`` served by a real uvicorn server on a free loopback port (in a thread); yields
    its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
