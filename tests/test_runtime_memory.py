"""The C allocator helpers for long-lived processes (``emobridge serve``)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt / malloc_trim only")
def test_freed_memory_goes_back_to_the_system_and_arenas_are_capped():
    # a fresh interpreter: the arena cap must come before threads allocate
    code = """
from emobridge.runtime import limit_malloc_arenas, release_free_memory

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

assert limit_malloc_arenas(2)
blocks = [bytearray(64_000) for _ in range(2000)]  # 128 MB below the mmap threshold: heap
del blocks[1:-1]  # the first and last pin the heap: free() alone cannot give it back
before = rss_kb()
assert release_free_memory()
print(before - rss_kb())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 10_000  # kB handed back to the system


def test_helpers_answer_false_where_there_is_no_glibc(monkeypatch):
    from emobridge import runtime

    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    assert runtime.limit_malloc_arenas() is False and runtime.release_free_memory() is False
