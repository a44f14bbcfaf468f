"""Many writers, one feature store: concurrent writer processes, a reader trimming corrupt
entries while a writer appends, and the shared hash cache. Every entry is checked after."""

from __future__ import annotations

import json
import multiprocessing
import zlib
from pathlib import Path

import numpy as np

from emobridge.features import FeatureStore, build_extractor
from emobridge.features.store import _read_index, _ShardWriter
from tests.conftest import write_tone

SPEC = "logmel:preset=byols,n_mels=8,n_fft=512,win_length_samples=400,hop_length_samples=320"


def make_audio(folder: Path, n: int) -> list[str]:
    """``n`` distinct short tones (distinct content: distinct store keys)."""
    return [str(write_tone(folder / f"u{i:03d}.wav", duration_s=0.1 + 0.01 * (i % 5),
                           f0_hz=100 + 7 * i, seed=i)) for i in range(n)]


def cached_paths(root: Path) -> list[str]:
    """The audio paths in the store's hash cache (hashes.json: one row per path)."""
    doc = json.loads((root / "hashes.json").read_text(encoding="utf-8"))
    assert doc["columns"][0] == "path"
    return [row[0] for row in doc["rows"]]


def verify_store(root: Path, paths: list[str]) -> dict[str, int]:
    """Check every entry of every shard of the one extractor in ``root`` (CRC, shape,
    finite, inside its data file, index consistent) and that each path loads; returns
    counts. Fails the test on any fault."""
    ext = build_extractor(SPEC)
    folder = root / ext.id
    indexes = sorted(folder.glob("shard-*.json"))
    assert indexes, "no shard written"
    keys: set[str] = set()
    n_entries = 0
    for index in indexes:
        doc = json.loads(index.read_text())
        entries = _read_index(index)
        assert len(entries) == len(doc["hash"]), f"{index}: duplicate key inside one shard"
        data = (folder / doc["data"]).read_bytes()
        assert len(data) >= doc["data_bytes"], f"{index}: index names bytes not on disk"
        for key, entry in entries.items():
            raw = data[entry.offset: entry.offset + entry.size * 4]
            assert len(raw) == entry.size * 4 and entry.offset + entry.size * 4 <= doc["data_bytes"]
            assert zlib.crc32(raw) == entry.crc32, f"{index}: {key} fails its CRC"
            arr = np.frombuffer(raw, dtype=np.float32).reshape(entry.shape)
            assert np.isfinite(arr).all() and arr.shape[1] == 8
            keys.add(key)
            n_entries += 1
    feats = FeatureStore(root).load(paths, ext)  # raises on any missing / corrupt entry
    assert len(feats) == len(paths) and all(np.isfinite(f).all() for f in feats)
    assert set(paths) <= set(cached_paths(root)), "a writer's hashes were lost"
    return {"keys": len(keys), "entries": n_entries, "shards": len(indexes)}


def _writer(root: str, paths: list[str]) -> None:
    # flush after every entry: as many index rewrites (and chances to race) as possible
    FeatureStore(root, flush_every=1).extract(paths, SPEC, progress=False)


def test_concurrent_writer_processes(tmp_path: Path) -> None:
    paths = make_audio(tmp_path / "audio", 16)
    root = tmp_path / "store"
    # Overlapping slices: some audio is written by two processes at once.
    slices = [paths[i * 4: i * 4 + 6] for i in range(4)]
    build_extractor(SPEC)  # import torch & co. once, before forking (no threads started yet)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(root), s)) for s in slices]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    written = sorted({p for s in slices for p in s})
    counts = verify_store(root, written)
    assert counts["keys"] == len(written) and counts["shards"] == 4
    assert counts["entries"] >= len(written)  # duplicates across shards are allowed
    # A later run finds everything: nothing is recomputed.
    report = FeatureStore(root).extract(written, SPEC, progress=False)
    assert report.computed == 0 and report.reused == len(written)


def test_writer_keeps_entries_a_reader_dropped(tmp_path: Path) -> None:
    """A reader drops a corrupt entry from a shard whose writer is still appending: the
    writer's next flush must neither bring it back nor lose the reader's view."""
    paths = make_audio(tmp_path / "audio", 3)
    root = tmp_path / "store"
    store = FeatureStore(root)
    ext = build_extractor(SPEC)
    store._write_spec(ext)
    keys = store._hash_paths(paths, 1, None)
    store._save_hashes(create=True)
    feats = [np.full((4, 8), i, np.float32) for i in range(3)]
    writer = _ShardWriter(store, ext.id)
    for key, arr in zip(keys[:2], feats[:2], strict=True):
        writer.add(key, arr)
    writer.flush()
    data = root / ext.id / f"{writer.stem}.f32"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF  # corrupt the first entry
    data.write_bytes(bytes(raw))
    out = FeatureStore(root).load(paths[1:2], ext)  # fine entry
    assert np.array_equal(out[0], feats[1])
    assert FeatureStore(root).missing(paths, ext) == [paths[2]]
    # Verified reading finds and drops the corrupt entry.
    assert store._read(ext.id, keys[:1], True)[1] == [0]
    assert set(_read_index(root / ext.id / f"{writer.stem}.json")) == {keys[1]}
    writer.add(keys[2], feats[2])
    writer.close()
    assert set(_read_index(root / ext.id / f"{writer.stem}.json")) == {keys[1], keys[2]}


def test_hash_cache_merges_writers(tmp_path: Path) -> None:
    paths = make_audio(tmp_path / "audio", 4)
    root = tmp_path / "store"
    root.mkdir()
    first, second = FeatureStore(root), FeatureStore(root)
    first._hash_paths(paths[:2], 1, None)
    second._hash_paths(paths[2:], 1, None)  # read the (empty) cache before first saves
    first._save_hashes()
    second._save_hashes()
    assert sorted(cached_paths(root)) == sorted(paths)


def test_extract_with_given_keys_skips_hashing(tmp_path: Path) -> None:
    """A shard task gets its files' content hashes from the driver: no hash cache read or
    written, same entries as hashing them."""
    import pytest

    from emobridge.audio import file_hash
    from emobridge.errors import FeatureError

    paths = make_audio(tmp_path / "audio", 3)
    keys = [file_hash(p) for p in paths]
    root = tmp_path / "store"
    with pytest.raises(FeatureError, match="2 content hashes given for 3 rows"):
        FeatureStore(root).extract(paths, SPEC, progress=False, keys=keys[:2])
    report = FeatureStore(root).extract(paths, SPEC, progress=False, keys=keys)
    assert report.computed == 3 and not (root / "hashes.json").exists()
    again = FeatureStore(root).extract(paths, SPEC, progress=False)  # hashes them itself
    assert again.reused == 3 and again.computed == 0
