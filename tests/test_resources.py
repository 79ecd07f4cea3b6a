"""Stage timing and memory helpers of a run (cloak.resources)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cloak.resources import (
    StageTimer,
    bound_kernel_cache,
    release_free_memory,
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


def test_release_free_memory_and_kernel_cache_bound(monkeypatch):
    assert isinstance(release_free_memory(), bool)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    bound_kernel_cache(100)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7", "a setting from the environment was overridden"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    bound_kernel_cache(100)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "100"
