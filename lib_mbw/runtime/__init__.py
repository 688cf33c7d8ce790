"""In-place merging of a live UNet: ``RuntimeMerger`` and its placement modes.

``merger`` owns the merger (apply, restore, host-change detection, locking);
``placement`` where A and B live and what that costs; ``layout`` the flat
per-block buffers; ``sources`` opening and checking models A and B.
"""

from .merger import ApplyStats, RuntimeMerger, SyncReport, WriteCallback
from .placement import DEFAULT_HEADROOM_BYTES, MODES, MemoryCost, choose_mode, memory_cost

__all__ = [
    "ApplyStats",
    "DEFAULT_HEADROOM_BYTES",
    "MODES",
    "MemoryCost",
    "RuntimeMerger",
    "SyncReport",
    "WriteCallback",
    "choose_mode",
    "memory_cost",
]
