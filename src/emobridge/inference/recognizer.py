"""Apply a model bundle to audio: :class:`Recognizer`.

Which standardisation statistics a prediction uses (``stats``):

- ``"bundle"`` -- those stored in the bundle (the training corpora). Used for a single file,
  a waveform, a service request and every segment of a timeline: one recording has no
  domain of its own.
- ``"domain"`` -- those of the files being labelled together (``predict_many``): a folder or
  manifest of the user's own recordings is a domain, and per-corpus standardisation is how
  cross-corpus models remove recording-condition shift. Needs at least
  :data:`MIN_DOMAIN_FILES` readable files.
- ``"auto"`` -- ``"domain"`` when the model standardises per corpus or per speaker and
  there are at least :data:`MIN_DOMAIN_FILES` files, else ``"bundle"``.

Every table says which statistics were used (column ``stats``) and which adaptation
(column ``adaptation``: ``none``, the adapted bundle's domain, or ``transductive`` for
recordings adapted to and labelled together by :meth:`Recognizer.adapt_predict`).

An adapted recognizer (:meth:`Recognizer.adapt`, or a bundle written by ``emobridge adapt``)
uses the adapted domain's statistics as its ``"bundle"`` statistics, so single files
predicted later are standardised like the recordings it adapted to.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from emobridge.errors import AudioError, EmobridgeError
from emobridge.inference.bundle import Bundle, load_bundle
from emobridge.inference.segment import SegmentMode, segment_wave

__all__ = ["AUDIO_EXTENSIONS", "DEFAULT_MODEL_ENV", "MIN_DOMAIN_FILES", "Prediction",
           "Recognizer", "default_model_path", "plot_timeline"]

AudioSource = str | os.PathLike | tuple[np.ndarray, int]
Stats = Literal["auto", "bundle", "domain"]

#: File suffixes taken from folders (what libsndfile decodes).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")
#: Environment variable naming another default bundle (tests, a site-wide model).
DEFAULT_MODEL_ENV = "EMOBRIDGE_DEFAULT_MODEL"
#: Fewest files whose statistics make a domain (``stats="auto"`` uses them from here on).
MIN_DOMAIN_FILES = 20
#: Longest recording a timeline reads (a single prediction uses the audio module's limit).
MAX_TIMELINE_S = 4 * 3600.0
_BUNDLE_KEY = "__bundle__"


def default_model_path() -> Path:
    """``$EMOBRIDGE_DEFAULT_MODEL`` or the bundle shipped in ``emobridge/inference/default``."""
    env = os.environ.get(DEFAULT_MODEL_ENV, "").strip()
    return Path(env) if env else Path(__file__).resolve().parent / "default"


@dataclass
class Prediction:
    """One prediction: the most probable ``label`` and every class's probability."""

    label: str
    probabilities: dict[str, float]
    duration_s: float
    source: str = "waveform"
    stats: str = "bundle"
    extra: dict[str, Any] = field(default_factory=dict)
    adaptation: str = "none"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.source, "duration_s": round(self.duration_s, 3),
                "emotion": self.label, "probabilities": self.probabilities,
                "stats": self.stats, "adaptation": self.adaptation}


class Recognizer:
    """Emotion recognition with a model bundle.

    >>> rec = Recognizer.load("runs/x/model")          # or Recognizer.default()
    >>> rec.predict("clip.wav").label
    'anger'
    >>> rec.predict_many(["a.wav", "b.wav"])           # DataFrame, one row per file
    >>> rec.timeline("interview.wav", segment="vad")   # DataFrame, one row per segment
    """

    def __init__(self, bundle: Bundle, batch_size: int = 16, device: str = "cpu") -> None:
        self.bundle = bundle
        self.device = device  # the extractor's too, where it takes one
        self.method = bundle.method
        self.classes: tuple[str, ...] = bundle.classes
        self.batch_size = batch_size
        self._extractor: Any = None
        #: speaker-embedding extractors by spec (loaded once; shared with adapted recognizers)
        self._speaker_extractors: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._add_bundle_statistics()

    # -- construction ------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> Recognizer:
        """The recognizer of the bundle in folder ``path`` (checked, see
        :func:`~emobridge.inference.bundle.load_bundle`)."""
        return cls(load_bundle(path, device=device), device=device)

    @classmethod
    def default(cls, device: str = "cpu") -> Recognizer:
        """The model shipped with emobridge (or ``$EMOBRIDGE_DEFAULT_MODEL``)."""
        path = default_model_path()
        if not (path / "bundle.json").exists():
            raise EmobridgeError(
                f"no default model in {path}: build it with 'python "
                "benchmarks/build_default_model.py --corpora-root DIR' (see its --help), set "
                f"{DEFAULT_MODEL_ENV} to a bundle folder, or pass --model BUNDLE")
        return cls.load(path, device=device)

    @property
    def card(self) -> dict[str, Any]:
        return self.bundle.card

    @property
    def adaptation(self) -> dict[str, Any] | None:
        """The domain this recognizer was adapted to (``None``: not adapted)."""
        return self.bundle.adaptation

    @property
    def adaptation_label(self) -> str:
        """What the ``adaptation`` column says for this recognizer's predictions."""
        info = self.adaptation
        if info is None:
            return "none"
        return f"adapted ({info.get('files')} files, {info.get('file_list_sha256')})"

    @property
    def bundle_stats_label(self) -> str:
        """What the ``stats`` column says for the bundle's statistics."""
        return "bundle" if self.adaptation is None else "adapted domain"

    @property
    def extractor(self) -> Any:
        """The bundle's feature extractor, built on first use."""
        if self._extractor is None:
            from emobridge.features.registry import build_extractor

            self._extractor = build_extractor(self.bundle.extractor_spec, device=self.device)
        return self._extractor

    @property
    def sample_rate_hz(self) -> int:
        return int(self.extractor.sample_rate_hz)

    def _add_bundle_statistics(self) -> None:
        """Pooled statistics under one key, so a per-corpus / per-speaker model can label
        one recording with the training corpora's statistics."""
        norm = getattr(self.method, "normaliser_", None)
        stats = getattr(norm, "stats_", None)
        if not stats or norm.mode in ("global", "none"):
            return
        key = (self.adaptation or {}).get("statistics_key")
        if key in stats:  # an adapted bundle: the adapted domain's statistics
            norm.stats_[_BUNDLE_KEY] = stats[key]
            return
        means = np.stack([m for m, _ in stats.values()])
        stds = np.stack([s for _, s in stats.values()])
        pooled_std = np.sqrt((stds ** 2).mean(axis=0) + means.var(axis=0))
        norm.stats_[_BUNDLE_KEY] = (means.mean(axis=0).astype(np.float32),
                                    np.maximum(pooled_std, norm.eps).astype(np.float32))

    # -- audio and features ---------------------------------------------------------------
    def read(self, source: AudioSource, max_duration_s: float | None = None
             ) -> tuple[np.ndarray, str]:
        """``source`` as a mono float32 waveform at the extractor's rate, and its name."""
        from emobridge.audio import load_audio, prepare_waveform

        if isinstance(source, tuple):
            if len(source) != 2:
                raise AudioError("expected a path or a (waveform, sample_rate) pair")
            wave, rate = source
            return prepare_waveform(np.asarray(wave), int(rate), self.sample_rate_hz), \
                "waveform"
        return load_audio(source, self.sample_rate_hz, max_duration_s=max_duration_s), \
            str(source)

    def features(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Features of waveforms at the extractor's rate."""
        with self._lock:  # extractors hold models that are not always thread safe
            return [np.asarray(f, dtype=np.float32) for f in
                    self.extractor.extract_batch(list(waves), self.sample_rate_hz)]

    def proba(self, feats: Sequence[np.ndarray], stats: str = "bundle") -> np.ndarray:
        """Class probabilities ``(n, classes)`` for feature arrays; ``stats`` ``"bundle"``
        or ``"domain"`` (the statistics of ``feats`` themselves)."""
        from emobridge.methods import EmotionData

        key = _BUNDLE_KEY if stats == "bundle" else "__domain__"
        n = len(feats)
        data = EmotionData(list(feats), np.full(n, -1), [key] * n, [key] * n,
                           [str(i) for i in range(n)], self.classes)
        with self._lock:
            if stats != "domain":
                return self.method.predict_proba(data)
            saved = self.method.normaliser_
            self.method.normaliser_ = self._domain_normaliser(saved, data)
            try:
                return self.method.predict_proba(data)
            finally:
                self.method.normaliser_ = saved

    @staticmethod
    def _domain_normaliser(norm: Any, data: Any) -> Any:
        """A copy of ``norm`` whose statistics for ``data`` are ``data``'s own."""
        if norm is None or norm.mode == "none":
            return norm
        domain = copy.copy(norm)
        stats = norm._stats(list(data.features), norm.eps)
        domain.stats_ = {**norm.stats_, "__all__": stats, "__domain__": stats}
        return domain

    def _prediction(self, p: np.ndarray, duration_s: float, source: str, stats: str
                    ) -> Prediction:
        probs = {c: float(v) for c, v in zip(self.classes, p, strict=True)}
        if stats == "bundle":
            stats = self.bundle_stats_label
        return Prediction(self.classes[int(np.argmax(p))], probs, duration_s, source, stats,
                          adaptation=self.adaptation_label)

    # -- public API -----------------------------------------------------------------------
    def predict(self, source: AudioSource) -> Prediction:
        """Label one recording (a path or ``(waveform, sample_rate)``) with the bundle's
        statistics."""
        wave, name = self.read(source)
        p = self.proba(self.features([wave]))[0]
        return self._prediction(p, len(wave) / self.sample_rate_hz, name, "bundle")

    def iter_predict(self, paths: Iterable[str | os.PathLike], stats: Stats = "bundle",
                     on_item: Callable[[], None] | None = None
                     ) -> Iterator[Prediction | tuple[str, str]]:
        """Predictions in input order, or ``(path, reason)`` for a file that could not be
        read. ``stats="bundle"`` yields batch by batch; ``"domain"`` after reading every
        file. ``on_item`` is called once per file (progress bars)."""
        paths = [str(p) for p in paths]
        use = self.resolve_stats(stats, len(paths))
        if use == "domain":
            yield from self._predict_domain(paths, on_item)
            return
        for read in self._read_batches(paths, on_item):
            ok = [(p, w) for p, w in read if isinstance(w, np.ndarray)]
            probs = iter(self.proba(self.features([w for _, w in ok])) if ok else [])
            for path, wave in read:
                if isinstance(wave, np.ndarray):
                    yield self._prediction(next(probs), len(wave) / self.sample_rate_hz,
                                           path, "bundle")
                else:
                    yield path, wave

    def resolve_stats(self, stats: Stats, n_files: int) -> str:
        if stats not in ("auto", "bundle", "domain"):
            raise EmobridgeError(f"stats must be auto, bundle or domain, got {stats!r}")
        mode = getattr(getattr(self.method, "normaliser_", None), "mode", "none")
        if stats == "auto":
            return "domain" if mode in ("per_corpus", "per_speaker") \
                and n_files >= MIN_DOMAIN_FILES else "bundle"
        if stats == "domain" and n_files < MIN_DOMAIN_FILES:
            raise EmobridgeError(f"domain statistics need at least {MIN_DOMAIN_FILES} files, "
                                 f"got {n_files}; use the bundle's statistics")
        return stats

    def _read_batches(self, paths: Sequence[str], on_item: Callable[[], None] | None
                      ) -> Iterator[list[tuple[str, np.ndarray | str]]]:
        """:meth:`_read_batch` over ``paths`` in batches, in order; the next batch is decoded
        in a worker thread while the caller encodes this one (libsndfile and soxr release
        the GIL), so decoding hides behind the encoder."""
        from concurrent.futures import Future, ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="emobridge-read") as pool:
            pending: Future | None = None
            for start in range(0, len(paths), self.batch_size):
                ahead = pool.submit(self._read_batch, paths[start:start + self.batch_size],
                                    on_item)
                if pending is not None:
                    yield pending.result()
                pending = ahead
            if pending is not None:
                yield pending.result()

    def _read_batch(self, paths: Sequence[str], on_item: Callable[[], None] | None
                    ) -> list[tuple[str, np.ndarray | str]]:
        out: list[tuple[str, np.ndarray | str]] = []
        for path in paths:
            try:
                out.append((path, self.read(path)[0]))
            except (EmobridgeError, OSError) as exc:
                out.append((path, str(exc)))
            if on_item is not None:
                on_item()
        return out

    def _predict_domain(self, paths: Sequence[str], on_item: Callable[[], None] | None
                        ) -> Iterator[Prediction | tuple[str, str]]:
        """Features of every file first (batch by batch: only features and durations are
        kept), then predictions with the statistics of them all."""
        outcomes: list[tuple[str, float | str]] = []
        feats: list[np.ndarray] = []
        for read in self._read_batches(paths, on_item):
            ok = [w for _, w in read if isinstance(w, np.ndarray)]
            feats += self.features(ok) if ok else []
            outcomes += [(p, len(w) / self.sample_rate_hz if isinstance(w, np.ndarray) else w)
                         for p, w in read]
        if len(feats) < MIN_DOMAIN_FILES:
            raise EmobridgeError(f"domain statistics need at least {MIN_DOMAIN_FILES} "
                                 f"readable files, got {len(feats)}")
        probs = iter(self.proba(feats, stats="domain"))
        label = f"domain ({len(feats)} files)"
        for path, outcome in outcomes:
            if isinstance(outcome, float):
                yield self._prediction(next(probs), outcome, path, label)
            else:
                yield path, outcome

    def table(self, predictions: Iterable[Prediction]) -> pd.DataFrame:
        """One row per prediction: path, duration_s, emotion, p_<class>..., stats."""
        rows = [{"path": p.source, "duration_s": round(p.duration_s, 3), "emotion": p.label,
                 **{f"p_{c}": p.probabilities[c] for c in self.classes}, **p.extra,
                 "stats": p.stats, "adaptation": p.adaptation} for p in predictions]
        columns = ["path", "duration_s", "emotion", *[f"p_{c}" for c in self.classes]]
        return pd.DataFrame(rows, columns=None if rows else columns + ["stats", "adaptation"])

    def predict_many(self, paths: Iterable[str | os.PathLike], stats: Stats = "auto",
                     skip_errors: bool = False) -> pd.DataFrame:
        """A table (see :meth:`table`) for several files. An unreadable file raises
        :class:`~emobridge.errors.AudioError`, or with ``skip_errors`` is left out and
        listed in ``table.attrs["errors"]`` (path -> reason)."""
        done: list[Prediction] = []
        errors: dict[str, str] = {}
        for item in self.iter_predict(paths, stats):
            if isinstance(item, Prediction):
                done.append(item)
            elif skip_errors:
                errors[item[0]] = item[1]
            else:
                raise AudioError(item[1])
        table = self.table(done)
        table.attrs["errors"] = errors
        return table

    # -- adaptation -------------------------------------------------------------------------
    def adapt(self, sources: Sequence[AudioSource], *, names: Sequence[str] | None = None,
              speakers: str | Sequence[str] = "auto", seed: int = 0,
              store: str | os.PathLike | None = None,
              on_item: Callable[[], None] | None = None) -> Recognizer:
        """A new recognizer adapted, without labels, to ``sources`` (paths or
        ``(waveform, rate)`` pairs); this one is unchanged. See :meth:`adapt_predict`."""
        return self.adapt_predict(sources, names=names, speakers=speakers, seed=seed,
                                  store=store, on_item=on_item)[0]

    def adapt_predict(self, sources: Sequence[AudioSource], *,
                      names: Sequence[str] | None = None,
                      speakers: str | Sequence[str] = "auto", seed: int = 0,
                      store: str | os.PathLike | None = None,
                      on_item: Callable[[], None] | None = None
                      ) -> tuple[Recognizer, pd.DataFrame]:
        """Adapt to ``sources`` and label them (transductive: every recording is part of the
        adaptation pool); :mod:`emobridge.inference.adapt` says how.

        ``speakers``: ``"auto"`` (estimated), ``"none"`` (per-corpus statistics) or one id
        per source. ``store``: a feature-store folder that caches the features of paths
        (a second adaptation of the same files skips extraction). Returns the adapted
        recognizer and a table (:meth:`table` plus ``speaker``); ``table.attrs`` holds
        ``warnings`` and ``errors`` (unreadable sources, left out: path -> reason).
        """
        from emobridge.inference.adapt import GIVEN_PREFIX, adapt_method

        if not isinstance(speakers, str) and len(speakers) != len(sources):
            raise EmobridgeError(f"speakers: {len(speakers)} ids for {len(sources)} recordings")
        memory = self.bundle.memory_meta
        if memory is None:
            self.bundle.load_memory()  # raises the one-line "no source memory" error
        want = "auto" if isinstance(speakers, str) and speakers == "auto" else None
        pool = self._pool(sources, names, want and memory.get("speaker_features"), store,
                          on_item)
        keep = pool.kept
        chosen = speakers if isinstance(speakers, str) else [speakers[i] for i in keep]
        result = adapt_method(self.bundle, pool.features, pool.names, pool.durations,
                              speakers=chosen, speaker_embeddings=pool.speaker_embeddings,
                              seed=seed)
        adapted = self._adapted(result.method, result.info)
        probs = result.method.predict_proba(result.target)
        label = f"transductive ({len(keep)} files, speakers {result.info['speakers']['mode']})"
        stats = result.info["target_statistics"]
        rows = []
        for i, p in enumerate(probs):
            pred = self._prediction(p, pool.durations[i], pool.names[i], stats)
            pred.adaptation = label
            speaker = str(result.target.speakers[i])  # utt-N: none (the domain's statistics)
            pred.extra = {"speaker": "" if speaker.startswith("utt-")
                          else speaker.removeprefix(GIVEN_PREFIX)}
            rows.append(pred)
        table = self.table(rows)
        table.attrs.update(warnings=list(result.warnings), errors=pool.errors)
        return adapted, table

    def _adapted(self, method: Any, info: dict[str, Any]) -> Recognizer:
        """A recognizer of ``method`` adapted as ``info`` says, sharing this one's extractor
        (and its lock: the extractor is one object)."""
        meta = {**copy.deepcopy(self.bundle.meta), "adaptation": info}
        new = Recognizer(Bundle(self.bundle.path, method, meta), self.batch_size, self.device)
        new._extractor, new._lock = self.extractor, self._lock
        new._speaker_extractors = self._speaker_extractors
        return new

    def _pool(self, sources: Sequence[AudioSource], names: Sequence[str] | None,
              speaker_spec: Any, store: str | os.PathLike | None,
              on_item: Callable[[], None] | None) -> _Pool:
        """Features (and speaker embeddings when ``speaker_spec``) of every readable
        source, through the feature store when ``store`` is given and every source is a
        path."""
        if names is not None and len(names) != len(sources):
            raise EmobridgeError(f"names: {len(names)} for {len(sources)} recordings")
        shown = [str(n) for n in names] if names is not None else [
            "waveform" if isinstance(s, tuple) else str(s) for s in sources]
        spk_ext = self._speaker_extractor(speaker_spec) if speaker_spec else None
        if store is not None and all(not isinstance(s, tuple) for s in sources):
            return _pool_from_store(self, [str(s) for s in sources], shown, spk_ext, store,
                                    on_item)
        pool = _Pool(shown)
        for start in range(0, len(sources), self.batch_size):
            batch, waves = [], []
            for i in range(start, min(start + self.batch_size, len(sources))):
                try:
                    waves.append(self.read(sources[i])[0])
                    batch.append(i)
                except (EmobridgeError, OSError) as exc:
                    pool.errors[shown[i]] = str(exc)
                if on_item is not None:
                    on_item()
            if waves:
                embeds = self._embed(spk_ext, waves) if spk_ext is not None else None
                pool.add(batch, self.features(waves),
                         [len(w) / self.sample_rate_hz for w in waves], embeds)
        return pool

    def _speaker_extractor(self, spec: Any) -> Any:
        """The memory's speaker-embedding extractor, loaded; ``None`` with a warning when it
        cannot be (e.g. the GE2E weights are not installed): adaptation then goes on with
        per-corpus statistics."""
        import warnings

        from emobridge.errors import EmobridgeWarning
        from emobridge.features.registry import build_extractor

        key = str(spec)
        if key in self._speaker_extractors:
            return self._speaker_extractors[key]
        try:
            ext = build_extractor(spec, device=self.device)
            if hasattr(ext, "load"):
                ext.load()
            self._speaker_extractors[key] = ext
            return ext
        except EmobridgeError as exc:
            warnings.warn(f"speakers cannot be estimated: {exc}", EmobridgeWarning,
                          stacklevel=3)
            return None

    def _embed(self, extractor: Any, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            return [np.asarray(e, np.float32)
                    for e in extractor.extract_batch(list(waves), self.sample_rate_hz)]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write this recognizer's model as a bundle in ``directory`` (an adapted
        recognizer gives an adapted bundle: its domain is in the card; the source memory
        is kept, so it can adapt again)."""
        from emobridge.inference.bundle import CARD_FILE, save_bundle

        meta = self.bundle.meta
        memory = self.bundle.load_memory() if self.bundle.memory_meta else None
        card_file = Path(self.bundle.path) / CARD_FILE
        markdown = card_file.read_text(encoding="utf-8") if card_file.is_file() else None
        if markdown is not None and self.adaptation is not None:
            markdown += _adaptation_markdown(self.adaptation)
        return save_bundle(_without_key(self.method, _BUNDLE_KEY), directory,
                           extractor=self.bundle.extractor_spec, training=meta.get("training"),
                           card=meta.get("card"), card_markdown=markdown,
                           label_set=meta.get("label_set"), memory=memory,
                           adaptation=self.adaptation)

    def timeline(self, source: AudioSource, segment: SegmentMode = "fixed",
                 window_s: float = 3.0, hop_s: float = 1.0) -> pd.DataFrame:
        """One row per segment of a (long) recording: start_s, end_s, emotion,
        p_<class>..., stats (always the bundle's). ``segment="vad"`` keeps speech only."""
        wave, name = self.read(source, max_duration_s=MAX_TIMELINE_S)
        rate = self.sample_rate_hz
        spans = segment_wave(wave, rate, segment, window_s, hop_s)
        columns = ["start_s", "end_s", "emotion", *[f"p_{c}" for c in self.classes]]
        rows = []
        for start in range(0, len(spans), self.batch_size):
            part = spans[start:start + self.batch_size]
            probs = self.proba(self.features([wave[a:b] for a, b in part]))
            for (a, b), p in zip(part, probs, strict=True):
                rows.append([round(a / rate, 3), round(b / rate, 3),
                             self.classes[int(np.argmax(p))], *map(float, p)])
        table = pd.DataFrame(rows, columns=columns)
        table.insert(0, "path", name)
        table["stats"] = self.bundle_stats_label  # one recording has no domain of its own
        table["adaptation"] = self.adaptation_label
        table.attrs["duration_s"] = len(wave) / rate
        return table


@dataclass
class _Pool:
    """The readable part of an adaptation pool, in input order."""

    names_in: list[str]
    kept: list[int] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    embeddings: list[np.ndarray] | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [self.names_in[i] for i in self.kept]

    @property
    def speaker_embeddings(self) -> np.ndarray | None:
        return None if self.embeddings is None or not self.embeddings else \
            np.stack(self.embeddings)

    def add(self, index: Sequence[int], feats: Sequence[np.ndarray],
            durations: Sequence[float], embeds: Sequence[np.ndarray] | None) -> None:
        self.kept += list(index)
        self.features += list(feats)
        self.durations += list(durations)
        if embeds is not None:
            self.embeddings = (self.embeddings or []) + list(embeds)


def _pool_from_store(rec: Recognizer, paths: list[str], shown: list[str], spk_ext: Any,
                     root: str | os.PathLike, on_item: Callable[[], None] | None) -> _Pool:
    """:meth:`Recognizer._pool` through a :class:`~emobridge.features.store.FeatureStore`
    (cached features are reused; unreadable files are listed, not fatal)."""
    from emobridge.audio import audio_info
    from emobridge.features.store import FeatureStore

    store = FeatureStore(root)
    pool = _Pool(shown)
    failed: dict[str, str] = {}
    for ext in [rec.extractor] + ([spk_ext] if spk_ext is not None else []):
        with rec._lock:
            report = store.extract(paths, ext, skip_errors=True, progress=False)
        failed.update({os.path.abspath(p): r for p, r in report.failures})
    keep = [i for i, p in enumerate(paths) if os.path.abspath(p) not in failed]
    pool.errors = {shown[i]: failed[os.path.abspath(p)] for i, p in enumerate(paths)
                   if os.path.abspath(p) in failed}
    ok = [paths[i] for i in keep]
    if ok:
        pool.add(keep, store.load(ok, rec.extractor), [audio_info(p)[0] for p in ok],
                 store.load(ok, spk_ext) if spk_ext is not None else None)
    for _ in paths if on_item is not None else ():
        on_item()
    return pool


def _without_key(method: Any, key: str) -> Any:
    """A shallow copy of ``method`` whose normaliser lacks the statistics under ``key``
    (the pooled statistics the recognizer adds at load time are not saved)."""
    norm = getattr(method, "normaliser_", None)
    if norm is None or key not in getattr(norm, "stats_", {}):
        return method
    clone, norm_copy = copy.copy(method), copy.copy(norm)
    norm_copy.stats_ = {k: v for k, v in norm.stats_.items() if k != key}
    clone.normaliser_ = norm_copy
    return clone


def _adaptation_markdown(info: dict[str, Any]) -> str:
    """The adapted domain as a section of the model card."""
    speakers = info.get("speakers", {})
    lines = [f"- {info.get('files')} files, {info.get('hours')} h, file list SHA-256 "
             f"{info.get('file_list_sha256')}",
             f"- speakers: {speakers.get('mode')} ({speakers.get('count')}); "
             f"normalisation: {info.get('normalisation')}; seed {info.get('seed')}",
             f"- adapted in {info.get('seconds')} s"]
    lines += [f"- warning: {w}" for w in info.get("warnings", [])]
    return "\n## Adaptation (label-free, to the user's recordings)\n" + "\n".join(lines) + "\n"


def plot_timeline(table: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Draw a timeline table's probabilities over time (segment centres) to an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emobridge.fileio import atomic_path

    path = Path(path)
    columns = [c for c in table.columns if c.startswith("p_")]
    fig, ax = plt.subplots(figsize=(10, 3.2))
    try:
        for name, part in (table.groupby("path", sort=False) if len(table) else []):
            centre = (part["start_s"] + part["end_s"]) / 2
            for col in columns:
                label = col[2:] if table["path"].nunique() == 1 else f"{name}: {col[2:]}"
                ax.plot(centre, part[col], marker="o", ms=3, label=label)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("probability")
        ax.set_ylim(0, 1)
        ax.set_title(title or "emotion probabilities over time")
        ax.legend(loc="upper right", fontsize=8, ncol=min(len(columns), 4))
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110)
    finally:
        plt.close(fig)
    return path
