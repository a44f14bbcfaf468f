"""Property-based fuzzing of every surface that reads user data (issue "Reliability beyond a
fixed list"). Property: a generated input is accepted, or refused with an
:class:`~emobridge.errors.EmobridgeError` (the CLI's one ``error:`` line); never another
exception, never a 5xx. Profiles in ``conftest.py`` (short by default, ``--fuzz-long``)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from hypothesis import given
from hypothesis import strategies as st

from emobridge.errors import EmobridgeError

REPO = Path(__file__).parents[2]

#: Scalars and small containers a user might type into YAML / JSON / KEY=VALUE.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8)


# -- -p KEY=VALUE and method parameters ------------------------------------------------------


@given(st.lists(st.text(max_size=40), max_size=5),
       st.sampled_from(["recommended", "dann", "source_only", "nnpm", "mmd"]))
def test_params_parse_and_build_or_refuse(items, method):
    from emobridge.methods import build_method
    from emobridge.parsing import parse_pairs

    try:
        params = parse_pairs(items, "--param")
        build_method(method, **params).check_settings()
    except EmobridgeError:
        pass


# -- experiment configs ----------------------------------------------------------------------


def _paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _paths(value, (*prefix, i))


def _mutate(tree, path, value, delete):
    if not path:
        return value
    node = tree
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return tree


@given(st.data())
def test_configs_mutated_key_by_key_load_or_refuse(data):
    from emobridge.experiments.config import load_config

    base = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    paths = list(_paths(base))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        base = _mutate(base, path, data.draw(values), data.draw(st.booleans()))
        paths = list(_paths(base))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(base, allow_unicode=True), encoding="utf-8")
        with contextlib.suppress(EmobridgeError):
            load_config(cfg)


@given(st.text(max_size=300))
def test_config_text_loads_or_refuses(text):
    from emobridge.experiments.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "cfg.yaml"
        cfg.write_text(text, encoding="utf-8")
        with contextlib.suppress(EmobridgeError):
            load_config(cfg)


# -- audio headers and bodies ----------------------------------------------------------------

SUBTYPES = {"wav": ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW", "PCM_U8"],
            "flac": ["PCM_16", "PCM_24", "PCM_S8"]}


@st.composite
def audio_bytes(draw):
    fmt = draw(st.sampled_from(sorted(SUBTYPES)))
    rate = draw(st.sampled_from([8000, 16000, 22050, 44100]))
    channels = draw(st.integers(1, 3))
    n = draw(st.integers(0, 4000))
    wave = np.sin(np.arange(n) / 7.0)[:, None].repeat(channels, axis=1) * 0.5
    buf = io.BytesIO()
    sf.write(buf, wave, rate, subtype=draw(st.sampled_from(SUBTYPES[fmt])), format=fmt.upper())
    raw = bytearray(buf.getvalue())
    for _ in range(draw(st.integers(0, 6))):  # mutated header fields (first 64 bytes)
        if raw:
            raw[draw(st.integers(0, min(63, len(raw) - 1)))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        raw = raw[:draw(st.integers(0, len(raw)))]
    return fmt, bytes(raw)


@given(audio_bytes())
def test_audio_decodes_or_refuses(sample):
    from emobridge.audio import audio_info, load_audio

    fmt, raw = sample
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x.{fmt}"
        path.write_bytes(raw)
        try:
            audio_info(path, max_duration_s=60)
            wave = load_audio(path, 16_000, max_duration_s=60)
        except EmobridgeError:
            return
        assert wave.dtype == np.float32 and wave.ndim == 1 and np.all(np.isfinite(wave))


# -- manifests --------------------------------------------------------------------------------

COLUMNS = ["path", "speaker", "label", "emotion", "language", "corpus", "duration_s",
           "sample_rate", "gender", "extra"]
cells = st.one_of(st.none(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                  st.text(max_size=12))


@given(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=8, unique=True),
       st.integers(0, 5), st.data(), st.sampled_from(["csv", "tsv", "parquet"]))
def test_manifests_read_or_refuse(columns, rows, data, fmt):
    from emobridge.corpora.manifest import read_manifest

    frame = pd.DataFrame({c: [data.draw(cells) for _ in range(rows)] for c in columns})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"m.{fmt}"
        try:
            if fmt == "parquet":
                frame.astype(str).to_parquet(path) if columns else path.write_bytes(b"")
            else:
                frame.to_csv(path, sep="\t" if fmt == "tsv" else ",", index=False)
        except (ValueError, TypeError):  # pandas cannot write this frame: nothing to read
            return
        with contextlib.suppress(EmobridgeError):
            read_manifest(path)


# -- bundle metadata ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from tests.inference_fixtures import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("fuzz-bundle") / "bundle")


@given(st.data())
def test_bundle_json_mutations_load_or_refuse(bundle_dir, data):
    import shutil

    from emobridge.inference.bundle import load_bundle

    meta = json.loads((bundle_dir / "bundle.json").read_text())
    paths = [p for p in _paths(meta) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        meta = _mutate(meta, data.draw(st.sampled_from(paths)), data.draw(values),
                       data.draw(st.booleans()))
        paths = [p for p in _paths(meta) if p]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "b"
        shutil.copytree(bundle_dir, folder)
        text = json.dumps(meta, allow_nan=True)
        (folder / "bundle.json").write_text(text)
        try:
            bundle = load_bundle(folder)
        except EmobridgeError:
            return
        assert bundle.classes  # a bundle that loads can describe itself
        json.dumps(bundle.card, default=str)


# -- HTTP uploads -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(bundle_dir):
    from fastapi.testclient import TestClient

    from emobridge import Recognizer
    from emobridge.inference.service import create_app

    with TestClient(create_app(Recognizer.load(bundle_dir)), raise_server_exceptions=False
                    ) as c:
        yield c


@given(st.lists(st.one_of(st.binary(max_size=2000), audio_bytes().map(lambda s: s[1])),
                min_size=1, max_size=10),
       st.text(max_size=20), st.sampled_from(["audio/wav", "audio/flac", "text/plain", ""]),
       st.sampled_from(["/v1/predict", "/v1/adapt"]))
def test_uploads_get_an_answer_never_a_5xx(client, bodies, name, content_type, route):
    files = [("file", (name or "x", body, content_type)) for body in bodies]
    response = client.post(route, files=files)
    assert response.status_code < 500 or response.status_code in (503, 504), response.text
    if response.status_code >= 400:
        detail = response.json()
        assert isinstance(detail, dict) and detail  # a reason, not an empty body


def test_long_profile_is_registered():
    from hypothesis import settings

    assert settings.get_profile("long").max_examples == 1000
    assert math.isfinite(settings.get_profile("short").max_examples)
