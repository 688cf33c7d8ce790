"""The /auto-mbw/v1 routes follow the WebUI's API convention: only with --api (or --nowebui), behind --api-auth.

Without --api a WebUI serves no API, so these routes (which merge models into
the loaded checkpoint) must not exist either; with --api-auth every call
needs the credentials, and a refused call changes nothing.
"""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.test_webui_script import load_script
from tests.webui_support import recipe, unet_hash, webui  # noqa: F401

ROUTES = [("post", "/auto-mbw/v1/apply"), ("post", "/auto-mbw/v1/restore"), ("post", "/auto-mbw/v1/stop"), ("get", "/auto-mbw/v1/status")]


def started(*, api: bool, nowebui: bool = False, api_auth: str | None = None, gradio_auth: str | None = None) -> TestClient:
    from modules import script_callbacks, shared

    shared.cmd_opts.api, shared.cmd_opts.nowebui = api, nowebui
    shared.cmd_opts.api_auth, shared.cmd_opts.gradio_auth = api_auth, gradio_auth
    app = FastAPI()
    script_callbacks.app_started_callback(None, app)
    assert not script_callbacks.errors
    return TestClient(app)


def apply_body() -> dict:
    return {"model_a": "a.safetensors", "model_b": "b.safetensors", "recipe": recipe(0.7).to_dict()}


def test_without_api_the_routes_do_not_exist_and_nothing_merges(webui, caplog) -> None:
    load_script()
    before = unet_hash(webui.unet())
    with caplog.at_level(logging.INFO, logger="lib_mbw.hosts.worker_api"):
        client = started(api=False, gradio_auth="admin:pw")
    for method, path in ROUTES:
        kwargs = {"json": apply_body()} if path.endswith("apply") else {}
        assert getattr(client, method)(path, **kwargs).status_code == 404, path
    assert unet_hash(webui.unet()) == before
    (line,) = [r.getMessage() for r in caplog.records if "worker routes" in r.getMessage()]
    assert "are off; start the WebUI with --api (and --api-auth) to use it as a remote worker" in line


@pytest.mark.parametrize("flags", [{"api": True}, {"api": False, "nowebui": True}])
def test_with_api_auth_every_route_needs_the_credentials(webui, flags) -> None:
    load_script()
    client = started(**flags, api_auth="alice:s3cret")
    before = unet_hash(webui.unet())
    for method, path in ROUTES:
        kwargs = {"json": apply_body()} if path.endswith("apply") else {}
        for auth in (None, ("alice", "wrong"), ("mallory", "s3cret")):
            answer = getattr(client, method)(path, auth=auth, **kwargs)
            assert answer.status_code == 401 and answer.json() == {"detail": "Incorrect username or password"}, (path, auth)
    assert unet_hash(webui.unet()) == before  # nothing was merged by the refused calls
    assert client.post("/auto-mbw/v1/apply", json=apply_body(), auth=("alice", "s3cret")).status_code == 200
    assert unet_hash(webui.unet()) != before
    assert client.post("/auto-mbw/v1/restore", auth=("alice", "s3cret")).status_code == 200
    assert unet_hash(webui.unet()) == before


def test_a_fake_worker_without_api_serves_no_routes(tmp_path) -> None:
    """The fake worker (tests/fake_webui/worker_app.py) models a WebUI started without --api: no /sdapi, no /auto-mbw."""
    from tests.fake_webui.worker_app import create_app

    client = TestClient(create_app(tmp_path, "a1111", None, 0.0, api=False))
    assert client.get("/auto-mbw/v1/status").status_code == 404
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "x"}).status_code == 404
