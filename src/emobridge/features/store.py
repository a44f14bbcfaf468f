"""The feature store: a cache of extracted features keyed by (audio content, extractor id).

Layout under ``root``::

    hashes.json                     path, size, mtime, ctime, inode -> content hash
    <extractor id>/
        spec.json                   the extractor spec (rebuilds the extractor)
        shard-<time>-<rand>.f32     float32 arrays, concatenated, append-only
        shard-<time>-<rand>.json    index: content hash, byte offset, shape, CRC-32 per entry
        .lock                       advisory lock (writers shared, prune exclusive)

Keys are the BLAKE2b digest of the audio file's bytes (:func:`emobridge.audio.file_hash`),
so the same audio is encoded once per extractor settings, whatever its path or corpus. A
writer appends arrays to its shard's data file, fsyncs, then atomically replaces the shard's
index: the index never names bytes that are not on disk, so a run killed at any point leaves
every indexed entry intact and the next run computes only what is missing. Writers flush
every ``flush_every`` entries, every ``flush_interval_s`` seconds and when an error stops the
run. Reads memory-map the data files and copy each entry out; its CRC-32 is checked, and a
corrupt or truncated entry is dropped from its index and treated as missing (recomputed by
:meth:`FeatureStore.extract` or ``load(..., compute_missing=True)``), never returned.
Several processes, on one machine or on many nodes sharing the filesystem, may write the same
extractor at once: each writes its own shard (named by time and a 64-bit random id), and every
read-modify-write of a shared file (a shard index that a reader trims of corrupt entries,
``hashes.json``) happens under an exclusive ``flock`` (``.index.lock`` / ``.hashes.lock``)
after re-reading the file, so no writer's entries are lost. When the same audio lands in two
shards, the newest copy that verifies wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
import warnings
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from emobridge.audio import file_hash, load_audio
from emobridge.errors import (
    AudioError,
    EmobridgeError,
    EmobridgeWarning,
    FeatureError,
    OutputError,
)
from emobridge.features.base import Extractor
from emobridge.fileio import (
    atomic_open,
    check_regular_file,
    file_lock,
    loads_json,
    write_json_atomic,
    write_text_atomic,
)

FORMAT_VERSION = 1
#: The hash cache, JSON: ``{"format": 1, "columns": ["path", *_HASH_KEY, "hash"], "rows":
#: [[...], ...]}``, written without pyarrow (an extra since). Stores of earlier versions kept
#: it in ``hashes.parquet``: that file is ignored (never read, never deleted), which costs
#: hashing their audio once more.
_HASHES_FILE = "hashes.json"
_HASHES_FORMAT = 1
#: What identifies a file's content without reading it. Size and mtime alone miss audio
#: rewritten in place with its mtime restored; the change time (set by the kernel on every
#: write or utime) and the inode (a file replaced by another) catch that.
_HASH_KEY = ("size", "mtime_ns", "ctime_ns", "ino")
_SPEC_FILE = "spec.json"
#: Temporary / orphaned files younger than this are left alone by prune (a writer may own them).
_STALE_S = 3600.0

ManifestLike = pd.DataFrame | str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
ExtractorLike = Extractor | str | dict[str, Any]


@dataclass
class ExtractReport:
    """What :meth:`FeatureStore.extract` did. Counts are per distinct audio content."""

    extractor_id: str
    n_rows: int = 0
    computed: int = 0
    reused: int = 0
    failed: int = 0
    #: Rows whose audio content equals an earlier row's (encoded once).
    duplicates: int = 0
    #: ``(path, reason)`` per failed file.
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Corrupt cache entries found, dropped and recomputed.
    corrupt: int = 0
    seconds: float = 0.0
    #: Duration of the audio computed in this run.
    audio_seconds: float = 0.0

    def summary(self) -> str:
        """One line for logs and the CLI."""
        speed = ""
        if self.computed and self.seconds > 0:
            speed = (f", {self.computed / self.seconds:.1f} utt/s, "
                     f"{self.audio_seconds / self.seconds:.0f}x real time")
        extra = f", {self.corrupt} corrupt entries recomputed" if self.corrupt else ""
        return (f"{self.extractor_id}: {self.n_rows} rows, {self.computed} computed, "
                f"{self.reused} reused, {self.failed} failed, {self.duplicates} duplicate "
                f"rows{extra} in {self.seconds:.1f} s{speed}")


@dataclass
class PruneReport:
    """What :meth:`FeatureStore.prune` removed."""

    removed_extractors: list[str] = field(default_factory=list)
    removed_entries: int = 0
    freed_bytes: int = 0


@dataclass(frozen=True)
class _Entry:
    shard: str  # stem of the shard files
    offset: int  # bytes
    shape: tuple[int, ...]
    crc32: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class _Item:
    key: str
    path: str
    duration_s: float
    n_samples: int = 0  # once decoded


class FeatureStore:
    """Cache of features on disk; see the module docstring for the layout and guarantees.

    Parameters
    ----------
    root:
        Folder of the store (created on first write).
    flush_every:
        Entries buffered in memory before they are appended to disk.
    flush_interval_s:
        Also flush when this much time passed since the last flush (slow encoders).
    shard_max_bytes, shard_max_entries:
        A writer starts a new shard once its data file reaches this size or holds this many
        entries (bounds the index rewritten at every flush).
    """

    def __init__(self, root: str | os.PathLike[str], *, flush_every: int = 256,
                 flush_interval_s: float = 60.0, shard_max_bytes: int = 1 << 30,
                 shard_max_entries: int = 50_000) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise FeatureError(f"feature store {self.root} exists and is not a folder")
        self.flush_every = max(1, int(flush_every))
        self.flush_interval_s = float(flush_interval_s)
        self.shard_max_bytes = int(shard_max_bytes)
        self.shard_max_entries = max(1, int(shard_max_entries))
        self._hashes: dict[str, tuple[Any, ...]] | None = None
        self._hashes_dirty = False
        #: paths hashed by this instance since the last save (merged into the file on disk)
        self._hashes_new: set[str] = set()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    # -- public API ----------------------------------------------------------------------

    def extract(
        self,
        manifest: ManifestLike,
        extractor: ExtractorLike,
        workers: int = 1,
        batch_size: int = 16,
        progress: bool = True,
        *,
        skip_errors: bool = False,
        verify: bool = True,
        keys: Sequence[str] | None = None,
    ) -> ExtractReport:
        """Compute and store the features of every manifest row not stored yet.

        ``workers`` threads hash and decode audio (``load_audio`` at the extractor's rate)
        ahead of the extractor, which gets ``batch_size`` waveforms per call. Audio that
        cannot be decoded (or features that are not finite) raise an error naming the file,
        after everything computed so far has been saved; with ``skip_errors=True`` such files
        are counted in :attr:`ExtractReport.failed` and listed in ``failures`` instead.
        ``verify`` checks the CRC of entries that would be reused (corrupt ones are recomputed).
        ``keys``: the rows' content hashes when the caller computed them already (a
        distributed extraction's driver): the files are not hashed again and the hash cache
        is not read.
        """
        start = time.perf_counter()
        ext = self._resolve(extractor)[1]
        if ext is None:
            raise FeatureError(f"cannot build the extractor {extractor!r} to compute features")
        if workers < 1 or batch_size < 1:
            raise FeatureError(f"workers and batch_size must be >= 1, got {workers}, "
                               f"{batch_size}")
        paths, durations = _manifest_paths(manifest)
        report = ExtractReport(ext.id, n_rows=len(paths))
        failures: dict[str, str] = {}
        if keys is None:
            row_keys = self._hash_paths(paths, workers, failures if skip_errors else None)
        elif len(keys) != len(paths):
            raise FeatureError(f"{len(keys)} content hashes given for {len(paths)} rows")
        else:
            row_keys = list(keys)
        todo = self._plan(ext.id, paths, row_keys, durations, report, verify)
        # A store on a read-only medium serves reads: write only when something is computed.
        self._save_hashes(create=bool(todo), best_effort=not todo)
        if todo:
            self._write_spec(ext)
            self._compute(ext, todo, report, failures, workers=workers, batch_size=batch_size,
                          progress=progress, skip_errors=skip_errors)
        report.failures = sorted(failures.items())
        report.failed = len(report.failures)
        report.seconds = time.perf_counter() - start
        return report

    def _plan(self, eid: str, paths: list[str], keys: list[str | None], durations: list[float],
              report: ExtractReport, verify: bool) -> list[_Item]:
        """The distinct audio still to compute, longest first (an out-of-memory shows early);
        counts duplicates, reused and corrupt entries into ``report``."""
        catalog = self._catalog(eid)
        first: dict[str, _Item] = {}  # content hash -> its first row
        for path, key, dur in zip(paths, keys, durations, strict=True):
            if key is None:
                continue
            if key in first:
                report.duplicates += 1
            else:
                first[key] = _Item(key, path, dur)
        items = {k: it for k, it in first.items() if k not in catalog}
        present = {k: catalog[k] for k in first if k in catalog}
        if verify and present:
            bad = self._verify(eid, present)
            report.corrupt = len(bad)
            items.update({k: first[k] for k in bad})
        report.reused = len(first) - len(items)
        return sorted(items.values(), key=lambda it: -it.duration_s)

    def _write_spec(self, ext: Extractor) -> None:
        """Create the extractor's folder and its spec.json (once)."""
        folder = self._folder(ext.id)
        with self._writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / _SPEC_FILE).exists():
                write_json_atomic(folder / _SPEC_FILE, {
                    "id": ext.id, **ext.spec(), "version": ext.version, "output": ext.output,
                    "sample_rate_hz": ext.sample_rate_hz, "format": FORMAT_VERSION,
                })

    def _compute(self, ext: Extractor, todo: list[_Item], report: ExtractReport,
                 failures: dict[str, str], *, workers: int, batch_size: int, progress: bool,
                 skip_errors: bool) -> None:
        """Decode ``todo`` ahead in threads, extract batch by batch, append to a new shard."""
        decoded = self._decode(todo, ext.sample_rate_hz, workers, batch_size)
        with self._lock(ext.id, exclusive=False), _ShardWriter(self, ext.id) as writer, \
                contextlib.closing(decoded), \
                tqdm(total=len(todo), desc=ext.id, unit="utt", disable=not progress,
                     leave=False) as bar:
            for batch in _batched(decoded, batch_size):
                waves = []
                for item, wave, error in batch:
                    if error is None:
                        item.n_samples = wave.size
                        waves.append((item, wave))
                    elif skip_errors:
                        failures[item.path] = str(error)
                    else:
                        raise error
                for item, feats in self._run(ext, waves, failures, skip_errors) if waves else ():
                    writer.add(item.key, feats)
                    report.computed += 1
                    report.audio_seconds += item.n_samples / ext.sample_rate_hz
                bar.update(len(batch))

    def load(
        self,
        manifest: ManifestLike,
        extractor: ExtractorLike,
        *,
        compute_missing: bool = False,
        verify: bool = True,
        workers: int = 1,
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[np.ndarray]:
        """Features of every manifest row, in row order (writable float32 copies).

        ``extractor`` is an extractor, a spec, or an extractor id present in the store. Rows
        whose features are missing (or fail the CRC check) raise :class:`FeatureError` naming
        the files, unless ``compute_missing=True`` extracts them first.
        """
        eid, ext = self._resolve(extractor)
        paths, _ = _manifest_paths(manifest)
        keys = self._hash_paths(paths, workers, None)
        self._save_hashes(best_effort=True)  # reads work on read-only media
        out, missing = self._read(eid, keys, verify)
        if missing and compute_missing:
            if ext is None:
                raise FeatureError(
                    f"cannot rebuild extractor {eid} to compute missing features (unknown "
                    "name or parameters, or stored by another version of its code); pass "
                    "the extractor spec instead of the id")
            todo = list(dict.fromkeys(paths[i] for i in missing))
            self.extract(todo, ext, workers=workers, batch_size=batch_size, progress=progress,
                         verify=False)
            again, still = self._read(eid, [keys[i] for i in missing], verify)
            for i, arr in zip(missing, again, strict=True):
                out[i] = arr
            missing = [missing[j] for j in still]
        if missing:
            names = [paths[i] for i in missing]
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5
                                             else "")
            raise FeatureError(
                f"{eid}: no stored features for {len(names)} of {len(paths)} files in "
                f"{self.root}: {shown}; run `emobridge features extract` or pass "
                f"compute_missing=True")
        return out  # type: ignore[return-value]

    def missing(self, manifest: ManifestLike, extractor: ExtractorLike) -> list[str]:
        """Paths of the manifest whose features are not stored (no CRC check)."""
        eid, _ = self._resolve(extractor)
        paths, _ = _manifest_paths(manifest)
        keys = self._hash_paths(paths, 1, None)
        self._save_hashes(best_effort=True)  # reads work on read-only media
        catalog = self._catalog(eid)
        return [p for p, k in zip(paths, keys, strict=True) if k not in catalog]

    def list(self) -> pd.DataFrame:
        """One row per extractor id: ``extractor_id, name, spec, entries, shards, bytes``.

        A folder whose spec.json is damaged is left out with an :class:`EmobridgeWarning`
        naming the file and the fault.
        """
        rows = []
        if self.root.is_dir():
            for folder in sorted(p for p in self.root.iterdir() if (p / _SPEC_FILE).exists()):
                try:
                    spec = self.spec(folder.name)
                except FeatureError as exc:
                    warnings.warn(str(exc), EmobridgeWarning, stacklevel=2)
                    continue
                shards = sorted(folder.glob("shard-*.json"))
                n_bytes = sum(f.stat().st_size for f in folder.glob("shard-*"))
                rows.append({
                    "extractor_id": folder.name, "name": spec.get("name", ""),
                    "spec": json.dumps({"name": spec.get("name"), "params": spec.get("params")},
                                       sort_keys=True),
                    "entries": len(self._catalog(folder.name)), "shards": len(shards),
                    "bytes": n_bytes,
                })
        return pd.DataFrame(rows, columns=["extractor_id", "name", "spec", "entries", "shards",
                                           "bytes"])

    def spec(self, extractor_id: str) -> dict[str, Any]:
        """The spec stored for ``extractor_id`` (``{"name", "params", ...}``); a missing or
        damaged spec.json raises :class:`FeatureError` naming it."""
        path = self._folder(extractor_id) / _SPEC_FILE
        if not path.exists():
            raise FeatureError(f"extractor id {extractor_id!r} is not in the store {self.root}")
        try:
            spec = loads_json(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise FeatureError(f"{path}: unreadable extractor spec ({exc}); delete the folder "
                               "or restore the file") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
                or not isinstance(spec.get("params", {}), dict):
            raise FeatureError(f"{path}: not an extractor spec (expected a JSON object with "
                               "'name' and 'params'); delete the folder or restore the file")
        return spec

    def prune(self, extractor_id: str | None = None,
              keep_paths: ManifestLike | None = None) -> PruneReport:
        """Remove cached features.

        * ``extractor_id`` alone: delete everything stored for that extractor.
        * ``keep_paths`` (paths or a manifest): keep only entries of that audio (for
          ``extractor_id`` or every extractor), e.g. after corpus files were deleted.
        * Always: rewrite shards holding dropped, duplicate or corrupt entries or stray bytes
          into one compact shard, and delete stale temporary / orphaned files.
        """
        report = PruneReport()
        if not self.root.is_dir():
            return report
        ids = [p.name for p in self.root.iterdir() if (p / _SPEC_FILE).exists()]
        if extractor_id is not None:
            if extractor_id not in ids:
                raise FeatureError(f"extractor id {extractor_id!r} is not in the store "
                                   f"{self.root}; stored: {', '.join(sorted(ids)) or 'none'}")
            ids = [extractor_id]
            if keep_paths is None:
                folder = self._folder(extractor_id)
                with self._lock(extractor_id, exclusive=True), self._writing(folder):
                    report.removed_entries += len(self._catalog(extractor_id))
                    report.freed_bytes += sum(f.stat().st_size for f in folder.rglob("*")
                                              if f.is_file())
                    shutil.rmtree(folder)
                report.removed_extractors.append(extractor_id)
                return report
        keep: set[str] | None = None
        if keep_paths is not None:
            paths, _ = _manifest_paths(keep_paths)
            keys = self._hash_paths([p for p in paths if os.path.exists(p)], 1, None)
            self._save_hashes()
            keep = {k for k in keys if k is not None}
        for eid in ids:
            with self._lock(eid, exclusive=True), self._writing(self.root / eid):
                removed, freed = self._compact(eid, keep)
            report.removed_entries += removed
            report.freed_bytes += freed
        return report

    # -- hashing -------------------------------------------------------------------------

    def _hash_paths(self, paths: list[str], workers: int,
                    failures: dict[str, str] | None) -> list[str | None]:
        """Content hash per path (cached by file identity, see :func:`_stat_key`); errors
        raise unless collected in ``failures``."""
        cache = self._hash_cache()

        def one(path: str) -> str:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise AudioError(f"{path}: cannot read audio file ({exc.strerror})") from None
            stat = _stat_key(st)
            hit = cache.get(path)
            if hit is not None and hit[:-1] == stat:
                return hit[-1]
            digest = file_hash(path)
            cache[path] = (*stat, digest)
            self._hashes_new.add(path)
            self._hashes_dirty = True
            return digest

        def guarded(path: str) -> str | None:
            try:
                return one(path)
            except EmobridgeError as exc:
                if failures is None:
                    raise
                failures[path] = str(exc)
                return None

        if workers > 1 and len(paths) > 64:
            pool = ThreadPoolExecutor(workers)
            try:
                return list(pool.map(guarded, paths))
            finally:  # on Ctrl-C, drop the queued files instead of hashing them all first
                pool.shutdown(wait=True, cancel_futures=True)
        return [guarded(p) for p in paths]

    def _hash_cache(self) -> dict[str, tuple[Any, ...]]:
        """path -> (*:data:`_HASH_KEY`, content hash), read once from hashes.json."""
        if self._hashes is None:
            self._hashes = self._read_hashes(warn=True)
        return self._hashes

    def _read_hashes(self, warn: bool) -> dict[str, tuple[Any, ...]]:
        """The hash cache on disk (empty when missing or unreadable)."""
        path = self.root / _HASHES_FILE
        if not path.exists():
            return {}
        try:
            doc = loads_json(check_regular_file(path).read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or doc.get("format") != _HASHES_FORMAT:
                raise ValueError(f"not a format-{_HASHES_FORMAT} hash cache")
            columns = doc["columns"]
            if columns != ["path", *_HASH_KEY, "hash"]:
                raise ValueError(f"columns {columns!r}")
            cache = {}
            for path_, *stat, digest in doc["rows"]:
                if not (isinstance(path_, str) and isinstance(digest, str)
                        and len(stat) == len(_HASH_KEY)
                        and all(type(v) is int for v in stat)):
                    raise ValueError(f"malformed row for {path_!r}")
                cache[path_] = (*stat, digest)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if warn:
                reason = (exc.strerror or exc if isinstance(exc, OSError) else
                          f"no {exc}" if isinstance(exc, KeyError) else exc)
                warnings.warn(f"{path}: unreadable hash cache ({reason}); audio files are "
                              "hashed again", EmobridgeWarning, stacklevel=4)
            return {}
        return cache

    def _save_hashes(self, create: bool = False, best_effort: bool = False) -> None:
        """Write the hash cache (only into an existing store unless ``create``).

        ``best_effort``: a store that cannot be written (read-only medium, no permission,
        full disk) keeps its old cache; it only costs re-hashing next time.
        """
        if not self._hashes_dirty or self._hashes is None:
            return
        if not create and not self.root.is_dir():
            return
        target = self.root / _HASHES_FILE
        try:
            with self._writing(target):
                self.root.mkdir(parents=True, exist_ok=True)
                # Other writers may have saved since we read: merge under the lock, ours win.
                with file_lock(self.root / ".hashes.lock", blocking=True):
                    merged = self._read_hashes(warn=False)
                    merged.update({p: self._hashes[p] for p in self._hashes_new})
                    _write_hashes(target, merged)
        except OutputError:
            if not best_effort:
                raise
            return
        self._hashes.update(merged)
        self._hashes_dirty = False
        self._hashes_new = set()

    @contextlib.contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """Turn an operating-system fault while writing ``path`` into one clear line."""
        try:
            yield
        except OSError as exc:
            raise OutputError(f"feature store {self.root}: cannot write {path}: "
                              f"{exc.strerror or exc}") from None

    # -- reading -------------------------------------------------------------------------

    def _folder(self, eid: str) -> Path:
        if not eid or "/" in eid or "\\" in eid or eid.startswith("."):
            raise FeatureError(f"invalid extractor id {eid!r}")
        return self.root / eid

    def _resolve(self, extractor: ExtractorLike) -> tuple[str, Extractor | None]:
        """``(extractor id, extractor or None)`` from an extractor, a spec or a stored id."""
        from emobridge.features.registry import build_extractor

        if isinstance(extractor, Extractor):
            return extractor.id, extractor
        if isinstance(extractor, str) and (self.root / extractor / _SPEC_FILE).is_file():
            spec = self.spec(extractor)
            try:
                ext = build_extractor({"name": spec["name"], "params": spec.get("params") or {}})
            except EmobridgeError:
                ext = None  # reading needs only the id
            if ext is not None and ext.id != extractor:
                ext = None  # stored by another version of the extractor's code: read only
            return extractor, ext
        ext = build_extractor(extractor)
        return ext.id, ext

    def _index_files(self, eid: str) -> list[Path]:
        folder = self.root / eid
        return sorted(folder.glob("shard-*.json")) if folder.is_dir() else []

    def _catalog(self, eid: str) -> dict[str, _Entry]:
        """Content hash -> entry over all shards (newer shards override older ones)."""
        catalog: dict[str, _Entry] = {}
        for index in self._index_files(eid):
            for key, entry in _read_index(index).items():
                catalog[key] = entry
        return catalog

    def _all_entries(self, eid: str) -> dict[str, list[_Entry]]:
        """Every stored copy per content hash, newest first."""
        copies: dict[str, list[_Entry]] = {}
        for index in reversed(self._index_files(eid)):
            for key, entry in _read_index(index).items():
                copies.setdefault(key, []).append(entry)
        return copies

    def _read(self, eid: str, keys: Sequence[str | None], verify: bool
              ) -> tuple[list[np.ndarray | None], list[int]]:
        """Arrays for ``keys`` (copies) and the positions that are missing or corrupt."""
        copies = self._all_entries(eid)
        maps: dict[str, np.ndarray | None] = {}
        cache: dict[str, np.ndarray | None] = {}
        bad: dict[str, list[str]] = {}
        out: list[np.ndarray | None] = []
        missing: list[int] = []
        handed_out: set[str] = set()
        for pos, key in enumerate(keys):
            if key is not None and key not in cache:
                cache[key] = None
                for entry in copies.get(key, ()):
                    arr = self._entry_array(eid, entry, maps, verify)
                    if arr is not None:
                        cache[key] = arr
                        break
                    bad.setdefault(entry.shard, []).append(key)
            arr = cache.get(key) if key is not None else None
            if arr is None:
                missing.append(pos)
                out.append(None)
            else:  # rows sharing audio get their own copy (callers may modify in place)
                out.append(arr.copy() if key in handed_out else arr)
                handed_out.add(key)
        if bad:
            self._drop(eid, bad)
        return out, missing

    def _entry_array(self, eid: str, entry: _Entry, maps: dict[str, np.ndarray | None],
                     verify: bool) -> np.ndarray | None:
        if entry.shard not in maps:
            data = self.root / eid / f"{entry.shard}.f32"
            try:
                maps[entry.shard] = np.memmap(data, dtype=np.uint8, mode="r")
            except (OSError, ValueError):  # missing or empty data file
                maps[entry.shard] = None
        mm = maps[entry.shard]
        n_bytes = entry.size * 4
        if mm is None or entry.offset + n_bytes > mm.shape[0]:
            return None
        raw = np.array(mm[entry.offset: entry.offset + n_bytes])
        if verify and zlib.crc32(raw) != entry.crc32:
            return None
        return raw.view(np.float32).reshape(entry.shape)

    def _verify(self, eid: str, entries: dict[str, _Entry]) -> list[str]:
        """Keys whose entry is corrupt; they are dropped from their shard indexes."""
        maps: dict[str, np.ndarray | None] = {}
        bad: dict[str, list[str]] = {}
        for key, entry in entries.items():
            if self._entry_array(eid, entry, maps, True) is None:
                bad.setdefault(entry.shard, []).append(key)
        if bad:
            self._drop(eid, bad)
        return [k for keys in bad.values() for k in keys]

    def _drop(self, eid: str, bad: dict[str, list[str]]) -> None:
        """Remove corrupt entries from their shard indexes (atomic rewrite).

        On a store that cannot be written they stay indexed: they fail their CRC check
        again and count as missing, as now."""
        for shard, keys in bad.items():
            index = self.root / eid / f"{shard}.json"
            # The shard's writer may be appending: re-read and rewrite under the index lock,
            # or its newest entries (or our drop) would be lost.
            with _index_lock(self.root / eid), contextlib.suppress(OSError, ValueError):
                if not index.exists():
                    continue
                doc = loads_json(index.read_text())
                drop = set(keys)
                keep = [i for i, k in enumerate(doc["hash"]) if k not in drop]
                for col in ("hash", "offset", "shape", "crc32"):
                    doc[col] = [doc[col][i] for i in keep]
                write_text_atomic(index, json.dumps(doc, separators=(",", ":")))

    # -- writing / maintenance -----------------------------------------------------------

    def _decode(self, items: list[_Item], sample_rate_hz: int, workers: int, prefetch: int
                ) -> Iterator[tuple[_Item, np.ndarray | None, EmobridgeError | None]]:
        """Decode in ``workers`` threads, at most ``2 * prefetch`` files ahead, in order."""
        pool = ThreadPoolExecutor(max_workers=workers)
        queue: deque[tuple[_Item, Future]] = deque()
        it = iter(items)
        try:
            for item in it:
                queue.append((item, pool.submit(load_audio, item.path, sample_rate_hz)))
                if len(queue) >= 2 * prefetch:
                    break
            while queue:
                item, fut = queue.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    queue.append((nxt, pool.submit(load_audio, nxt.path, sample_rate_hz)))
                try:
                    yield item, fut.result(), None
                except EmobridgeError as exc:
                    yield item, None, exc
        finally:
            for _, fut in queue:
                fut.cancel()
            pool.shutdown(wait=True)

    def _run(self, ext: Extractor, waves: list[tuple[_Item, np.ndarray]],
             failures: dict[str, str], skip_errors: bool
             ) -> list[tuple[_Item, np.ndarray]]:
        """Extract one batch; with ``skip_errors`` a failing batch is retried item by item."""
        try:
            feats = ext.extract_batch([w for _, w in waves], ext.sample_rate_hz)
            if len(feats) != len(waves):
                raise FeatureError(f"{ext.id}: extract_batch returned {len(feats)} arrays "
                                   f"for {len(waves)} waveforms")
            checked = [(item, _check_features(ext, item.path, f))
                       for (item, _), f in zip(waves, feats, strict=True)]
        except Exception as exc:  # any extractor failure; Ctrl-C (BaseException) passes on
            if not skip_errors:
                if isinstance(exc, EmobridgeError):
                    raise
                first = waves[0][0].path
                more = f" (batch of {len(waves)})" if len(waves) > 1 else ""
                raise FeatureError(f"{ext.id}: extraction failed on {first}{more}: "
                                   f"{type(exc).__name__}: {exc}") from exc
            if len(waves) == 1:
                failures[waves[0][0].path] = f"{type(exc).__name__}: {exc}"
                return []
            checked = []
            for one in waves:
                checked += self._run(ext, [one], failures, skip_errors)
        return checked

    @contextlib.contextmanager
    def _lock(self, eid: str, exclusive: bool) -> Iterator[None]:
        """Writers share the extractor's lock, prune holds it alone (never waits)."""
        folder = self.root / eid
        if not folder.is_dir():
            yield
            return
        with file_lock(folder / ".lock", exclusive=exclusive) as held:
            if not held:
                what = "pruned" if exclusive else "written"
                raise FeatureError(f"{folder} cannot be {what} now: another process is "
                                   f"{'writing' if exclusive else 'pruning'} it")
            yield

    def _compact(self, eid: str, keep: set[str] | None) -> tuple[int, int]:
        """Rewrite the shards of ``eid`` keeping verified entries in ``keep``; clean strays."""
        folder = self.root / eid
        now = time.time()
        freed = 0
        indexes = self._index_files(eid)
        stems = {p.stem for p in indexes}
        for f in folder.iterdir():  # stale temp files and data files without an index
            stale = now - f.stat().st_mtime > _STALE_S
            orphan = f.suffix == ".f32" and f.stem not in stems
            if f.is_file() and stale and (f.name.endswith(".tmp") or ".tmp." in f.name
                                          or orphan):
                freed += f.stat().st_size
                f.unlink()
        copies = self._all_entries(eid)
        n_indexed = sum(len(_read_index(p)) for p in indexes)
        referenced = sum(e.size * 4 for entries in copies.values() for e in entries)
        data_bytes = sum((folder / f"{s}.f32").stat().st_size for s in stems
                         if (folder / f"{s}.f32").exists())
        wanted = [k for k in copies if keep is None or k in keep]
        if (len(indexes) <= 1 and len(wanted) == n_indexed and referenced == data_bytes
                and len(wanted) == len(copies)):
            return 0, freed  # already compact
        maps: dict[str, np.ndarray | None] = {}
        writer = _ShardWriter(self, eid)
        kept = 0
        for key in wanted:
            for entry in copies[key]:
                arr = self._entry_array(eid, entry, maps, True)
                if arr is not None:
                    writer.add(key, arr)
                    kept += 1
                    break
        writer.close()
        maps.clear()
        new = {writer.stem} if writer.stem else set()
        for index in indexes:
            if index.stem in new:
                continue
            data = folder / f"{index.stem}.f32"
            index.unlink()
            if data.exists():
                freed += data.stat().st_size
                data.unlink()
        if writer.stem:
            freed -= (folder / f"{writer.stem}.f32").stat().st_size
        return len(copies) - kept, max(freed, 0)


class _ShardWriter:
    """Appends entries to a shard's data file, then atomically rewrites its index."""

    def __init__(self, store: FeatureStore, eid: str) -> None:
        self.store = store
        self.folder = store.root / eid
        self.eid = eid
        self.pending: list[tuple[str, np.ndarray]] = []
        self.stem: str | None = None
        self.doc: dict[str, Any] = {}
        self.data_bytes = 0
        self.last_flush = time.monotonic()

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # Also on errors and interrupts: keep what was computed; but after a failed write
        # (full disk, read-only) a second try would only hide the first error.
        if exc_type is None or not issubclass(exc_type, (OSError, OutputError)):
            self.close()

    def add(self, key: str, arr: np.ndarray) -> None:
        self.pending.append((key, np.ascontiguousarray(arr, dtype=np.float32)))
        if (len(self.pending) >= self.store.flush_every
                or time.monotonic() - self.last_flush >= self.store.flush_interval_s):
            self.flush()

    def close(self) -> None:
        self.flush()

    def _new_shard(self) -> None:
        # time orders shards (newest copy wins); 64 random bits keep names unique across
        # the processes and nodes writing one store
        self.stem = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:16]}"
        self.doc = {"format": FORMAT_VERSION, "extractor_id": self.eid,
                    "data": f"{self.stem}.f32", "data_bytes": 0,
                    "hash": [], "offset": [], "shape": [], "crc32": []}
        self.data_bytes = 0

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        if (self.stem is None or self.data_bytes >= self.store.shard_max_bytes
                or len(self.doc["hash"]) >= self.store.shard_max_entries):
            self._new_shard()
        data = self.folder / f"{self.stem}.f32"
        with self.store._writing(data):
            self._append(data)
        self.pending = []

    def _append(self, data: Path) -> None:
        """Append the pending arrays to ``data``, fsync, then atomically rewrite the index.

        The index (and ``self.doc``) gains the new entries only once their bytes are on
        disk; bytes of a failed append (full disk) are cut off again where possible.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        added: dict[str, list[Any]] = {"hash": [], "offset": [], "shape": [], "crc32": []}
        with open(data, "ab", buffering=0) as fh:  # unbuffered: a failure is seen at once
            start = pos = fh.seek(0, os.SEEK_END)  # after any bytes a crashed flush left
            try:
                for key, arr in self.pending:
                    raw = arr.tobytes()
                    view = memoryview(raw)
                    while view:
                        view = view[fh.write(view):]
                    for col, value in zip(added, (key, pos, list(arr.shape), zlib.crc32(raw)),
                                          strict=True):
                        added[col].append(value)
                    pos += len(raw)
                os.fsync(fh.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fh.fileno(), start)
                    if start == 0:  # this writer's own new shard: leave no empty file behind
                        data.unlink()
                raise
        index = self.folder / f"{self.stem}.json"
        with _index_lock(self.folder):
            # A reader may have dropped corrupt entries from our index: start from the file.
            base = self.doc
            if index.exists():
                with contextlib.suppress(OSError, ValueError):
                    base = loads_json(index.read_text(encoding="utf-8"))
            doc = {**base, "data_bytes": pos,
                   **{col: list(base[col]) + values for col, values in added.items()}}
            write_text_atomic(index, json.dumps(doc, separators=(",", ":")))
        self.doc = doc
        self.data_bytes = pos


@contextlib.contextmanager
def _index_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock for a read-modify-write of a shard index in ``folder`` (waits)."""
    with file_lock(folder / ".index.lock", exclusive=True, blocking=True):
        yield


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """The :data:`_HASH_KEY` fields of a stat result."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _write_hashes(target: Path, cache: dict[str, tuple[Any, ...]]) -> None:
    """Write the hash cache to ``target`` atomically (fsynced), one row per line; the rows
    go out in blocks so a cache of millions of files is never one string in memory."""
    head = {"format": _HASHES_FORMAT, "columns": ["path", *_HASH_KEY, "hash"]}
    rows = iter(cache.items())
    with atomic_open(target, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(head)[:-1] + ', "rows": [')
        sep = "\n"
        for block in _batched(rows, 4096):
            fh.write(sep + ",\n".join(json.dumps([p, *rest]) for p, rest in block))
            sep = ",\n"
        fh.write("\n]}\n")


def _read_index(path: Path) -> dict[str, _Entry]:
    """A shard index; a damaged one is reported and read as empty (its entries are then
    missing, so they are recomputed; ``prune`` removes the file)."""
    try:
        doc = loads_json(path.read_text(encoding="utf-8"))
        stem = path.stem
        return {k: _Entry(stem, int(o), tuple(int(d) for d in s), int(c))
                for k, o, s, c in zip(doc["hash"], doc["offset"], doc["shape"], doc["crc32"],
                                      strict=True)}
    except FileNotFoundError:  # removed by a concurrent prune
        return {}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)
        warnings.warn(f"{path}: damaged feature index ({reason}); its entries count as "
                      "missing and are recomputed", EmobridgeWarning, stacklevel=2)
        return {}


def _check_features(ext: Extractor, path: str, feats: Any) -> np.ndarray:
    arr = np.ascontiguousarray(feats, dtype=np.float32)
    if arr.ndim == 0 or arr.size == 0:
        raise FeatureError(f"{ext.id}: {path}: extractor returned an empty array {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise FeatureError(f"{ext.id}: {path}: features contain NaN or infinite values")
    return arr


def _batched(iterable: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for x in iterable:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _manifest_paths(manifest: ManifestLike) -> tuple[list[str], list[float]]:
    """Absolute paths and durations (0 when unknown) from a manifest, its file, or paths."""
    if isinstance(manifest, str | os.PathLike) and not isinstance(manifest, pd.DataFrame):
        from emobridge.corpora.manifest import read_manifest

        manifest = read_manifest(manifest)
    if isinstance(manifest, pd.DataFrame):
        if "path" not in manifest.columns:
            raise FeatureError("manifest has no 'path' column")
        paths = [str(p) for p in manifest["path"]]
        if "duration_s" in manifest.columns:
            durations = [float(d) if pd.notna(d) else 0.0 for d in manifest["duration_s"]]
        else:
            durations = [0.0] * len(paths)
    else:
        paths = [str(p) for p in manifest]
        durations = [0.0] * len(paths)
    paths = [os.path.abspath(p) for p in paths]
    return paths, durations
