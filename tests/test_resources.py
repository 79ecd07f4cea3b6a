"""Stage timing and memory helpers of a run (cloak.resources)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cloak.resources import (
    StageTimer,
    bound_kernel_cache,
)


def test_stage_timer_adds_up_stages_and_counts():
    seen = []
    timer = StageTimer(on_count=lambda name, total: seen.append((name, total)))
    for _ in range(2):
        with timer.stage("sleep"):
            time.sleep(0.01)
    with timer.stage("spin"):
        sum(range(200_000))
    timer.count("photos")
    timer.count("photos", 3)
    assert timer.wall["sleep"] >= 0.02 and timer.cpu["sleep"] < timer.wall["sleep"]
    assert timer.cpu["spin"] > 0
    assert timer.counts == {"photos": 4} and seen == [("photos", 1), ("photos", 4)]
    assert timer.total_wall == timer.wall["sleep"] + timer.wall["spin"]
    assert "sleep" in timer.summary() and "4 photos" in timer.summary()


_ALLOCATE_64_MIB = """
from cloak.resources import peak_rss_bytes, reset_peak_rss, rss_bytes
reset = reset_peak_rss()
before = peak_rss_bytes()
block = bytearray(64 * 2**20)
block[::4096] = b"x" * len(block[::4096])  # touch every page
now = rss_bytes()  # before the peak: memory read later may have grown past an earlier peak reading
print(reset, before, peak_rss_bytes(), now)
"""


def test_peak_memory_follows_a_large_allocation():
    # A fresh interpreter: this test process's own peak (models, photos) would hide 64 MiB.
    out = subprocess.run([sys.executable, "-c", _ALLOCATE_64_MIB], capture_output=True, text=True, check=True)
    _reset, before, after, now = out.stdout.split()
    assert int(after) >= int(before) + 48 * 2**20
    assert int(now) <= int(after)


_FREE_100_MB = """
import ctypes, ctypes.util
from cloak.resources import release_free_memory, rss_bytes
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
blocks = [libc.malloc(1024) for _ in range(100_000)]
for b in blocks:
    libc.memset(b, 1, 1024)
keep = libc.malloc(1024)  # above the freed blocks: free() alone cannot give them back
for b in blocks:
    libc.free(b)
before = rss_bytes()
print(release_free_memory(), before, rss_bytes())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="malloc_trim is glibc's")
def test_release_free_memory_gives_freed_heap_pages_back():
    # A fresh interpreter: 100 MB of small blocks freed below a live one stay resident until trimmed.
    out = subprocess.run([sys.executable, "-c", _FREE_100_MB], capture_output=True, text=True, check=True)
    released, before, after = out.stdout.split()
    assert released == "True"
    assert int(after) <= int(before) - 64 * 2**20


def test_kernel_cache_bound_respects_the_environment(monkeypatch):
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    bound_kernel_cache(100)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7", "a setting from the environment was overridden"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    bound_kernel_cache(100)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "100"
