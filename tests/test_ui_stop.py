"""Stopping the standalone UI with SIGTERM (``kill``, systemd, a container stop) is a clean exit like Ctrl-C:
exit status 0, no traceback, and no folder of its own left in the temp folder."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from lib_mbw.ui import compat
from tests.ui_driver import free_port, start_server, wait_for


def test_sigterm_stops_the_ui_cleanly_and_leaves_no_temp_folder(tmp_path: Path, monkeypatch) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    port = free_port()
    server = start_server(tmp_path, port)
    try:
        wait_for(port, server, tmp_path)
        if not compat.IS_GRADIO_4:
            assert [p.name for p in temp.iterdir() if p.name.startswith("auto-mbw-served-")], "gradio 3 serves from a folder of ours"
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert not [p.name for p in temp.iterdir() if p.name.startswith("auto-mbw-")], os.listdir(temp)
