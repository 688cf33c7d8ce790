"""Hosts: what auto-MBW runs inside (standalone, AUTOMATIC1111, Forge), behind one protocol."""

from .base import Host, HostPaths

__all__ = ["Host", "HostPaths"]
