"""Fake ``modules_forge`` package of Forge (tests only)."""
