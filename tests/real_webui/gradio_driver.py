"""Call one Gradio endpoint of a running WebUI with the host's own ``gradio_client`` (run with the host's python).

``python gradio_driver.py URL API_NAME ARGS_JSON [--stream] [--timeout S]`` prints one JSON line per output
(``--stream``: every output as it arrives, for generators such as the live view) and then
``{"done": true, "status": ...}``. Arguments and outputs travel raw (no file up/downloads), so the same
script works with gradio_client 0.5 (gradio 3.41, A1111) and 1.x (gradio 4.40, Forge). Standalone on purpose:
it imports nothing from the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def make_client(url: str) -> Any:
    import gradio_client

    if int(gradio_client.__version__.split(".")[0]) >= 1:
        return gradio_client.Client(url, verbose=False, download_files=False)
    return gradio_client.Client(url, verbose=False, serialize=False)


def emit(value: Any) -> None:
    print(json.dumps(value, default=str), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("api_name")
    parser.add_argument("args_json")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--timeout", type=float, default=600.0)
    options = parser.parse_args()
    args = json.loads(options.args_json)
    client = make_client(options.url)
    api_name = options.api_name if options.api_name.startswith("/") else "/" + options.api_name
    job = client.submit(*args, api_name=api_name)
    deadline = time.monotonic() + options.timeout
    seen = 0
    while not job.done():
        if time.monotonic() > deadline:
            emit({"done": False, "error": f"no end within {options.timeout:.0f} s"})
            job.cancel()
            return 3
        if options.stream:
            outputs = job.outputs()
            for output in outputs[seen:]:
                emit({"output": output})
            seen = len(outputs)
        time.sleep(0.2)
    outputs = job.outputs()
    if options.stream:
        for output in outputs[seen:]:
            emit({"output": output})
    else:
        try:
            emit({"output": job.result()})
        except Exception as error:  # the endpoint raised: say so in the protocol, not as a traceback
            emit({"done": True, "error": f"{type(error).__name__}: {error}"})
            return 2
    emit({"done": True, "status": str(job.status().code)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
