"""Run-time helpers shared by every stage: device resolution, seeding and, for long-lived
processes, the C allocator.

One place for each, so a trainer, an extractor and the experiment runner agree on what
``"auto"`` means and on what a seed covers.
"""

from __future__ import annotations

import functools
import os
import random
from typing import Any

import numpy as np

from emobridge.errors import ConfigError

#: device names accepted everywhere (``cuda:N`` too)
DEVICE_TYPES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: object = "auto") -> str:
    """The concrete torch device string for ``device``.

    ``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; ``"cpu"``, ``"cuda"``,
    ``"cuda:1"`` and ``"mps"`` as given. An unknown name, or a backend that this machine
    lacks, raises :class:`~emobridge.errors.ConfigError` naming the value.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ConfigError(f"device {device!r}: expected one of {', '.join(DEVICE_TYPES)}")
    name = device.strip().lower()
    kind, _, index = name.partition(":")
    if kind not in DEVICE_TYPES or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"device {device!r}: expected one of {', '.join(DEVICE_TYPES)} "
                          "(or cuda:N)")
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r} requested but MPS is not available")
    return name


def torch_device(device: object = "auto"):
    """:func:`resolve_device` as a ``torch.device``."""
    import torch

    return torch.device(resolve_device(device))


#: Seeds go to numpy's legacy RNG and scikit-learn, which take 32-bit seeds.
MAX_SEED = 2**32 - 1


def check_seed(seed: Any, what: str = "seed") -> int:
    """``seed`` as an int if it is one in ``0 .. MAX_SEED``, else :class:`ConfigError`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{what} must be an integer in 0 .. {MAX_SEED}, got {seed!r}")
    return int(seed)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed ``random``, numpy's global RNG and torch (CPU and CUDA).

    ``deterministic`` also asks cuDNN for deterministic kernels and turns off its autotuner;
    on CUDA it enables ``torch.use_deterministic_algorithms(warn_only=True)`` (ops without a
    deterministic kernel warn instead of failing) and turns off the flash and
    memory-efficient attention kernels, whose backward passes are not deterministic (the math
    kernel is; fine-tuned encoders then repeat bit for bit).
    """
    import torch

    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        if torch.cuda.is_available():
            # cuBLAS needs a fixed workspace for reproducible matmuls.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cuda.enable_flash_sdp(False)
            torch.backends.cuda.enable_mem_efficient_sdp(False)


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (``mallopt`` / ``malloc_trim``), else ``None``."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


#: glibc's ``M_ARENA_MAX`` option of ``mallopt``.
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process (what ``MALLOC_ARENA_MAX`` does), before
    worker threads start. By default glibc gives threads up to 8 arenas per core; a server
    whose thread pool handles uploads of every size then keeps freed memory in many partly
    used arenas, and its resident memory creeps up over hours (``benchmarks/bench_soak.py``).
    Returns whether it applied (``False`` off glibc, where nothing is needed)."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, int(arenas)) == 1)


def release_free_memory() -> bool:
    """Hand memory that malloc holds free back to the system (glibc ``malloc_trim``); for a
    long-lived process after a large, short-lived allocation (an adaptation batch). Returns
    whether any was released (``False`` off glibc)."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)
