"""Real-host tests: AUTOMATIC1111 1.10.1 and Forge started from ``../shared/webui`` with auto-MBW installed.

The harness (``hosts``, ``venvs``, ``server``, ``client``, ``fixtures``) copies a WebUI tree to a
temporary folder, builds (and caches) the host's own virtualenv, writes small test checkpoints,
installs the extension through the host's launcher (so ``install.py`` runs as it does for users),
starts the WebUI on CPU and talks to it through its API, the extension's routes and the Gradio queue.
"""
