"""AUTOMATIC1111 1.10.1, started for real on CPU with auto-MBW installed by its launcher (see tests/real_webui)."""

from __future__ import annotations

from tests.real_webui.harness import RunningHost


def test_the_tab_and_the_routes_load(a1111: RunningHost) -> None:
    names = a1111.client.api_names()
    assert {"auto_mbw_search", "auto_mbw_watch", "auto_mbw_stop", "auto_mbw_merge"} <= names
    status = a1111.client.mbw_status()
    assert status["host"] == "a1111" and status["searching"] is False
    assert status["loaded_checkpoint"].startswith("mbw-test-a")
    log = a1111.server.log_text()
    assert "[auto-MBW]" in log, "install.py ran through the launcher"
