"""Where a run's time and memory go: wall and CPU seconds per stage, counts, peak memory.

:class:`StageTimer` is what :func:`cloak.run.run` times its stages with (decode,
detect, cloak, measure, encode, ...) and logs at debug level; the benchmarks
(``scripts/bench.py cloak``, ``scripts/bench.py library``) read the same numbers.
CPU seconds are those of the whole process (all threads), so on a machine shared
with other jobs they show the work done where wall seconds show the waiting too.

Peak memory is the resident set's high-water mark (``VmHWM`` in
``/proc/self/status``, else ``resource.getrusage``); on Linux it can be reset
(:func:`reset_peak_rss`) to measure one part of a process.

A run over thousands of photos keeps its memory flat with two helpers: every
photo's face region has its own size, and both glibc's heap (freed tensors of
every size leave it fragmented) and oneDNN's cache of convolution kernels (one
entry per tensor shape) would otherwise grow with the number of photos.
:func:`bound_kernel_cache` caps the latter; :func:`release_free_memory` hands
the heap's free pages back after each batch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
# Memory the process may gain between a reset and the check that it took.
_RESET_SLACK = 16 * 2**20

#: oneDNN's kernel-cache entries kept by :func:`bound_kernel_cache` (its default is 1024):
#: enough for every layer of the models at a fixed batch, few enough to stay small.
KERNEL_CACHE_ENTRIES = 256
_KERNEL_CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


@dataclass
class StageTimer:
    """Accumulates wall and CPU seconds per named stage, and counts (photos, faces, steps).

    Attributes:
        wall: stage -> wall-clock seconds spent in it.
        cpu: stage -> process CPU seconds (all threads) spent in it.
        counts: name -> total counted with :meth:`count`.
        on_count: optional ``f(name, total)`` called after each :meth:`count`
            (e.g. to sample memory every 100 photos).
    """

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    on_count: Callable[[str, int], None] | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Times the ``with`` block into stage ``name`` (added to what it already holds)."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu

    def count(self, name: str, n: int = 1) -> None:
        """Adds ``n`` to the count ``name``."""
        self.counts[name] = self.counts.get(name, 0) + int(n)
        if self.on_count is not None:
            self.on_count(name, self.counts[name])

    @property
    def total_wall(self) -> float:
        """Wall seconds over all stages."""
        return sum(self.wall.values())

    def summary(self) -> str:
        """One line: each stage's wall (CPU) seconds, then the counts."""
        stages = ", ".join(f"{k} {self.wall[k]:.2f}s ({self.cpu.get(k, 0.0):.2f}s CPU)" for k in self.wall)
        counts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        return f"{stages}; {counts}" if counts else stages


def peak_rss_bytes() -> int:
    """The process's peak resident memory (high-water mark) in bytes, since start or the last reset."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def rss_bytes() -> int:
    """The process's current resident memory in bytes (0 where ``/proc`` is missing)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Resets the peak-memory mark to the current resident size (Linux); returns whether it did.

    Some kernels and sandboxes accept the write to ``clear_refs`` and leave the mark
    where it was, so the reset counts only when the mark afterwards is near the
    current resident size.
    """
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        log.debug("Cannot reset the peak-memory mark (no writable %s): peaks count from process start", _CLEAR_REFS)
        return False
    if peak_rss_bytes() > rss_bytes() + _RESET_SLACK:
        log.debug("The peak-memory mark did not reset here: peaks count from process start")
        return False
    return True


def bound_kernel_cache(entries: int = KERNEL_CACHE_ENTRIES) -> None:
    """Caps oneDNN's cache of CPU kernels (one per tensor shape) unless the environment already sets it.

    oneDNN reads the cap when it builds its first kernel, so this works when called
    before the process's first convolution; later it changes nothing.
    """
    os.environ.setdefault(_KERNEL_CACHE_VARIABLE, str(int(entries)))


def release_free_memory() -> bool:
    """Hands the C heap's free pages back to the system (glibc ``malloc_trim``); returns whether it could."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
