"""The HTTP routes auto-MBW adds to a WebUI: ``/auto-mbw/v1/...``, guarded by the WebUI's API auth.

A remote search (``generators.http``) drives a WebUI worker with two calls
per candidate: ``POST /auto-mbw/v1/apply`` here (model titles + recipe; the
worker merges on its live UNet) and the WebUI's own ``POST /sdapi/v1/txt2img``.

Routes (JSON):

* ``GET  /auto-mbw/v1/status``  -> host, loaded checkpoint, session (A, B, recipe, applies)
* ``POST /auto-mbw/v1/apply``   {model_a, model_b, recipe, mode?} -> seconds + session
* ``POST /auto-mbw/v1/restore`` -> puts model A's weights back
* ``POST /auto-mbw/v1/stop``    -> interrupts a search running in that WebUI, or restores and
  closes the worker session (reloading the checkpoint it had before)

They follow the WebUI's API convention (``modules/api/api.py``): they exist
only when the WebUI serves its API (``--api``, or ``--nowebui``;
``mount_if_enabled``), and with ``--api-auth "user:pass,user2:pass2"`` every
call needs those HTTP Basic credentials. Extension routes get no auth from
the WebUI (only ``Api.add_api_route`` adds it), so these routes build the
same check themselves, comparing with ``secrets.compare_digest``. Like the
WebUI's own API, ``--gradio-auth`` does not protect them: use ``--api-auth``. Errors come back as ``{"detail": message}``:
400 for bad input (any ``MBWError``), 409 while the WebUI is busy, 401
without valid credentials. Works with the pydantic/FastAPI versions of both
A1111 (pydantic 1) and Forge (pydantic 2).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Callable, Mapping, Optional, Protocol

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel

from ..errors import HostBusyError, MBWError
from ..recipe import Recipe, parse_recipe_text

log = logging.getLogger(__name__)

PREFIX = "/auto-mbw/v1"


class WorkerService(Protocol):
    """What the routes need from a host (``hosts.webui.WebUIHost`` implements it)."""

    def api_status(self) -> dict[str, Any]: ...

    def api_apply(self, model_a: str, model_b: str, recipe: Recipe, mode: str | None = None) -> dict[str, Any]: ...

    def api_restore(self) -> dict[str, Any]: ...

    def api_stop(self) -> dict[str, Any]: ...


class ApplyRequest(BaseModel):
    """Body of ``POST /auto-mbw/v1/apply``. ``recipe``: our JSON recipe object, or recipe text in any format."""

    model_a: str
    model_b: str
    recipe: Any
    mode: Optional[str] = None


def parse_credentials(api_auth: str | None) -> dict[str, str] | None:
    """``--api-auth`` ("user:password,user2:password2") as {user: password}; None when auth is off."""
    if not api_auth:
        return None
    credentials: dict[str, str] = {}
    for entry in api_auth.split(","):
        user, sep, password = entry.strip().partition(":")
        if not sep or not user:
            raise MBWError(f"--api-auth entry {entry.strip()!r} is not user:password")
        credentials[user] = password
    return credentials


def basic_auth(credentials: Mapping[str, str] | None) -> Callable[..., bool]:
    """A FastAPI dependency that accepts any request when ``credentials`` is None, else valid HTTP Basic only."""
    scheme = HTTPBasic(auto_error=False)

    def check(given: Optional[HTTPBasicCredentials] = Depends(scheme)) -> bool:
        if credentials is None:
            return True
        if given is not None:
            for user, password in credentials.items():
                user_ok = secrets.compare_digest(given.username.encode(), user.encode())
                password_ok = secrets.compare_digest(given.password.encode(), password.encode())
                if user_ok and password_ok:
                    return True
        raise HTTPException(status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    return check


def recipe_from_body(value: Any) -> Recipe:
    """A recipe from the request: our JSON object, or text in any format ``recipe.parse_recipe_text`` reads."""
    if isinstance(value, Mapping):
        return Recipe.from_dict(value, source="request recipe")
    if isinstance(value, str):
        return parse_recipe_text(value, source="request recipe")
    raise MBWError("request recipe: give a recipe object ({'weights': {...}}) or recipe text")


def _call(operation: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return operation()
    except HostBusyError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except MBWError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    except Exception as exc:
        log.exception("auto-MBW: worker route failed")
        raise HTTPException(status_code=500, detail=f"auto-MBW worker error: {type(exc).__name__}: {exc}") from None


def build_router(service: WorkerService, credentials: Mapping[str, str] | None = None) -> APIRouter:
    """The ``/auto-mbw/v1`` routes over ``service``, all behind ``basic_auth(credentials)``."""
    router = APIRouter(prefix=PREFIX, tags=["auto-MBW"], dependencies=[Depends(basic_auth(credentials))])

    @router.get("/status")
    def status() -> dict[str, Any]:
        return _call(service.api_status)

    @router.post("/apply")
    def apply(request: ApplyRequest) -> dict[str, Any]:
        return _call(lambda: service.api_apply(request.model_a, request.model_b, recipe_from_body(request.recipe), request.mode))

    @router.post("/restore")
    def restore() -> dict[str, Any]:
        return _call(service.api_restore)

    @router.post("/stop")
    def stop() -> dict[str, Any]:
        return _call(service.api_stop)

    return router


def unmount(app: FastAPI) -> None:
    """Remove the routes an earlier load of the extension added."""
    app.router.routes[:] = [r for r in app.router.routes if not getattr(r, "path", "").startswith(PREFIX)]


def mount(app: FastAPI, service: WorkerService, credentials: Mapping[str, str] | None = None) -> None:
    """Add the routes to ``app``, replacing routes an earlier load of the extension added (Reload UI)."""
    unmount(app)
    app.include_router(build_router(service, credentials))


def api_enabled(cmd_opts: Any) -> bool:
    """Whether the WebUI serves its API: ``--api``, or ``--nowebui`` (API only)."""
    return bool(getattr(cmd_opts, "api", False) or getattr(cmd_opts, "nowebui", False))


def mount_if_enabled(app: FastAPI, service: WorkerService, cmd_opts: Any) -> bool:
    """Mount the routes as the WebUI mounts its API (only with --api/--nowebui, behind --api-auth); True if mounted."""
    if not api_enabled(cmd_opts):
        unmount(app)
        log.info("auto-MBW: worker routes %s/* are off; start the WebUI with --api (and --api-auth) to use it as a remote worker", PREFIX)
        return False
    credentials = parse_credentials(getattr(cmd_opts, "api_auth", None))
    if credentials is None and getattr(cmd_opts, "listen", False):
        log.warning("auto-MBW: --listen and --api without --api-auth: anyone on the network can merge models through %s/*", PREFIX)
    mount(app, service, credentials)
    return True
