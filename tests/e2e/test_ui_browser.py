"""End to end in headless Chromium: open the standalone app, start a short search, watch the live view update.

Runs the app on the demo's tiny offline models (``python -m lib_mbw ui --demo``:
diffusers generator, reference scorer; under gradio 3.41 and, with
``.venv-gradio4``, gradio 4.40) with a settings file that fills the form
(the seeded random optimizer of ``tests.loop_backend``), clicks Search
in a real browser (Selenium driving Debian's ``chromium`` through
``chromedriver``; nothing is downloaded), and checks that the UNet
visualizer, the galleries and the convergence chart change while the search
runs, and that the run finishes. It saves a screenshot of the page
(into ``AUTO_MBW_SCREENSHOT_DIR`` when set; ``docs/img/ui-search.png`` comes
from here).

Skipped only when no browser is installed and ``AUTO_MBW_REQUIRE_BROWSER``
is unset (CI sets it, so there it must run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.ui_driver import MODEL_A, MODEL_B, free_port, start_server, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("AUTO_MBW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("AUTO_MBW_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1500,1450", "--disable-dev-shm-usage")
EVALUATIONS = 8


def browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (requirements-dev.txt)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file():
            return f"{path} not found (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Any:
    missing = browser_missing()
    if missing:
        if os.environ.get("AUTO_MBW_REQUIRE_BROWSER"):
            pytest.fail(f"AUTO_MBW_REQUIRE_BROWSER is set but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


GRADIO4_PYTHON = ROOT / ".venv-gradio4" / "bin" / "python"


@pytest.fixture(params=["gradio3", "gradio4"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    python = sys.executable
    if request.param == "gradio4":
        if not GRADIO4_PYTHON.exists():
            if os.environ.get("AUTO_MBW_REQUIRE_GRADIO4"):
                pytest.fail(f"{GRADIO4_PYTHON} is missing; run: bash tools/setup.sh --test")
            pytest.skip(f"no gradio-4 venv at {GRADIO4_PYTHON} (bash tools/setup.sh --test makes it)")
        python = str(GRADIO4_PYTHON)
    root = tmp_path / "app"
    root.mkdir()
    config = root / "search.json"
    config.write_text(json.dumps({
        "name": "browser",
        "models": {"a": MODEL_A, "b": MODEL_B},
        "strategy": "tests.loop_backend:make_optimizer",
        "scorer": {"name": "reference", "options": {"folder": str(root / "demo" / "references-0"), "metric": "ssim"}},
        "init": {"random": 3},
        "stop": {"max_evaluations": EVALUATIONS, "patience": None},
        "rescore_top": 1,
    }))
    port = free_port()
    server = start_server(root, port, "--config", str(config), python=python)
    try:
        wait_for(port, server, root)
        yield f"http://127.0.0.1:{port}/", root
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait(driver: Any, condition: Callable[[Any], Any], timeout: float, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        status = driver.execute_script("const s = document.querySelector('#mbw-status'); return s ? s.innerText : '(no status)'")
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; status: {status}") from None


LIVE_JS = """
const q = (s) => document.querySelector(s);
const count = (s) => document.querySelectorAll(s).length;
return {
  status: q('#mbw-status') ? q('#mbw-status').innerText : '',
  current: Array.from(document.querySelectorAll('#mbw-unet rect[data-role="current"]')).map(r => r.getAttribute('data-weight')).join(','),
  best: count('#mbw-unet rect[data-role="best"]'),
  points: count('#mbw-convergence circle'),
  latest: count('#mbw-latest img'),
  bestImages: count('#mbw-best img'),
  history: count('#mbw-history tbody tr'),
  newest: q('#mbw-history tbody tr') ? q('#mbw-history tbody tr').innerText : '',
};
"""


def test_search_in_the_browser_updates_the_live_view(browser: Any, app: tuple[str, Path], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url, root = app
    browser.get(url)
    wait(browser, lambda d: d.execute_script("return !!document.querySelector('#mbw-search')"), 120, "the app to render")
    wait(browser, lambda d: "Idle" in d.execute_script(LIVE_JS)["status"], 60, "the idle status")
    browser.execute_script("document.querySelector('#mbw-search').click()")

    first = wait(browser, lambda d: (s := d.execute_script(LIVE_JS))["points"] >= 1 and s["latest"] >= 1 and s["current"] and s, 120,
                 "the first evaluation in the live view")
    later = wait(browser, lambda d: (s := d.execute_script(LIVE_JS))["points"] >= first["points"] + 2 and s, 120, "more evaluations")
    assert later["current"] != first["current"], "the visualizer shows each new candidate"
    assert later["best"] >= 21 and later["latest"] >= 3  # the three demo payloads
    assert "ETA" in later["status"] and "evaluations/s" in later["status"]
    shot = tmp_path / "ui-search.png"
    browser.save_screenshot(str(shot))  # mid-run: current and best recipe, galleries, chart, ETA
    final = wait(browser, lambda d: "Finished" in (s := d.execute_script(LIVE_JS))["status"] and s, 180, "the end of the search")
    assert f"evaluation {EVALUATIONS} / {EVALUATIONS}" in final["status"]
    assert final["points"] >= EVALUATIONS and final["bestImages"] >= 3 and final["history"] >= 3
    assert "selected" in final["newest"] and str(EVALUATIONS + 1) in final["newest"], f"newest history row: {final['newest']!r}"
    assert "returned recipe" in final["status"]

    assert shot.stat().st_size > 20_000
    target = os.environ.get("AUTO_MBW_SCREENSHOT_DIR")
    if target and "gradio3" in request.node.name:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / "ui-search.png")
    runs = [p for p in (root / "demo" / "history").iterdir() if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "best.recipe.json").is_file()
