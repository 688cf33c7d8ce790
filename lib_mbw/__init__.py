"""auto-MBW: automatic block-weighted merging of Stable Diffusion checkpoints.

``lib_mbw`` is a plain library: it never imports the WebUI, and only
``lib_mbw.ui`` imports gradio. Hosts (the WebUI extension in ``scripts/``, the
CLI, the standalone app) plug adapters into it.
"""

__version__ = "0.1.0"
