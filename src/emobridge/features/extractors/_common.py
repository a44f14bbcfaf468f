"""Small helpers shared by the built-in extractors."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import soxr

from emobridge import runtime
from emobridge.errors import ConfigError, FeatureError


def as_mono_float32(wave: np.ndarray, sample_rate_hz: int, target_rate_hz: int,
                    name: str) -> np.ndarray:
    """Return ``wave`` as 1-D float32 at ``target_rate_hz`` (resampled with soxr HQ if needed).

    The feature store already hands over audio at the extractor's rate; this makes direct
    calls with another rate correct instead of silently wrong.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise FeatureError(f"{name}: expected a 1-D mono waveform, got shape {wave.shape}")
    if wave.size == 0:
        raise FeatureError(f"{name}: waveform is empty (0 samples)")
    if sample_rate_hz <= 0:
        raise FeatureError(f"{name}: invalid sample rate {sample_rate_hz}")
    if sample_rate_hz != target_rate_hz:
        wave = soxr.resample(wave, sample_rate_hz, target_rate_hz, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def check_choice(name: str, param: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise FeatureError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise FeatureError(f"{name}: {param} must be one of {list(choices)}, got {value!r}")


def resolve_device(name: str, device: str) -> str:
    """:func:`emobridge.runtime.resolve_device` (``auto``, ``cpu``, ``cuda[:N]``, ``mps``),
    its error prefixed with the extractor's name and raised as :class:`FeatureError`."""
    try:
        return runtime.resolve_device(device)
    except ConfigError as exc:
        raise FeatureError(f"{name}: {exc}") from None


@contextlib.contextmanager
def defer_interrupts() -> Iterator[None]:
    """Hold Ctrl-C back until the block ends, then raise :class:`KeyboardInterrupt`.

    For C libraries that call back into Python (openSMILE's ctypes callbacks): an interrupt
    raised inside such a callback is swallowed by ctypes and leaves a NaN feature behind,
    later reported as a fault of a good audio file. Here SIGINT only records itself while
    the block runs; the interrupt is raised after it, replacing whatever the block raised.
    Only the main thread can change signal handlers; elsewhere the block runs unchanged.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield  # not the main thread, or SIGINT ignored / default / handled outside Python
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            previous(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt
