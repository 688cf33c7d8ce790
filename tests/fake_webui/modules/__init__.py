"""Fake ``modules`` package of the WebUI (tests only)."""
