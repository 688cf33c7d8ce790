"""The /auto-mbw/v1 routes over the real WebUI host (fake WebUI): apply, status, restore, stop, errors, auth."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_mbw.errors import MBWError
from lib_mbw.hosts import worker_api
from lib_mbw.recipe import to_positional
from tests.webui_support import expected_unet, host, live_state, recipe, unet_hash, webui  # noqa: F401


@pytest.fixture
def client(host):
    app = FastAPI()
    worker_api.mount(app, host)
    return TestClient(app)


def apply_body(r, **extra):
    return {"model_a": "a.safetensors", "model_b": "b.safetensors", "recipe": r, **extra}


def test_apply_merges_and_status_reports_the_session(client, webui):
    from modules import sd_models

    before = unet_hash(webui.unet())
    r = recipe(0.6, IN00=0.1)
    answer = client.post("/auto-mbw/v1/apply", json=apply_body(r.to_dict()))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_a"].startswith("a.safetensors") and body["applies"] == 1 and body["seconds"] >= 0
    folder = __import__("pathlib").Path(sd_models.model_path)
    want = expected_unet(folder / "a.safetensors", folder / "b.safetensors", r)
    got = live_state(webui.unet())
    assert all((got[k] == want[k]).all() for k in want)
    status = client.get("/auto-mbw/v1/status").json()
    assert status["session"]["recipe"]["weights"]["IN00"] == 0.1 and status["session"]["merged"]
    assert status["loaded_checkpoint"].startswith("a.safetensors") and not status["searching"]
    assert client.post("/auto-mbw/v1/restore").json() == {"restored": True}
    assert unet_hash(webui.unet()) == before


def test_apply_accepts_recipe_text(client):
    named = client.post("/auto-mbw/v1/apply", json=apply_body(recipe(0.5, TIME_EMBED=0.9).describe()))
    assert named.status_code == 200, named.text
    assert named.json()["recipe"]["weights"]["TIME_EMBED"] == 0.9
    positional = client.post("/auto-mbw/v1/apply", json=apply_body(to_positional(recipe(0.5, TIME_EMBED=0.9))))
    assert positional.json()["recipe"]["weights"]["TIME_EMBED"] == 0.9, "27 bare numbers are in canonical order"


@pytest.mark.parametrize(
    "body, message",
    [
        (apply_body({"weights": {"IN00": 2.0}}), "between 0 and 1"),
        (apply_body("0.5, 0.5"), "no known recipe format"),
        ({"model_a": "a.safetensors", "model_b": "zzz", "recipe": recipe(0.5).to_dict()}, "not in the WebUI's list"),
        ({"model_a": "a.safetensors", "model_b": "a.safetensors", "recipe": recipe(0.5).to_dict()}, "same checkpoint"),
    ],
)
def test_bad_requests_get_400_with_the_reason(client, body, message):
    answer = client.post("/auto-mbw/v1/apply", json=body)
    assert answer.status_code == 400
    assert message in answer.json()["detail"]


def test_missing_fields_are_rejected_by_the_schema(client):
    assert client.post("/auto-mbw/v1/apply", json={"model_a": "a.safetensors"}).status_code == 422


def test_busy_while_a_search_runs_here(client, host):
    with host.exclusive():
        answer = client.post("/auto-mbw/v1/apply", json=apply_body(recipe(0.5).to_dict()))
        assert answer.status_code == 409 and "search is running" in answer.json()["detail"]
        stop = client.post("/auto-mbw/v1/stop").json()
        assert stop["stopped"] == "search"
        from modules import shared

        assert shared.state.interrupted


def test_busy_when_the_webui_queue_stays_taken(client, monkeypatch):
    from modules import call_queue

    from lib_mbw.hosts import webui as webui_host

    monkeypatch.setattr(webui_host, "API_LOCK_TIMEOUT_S", 0.2)
    call_queue.queue_lock.acquire()
    try:
        answer = client.post("/auto-mbw/v1/apply", json=apply_body(recipe(0.5).to_dict()))
    finally:
        call_queue.queue_lock.release()
    assert answer.status_code == 409 and "busy" in answer.json()["detail"]


def test_stop_restores_and_closes_the_session(client, webui, host):
    before = unet_hash(webui.unet())
    client.post("/auto-mbw/v1/apply", json=apply_body(recipe(0.3).to_dict()))
    assert client.post("/auto-mbw/v1/stop").json() == {"stopped": "session"}
    assert host.current_session() is None and unet_hash(webui.unet()) == before
    assert client.post("/auto-mbw/v1/stop").json() == {"stopped": None}


def test_parse_credentials_like_the_webui():
    assert worker_api.parse_credentials(None) is None
    assert worker_api.parse_credentials("") is None
    assert worker_api.parse_credentials("u:p,v:x:y") == {"u": "p", "v": "x:y"}
    with pytest.raises(MBWError, match="not user:password"):
        worker_api.parse_credentials("justaname")
