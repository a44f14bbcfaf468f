"""The Whisper audio encoder in PyTorch, its log-mel frontend, and weight loading.

:class:`WhisperEncoder` follows OpenAI's encoder (Radford et al., 2022): two 1-D convolutions
(``n_mels -> d``, kernel 3; ``d -> d``, kernel 3, stride 2) with GELU, additive positional
embeddings, ``N`` pre-LayerNorm transformer layers, a final LayerNorm. Unlike the reference
implementations it

- accepts any input length up to ``2 * max_positions`` mel frames (30 s) without padding: the
  positional table is sliced to the number of frames;
- takes optional ``lengths`` so a padded batch gives exactly the per-utterance result (the
  padding is zeroed before each convolution and masked out of attention);
- returns every hidden state (the ``transformers`` convention: ``hidden_states[0]`` is the
  input of the first layer, ``hidden_states[-1]`` the final LayerNorm output).

Weights come from a CTranslate2 Whisper model directory (:meth:`WhisperEncoder.from_ct2`,
read with :func:`read_ct2_model`, no CTranslate2 needed) or from a ``transformers`` Whisper
checkpoint, by hub id or local folder (:meth:`WhisperEncoder.from_pretrained`).

The key projection of Whisper has no bias. A bias on the keys would only add ``q . b_k`` to
every score of a query, a constant that softmax cancels, so CTranslate2's fused q/k/v bias
(whose key part the converter fills with zeros) is split and its key part dropped exactly.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emobridge.errors import ConfigError, FeatureError

#: Whisper frontend constants (all model sizes).
SAMPLE_RATE_HZ = 16_000
N_FFT = 400
HOP_LENGTH_SAMPLES = 160
#: Mel frames in one 30-s window and encoder frames per second (conv2 has stride 2).
WINDOW_MEL_FRAMES = 3000
ENCODER_FRAME_RATE_HZ = 50

# ---------------------------------------------------------------------------------------------
# CTranslate2 model.bin reader
# ---------------------------------------------------------------------------------------------

#: CTranslate2's DataType ids (include/ctranslate2/types.h; model_spec.py's ``_dtype_to_type_id``).
CT2_DTYPES: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16",
                              5: "bfloat16"}
#: Binary versions with the layout read here (per variable: dtype id + byte count).
CT2_BINARY_VERSIONS = (4, 5, 6)


@dataclass
class Ct2Checkpoint:
    """The variables of a CTranslate2 ``model.bin``.

    ``variables`` maps names (``"encoder/layer_0/ffn/linear_0/weight"``) to numpy arrays in
    their stored dtype, except bfloat16, which numpy lacks and is widened to float32.
    Aliases are resolved: an alias name maps to the same array as its target.
    """

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


def read_ct2_model(path: str | os.PathLike[str],
                   include: Callable[[str], bool] | None = None) -> Ct2Checkpoint:
    """Read a CTranslate2 ``model.bin`` (or the directory holding it).

    Layout (little-endian, as CTranslate2's ``ModelSpec._serialize`` writes it): ``u32``
    binary version, string spec name, ``u32`` spec revision, ``u32`` variable count; per
    variable a string name, ``u8`` rank, ``rank x u32`` shape, ``u8`` dtype id, ``u32`` byte
    count and the raw bytes; then ``u32`` alias count and (alias, target) string pairs. A
    string is a ``u16`` length that counts a trailing NUL, then the UTF-8 bytes and the NUL.

    ``include(name)`` selects variables to load (the others are skipped with a seek, so
    reading only the encoder of a large model is cheap). Raises :class:`FeatureError` naming
    the file on a truncated or malformed file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FeatureError(f"{path}: CTranslate2 model file not found")
    try:
        with open(path, "rb") as fh:
            return _read_ct2_stream(fh, path, include)
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise FeatureError(f"{path}: not a valid CTranslate2 model.bin ({exc})") from None


def _read_ct2_stream(fh: Any, path: Path, include: Callable[[str], bool] | None
                     ) -> Ct2Checkpoint:
    def take(n: int) -> bytes:
        data = fh.read(n)
        if len(data) != n:
            raise FeatureError(f"{path}: file is truncated at byte {fh.tell()} "
                               f"(wanted {n} more bytes)")
        return data

    def u(fmt: str) -> int:
        return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

    def string() -> str:
        raw = take(u("H"))
        if not raw or raw[-1] != 0:
            raise FeatureError(f"{path}: malformed string before byte {fh.tell()}")
        return raw[:-1].decode("utf-8")

    version = u("I")
    if version not in CT2_BINARY_VERSIONS:
        raise FeatureError(f"{path}: unsupported CTranslate2 binary version {version} "
                           f"(supported: {list(CT2_BINARY_VERSIONS)})")
    ckpt = Ct2Checkpoint(binary_version=version, spec_name=string(), spec_revision=u("I"))
    for _ in range(u("I")):
        name = string()
        shape = tuple(u("I") for _ in range(u("B")))
        type_id = u("B")
        n_bytes = u("I")
        if type_id not in CT2_DTYPES:
            raise FeatureError(f"{path}: variable {name!r} has unknown dtype id {type_id}")
        dtype = CT2_DTYPES[type_id]
        item = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if n_bytes != item * math.prod(shape):
            raise FeatureError(f"{path}: variable {name!r} of shape {shape} and dtype {dtype} "
                               f"declares {n_bytes} bytes")
        if include is not None and not include(name):
            fh.seek(n_bytes, os.SEEK_CUR)
            continue
        raw = take(n_bytes)
        if dtype == "bfloat16":  # the upper half of a float32
            array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
        ckpt.variables[name] = array.reshape(shape)
    n_aliases = u("I")
    for _ in range(n_aliases):
        alias, target = string(), string()
        ckpt.aliases[alias] = target
        for suffix in ("", "_scale"):
            if target + suffix in ckpt.variables:
                ckpt.variables[alias + suffix] = ckpt.variables[target + suffix]
    return ckpt


# ---------------------------------------------------------------------------------------------
# log-mel frontend
# ---------------------------------------------------------------------------------------------


def mel_filter_bank(n_mels: int = 80, n_fft: int = N_FFT,
                    sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Triangular mel filters ``(n_mels, n_fft // 2 + 1)`` as OpenAI's Whisper uses them
    (``librosa.filters.mel(norm="slaney", htk=False)``): Slaney mel scale (linear below
    1 kHz, logarithmic above) from 0 Hz to Nyquist, each triangle scaled to unit area,
    float32; :func:`emobridge.features.mel.mel_filterbank` with Whisper's settings."""
    # Imported here: emobridge.features (its store needs pandas) is not needed by the
    # encoder-only paths (top layers, export) that import this module.
    from emobridge.features.mel import mel_filterbank

    return mel_filterbank(sample_rate_hz, n_fft, n_mels, 0.0, None, "slaney", "slaney")


class WhisperLogMel(nn.Module):
    """Whisper's log-mel frontend: ``(batch, samples)`` -> ``(batch, n_mels, frames)``.

    Hann window of ``n_fft = 400`` samples, hop 160 (100 frames/s at 16 kHz), centred frames,
    power spectrum, mel filters, ``log10(max(x, 1e-10))``, floored at (per-utterance maximum
    - 8), then ``(x + 4) / 4``.

    ``n_frames`` (default ``samples // 160``, what Whisper keeps of an unpadded signal) sets
    the output length; the signal is zero-padded far enough that every returned frame equals
    the frame Whisper computes on the same audio zero-padded to 30 s, so ``n_frames=3000``
    reproduces Whisper's padded input exactly.
    """

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("filters", torch.from_numpy(mel_filter_bank(n_mels)),
                             persistent=False)

    def forward(self, wave: torch.Tensor, n_frames: int | None = None) -> torch.Tensor:
        squeeze = wave.dim() == 1
        wave = wave.unsqueeze(0) if squeeze else wave
        n_samples = wave.shape[-1]
        n_frames = n_samples // HOP_LENGTH_SAMPLES if n_frames is None else int(n_frames)
        if n_frames < 1:
            raise FeatureError(f"audio of {n_samples} samples is shorter than one Whisper "
                               f"frame ({HOP_LENGTH_SAMPLES} samples at {SAMPLE_RATE_HZ} Hz)")
        # Pad so the last kept frame's window (+- n_fft/2) sees zeros, not reflections.
        pad = max(0, n_frames * HOP_LENGTH_SAMPLES + N_FFT // 2 - n_samples)
        wave = F.pad(wave.float(), (0, pad))
        spec = torch.stft(wave, N_FFT, HOP_LENGTH_SAMPLES, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)[..., :n_frames]
        mel = self.filters @ spec.abs().pow(2)
        log_mel = mel.clamp(min=1e-10).log10()
        peak = log_mel.amax(dim=(-2, -1), keepdim=True)
        log_mel = (torch.maximum(log_mel, peak - 8.0) + 4.0) / 4.0
        return log_mel[0] if squeeze else log_mel


# ---------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhisperEncoderConfig:
    """Shape of a Whisper encoder (defaults: Whisper base)."""

    n_mels: int = 80
    d_model: int = 512
    n_layers: int = 6
    n_heads: int = 8
    ffn_dim: int = 2048
    max_positions: int = 1500
    layer_norm_eps: float = 1e-5

    @property
    def max_mel_frames(self) -> int:
        """Longest input in mel frames (30 s for every released Whisper)."""
        return 2 * self.max_positions

    @classmethod
    def from_hf(cls, config: Any) -> WhisperEncoderConfig:
        """From a ``transformers.WhisperConfig``."""
        if getattr(config, "activation_function", "gelu") != "gelu":
            raise FeatureError(f"Whisper config: only GELU encoders are supported, got "
                               f"{config.activation_function!r}")
        return cls(n_mels=config.num_mel_bins, d_model=config.d_model,
                   n_layers=config.encoder_layers, n_heads=config.encoder_attention_heads,
                   ffn_dim=config.encoder_ffn_dim, max_positions=config.max_source_positions)


class WhisperEncoderOutput(NamedTuple):
    """Result of :meth:`WhisperEncoder.forward`.

    ``last_hidden_state``: ``(batch, frames, d)``; ``hidden_states``: ``n_layers + 1`` such
    tensors or ``None``; ``lengths``: valid output frames per row (``int64``).
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    lengths: torch.Tensor


def sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> torch.Tensor:
    """Whisper's sinusoidal positional table ``(length, channels)``: sines, then cosines."""
    if channels % 2:
        raise ConfigError(f"Whisper positional table: channels must be even, got {channels}")
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float64))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


class WhisperEncoderLayer(nn.Module):
    """Pre-LN transformer layer: ``x + attn(ln(x))``, then ``x + fc2(gelu(fc1(ln(x))))``."""

    def __init__(self, config: WhisperEncoderConfig) -> None:
        super().__init__()
        d = config.d_model
        if d % config.n_heads:
            raise ConfigError(f"Whisper encoder: d_model {d} is not divisible by n_heads "
                              f"{config.n_heads}")
        self.n_heads = config.n_heads
        self.attn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        self.ffn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(d, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, d)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        h = self.attn_norm(x)

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

        att = F.scaled_dot_product_attention(heads(self.q_proj(h)), heads(self.k_proj(h)),
                                             heads(self.v_proj(h)), attn_mask=attn_mask)
        x = x + self.out_proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder; see the module docstring. Build with :meth:`from_ct2`,
    :meth:`from_pretrained` or from a :class:`WhisperEncoderConfig` (random init)."""

    def __init__(self, config: WhisperEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or WhisperEncoderConfig()
        self.conv1 = nn.Conv1d(config.n_mels, config.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.d_model, config.d_model, kernel_size=3, stride=2,
                               padding=1)
        # Fixed (not trained), as in Whisper; a buffer so it follows .to(device).
        self.register_buffer("positional_embedding",
                             sinusoids(config.max_positions, config.d_model))
        self.layers = nn.ModuleList(WhisperEncoderLayer(config) for _ in range(config.n_layers))
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    @staticmethod
    def output_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames for ``mel_lengths`` mel frames: ``ceil(n / 2)``."""
        return (torch.as_tensor(mel_lengths) + 1) // 2

    def forward(self, mel: torch.Tensor, output_hidden_states: bool = False,
                lengths: torch.Tensor | None = None,
                max_hidden_state: int | None = None) -> WhisperEncoderOutput:
        """Encode log-mel features ``(batch, n_mels, frames)`` (or ``(n_mels, frames)``).

        ``lengths`` (mel frames per row) marks the padding of a batch of unequal utterances;
        each row then gets exactly the result it would get alone. Frames beyond
        ``max_mel_frames`` raise :class:`FeatureError` (split long audio into 30-s windows).
        ``max_hidden_state=m`` (with ``output_hidden_states``, ``m < n_layers``) stops after
        hidden state ``m`` (the input of layer ``m``): the layers above are not run, and
        ``hidden_states`` holds states ``0..m`` only (``last_hidden_state`` is state ``m``).
        """
        if mel.dim() == 2:
            mel = mel.unsqueeze(0)
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels:
            raise FeatureError(f"Whisper encoder expects (batch, {self.config.n_mels}, frames) "
                               f"log-mel features, got shape {tuple(mel.shape)}")
        b, _, t = mel.shape
        if t > self.config.max_mel_frames:
            raise FeatureError(f"Whisper encoder input has {t} mel frames; at most "
                               f"{self.config.max_mel_frames} (30 s) fit its positions")
        mel = mel.to(self.conv1.weight.dtype)
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.int64, device=mel.device)
        lengths = torch.as_tensor(lengths, device=mel.device).to(torch.int64)
        padded = bool((lengths < t).any())
        if padded:
            valid = torch.arange(t, device=mel.device)[None, :] < lengths[:, None]
            mel = mel * valid[:, None, :]
        x = F.gelu(self.conv1(mel))
        if padded:  # conv2 must see zeros past the end, as its own padding of a lone row
            x = x * valid[:, None, :]
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        out_lengths = self.output_lengths(lengths)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        attn_mask = None
        if padded:
            keys = torch.arange(x.shape[1], device=x.device)[None, :] < out_lengths[:, None]
            attn_mask = keys[:, None, None, :]
        states: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                states.append(x)
                if max_hidden_state is not None and i >= max_hidden_state:
                    return WhisperEncoderOutput(x, tuple(states), out_lengths)
            x = layer(x, attn_mask)
        x = self.layer_norm(x)
        if output_hidden_states:
            states.append(x)
        return WhisperEncoderOutput(x, tuple(states) if output_hidden_states else None,
                                    out_lengths)

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_ct2(cls, model_dir: str | os.PathLike[str],
                 device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> WhisperEncoder:
        """Build from a CTranslate2 Whisper model directory (or its ``model.bin``).

        Stored float16/bfloat16/float32 weights are widened to float32; int8/int16 weights are
        dequantised with their saved scales. The fused q/k/v projection is split.
        """
        ckpt = read_ct2_model(model_dir, include=lambda name: name.startswith("encoder/"))
        path = Path(model_dir)
        if not ckpt.spec_name.startswith("Whisper"):
            raise FeatureError(f"{path}: CTranslate2 model is a {ckpt.spec_name!r}, "
                               f"not a Whisper model")
        config, state = _state_from_ct2(ckpt.variables, path)
        model = cls(config)
        model.load_state_dict(state, strict=True)
        return model.to(device=device, dtype=dtype).eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str],
                        device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, **hf_kwargs: Any) -> WhisperEncoder:
        """Build from a ``transformers`` Whisper checkpoint: a hub id (``"openai/whisper-small"``)
        or a local folder saved with ``save_pretrained``. ``hf_kwargs`` go to
        ``WhisperModel.from_pretrained`` (``revision``, ``cache_dir``, ``local_files_only``...).
        """
        try:
            from transformers import WhisperModel
        except ImportError as exc:  # pragma: no cover - optional extra
            raise FeatureError("loading Whisper from the hub needs transformers "
                               "(pip install 'emobridge[encoders]')") from exc
        try:
            hf = WhisperModel.from_pretrained(str(name_or_path), **hf_kwargs)
        except (OSError, ValueError) as exc:
            raise FeatureError(f"cannot load Whisper model {str(name_or_path)!r}: {exc}"
                               ) from None
        return cls.from_hf_encoder(hf.encoder).to(device=device, dtype=dtype).eval()

    @classmethod
    def from_hf_encoder(cls, encoder: nn.Module) -> WhisperEncoder:
        """Copy the weights of a ``transformers`` ``WhisperEncoder`` module."""
        config = WhisperEncoderConfig.from_hf(encoder.config)
        src = {k: v.detach().float() for k, v in encoder.state_dict().items()}
        state = {"conv1.weight": src["conv1.weight"], "conv1.bias": src["conv1.bias"],
                 "conv2.weight": src["conv2.weight"], "conv2.bias": src["conv2.bias"],
                 "positional_embedding": src["embed_positions.weight"],
                 "layer_norm.weight": src["layer_norm.weight"],
                 "layer_norm.bias": src["layer_norm.bias"]}
        names = {"attn_norm": "self_attn_layer_norm", "q_proj": "self_attn.q_proj",
                 "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                 "out_proj": "self_attn.out_proj", "ffn_norm": "final_layer_norm",
                 "fc1": "fc1", "fc2": "fc2"}
        for i in range(config.n_layers):
            for ours, theirs in names.items():
                for p in ("weight", "bias"):
                    key = f"layers.{i}.{theirs}.{p}"
                    if key in src:
                        state[f"layers.{i}.{ours}.{p}"] = src[key]
        model = cls(config)
        model.load_state_dict(state, strict=True)
        return model


class WhisperTopLayers(nn.Module):
    """The top ``n`` transformer layers of a Whisper encoder and its final LayerNorm.

    Runs on the hidden state ``hidden_states[K]`` with ``K = n_layers - n`` (the frames the
    feature store holds for ``whisper:backend=torch,layer=K,pooling=none``; the positional
    embedding is already in them), so the lower layers are computed once and cached while the
    top ``n`` are fine-tuned: ``top(hidden_states[K], mask)`` equals ``last_hidden_state``.
    Build with :meth:`from_encoder`.
    """

    def __init__(self, config: WhisperEncoderConfig, n_layers: int) -> None:
        super().__init__()
        if not 1 <= n_layers <= config.n_layers:
            raise ConfigError(f"Whisper top layers: n must be in 1..{config.n_layers} "
                              f"(the encoder's layers), got {n_layers}")
        self.config = config
        self.first_layer = config.n_layers - n_layers
        self.layers = nn.ModuleList(WhisperEncoderLayer(config) for _ in range(n_layers))
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    @classmethod
    def from_encoder(cls, encoder: WhisperEncoder, n_layers: int) -> WhisperTopLayers:
        """A copy of ``encoder``'s top ``n_layers`` layers and final LayerNorm (float32)."""
        top = cls(encoder.config, n_layers)
        for mine, theirs in zip(top.layers, encoder.layers[top.first_layer:], strict=True):
            mine.load_state_dict(theirs.state_dict())
        top.layer_norm.load_state_dict(encoder.layer_norm.state_dict())
        return top.float()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(batch, frames, d_model)``, ``mask`` ``(batch, frames)`` True on real
        frames -> the encoder's output frames (padding rows are not meaningful)."""
        attn_mask = None if mask is None or bool(mask.all()) else mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attn_mask)
        return self.layer_norm(x)


def _dequantise(variables: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """Variable ``name`` as float32, dividing int8/int16 weights by their saved scale."""
    value = variables[name]
    if value.dtype in (np.int8, np.int16):
        scale = variables.get(name + "_scale")
        if scale is None:
            raise FeatureError(f"quantised variable {name!r} has no {name}_scale")
        scale = np.asarray(scale, dtype=np.float32)
        # int8: one scale per output row (conv weights flattened to 2-D); int16: one scalar.
        shape = (-1,) + (1,) * (value.ndim - 1) if scale.ndim == 1 else ()
        value = value.astype(np.float32) / scale.reshape(shape)
    return torch.from_numpy(np.array(value, dtype=np.float32))


def _state_from_ct2(variables: dict[str, np.ndarray], path: Path
                    ) -> tuple[WhisperEncoderConfig, dict[str, torch.Tensor]]:
    """Map CTranslate2's WhisperEncoderSpec variables onto :class:`WhisperEncoder`."""
    def get(name: str) -> torch.Tensor:
        full = "encoder/" + name
        if full not in variables:
            raise FeatureError(f"{path}: CTranslate2 Whisper model lacks variable {full!r}")
        return _dequantise(variables, full)

    n_layers = 0
    while f"encoder/layer_{n_layers}/ffn/linear_0/weight" in variables:
        n_layers += 1
    conv1 = get("conv1/weight")
    heads = variables.get("encoder/num_heads")
    config = WhisperEncoderConfig(
        n_mels=conv1.shape[1], d_model=conv1.shape[0], n_layers=n_layers,
        n_heads=int(heads) if heads is not None else 8,  # CTranslate2's default
        ffn_dim=get("layer_0/ffn/linear_0/weight").shape[0] if n_layers else 4 * conv1.shape[0],
        max_positions=get("position_encodings/encodings").shape[0])
    d = config.d_model
    state = {"conv1.weight": conv1, "conv1.bias": get("conv1/bias"),
             "conv2.weight": get("conv2/weight"), "conv2.bias": get("conv2/bias"),
             "positional_embedding": get("position_encodings/encodings"),
             "layer_norm.weight": get("layer_norm/gamma"),
             "layer_norm.bias": get("layer_norm/beta")}
    for i in range(n_layers):
        p, q = f"layer_{i}/", f"layers.{i}."
        qkv_w, qkv_b = get(p + "self_attention/linear_0/weight"), get(
            p + "self_attention/linear_0/bias")
        if qkv_w.shape != (3 * d, d):
            raise FeatureError(f"{path}: layer {i}: fused q/k/v weight has shape "
                               f"{tuple(qkv_w.shape)}, expected {(3 * d, d)}")
        state.update({
            q + "attn_norm.weight": get(p + "self_attention/layer_norm/gamma"),
            q + "attn_norm.bias": get(p + "self_attention/layer_norm/beta"),
            q + "q_proj.weight": qkv_w[:d], q + "q_proj.bias": qkv_b[:d],
            q + "k_proj.weight": qkv_w[d: 2 * d],  # key bias dropped: softmax cancels it
            q + "v_proj.weight": qkv_w[2 * d:], q + "v_proj.bias": qkv_b[2 * d:],
            q + "out_proj.weight": get(p + "self_attention/linear_1/weight"),
            q + "out_proj.bias": get(p + "self_attention/linear_1/bias"),
            q + "ffn_norm.weight": get(p + "ffn/layer_norm/gamma"),
            q + "ffn_norm.bias": get(p + "ffn/layer_norm/beta"),
            q + "fc1.weight": get(p + "ffn/linear_0/weight"),
            q + "fc1.bias": get(p + "ffn/linear_0/bias"),
            q + "fc2.weight": get(p + "ffn/linear_1/weight"),
            q + "fc2.bias": get(p + "ffn/linear_1/bias"),
        })
    return config, state
