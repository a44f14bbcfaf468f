"""A small synthetic emotional speech corpus, so the whole pipeline runs with no real data.

Each utterance is a parametric voiced signal: a glottal-pulse train (Rosenberg pulses,
differentiated for lip radiation) whose pitch (mean and range), level, tempo (syllable rate,
i.e. the amplitude modulation) and jitter / shimmer depend on the *emotion*, filtered by a
cascade of formant resonators whose frequencies depend on the *language* (each language has
its own small vowel inventory, so the two "languages" differ in spectral envelope and hence
spectral centroid). Speakers vary in base pitch, vocal-tract length (formant scale), speaking
rate and level. Per-utterance random perturbations make the classes overlap, so emotion
recognition on it is learnable but not trivial, and a model trained on one language loses
accuracy on the other.

The corpus is written as 16-bit WAV, one folder per language in the ``folder`` reader
layout (``OUT/<language>/<emotion>/<speaker>_<emotion>_<kk>.wav``, speaker ids such as
``aa-f01``; scan ``OUT/aa`` with ``emobridge corpora scan folder OUT/aa -O language=aa``),
plus its own manifest ``OUT/manifest.csv`` covering every language (read it with
:func:`emobridge.corpora.read_manifest`) and ``OUT/synthetic.json`` holding the generation
parameters. ``emobridge synth OUT_DIR`` writes it from the command line.
"""

from __future__ import annotations

import errno
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy.signal import lfilter

from emobridge.corpora.manifest import make_manifest, read_manifest, write_manifest
from emobridge.corpora.taxonomy import canonical_emotion
from emobridge.errors import ConfigError
from emobridge.fileio import atomic_path, loads_json, write_json_atomic

#: Name of the manifest written next to the audio.
MANIFEST_NAME = "manifest.csv"
#: Name of the JSON file recording the generation parameters (written last: completion mark).
PARAMS_NAME = "synthetic.json"
#: Bumped when the synthesis changes, so a stale corpus on disk is regenerated.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class EmotionProsody:
    """How one emotion shapes the voice.

    Attributes
    ----------
    f0_scale:
        Mean pitch relative to the speaker's base pitch.
    f0_range_st:
        Peak-to-peak pitch excursion over the utterance, in semitones.
    level_db:
        Loudness relative to neutral, in dB (RMS).
    syllable_rate_hz:
        Syllables per second (the rate of the amplitude modulation).
    jitter:
        Relative standard deviation of consecutive glottal periods.
    shimmer:
        Relative standard deviation of consecutive pulse amplitudes.
    closing_quotient:
        Share of the period the glottis takes to close; short = pressed, bright voice.
    breathiness:
        Aspiration noise relative to the pulses.
    """

    f0_scale: float
    f0_range_st: float
    level_db: float
    syllable_rate_hz: float
    jitter: float
    shimmer: float
    closing_quotient: float
    breathiness: float


#: Prosody per canonical emotion. Values follow the usual acoustic correlates of acted
#: emotion (anger / happiness: high, wide pitch, loud, fast; sadness: low, flat, soft, slow,
#: breathy, unsteady).
EMOTION_PROSODY: dict[str, EmotionProsody] = {
    "neutral": EmotionProsody(1.00, 3.0, 0.0, 4.5, 0.008, 0.04, 0.16, 0.03),
    "anger": EmotionProsody(1.30, 7.0, 7.0, 5.6, 0.015, 0.06, 0.08, 0.02),
    "happiness": EmotionProsody(1.45, 10.0, 4.0, 5.0, 0.010, 0.05, 0.12, 0.03),
    "sadness": EmotionProsody(0.85, 1.5, -6.0, 3.0, 0.030, 0.10, 0.26, 0.12),
    "fear": EmotionProsody(1.55, 5.0, 1.0, 6.2, 0.035, 0.09, 0.14, 0.08),
    "boredom": EmotionProsody(0.90, 1.0, -3.0, 3.6, 0.010, 0.05, 0.20, 0.06),
}

#: Vowel formants (F1, F2, F3, F4 in Hz, adult male reference) per built-in language.
#: "aa" uses open / back vowels, "bb" close / front ones, "cc" central ones.
LANGUAGE_VOWELS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "aa": ((730.0, 1090.0, 2440.0, 3400.0), (570.0, 840.0, 2410.0, 3300.0),
           (640.0, 1190.0, 2390.0, 3350.0)),
    "bb": ((270.0, 2290.0, 3010.0, 3700.0), (390.0, 1990.0, 2550.0, 3600.0),
           (300.0, 2200.0, 2900.0, 3800.0)),
    "cc": ((490.0, 1350.0, 2500.0, 3500.0), (450.0, 1500.0, 2600.0, 3550.0),
           (520.0, 1250.0, 2450.0, 3450.0)),
}

#: Spectral tilt of each built-in language's envelope: the coefficient of a first-order
#: pre-emphasis ``y[n] = x[n] - a x[n-1]`` (positive = brighter); other languages get 0.3.
LANGUAGE_TILT: dict[str, float] = {"aa": 0.0, "bb": 0.7, "cc": 0.35}

_BANDWIDTHS_HZ = (80.0, 100.0, 140.0, 200.0)


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: base pitch, formant scale (vocal-tract length), rate, level."""

    speaker: str
    language: str
    gender: str
    base_f0_hz: float
    formant_scale: float
    rate_scale: float
    level_offset_db: float


def language_vowels(language: str) -> tuple[tuple[float, float, float, float], ...]:
    """The vowel inventory of a language: built-in for ``aa``/``bb``/``cc``, else derived
    deterministically from the name (three vowels with random F1/F2)."""
    if language in LANGUAGE_VOWELS:
        return LANGUAGE_VOWELS[language]
    rng = np.random.default_rng(zlib.crc32(language.encode()))
    vowels = []
    for _ in range(3):
        f1 = rng.uniform(280.0, 750.0)
        f2 = rng.uniform(max(900.0, 2.0 * f1), 2300.0)
        vowels.append((f1, f2, rng.uniform(2400.0, 3000.0), rng.uniform(3300.0, 3800.0)))
    return tuple(vowels)


def make_voice(speaker: str, language: str, gender: str, rng: np.random.Generator) -> Voice:
    """Draw a speaker's voice (``gender`` ``"f"`` or ``"m"``)."""
    if gender == "f":
        base_f0, scale = rng.normal(205.0, 15.0), rng.normal(1.14, 0.03)
    else:
        base_f0, scale = rng.normal(115.0, 9.0), rng.normal(1.0, 0.03)
    return Voice(speaker, language, gender, float(base_f0), float(scale),
                 float(rng.normal(1.0, 0.06)), float(rng.normal(0.0, 1.5)))


def _rosenberg_pulse(period_samples: int, closing_quotient: float) -> np.ndarray:
    """One glottal flow pulse (Rosenberg C): raised-cosine opening, quarter-cosine closing."""
    n = np.arange(period_samples, dtype=np.float64)
    t_open = max(2, int(round(0.40 * period_samples)))
    t_close = max(1, int(round(closing_quotient * period_samples)))
    pulse = np.zeros(period_samples)
    rise = n < t_open
    pulse[rise] = 0.5 * (1.0 - np.cos(np.pi * n[rise] / t_open))
    fall = (n >= t_open) & (n < t_open + t_close)
    pulse[fall] = np.cos(0.5 * np.pi * (n[fall] - t_open) / t_close)
    return pulse


def _formant_filter(signal: np.ndarray, formants_hz: Sequence[float],
                    sample_rate_hz: int) -> np.ndarray:
    """Cascade of 2-pole resonators with unity gain at 0 Hz (Klatt-style)."""
    out = signal
    nyquist = sample_rate_hz / 2.0
    for f, bw in zip(formants_hz, _BANDWIDTHS_HZ, strict=True):
        if f >= 0.95 * nyquist:
            continue
        r = np.exp(-np.pi * bw / sample_rate_hz)
        a1 = 2.0 * r * np.cos(2.0 * np.pi * f / sample_rate_hz)
        a2 = -r * r
        out = lfilter([1.0 - a1 - a2], [1.0, -a1, -a2], out)
    return out


def _pitch_track(t: np.ndarray, f0_mean: float, f0_range: float, n_syl: int, syl_s: float,
                 lead_s: float, rng: np.random.Generator) -> np.ndarray:
    """F0 in Hz per sample: declination plus one accent per syllable (semitones)."""
    x = np.clip((t - lead_s) / (n_syl * syl_s), 0.0, 1.0)
    contour = f0_range * (0.25 - 0.5 * x)
    accents = rng.uniform(-0.5, 0.5, n_syl) * f0_range
    for i, a in enumerate(accents):
        centre = lead_s + (i + 0.5) * syl_s
        contour += a * np.exp(-0.5 * ((t - centre) / (0.25 * syl_s)) ** 2)
    return f0_mean * 2.0 ** (contour / 12.0)


def _glottal_excitation(f0_track: np.ndarray, p: EmotionProsody, sample_rate_hz: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Glottal pulse train, period by period so jitter and shimmer are cycle-to-cycle."""
    n_total = f0_track.size
    flow = np.zeros(n_total + sample_rate_hz // 40)
    pos = 0.0
    cq = float(np.clip(p.closing_quotient * rng.normal(1.0, 0.08), 0.04, 0.4))
    while pos < n_total:
        f0 = f0_track[int(pos)] * (1.0 + p.jitter * rng.standard_normal())
        period = max(8, int(round(sample_rate_hz / max(f0, 40.0))))
        amp = 1.0 + p.shimmer * rng.standard_normal()
        start = int(pos)
        flow[start:start + period] += amp * _rosenberg_pulse(period, cq)
        pos += period
    excitation = np.diff(flow[: n_total + 1])  # lip radiation: differentiate the flow
    excitation /= np.max(np.abs(excitation)) + 1e-12
    return excitation + p.breathiness * rng.standard_normal(n_total)


def _articulate(excitation: np.ndarray, voice: Voice, n_syl: int, syl_s: float, lead_s: float,
                sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """Syllables: a vowel per syllable, formants scaled by the speaker's vocal tract,
    raised-cosine on / off ramps (the amplitude modulation at the syllable rate)."""
    vowels = language_vowels(voice.language)
    tilt = LANGUAGE_TILT.get(voice.language, 0.3)
    voiced_share = 0.7
    n_total = excitation.size
    out = np.zeros(n_total)
    for i in range(n_syl):
        start = int((lead_s + i * syl_s) * sample_rate_hz)
        length = int(voiced_share * syl_s * sample_rate_hz)
        stop = min(start + length, n_total)
        if stop - start < 16:
            continue
        vowel = vowels[int(rng.integers(len(vowels)))]
        formants = [f * voice.formant_scale * rng.normal(1.0, 0.03) for f in vowel]
        segment = _formant_filter(excitation[start:stop], formants, sample_rate_hz)
        segment = lfilter([1.0, -tilt], [1.0], segment)
        ramp = np.sin(np.pi * np.arange(stop - start) / (stop - start)) ** 0.6
        gain = rng.normal(1.0, 0.15)
        out[start:stop] += segment * ramp * gain
    return out


def synthesize_utterance(
    voice: Voice,
    emotion: str,
    rng: np.random.Generator,
    sample_rate_hz: int = 16_000,
    n_syllables: int | None = None,
) -> np.ndarray:
    """One utterance of ``voice`` speaking with ``emotion``, float32 in [-1, 1].

    Random per-utterance perturbations (about 5-10 % of each prosodic parameter) come from
    ``rng``; the number of syllables is drawn from 4-7 unless given.
    """
    p = EMOTION_PROSODY[emotion]
    n_syl = int(n_syllables or rng.integers(4, 8))
    rate = p.syllable_rate_hz * voice.rate_scale * rng.normal(1.0, 0.07)
    syl_s = 1.0 / max(rate, 1.0)
    lead_s = 0.08
    n_total = int((2 * lead_s + n_syl * syl_s) * sample_rate_hz)

    f0_mean = voice.base_f0_hz * p.f0_scale * rng.normal(1.0, 0.05)
    f0_range = p.f0_range_st * rng.normal(1.0, 0.12)
    t = np.arange(n_total) / sample_rate_hz
    f0_track = _pitch_track(t, f0_mean, f0_range, n_syl, syl_s, lead_s, rng)
    excitation = _glottal_excitation(f0_track, p, sample_rate_hz, rng)
    out = _articulate(excitation, voice, n_syl, syl_s, lead_s, sample_rate_hz, rng)

    voiced = out[np.abs(out) > 0]
    rms = float(np.sqrt(np.mean(voiced**2))) if voiced.size else 1.0
    level_db = p.level_db + voice.level_offset_db + rng.normal(0.0, 1.0)
    out *= 0.05 * 10.0 ** (level_db / 20.0) / max(rms, 1e-9)
    out += 1e-4 * rng.standard_normal(n_total)  # faint noise floor: never digital silence
    return np.clip(out, -0.99, 0.99).astype(np.float32)


@dataclass(frozen=True)
class SyntheticSpec:
    """The parameters of a generated corpus (stored in ``synthetic.json``)."""

    languages: tuple[str, ...] = ("aa", "bb")
    speakers_per_language: int = 6
    utterances_per_speaker_per_emotion: int = 4
    emotions: tuple[str, ...] = ("anger", "happiness", "neutral", "sadness")
    sample_rate_hz: int = 16_000
    seed: int = 0
    corpus: str = "synthetic"
    generator_version: int = GENERATOR_VERSION

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _check_spec(spec: SyntheticSpec) -> None:
    if not spec.languages or len(set(spec.languages)) != len(spec.languages):
        raise ConfigError(f"synthetic corpus: languages must be distinct and non-empty, "
                          f"got {list(spec.languages)}")
    for lang in spec.languages:
        if not lang or not lang.replace("-", "").isalnum():
            raise ConfigError(f"synthetic corpus: language code {lang!r} must be alphanumeric")
    if spec.speakers_per_language < 1 or spec.utterances_per_speaker_per_emotion < 1:
        raise ConfigError(
            "synthetic corpus: speakers_per_language and utterances_per_speaker_per_emotion "
            f"must be >= 1, got {spec.speakers_per_language} and "
            f"{spec.utterances_per_speaker_per_emotion}")
    for e in spec.emotions:
        if canonical_emotion(e) not in EMOTION_PROSODY:
            raise ConfigError(f"synthetic corpus: no prosody model for emotion {e!r}; "
                              f"available: {', '.join(EMOTION_PROSODY)}")
    if spec.sample_rate_hz < 8000:
        raise ConfigError(f"synthetic corpus: sample_rate_hz must be >= 8000, "
                          f"got {spec.sample_rate_hz}")


def generate_corpus(
    out_dir: str | os.PathLike[str],
    languages: Sequence[str] = ("aa", "bb"),
    speakers_per_language: int = 6,
    utterances_per_speaker_per_emotion: int = 4,
    seed: int = 0,
    emotions: Sequence[str] = ("anger", "happiness", "neutral", "sadness"),
    sample_rate_hz: int = 16_000,
    corpus: str = "synthetic",
) -> pd.DataFrame:
    """Write a synthetic emotional corpus under ``out_dir`` and return its manifest.

    Speakers alternate female / male (``aa-f01``, ``aa-m02``...; manifest speaker ids are
    ``<corpus>:<language>-<gender><nn>``). Everything is determined by ``seed``: the same
    arguments give byte-identical files. Files are written atomically; ``synthetic.json``
    is written last, so :func:`load_or_generate` can tell a finished corpus from an
    interrupted one.
    """
    spec = SyntheticSpec(tuple(languages), int(speakers_per_language),
                         int(utterances_per_speaker_per_emotion),
                         tuple(canonical_emotion(e) for e in emotions), int(sample_rate_hz),
                         int(seed), corpus)
    _check_spec(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for li, language in enumerate(spec.languages):
        for si in range(spec.speakers_per_language):
            gender = "f" if si % 2 == 0 else "m"
            spk = f"{language}-{gender}{si + 1:02d}"
            # One generator per speaker (seeded by seed, language index, speaker index): a
            # speaker's audio does not depend on how many other speakers are generated.
            rng = np.random.default_rng([spec.seed, li, si])
            voice = make_voice(spk, language, gender, rng)
            for emotion in spec.emotions:
                for k in range(spec.utterances_per_speaker_per_emotion):
                    wave = synthesize_utterance(voice, emotion, rng, spec.sample_rate_hz)
                    path = out / language / emotion / f"{spk}_{emotion}_{k + 1:02d}.wav"
                    _write_wav(path, wave, spec.sample_rate_hz)
                    rows.append({
                        "path": str(path.resolve()), "corpus": corpus, "language": language,
                        "speaker": f"{corpus}:{spk}", "gender": gender, "label": emotion,
                        "emotion": emotion, "duration_s": len(wave) / spec.sample_rate_hz,
                        "sample_rate": spec.sample_rate_hz,
                    })
    manifest = make_manifest(rows)
    if (out / PARAMS_NAME).exists():
        # Regenerating over an older synthetic corpus: drop its files that are not part of
        # this one, so a folder scan does not pick them up.
        keep = set(manifest["path"])
        for old in out.glob("*/*/*.wav"):
            if str(old.resolve()) not in keep:
                old.unlink()
        (out / PARAMS_NAME).unlink()
    write_manifest(manifest, out / MANIFEST_NAME)
    write_json_atomic(out / PARAMS_NAME, spec.to_json())
    return manifest


def _write_wav(path: Path, wave: np.ndarray, sample_rate_hz: int) -> None:
    """16-bit WAV, atomically; libsndfile's faults become an :class:`OSError` naming the file."""
    with atomic_path(path) as tmp:
        try:
            sf.write(str(tmp), wave, sample_rate_hz, subtype="PCM_16", format="WAV")
        except sf.LibsndfileError as exc:  # a full disk reads "System error."
            raise OSError(errno.EIO, f"cannot write audio (libsndfile: {exc}; is the disk "
                                     "full?)", str(path)) from None


def load_or_generate(out_dir: str | os.PathLike[str], **params) -> pd.DataFrame:
    """The manifest of the synthetic corpus in ``out_dir``, generating it when absent.

    A corpus whose ``synthetic.json`` records other parameters (or an older generator) is
    regenerated; ``params`` are those of :func:`generate_corpus`.
    """
    out = Path(out_dir)
    defaults = SyntheticSpec()
    wanted = SyntheticSpec(
        tuple(params.get("languages", defaults.languages)),
        int(params.get("speakers_per_language", defaults.speakers_per_language)),
        int(params.get("utterances_per_speaker_per_emotion",
                       defaults.utterances_per_speaker_per_emotion)),
        tuple(canonical_emotion(e) for e in params.get("emotions", defaults.emotions)),
        int(params.get("sample_rate_hz", defaults.sample_rate_hz)),
        int(params.get("seed", defaults.seed)),
        str(params.get("corpus", defaults.corpus)),
    )
    unknown = set(params) - {"languages", "speakers_per_language",
                             "utterances_per_speaker_per_emotion", "emotions",
                             "sample_rate_hz", "seed", "corpus"}
    if unknown:
        raise ConfigError(f"synthetic corpus: unknown option(s) {sorted(unknown)}")
    marker = out / PARAMS_NAME
    if marker.exists() and (out / MANIFEST_NAME).exists():
        try:
            stored = loads_json(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = None
        if stored == wanted.to_json():
            manifest = read_manifest(out / MANIFEST_NAME)
            if all(Path(p).exists() for p in manifest["path"]):
                return manifest
    return generate_corpus(out, wanted.languages, wanted.speakers_per_language,
                           wanted.utterances_per_speaker_per_emotion, wanted.seed,
                           wanted.emotions, wanted.sample_rate_hz, wanted.corpus)
