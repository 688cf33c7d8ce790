"""A running WebUI's memory across searches: resident size before, after each search, and the peak.

Linux only (``/proc/PID/status``; the peak ``VmHWM`` is reset through ``/proc/PID/clear_refs``). Used by the
memory scenario of each host suite: three searches in a row must leave the process within a stated margin
of where it started (before the fixes it kept 1.5-2 GB per full-size search: glibc retained the freed heap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

MIB = 2**20


def _status(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field_name)


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


@dataclass
class MemoryTrace:
    """Resident sizes of one process (bytes): before the first search, after each, and the peak over all."""

    before: int
    after: list[int] = field(default_factory=list)
    peak: int = 0

    def describe(self) -> str:
        after = ", ".join(f"{a / MIB:.0f}" for a in self.after)
        return f"RSS before {self.before / MIB:.0f} MiB, peak {self.peak / MIB:.0f} MiB, after each search {after} MiB"


def trace_searches(pid: int, search: Callable[[], None], count: int = 3) -> MemoryTrace:
    """Run ``search`` ``count`` times, recording the process's RSS after each and its peak over all of them."""
    trace = MemoryTrace(before=_status(pid, "VmRSS"))
    reset_peak(pid)
    for _ in range(count):
        search()
        trace.after.append(_status(pid, "VmRSS"))
    trace.peak = _status(pid, "VmHWM")
    return trace
