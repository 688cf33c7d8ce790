"""Drive the standalone app through its HTTP API, under whichever gradio the running Python has (not collected).

``python tests/ui_driver.py`` (run from the repository root, with the main
venv for gradio 3.41 or ``.venv-gradio4`` for gradio 4.40):

1. starts ``python -m lib_mbw ui --demo`` on a free 127.0.0.1 port: the
   demo's tiny offline SD1 models rendered by the diffusers generator, its
   payloads and reference images (SSIM scorer), in a temporary folder;
2. with ``gradio_client``: shows that bad settings are refused with a message
   next to the field, runs a short search and follows it through the
   streaming ``watch`` endpoint until it ends, exports the best recipe, runs
   a search scored by ratings sent through the rating panel's endpoint, and
   pauses, resumes and stops a long search while a viewer streams it;
3. checks the run folders on disk and prints one JSON line with what it saw.

The optimizer is the seeded random search of ``tests.loop_backend`` (fast
and deterministic); everything else is what a user runs.

It exits non-zero (with the reason) when anything is wrong, and always stops
the server. ``tests/test_ui_app.py`` runs it in a subprocess for each gradio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib_mbw.ui.form import FORM_FIELDS, GRID_HEADERS, SECTIONS, FormValues  # noqa: E402

MAX_EVALUATIONS = 6
#: Positions in the watch endpoint's outputs (app._live_values without the rating panel, a layout block the API leaves out)
RATING_ID = 4
RATING_SLIDERS = 16
MODEL_A, MODEL_B = "tiny-sd1-a.safetensors", "tiny-sd1-b.safetensors"
PAYLOADS = ("castle", "city", "fox")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(root: Path, port: int, *extra: str, python: str = sys.executable) -> subprocess.Popen[bytes]:
    """``python -m lib_mbw ui --demo`` with its files in ``root/demo``; output in ``root/server.log``."""
    command = [python, "-m", "lib_mbw", "ui", "--port", str(port), "--demo", "--demo-dir", str(root / "demo"), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False", "AUTO_MBW_DATA": str(root / "data")}
    log = open(root / "server.log", "wb")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(port: int, server: subprocess.Popen[bytes], root: Path, timeout: float = 300.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}:\n{(root / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not answer within {timeout:.0f} s")


ROOT_OF_RUN = Path(".")  # set by main(): the temporary folder of this run


def form_values(**changes: Any) -> list[Any]:
    """The search form's values as raw API data (tables as {headers, data}, no uploads)."""
    form = FormValues(
        model_a=MODEL_A, model_b=MODEL_B, strategy="tests.loop_backend:make_optimizer", scorer="reference",
        scorer_options=json.dumps({"folder": str(ROOT_OF_RUN / "demo" / "references-0"), "metric": "ssim"}),
        max_evaluations=MAX_EVALUATIONS, patience=0, rescore_top=1, init_random=2, run_name="driver",
    )
    for key, value in changes.items():
        setattr(form, key, value)
    values = form.values()
    values[FORM_FIELDS.index("block_grid")] = {"headers": list(GRID_HEADERS), "data": form.block_grid}
    values[FORM_FIELDS.index("warm_start_files")] = []
    return values


def make_client(port: int) -> Any:
    """A client that passes data raw both ways (gradio_client 0.x cannot deserialize component updates)."""
    import gradio_client

    url = f"http://127.0.0.1:{port}/"
    if int(gradio_client.__version__.split(".")[0]) >= 1:
        return gradio_client.Client(url, verbose=False, download_files=False)
    return gradio_client.Client(url, verbose=False, serialize=False)


def plain(value: Any) -> Any:
    """An output's value whether it came plain or wrapped in an update (the UI alternates under gradio 4)."""
    return value.get("value") if isinstance(value, dict) and "__type__" in value else value


def last_output(job: Any, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > deadline:
            raise SystemExit(f"the live view did not finish within {timeout:.0f} s; outputs so far: {len(job.outputs())}")
        time.sleep(0.2)
    outputs = job.outputs()
    if not outputs:
        raise SystemExit(f"the watch endpoint yielded nothing (status {job.status()})")
    return list(outputs[-1]) if isinstance(outputs[-1], (list, tuple)) else [outputs[-1]]


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"check failed: {message}")


def drive(port: int, root: Path) -> dict[str, Any]:
    import gradio

    client = make_client(port)
    error_count = len(SECTIONS)  # the search button answers one message per form section, then a summary

    # bad settings: refused with messages next to the fields, nothing starts
    bad = client.predict(*form_values(model_b=MODEL_A, max_evaluations=0), api_name="/auto_mbw_search")
    messages = list(bad)
    check("same checkpoint" in messages[0], f"model error next to the models, got {messages[0]!r}")
    check("max evaluations" in messages[2] and "whole number" in messages[2], f"evaluations error in the optimizer section, got {messages[2]!r}")
    check(messages[error_count].startswith("⚠"), f"summary says to fix the settings, got {messages[error_count]!r}")
    history = root / "demo" / "history"
    check(not history.exists() or not any(history.iterdir()), "no run folder for refused settings")

    # a short search, followed through the streaming endpoint
    started = time.monotonic()
    result = client.predict(*form_values(), api_name="/auto_mbw_search")
    check(list(result)[error_count] == "starting the search", f"search started, got {list(result)}")
    job = client.submit(api_name="/auto_mbw_watch")
    frames = 0
    deadline = time.monotonic() + 120
    while not job.done() and time.monotonic() < deadline:
        frames = len(job.outputs())
        time.sleep(0.2)
    final = last_output(job, 5)
    frames = len(job.outputs())
    seconds = time.monotonic() - started
    status = plain(final[0])
    check("Finished" in str(status), f"final status says Finished, got {status!r}")
    check(f"evaluation {MAX_EVALUATIONS} / {MAX_EVALUATIONS}" in str(status), f"status counts evaluations, got {status!r}")
    check(frames >= 2, f"the live view streamed several frames, got {frames}")

    runs = [p for p in history.iterdir() if p.is_dir()]
    check(len(runs) == 1, f"one run folder, got {runs}")
    run = runs[0]
    lines = (run / "history.csv").read_text().splitlines()
    check(len(lines) == 1 + MAX_EVALUATIONS + 1 + 1, f"history has the evaluations, one re-score and the selection, got {len(lines) - 1} rows")
    check((run / "best.recipe.json").is_file() and (run / "convergence.png").is_file(), "run outputs written")

    exported = client.predict("canonical", api_name="/auto_mbw_export")
    text = exported[0]
    check(isinstance(text, str) and len(text.split(",")) == 27, f"export gives 27 values, got {text!r}")
    check(any((run / "exports").glob("*.canonical.txt")), "export file written next to the run")

    # human rating: the images wait in the rating panel until ratings come through the Submit button's endpoint
    rated = client.predict(*form_values(scorer="tests.ui_backend:make_rating_scorer", scorer_options="", payload_names=["castle"],
                                        max_evaluations=1, rescore_top=0, run_name="rated"), api_name="/auto_mbw_search")
    check(list(rated)[error_count] == "starting the search", f"rating search started, got {list(rated)}")
    rater = client.submit(api_name="/auto_mbw_watch")
    rating_id = 0
    deadline = time.monotonic() + 120
    while not rating_id and time.monotonic() < deadline:
        ids = [v for o in rater.outputs() if isinstance(v := plain(o[RATING_ID]), (int, float)) and v > 0]
        rating_id = int(ids[-1]) if ids else 0
        time.sleep(0.2)
    check(rating_id > 0, f"the rating panel opened with a request id; last outputs: {[str(o[:6])[:600] for o in rater.outputs()[-2:]]}")
    answer = client.predict(rating_id, "", *([7] + [1] * (RATING_SLIDERS - 1)), api_name="/auto_mbw_rate")
    check("ratings sent: 7" in str(answer[0]), f"the slider's rating accepted, got {answer!r}")
    final = last_output(rater, 120)
    check("Finished" in str(plain(final[0])) and "score 7" in str(plain(final[0])), f"the rated run scored the rating, got {final[0]!r}")

    # a long search, stopped from the Stop button's endpoint while a viewer streams it
    result = client.predict(*form_values(max_evaluations=500, run_name="long"), api_name="/auto_mbw_search")
    check(list(result)[error_count] == "starting the search", f"second search started, got {list(result)}")
    watcher = client.submit(api_name="/auto_mbw_watch")

    def evaluations_seen() -> int:
        counts = [int(m.group(1)) for o in watcher.outputs() if (m := re.search(r"evaluation (\d+) / 500", str(plain(o[0]))))]
        return max(counts, default=0)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and evaluations_seen() < 2:
        time.sleep(0.2)
    check(evaluations_seen() >= 2, f"the viewer shows the long search's evaluations, saw {evaluations_seen()} in {len(watcher.outputs())} frames")
    check(not watcher.done(), "the viewer is still streaming the long search")
    answers: dict[str, float] = {}

    def press(button: str) -> str:
        t0 = time.monotonic()
        answer = str(client.predict(api_name=f"/auto_mbw_{button}"))
        answers[button] = round(time.monotonic() - t0, 2)
        return answer

    check("pausing" in press("pause"), "pause answered")
    check("resuming" in press("resume"), "resume answered")
    check("stopping" in press("stop"), "stop answered")
    final = last_output(watcher, 120)
    check("Stopped" in str(plain(final[0])) and "restored" in str(plain(final[0])), f"stopped run says the model was restored, got {final[0]!r}")
    long_runs = [p for p in history.iterdir() if p.is_dir() and "long" in p.name]
    stopped_rows = (long_runs[0] / "history.csv").read_text().splitlines()
    check(3 <= len(stopped_rows) < 100, f"the long search stopped early, history has {len(stopped_rows) - 1} rows; button answers took {answers} s")
    return {"gradio": gradio.__version__, "frames": frames, "seconds": round(seconds, 2), "rows": len(lines) - 1, "run": run.name,
            "stopped_after_rows": len(stopped_rows) - 1, "button_seconds": answers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    global ROOT_OF_RUN
    root = ROOT_OF_RUN = Path(tempfile.mkdtemp(prefix="auto-mbw-ui-"))
    server = None
    try:
        port = free_port()
        server = start_server(root, port)
        wait_for(port, server, root)
        summary = drive(port, root)
        print(json.dumps(summary))
        return 0
    except (SystemExit, Exception) as exc:
        import traceback

        if not isinstance(exc, SystemExit):
            traceback.print_exc()
        log = (root / "server.log").read_text(errors="replace")[-4000:] if (root / "server.log").exists() else ""
        print(f"{exc}\n--- server log ---\n{log}", file=sys.stderr)
        return 1
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
