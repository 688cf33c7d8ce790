"""A fake WebUI worker process for HTTP tests: auto-MBW's real routes plus the WebUI's /sdapi/v1/txt2img.

Run as ``python -m tests.fake_webui.worker_app --root DIR --port N [--flavour forge] [--api-auth u:p]
[--delay S]`` from the repository root. The txt2img route follows
``modules/api/api.py`` ``text2imgapi``: a request model generated from the
processing class's constructor (unknown fields ignored), the queue lock
around processing, ``state.begin/end``, base64 PNG images and ``info`` =
``Processed.js()``. ``--delay`` (per worker) and a request's ``test_delay``
field add seconds per request, standing in for GPU time, so tests can
measure parallel speedup on a small CPU.
"""


import argparse
import base64
import inspect
import io
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Optional

from fastapi import Depends, FastAPI
from pydantic import create_model

from tests.fake_webui.harness import FakeWebUI

#: Constructor arguments the WebUI keeps out of its API schema (modules/api/models.py).
API_NOT_ALLOWED = {"self", "kwargs", "sd_model", "outpath_samples", "outpath_grids", "sampler_index", "extra_generation_params",
                   "overlay_images", "do_not_reload_embeddings", "seed_enable_extras", "prompt_for_display"}
API_EXTRA_FIELDS = {"sampler_index": (str, "Euler"), "script_name": (Optional[str], None), "script_args": (list, []),
                    "send_images": (bool, True), "save_images": (bool, False), "alwayson_scripts": (dict, {}),
                    "force_task_id": (Optional[str], None), "infotext": (Optional[str], None),
                    "test_delay": (float, 0.0)}  # test only: seconds of "GPU time" this request takes


def txt2img_request_model(processing_class: type) -> type:
    fields: dict[str, Any] = {}
    for klass in reversed(inspect.getmro(processing_class)):
        if klass is object:
            continue
        for name, param in inspect.signature(klass.__init__).parameters.items():
            if name not in API_NOT_ALLOWED and param.kind is param.POSITIONAL_OR_KEYWORD:
                default = None if isinstance(param.default, property) or param.default is param.empty else param.default
                fields[name] = (Optional[Any], default)
    fields.update(API_EXTRA_FIELDS)
    return create_model("StableDiffusionProcessingTxt2Img", **fields)


def create_app(root: Path, flavour: str, api_auth: str | None, delay: float, api: bool = True) -> FastAPI:
    """A WebUI worker as ``webui.py`` builds it: the API routes (ours and /sdapi) only with ``--api``, behind ``--api-auth``."""
    FakeWebUI(root, flavour=flavour, loaded="a.safetensors")
    from modules import call_queue, processing, shared

    from lib_mbw.hosts import worker_api
    from lib_mbw.hosts.webui import WebUIHost
    from tests.runtime_double import merger_factory

    shared.cmd_opts.api_auth = api_auth
    shared.cmd_opts.api = api
    credentials = worker_api.parse_credentials(api_auth)
    host = WebUIHost(merger_factory=merger_factory())
    app = FastAPI()
    if not worker_api.mount_if_enabled(app, host, shared.cmd_opts):
        return app  # the WebUI without --api serves no API at all
    request_model = txt2img_request_model(processing.StableDiffusionProcessingTxt2Img)
    auth = [Depends(worker_api.basic_auth(credentials))]

    def txt2img(request: request_model) -> dict[str, Any]:  # type: ignore[valid-type]
        args = request.dict()
        request_delay = delay + args["test_delay"]
        save_images = args.pop("save_images")
        send_images = args.pop("send_images")
        for key in API_EXTRA_FIELDS:
            args.pop(key, None)
        args = {k: v for k, v in args.items() if v is not None}
        with call_queue.queue_lock:
            p = processing.StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, **args)
            p.do_not_save_samples = p.do_not_save_grid = not save_images
            with closing(p):
                p.is_api = True
                shared.state.begin(job="scripts_txt2img")
                try:
                    time.sleep(request_delay)
                    processed = processing.process_images(p)
                finally:
                    shared.state.end()
        images = []
        for image in processed.images if send_images else []:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            images.append(base64.b64encode(buffer.getvalue()).decode())
        return {"images": images, "parameters": request.dict(), "info": processed.js()}

    def progress() -> dict[str, Any]:
        state = shared.state
        return {"progress": 0.0, "eta_relative": 0.0, "state": {"sampling_step": state.sampling_step, "sampling_steps": state.sampling_steps}}

    app.add_api_route("/sdapi/v1/txt2img", txt2img, methods=["POST"], dependencies=auth)
    app.add_api_route("/sdapi/v1/progress", progress, methods=["GET"], dependencies=auth)
    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--flavour", default="a1111")
    parser.add_argument("--api-auth", default=None)
    parser.add_argument("--no-api", action="store_true", help="model a WebUI started without --api")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    app = create_app(args.root, args.flavour, args.api_auth, args.delay, api=not args.no_api)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
