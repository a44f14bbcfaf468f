"""Atomic file output: write to a temporary file in the same folder, then rename.

An interrupted run therefore never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

try:  # POSIX advisory locks; on other systems locking is a no-op
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The names :func:`atomic_path` gives its temporary files: ``.NAME.RANDOM.tmpSUFFIX``.
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    Use this for libraries that want a file name (``DataFrame.to_parquet``, ``savefig``).
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + final.suffix,
                                   dir=final.parent)
    except OSError as exc:
        exc.filename = str(final)  # the temporary name would mean nothing to the user
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the file the mode a plain open() would have had.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except OSError as exc:
        # A failed write() names no file, a failed rename the temporary one: name the target.
        if exc.filename in (None, str(tmp_path)):
            exc.filename = str(final)
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds."""
    if "w" not in mode:
        raise ValueError(f"atomic_open is for writing, got mode {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def parquet_missing(what: str, instead: str = "a .csv file") -> str:
    """The one line for Parquet without pyarrow (not a core dependency: the ``parquet``
    extra): ``what`` (the file, as the caller words it), the extra to install and ``instead``
    (a format that needs nothing more)."""
    return (f"{what}: Parquet needs pyarrow, which is not installed: pip install "
            f"'emobridge[parquet]' (or use {instead})")


@contextlib.contextmanager
def parquet_engine(what: str, error: type[Exception], instead: str = "a .csv file"
                   ) -> Iterator[None]:
    """Run a pandas Parquet read or write; where no Parquet engine is installed, raise
    ``error`` with :func:`parquet_missing`'s line instead of pandas' ImportError (which
    ``read_parquet`` / ``to_parquet`` raise when they find neither pyarrow nor fastparquet,
    and for nothing else)."""
    try:
        yield
    except ImportError:
        raise error(parquet_missing(what, instead)) from None


def parquet_available() -> bool:
    """Whether pandas can read and write Parquet here (pyarrow or fastparquet installed);
    looks the packages up without importing them."""
    import importlib.util

    for name in ("pyarrow", "fastparquet"):
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):  # a module set to None, or without a spec
            continue
    return False


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented strict JSON to ``path`` atomically (see :func:`jsonable`)."""
    write_text_atomic(path, json.dumps(jsonable(obj), indent=2, sort_keys=True,
                                       allow_nan=False) + "\n")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks: bundle checksums, model parts,
    weight deltas."""
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_arrays(path: str | os.PathLike[str], arrays: Mapping[str, Any],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Write numpy ``arrays`` (and string ``metadata``) to a safetensors file atomically."""
    import numpy as np
    from safetensors.numpy import save

    blob = save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                metadata=dict(metadata) if metadata else None)
    with atomic_open(path, "wb") as fh:  # bytes: the file gets the usual mode, not 0600
        fh.write(blob)


def read_arrays(path: str | os.PathLike[str], with_metadata: bool = False) -> Any:
    """The arrays of a safetensors file (never a pickle); with ``with_metadata``, also its
    string metadata (``{}`` when it has none). A missing, irregular or malformed file raises
    :class:`~emobridge.errors.EmobridgeError` naming it."""
    from safetensors import safe_open

    from emobridge.errors import EmobridgeError, describe_os_error

    try:
        with safe_open(str(check_regular_file(path)), framework="np") as fh:
            arrays = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
            metadata = dict(fh.metadata() or {})
    except FileNotFoundError:
        raise EmobridgeError(f"{path}: weights file is missing") from None
    except OSError as exc:
        raise EmobridgeError(f"{path}: cannot read ({describe_os_error(exc)})") from None
    except Exception as exc:  # safetensors raises its own error types on a bad header
        raise EmobridgeError(f"{path}: not a readable safetensors file ({exc})") from None
    return (arrays, metadata) if with_metadata else arrays


#: Largest JSON document read (bundle, method, metrics, store metadata): far above any this
#: toolkit writes, far below what would exhaust memory.
MAX_JSON_BYTES = 64 * 2**20


def check_regular_file(path: str | os.PathLike[str], max_bytes: int | None = None) -> Path:
    """``path`` if it is a regular file (symlinks followed) of at most ``max_bytes``, else an
    :class:`OSError` naming it (a missing one raises ``FileNotFoundError`` as ``open`` would).
    Readers call this first: a FIFO would block them, a device such as /dev/zero never ends."""
    path = Path(path)
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    if max_bytes is not None and info.st_size > max_bytes:
        raise OSError(errno.EFBIG, f"{info.st_size} bytes, more than the {max_bytes} read",
                      str(path))
    return path


def loads_json(text: str) -> Any:
    """``json.loads``, where a document nested too deep for the parser raises
    :class:`ValueError` like any other malformed JSON (``json`` raises RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_json(path: str | os.PathLike[str], missing: str) -> Any:
    """The JSON document at ``path``; :class:`EmobridgeError` with ``missing`` when there is
    no such file, and one naming the file when it cannot be read or parsed."""
    from emobridge.errors import EmobridgeError

    path = Path(path)
    try:
        return loads_json(check_regular_file(path, MAX_JSON_BYTES).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmobridgeError(missing) from None
    except OSError as exc:
        raise EmobridgeError(f"{path}: unreadable ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise EmobridgeError(f"{path}: unreadable ({exc})") from None


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars / arrays turned into Python values, paths into strings and
    NaN / inf into ``None`` (strict JSON); anything else unknown becomes its ``str``."""
    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], exclusive: bool = True,
              blocking: bool = False) -> Iterator[bool]:
    """Hold an advisory ``flock`` on ``path`` (created if missing) for the block.

    Yields ``True`` when the lock is held; with ``blocking=False`` a lock held elsewhere
    yields ``False`` at once instead of waiting (the caller decides whether that is an
    error). Where the file cannot be created (a read-only folder) or the system has no
    ``fcntl``, yields ``True`` without locking: a read-only place cannot be written
    concurrently by us anyway.
    """
    if fcntl is None:
        yield True
        return
    try:
        fh = open(path, "a+")  # noqa: SIM115 - closed in finally
    except OSError:
        yield True
        return
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fh, mode | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def prepare_output_dir(path: str | os.PathLike[str], marker: str, what: str = "output folder",
                       allow: tuple[str, ...] = ()) -> Path:
    """Create or reuse a folder that emobridge owns, and return it.

    An output folder must be dedicated: an empty path, an existing file, or an existing
    non-empty folder without ``marker`` (the file emobridge writes into every folder it owns,
    e.g. ``run.json``) raise :class:`~emobridge.errors.OutputError`, so a user's own files
    are never overwritten. Names in ``allow`` (hidden lock files, say) do not count as
    content, nor do the temporary files of :func:`atomic_path` (a process killed while
    writing ``marker`` leaves one behind). A folder that cannot be created (read-only, a
    path through a file) raises the same error naming the path.
    """
    from emobridge.errors import OutputError

    if path is None or str(path).strip() == "":
        raise OutputError(f"{what}: empty path; name a dedicated folder")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder}: exists and is not a folder")
    if folder.is_dir():
        content = [p.name for p in folder.iterdir()
                   if p.name not in allow and not _TEMP_NAME.fullmatch(p.name)]
        if content and not (folder / marker).is_file():
            raise OutputError(
                f"{what} {folder}: not empty and not made by emobridge (no {marker}); "
                "choose a new or empty folder")
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what} {folder}: cannot create ({exc.strerror or exc})") from None
    return folder
