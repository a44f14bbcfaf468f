"""The feature store: cache hits and misses, resume, corruption, errors, prune."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emobridge.audio import load_audio
from emobridge.corpora import make_manifest
from emobridge.errors import AudioError, FeatureError, UnknownNameError
from emobridge.features import FeatureStore
from emobridge.features.extractors.logmel import LogMel
from tests.conftest import write_tone


class CountingLogMel(LogMel):
    """The real byols log-mel, counting the waveforms it encodes; optionally failing (like a
    crash) once ``fail_after`` waveforms were encoded. Neither is part of the id."""

    def __init__(self, fail_after: int | None = None, **params) -> None:
        super().__init__("byols", **params)
        self.calls = 0
        self.fail_after = fail_after

    def extract_batch(self, waves: Sequence[np.ndarray], sample_rate_hz: int):
        if self.fail_after is not None and self.calls + len(waves) > self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += len(waves)
        return super().extract_batch(waves, sample_rate_hz)


def _manifest(paths: list[Path]) -> pd.DataFrame:
    return make_manifest(
        {"path": str(p), "corpus": "toy", "language": "de", "speaker": f"toy:{i % 2}",
         "gender": "", "label": "N", "emotion": "neutral", "duration_s": 0.2 + 0.05 * i,
         "sample_rate": 16_000}
        for i, p in enumerate(paths))


@pytest.fixture
def corpus(tmp_path: Path) -> pd.DataFrame:
    paths = [write_tone(tmp_path / "audio" / f"u{i}.wav", duration_s=0.2 + 0.05 * i,
                        f0_hz=100 + 30 * i, seed=i) for i in range(6)]
    return _manifest(paths)


def _direct(ext: LogMel, paths) -> list[np.ndarray]:
    return [ext.extract(load_audio(p, ext.sample_rate_hz), ext.sample_rate_hz) for p in paths]


def test_second_run_hits_the_cache(corpus: pd.DataFrame, tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    ext = CountingLogMel()
    first = store.extract(corpus, ext, batch_size=4, progress=False)
    assert (first.computed, first.reused, first.failed) == (6, 0, 0) and ext.calls == 6
    again = CountingLogMel()
    second = FeatureStore(tmp_path / "store").extract(corpus, again, workers=2, progress=False)
    assert (second.computed, second.reused) == (0, 6) and again.calls == 0
    shuffled = corpus.sample(frac=1.0, random_state=0).reset_index(drop=True)
    loaded = FeatureStore(tmp_path / "store").load(shuffled, again)
    assert again.calls == 0
    for got, want in zip(loaded, _direct(LogMel("byols"), shuffled["path"]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    loaded[0][:] = 0.0  # copies: writable, and the store is unchanged
    assert not np.allclose(store.load(shuffled, again)[0], 0.0)
    assert not list((tmp_path / "store").rglob("*.tmp*"))  # atomic writes leave no temp files


def test_changed_parameters_miss(corpus: pd.DataFrame, tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    store.extract(corpus, CountingLogMel(), progress=False)
    other = CountingLogMel(n_mels=32)
    report = store.extract(corpus, other, progress=False)
    assert report.computed == 6 and other.calls == 6
    assert store.load(corpus, other)[0].shape[1] == 32
    listing = store.list()
    assert sorted(listing["extractor_id"]) == sorted([CountingLogMel().id, other.id])
    assert (listing["entries"] == 6).all() and (listing["bytes"] > 0).all()
    spec = json.loads(listing.set_index("extractor_id").loc[other.id, "spec"])
    assert spec["name"] == "logmel" and spec["params"]["n_mels"] == 32
    assert store.spec(other.id)["params"] == other.params()


def test_same_audio_is_encoded_once_across_paths_and_corpora(corpus: pd.DataFrame,
                                                            tmp_path: Path) -> None:
    copy_dir = tmp_path / "other_corpus"
    copy_dir.mkdir()
    copies = [Path(shutil.copy(p, copy_dir / f"copy_{Path(p).name}")) for p in corpus["path"]]
    store = FeatureStore(tmp_path / "store")
    ext = CountingLogMel()
    both = pd.concat([corpus, _manifest(copies[:2])], ignore_index=True)
    report = store.extract(both, ext, progress=False)
    assert report.computed == 6 and report.duplicates == 2 and ext.calls == 6
    later = CountingLogMel()
    assert store.extract(_manifest(copies), later, progress=False).reused == 6
    assert later.calls == 0
    loaded = store.load(both, later)
    np.testing.assert_array_equal(loaded[0], loaded[6])
    loaded[6][:] = 1.0  # rows sharing audio do not share memory
    assert not np.allclose(loaded[0], 1.0)


def test_interrupted_run_resumes(corpus: pd.DataFrame, tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    crashing = CountingLogMel(fail_after=4)
    with pytest.raises(FeatureError, match="simulated crash"):
        store.extract(corpus, crashing, batch_size=1, progress=False)
    assert crashing.calls == 4
    assert len(store.missing(corpus, crashing)) == 2
    rerun = CountingLogMel()
    report = store.extract(corpus, rerun, batch_size=1, progress=False)
    assert (report.computed, report.reused) == (2, 4) and rerun.calls == 2
    assert store.missing(corpus, rerun) == []
    assert len(store.load(corpus, rerun)) == 6


def test_interrupt_flushes_what_was_computed(corpus: pd.DataFrame, tmp_path: Path) -> None:
    class Interrupted(CountingLogMel):
        def extract_batch(self, waves, sample_rate_hz):
            if self.calls >= 3:
                raise KeyboardInterrupt
            return super().extract_batch(waves, sample_rate_hz)

    store = FeatureStore(tmp_path / "store", flush_every=1000)
    with pytest.raises(KeyboardInterrupt):
        store.extract(corpus, Interrupted(), batch_size=1, progress=False)
    assert len(store.missing(corpus, CountingLogMel())) == 3


def _corrupt_one(store_root: Path, ext_id: str, which: int = 0) -> None:
    index = next((store_root / ext_id).glob("shard-*.json"))
    doc = json.loads(index.read_text())
    data = index.with_suffix(".f32")
    raw = bytearray(data.read_bytes())
    offset = doc["offset"][which]
    raw[offset + 8: offset + 12] = b"\x00\x00\xc0\x7f"  # a NaN where a value was
    data.write_bytes(bytes(raw))


def test_corrupt_entry_is_detected_and_recomputed(corpus: pd.DataFrame,
                                                  tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FeatureStore(root)
    ext = CountingLogMel()
    store.extract(corpus, ext, progress=False)
    _corrupt_one(root, ext.id)
    with pytest.raises(FeatureError, match="no stored features for 1 of 6") as err:
        FeatureStore(root).load(corpus, ext)
    assert ".wav" in str(err.value)
    fixer = CountingLogMel()
    loaded = FeatureStore(root).load(corpus, fixer, compute_missing=True)
    assert fixer.calls == 1
    for got, want in zip(loaded, _direct(LogMel("byols"), corpus["path"]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # corrupting again: extract (verify=True by default) finds it and recomputes it
    store.prune()  # compacts into one clean shard
    _corrupt_one(root, ext.id, which=3)
    again = CountingLogMel()
    report = FeatureStore(root).extract(corpus, again, progress=False)
    assert (report.corrupt, report.computed, report.reused, again.calls) == (1, 1, 5, 1)


def test_truncated_data_file_is_not_trusted(corpus: pd.DataFrame, tmp_path: Path) -> None:
    root = tmp_path / "store"
    ext = CountingLogMel()
    FeatureStore(root).extract(corpus, ext, progress=False)
    index = next((root / ext.id).glob("shard-*.json"))
    doc = json.loads(index.read_text())
    data = index.with_suffix(".f32")
    half = data.stat().st_size // 2
    data.write_bytes(data.read_bytes()[:half])
    cut = sum(o + 4 * int(np.prod(s)) > half for o, s in zip(doc["offset"], doc["shape"],
                                                             strict=True))
    assert 0 < cut < 6
    fixer = CountingLogMel()
    loaded = FeatureStore(root).load(corpus, fixer, compute_missing=True)
    assert fixer.calls == cut
    for got, want in zip(loaded, _direct(LogMel("byols"), corpus["path"]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_undecodable_audio_names_the_file(corpus: pd.DataFrame, tmp_path: Path) -> None:
    broken = tmp_path / "audio" / "broken.wav"
    broken.write_bytes(b"RIFF....not audio at all")
    manifest = pd.concat([corpus, _manifest([broken])], ignore_index=True)
    store = FeatureStore(tmp_path / "store")
    with pytest.raises(AudioError, match="broken.wav"):
        store.extract(manifest, CountingLogMel(), progress=False)
    ext = CountingLogMel()
    report = store.extract(manifest, ext, progress=False, skip_errors=True)
    assert report.failed == 1 and report.failures[0][0] == str(broken)
    assert report.computed + report.reused == 6
    assert "1 failed" in report.summary()
    gone = tmp_path / "audio" / "missing.wav"
    with pytest.raises(AudioError, match="missing.wav"):
        store.extract([*corpus["path"], str(gone)], ext, progress=False)
    report = store.extract([*corpus["path"], str(gone)], ext, progress=False, skip_errors=True)
    assert report.failed == 1 and report.reused == 6
    with pytest.raises(FeatureError, match="no stored features"):
        store.load(manifest, ext)


def test_extractor_errors_and_bad_features(corpus: pd.DataFrame, tmp_path: Path) -> None:
    class NaNs(LogMel):
        def extract_batch(self, waves, sample_rate_hz):
            out = super().extract_batch(waves, sample_rate_hz)
            out[0][0, 0] = np.nan
            return out

    store = FeatureStore(tmp_path / "store")
    with pytest.raises(FeatureError, match="NaN"):
        store.extract(corpus, NaNs("byols", n_mels=8), batch_size=2, progress=False)
    report = store.extract(corpus, NaNs("byols", n_mels=8), batch_size=2, progress=False,
                           skip_errors=True)
    # the batch is retried one by one: each single call now yields NaN, all are reported
    assert report.failed == 6 and "NaN" in report.failures[0][1]


def test_load_missing_and_compute_missing(corpus: pd.DataFrame, tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    ext = CountingLogMel()
    store.extract(corpus.iloc[:3], ext, progress=False)
    with pytest.raises(FeatureError, match="3 of 6"):
        store.load(corpus, ext)
    out = store.load(corpus, ext, compute_missing=True)
    assert len(out) == 6 and ext.calls == 6
    by_id = store.load(corpus, ext.id)  # a stored extractor id works too
    for a, b in zip(out, by_id, strict=True):
        np.testing.assert_array_equal(a, b)


def test_changed_file_content_is_not_served_stale(corpus: pd.DataFrame,
                                                  tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    ext = CountingLogMel()
    store.extract(corpus, ext, progress=False)
    assert (tmp_path / "store" / "hashes.json").exists()
    target = Path(corpus["path"][0])
    before = store.load(corpus, ext)[0]
    write_tone(target, duration_s=0.2, f0_hz=333, seed=9)  # same path, new audio
    again = CountingLogMel()
    assert FeatureStore(tmp_path / "store").extract(corpus, again, progress=False).computed == 1
    after = FeatureStore(tmp_path / "store").load(corpus, again)[0]
    assert not np.allclose(before, after)


def test_prune(corpus: pd.DataFrame, tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FeatureStore(root, flush_every=2)  # several flushes -> several index rewrites
    a, b = CountingLogMel(), CountingLogMel(n_mels=16)
    store.extract(corpus, a, batch_size=1, progress=False)
    store.extract(corpus, b, progress=False)
    store.extract(corpus.iloc[:2], CountingLogMel(n_mels=24), progress=False)
    report = store.prune(extractor_id=CountingLogMel(n_mels=24).id)
    assert report.removed_entries == 2 and not (root / CountingLogMel(n_mels=24).id).exists()
    keep = corpus.iloc[:4]
    size_before = store.list().set_index("extractor_id").loc[a.id, "bytes"]
    report = store.prune(keep_paths=keep)
    assert report.removed_entries == 4 and report.freed_bytes > 0  # 2 entries x 2 extractors
    listing = store.list().set_index("extractor_id")
    assert listing.loc[a.id, "entries"] == 4 and listing.loc[a.id, "shards"] == 1
    assert listing.loc[a.id, "bytes"] < size_before
    kept = store.load(keep, a)
    for got, want in zip(kept, _direct(LogMel("byols"), keep["path"]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(FeatureError, match="no stored features"):
        store.load(corpus, a)
    with pytest.raises(FeatureError, match="not in the store"):
        store.prune(extractor_id="logmel-000000000000")
    assert store.prune().removed_entries == 0  # already compact


def test_bad_arguments(corpus: pd.DataFrame, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(FeatureError, match="not a folder"):
        FeatureStore(tmp_path / "file")
    store = FeatureStore(tmp_path / "store")
    with pytest.raises(FeatureError, match="path"):
        store.extract(pd.DataFrame({"x": [1]}), CountingLogMel(), progress=False)
    with pytest.raises(UnknownNameError, match="unknown extractor"):
        store.extract(corpus, "nope", progress=False)
    with pytest.raises(FeatureError, match="workers"):
        store.extract(corpus, CountingLogMel(), workers=0, progress=False)


def test_shards_roll_over_and_compact(corpus: pd.DataFrame, tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FeatureStore(root, flush_every=1, shard_max_entries=2)
    ext = CountingLogMel()
    store.extract(corpus, ext, batch_size=1, progress=False)
    assert len(list((root / ext.id).glob("shard-*.json"))) == 3
    before = store.load(corpus, ext)
    store = FeatureStore(root)  # default shard limits: compacts into one shard
    report = store.prune()
    assert report.removed_entries == 0
    assert store.list().set_index("extractor_id").loc[ext.id, "shards"] == 1
    for a, b in zip(before, FeatureStore(root).load(corpus, ext), strict=True):
        np.testing.assert_array_equal(a, b)
