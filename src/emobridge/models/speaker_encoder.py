"""The GE2E speaker encoder (Wan et al., 2018) with the pretrained weights of Resemblyzer.

Network: ``LSTM(40 -> 256, 3 layers, batch_first)`` over 160-frame mel windows, the final
hidden state of the last layer -> ``Linear(256, 256)`` -> ReLU -> L2 normalisation. Weights:
``resemblyzer/pretrained.pt`` of the PyPI wheel ``resemblyzer==0.1.4`` (Apache-2.0), found
without importing resemblyzer (which needs webrtcvad), or the file named by the environment
variable ``EMOBRIDGE_GE2E_WEIGHTS``. It is read with ``torch.load(weights_only=True)`` only.

:meth:`SpeakerEncoder.embed_utterances` reproduces resemblyzer's ``embed_utterance``:
16 kHz, power mel spectrogram (``librosa.feature.melspectrogram``, written out in numpy in
:mod:`emobridge.features.mel`; 40 bands, 25-ms window, 10-ms step, no log), partials of 160
frames at 1.3 per second (the last one kept when it is at least 75 % covered, zero-padded),
the L2-normalised mean of the partial embeddings.
Resemblyzer's ``preprocess_wav`` (volume to -30 dBFS, increase only; webrtcvad to shorten
silences) is replaced by :func:`preprocess`: the same volume rule, and leading / trailing
silence cut with :func:`emobridge.audio.trim_silence` (35 dB below the loudest 25-ms frame).
No webrtcvad dependency; pauses inside an utterance stay (acted-emotion utterances are
single sentences with short pauses, so the difference to VAD trimming is small).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emobridge.errors import FeatureError
from emobridge.features.mel import mel_filterbank, power_spectrogram

SAMPLE_RATE_HZ = 16_000
N_MELS = 40
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
PARTIAL_FRAMES = 160  # 1.6 s
HIDDEN = 256
EMBEDDING = 256
N_LAYERS = 3
#: Resemblyzer's volume target (dBFS, increase only) and our silence-trim threshold (dB).
TARGET_DBFS = -30.0
TRIM_DB = 35.0
#: Environment variable naming a weights file (a dict with ``model_state``).
WEIGHTS_ENV = "EMOBRIDGE_GE2E_WEIGHTS"
_HOW_TO_GET = "install it with: pip install --no-deps resemblyzer==0.1.4"
_EXPECTED_KEYS = frozenset(
    [f"lstm.{kind}_l{i}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
     for i in range(N_LAYERS)] + ["linear.weight", "linear.bias"])


def default_weights_path() -> Path:
    """``$EMOBRIDGE_GE2E_WEIGHTS`` if set, else ``pretrained.pt`` of the installed resemblyzer
    package (located with ``importlib.util.find_spec``, not imported)."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    try:
        spec = importlib.util.find_spec("resemblyzer")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FeatureError(f"GE2E weights: package 'resemblyzer' (file resemblyzer/pretrained.pt)"
                           f" not found; {_HOW_TO_GET}, or set {WEIGHTS_ENV} to the file")
    return Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"


def load_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The ``model_state`` tensors of a GE2E weights file; any problem -> one FeatureError."""
    path = Path(path)
    if not path.is_file():
        raise FeatureError(f"GE2E weights: no file {path}; {_HOW_TO_GET}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types; one line for all of them
        raise FeatureError(f"GE2E weights: {path} is not a readable weights file "
                           f"({type(exc).__name__}); {_HOW_TO_GET}") from None
    state = checkpoint.get("model_state") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not set(state) >= _EXPECTED_KEYS or not all(
            isinstance(state[k], torch.Tensor) for k in _EXPECTED_KEYS):
        raise FeatureError(f"GE2E weights: {path} has no 'model_state' with the GE2E keys "
                           f"(lstm.*_l0..2, linear.*); {_HOW_TO_GET}")
    return {k: state[k] for k in _EXPECTED_KEYS}


def preprocess(wave: np.ndarray) -> np.ndarray:
    """Raise the volume to -30 dBFS RMS (never lower it), then cut leading / trailing silence.

    The volume rule is resemblyzer's ``normalize_volume(increase_only=True)``; the silence
    cut replaces its webrtcvad step (see the module docstring)."""
    from emobridge.audio import trim_silence

    wave = np.asarray(wave, dtype=np.float32)
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms > 0:
        change_db = TARGET_DBFS - 20.0 * np.log10(rms)
        if change_db > 0:
            wave = (wave * 10.0 ** (change_db / 20.0)).astype(np.float32)
    trimmed = trim_silence(wave, SAMPLE_RATE_HZ, top_db=TRIM_DB)
    # An utterance trimmed below one window keeps its full length.
    return trimmed if trimmed.size >= WINDOW_SAMPLES else wave


def partial_slices(n_samples: int, rate: float = 1.3, min_coverage: float = 0.75
                   ) -> list[slice]:
    """Mel-frame slices of the partial utterances (resemblyzer's ``compute_partial_slices``)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP_SAMPLES))
    frame_step = int(np.round((SAMPLE_RATE_HZ / rate) / HOP_SAMPLES))
    if not 0 < frame_step <= PARTIAL_FRAMES or not 0 < min_coverage <= 1:
        raise FeatureError(f"GE2E: rate {rate} must give a step in 1..{PARTIAL_FRAMES} frames "
                           f"and min_coverage {min_coverage} must be in (0, 1]")
    steps = max(1, n_frames - PARTIAL_FRAMES + frame_step + 1)
    slices = [slice(i, i + PARTIAL_FRAMES) for i in range(0, steps, frame_step)]
    last = slices[-1]
    coverage = (n_samples - last.start * HOP_SAMPLES) / (PARTIAL_FRAMES * HOP_SAMPLES)
    if coverage < min_coverage and len(slices) > 1:
        slices = slices[:-1]
    return slices


@functools.cache
def _mel_basis() -> np.ndarray:
    """The 40 Slaney-scale, unit-area mel filters over 0-8 kHz (librosa's defaults)."""
    return mel_filterbank(SAMPLE_RATE_HZ, WINDOW_SAMPLES, N_MELS)


def mel_partials(wave: np.ndarray, rate: float = 1.3, min_coverage: float = 0.75
                 ) -> np.ndarray:
    """``(n_partials, 160, 40)`` float32 power-mel windows of one 16-kHz waveform
    (``librosa.feature.melspectrogram`` with resemblyzer's settings, written out in numpy)."""
    slices = partial_slices(len(wave), rate, min_coverage)
    needed = slices[-1].stop * HOP_SAMPLES
    if needed >= len(wave):
        wave = np.pad(wave, (0, needed - len(wave)))
    mel = _mel_basis() @ power_spectrogram(wave, WINDOW_SAMPLES, HOP_SAMPLES)
    mel = mel.astype(np.float32).T
    return np.stack([mel[s] for s in slices])


class SpeakerEncoder(nn.Module):
    """GE2E speaker encoder; :meth:`from_pretrained` loads the Resemblyzer weights."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, N_LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, EMBEDDING)
        self.relu = nn.ReLU()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str] | None = None,
                        device: object = "cpu") -> SpeakerEncoder:
        """The encoder with the weights at ``path`` (default :func:`default_weights_path`),
        in eval mode on ``device`` (``emobridge.runtime.resolve_device`` names)."""
        from emobridge import runtime

        model = cls()
        model.load_state_dict(load_state(path or default_weights_path()))
        return model.eval().to(runtime.torch_device(device))

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """``(batch, frames, 40)`` mel windows -> ``(batch, 256)`` L2-normalised embeddings."""
        _, (hidden, _) = self.lstm(mels)
        raw = self.relu(self.linear(hidden[-1]))
        # (the clamp only matters for an all-zero ReLU output, which would give NaN)
        return raw / torch.norm(raw, dim=1, keepdim=True).clamp_min(1e-12)

    def embed_utterances(self, waves: Sequence[np.ndarray], *, rate: float = 1.3,
                         min_coverage: float = 0.75, preprocessed: bool = False,
                         batch_size: int = 256) -> np.ndarray:
        """``(n, 256)`` float32 utterance embeddings of 16-kHz mono waveforms.

        All partials of all utterances go through the LSTM together, ``batch_size`` at a time
        (every partial has 160 frames, so batching needs no padding and changes nothing).
        ``preprocessed=False`` applies :func:`preprocess` first."""
        if not len(waves):
            return np.zeros((0, EMBEDDING), dtype=np.float32)
        parts = [mel_partials(w if preprocessed else preprocess(w), rate, min_coverage)
                 for w in waves]
        stacked = torch.from_numpy(np.concatenate(parts))
        device = next(self.parameters()).device
        outs = []
        with torch.inference_mode():
            for s in range(0, len(stacked), batch_size):
                outs.append(self(stacked[s: s + batch_size].to(device)).float().cpu())
        partial = torch.cat(outs).numpy()
        bounds = np.cumsum([0] + [len(p) for p in parts])
        raw = np.stack([partial[a:b].mean(axis=0)
                        for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        return (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
