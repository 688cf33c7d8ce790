"""Image generators: the Generator protocol and its backends (diffusers, webui, http)."""

from .base import GeneratedImage, Generator

__all__ = ["GeneratedImage", "Generator"]
