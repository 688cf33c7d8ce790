"""Image scorers: the Scorer protocol and its implementations (ImageReward, aesthetic, reference, human)."""

from .base import Scorer

__all__ = ["Scorer"]
