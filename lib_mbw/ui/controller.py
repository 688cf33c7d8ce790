"""One search at a time behind the UI: start, resume, pause, stop, and the stream of its state to any number of viewers.

``SearchController`` runs a search (``search.session``) on its own thread and
registers a listener on it. The listener folds each event into the shared
``LiveState`` (``live.apply_event``) and puts a wake-up into the queue of every
subscribed viewer. A viewer is the UI's streaming callback: a generator that
blocks on its queue, renders the state that changed and yields it. So nothing
polls on a timer (the seed tool's ``every=`` polling broke gradio's queue),
a closed browser tab never stops the search, and a reloaded page subscribes
again and gets the whole state.

A UI client picks components among registered names and the plugins the
person who started the server enabled (``SearchController.plugins``: the
app's ``--plugin`` flags, a WebUI's ``AUTO_MBW_PLUGINS``); a name the client
or a resumed run folder sends is never imported otherwise.

``UIRater`` is the human scorer's rater: it publishes the images to rate in
the state and blocks the search thread until ``submit_ratings`` (or the time
limit, or Stop).
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

from ..errors import GenerationInterrupted, MBWError
from ..generators.base import Generator
from ..scorers.base import Scorer
from ..search.settings import ScorerSettings, SearchSettings
from .live import ACTIVE, LiveState, PendingRating, apply_event, new_run_state
from .views import LiveView, render_live

log = logging.getLogger(__name__)

#: Most wake-ups a viewer's queue holds; more are dropped (one pending wake-up is enough to redraw).
VIEWER_QUEUE_SIZE = 64
#: Seconds between two frames of a viewer (a burst of events is drawn once).
FRAME_INTERVAL_S = 0.3
#: Seconds a viewer waits for an event before refreshing the status line (elapsed time, ETA).
HEARTBEAT_S = 2.0


class UIBusyError(MBWError):
    """A search is already running (or no search is running for pause/resume/stop)."""


class RatingError(MBWError):
    """Submitted ratings do not match the images waiting for them."""


def title_for_path(host: Any, path: str | Path) -> str:
    """The host's title of a model file (runs record files; hosts make generators from titles)."""
    target = Path(path).resolve()
    for title in host.list_models():
        try:
            if Path(host.model_path(title)).resolve() == target:
                return title
        except MBWError:
            continue
    raise UIBusyError(f"model {path} is not in this host's model list; put it back (or pick models again and start a new search)")


def make_ui_scorer(settings: ScorerSettings, rater: Any, plugins: Collection[str] = (), model_cache: Any = None) -> Scorer:
    """The scorer of ``settings``; the human scorer (and any plugin factory taking ``rater=``) gets the UI's rater.

    ``model_cache``: the host's folder for scorer model files (``HostPaths.scorer_cache``), used when the
    options name none.
    """
    from ..scorers.registry import with_model_cache
    from ..search.session import load_factory, make_scorer_from_settings

    options = with_model_cache(settings.name, settings.options, model_cache)
    if settings.name == "human":
        return make_scorer_from_settings("human", {**options, "rater": rater})
    if ":" in settings.name:
        factory = load_factory(settings.name, "scorer", plugins)
        try:
            takes_rater = "rater" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            takes_rater = False
        return factory(**options, rater=rater) if takes_rater else factory(**options)
    return make_scorer_from_settings(settings.name, options)


def stopped_message(stop_message: str, run_id: str) -> str:
    """What the tab says after a search was stopped: by the WebUI's Interrupt (the loop says "interrupted: ...") or Stop."""
    how = "interrupted in the WebUI (Interrupt)" if stop_message.startswith("interrupted") else "stopped"
    return f"{how}; the model was restored. Resume it from Past runs ({run_id})."


class UIRater:
    """Blocks the search thread until the person rates the images shown in the UI (human scorer)."""

    def __init__(self, controller: "SearchController") -> None:
        self.controller = controller
        self._answer: list[float | None] | None = None
        self._answered = threading.Event()
        self._next_id = 0
        self._pending_id: int | None = None
        self._lock = threading.Lock()

    def __call__(self, request: Any) -> list[float | None]:
        images = list(request.images)
        timeout = getattr(request, "timeout_s", None)
        deadline = time.time() + timeout if timeout else None
        with self._lock:
            self._next_id += 1
            request_id = self._pending_id = self._next_id
            self._answer = None
            self._answered.clear()
        self.controller._set_rating(PendingRating(request_id, images, int(request.low), int(request.high), deadline))
        try:
            while not self._answered.wait(0.25):
                if self.controller.stop_requested or (deadline is not None and time.time() >= deadline):
                    break
        finally:
            with self._lock:
                answer, self._answer, self._pending_id = self._answer, None, None
            self.controller._set_rating(None)
        if answer is None and self.controller.stop_requested:
            # not the recipe's fault: the loop drops the evaluation instead of recording a failure
            raise GenerationInterrupted("stopped while waiting for ratings")
        return answer if answer is not None else [None] * len(images)

    def submit(self, request_id: int, ratings: Sequence[float | None]) -> None:
        """Answer the pending request ``request_id``; RatingError if it is gone or the count differs."""
        pending = self.controller.snapshot().rating
        with self._lock:
            if self._pending_id is None or pending is None or request_id != self._pending_id:
                raise RatingError("these images are no longer waiting for ratings (the time ran out or the search moved on)")
            if len(ratings) != len(pending.images):
                raise RatingError(f"expected {len(pending.images)} ratings, got {len(ratings)}")
            for number, rating in enumerate(ratings, start=1):
                if rating is not None and not pending.low <= float(rating) <= pending.high:
                    raise RatingError(f"rating of image {number} must be between {pending.low} and {pending.high}, got {rating:g}")
            self._answer = [None if r is None else float(r) for r in ratings]
            self._answered.set()


class SearchController:
    """Owns the UI's search thread, its session and the live state."""

    def __init__(self, host: Any, plugins: Collection[str] = ()) -> None:
        self.host = host
        #: ``package.module:factory`` names the server's starter enabled; clients pick only among these and registered names.
        self.plugins: frozenset[str] = frozenset(plugins)
        self._lock = threading.RLock()
        self._state = LiveState()
        self._viewers: list[queue.Queue[float]] = []
        self._thread: threading.Thread | None = None
        self._session: Any = None
        self._stop_requested = False
        self.rater = UIRater(self)

    # ------------------------------------------------------------------ state and viewers

    def snapshot(self) -> LiveState:
        with self._lock:
            return self._state.snapshot()

    @property
    def active(self) -> bool:
        with self._lock:
            return self._state.active

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    @property
    def session(self) -> Any:
        return self._session

    def subscribe(self) -> "queue.Queue[float]":
        """A queue that receives a wake-up whenever the live state changes."""
        viewer: queue.Queue[float] = queue.Queue(VIEWER_QUEUE_SIZE)
        with self._lock:
            self._viewers.append(viewer)
        return viewer

    def unsubscribe(self, viewer: "queue.Queue[float]") -> None:
        with self._lock:
            if viewer in self._viewers:
                self._viewers.remove(viewer)

    @property
    def viewers(self) -> int:
        with self._lock:
            return len(self._viewers)

    def watch(self, *, max_sliders: int = 16, frame_interval: float = FRAME_INTERVAL_S, heartbeat: float = HEARTBEAT_S) -> Iterator[LiveView]:
        """The live view, frame by frame: the whole view first, then what changed, until the search is not active.

        This is the body of the UI's streaming callback: it blocks on its own
        queue (filled by the search thread's listener), so it costs nothing
        while nothing happens, and a closed page only leaves one frame unsent.
        """
        viewer = self.subscribe()
        seen: dict[str, int] = {}
        try:
            while True:
                state = self.snapshot()
                view = render_live(state, seen, max_sliders=max_sliders)
                seen = view.seen
                yield view
                if not state.active:
                    return
                try:
                    viewer.get(timeout=heartbeat)
                except queue.Empty:
                    continue
                time.sleep(frame_interval)
                while True:
                    try:
                        viewer.get_nowait()
                    except queue.Empty:
                        break
        finally:
            self.unsubscribe(viewer)

    def _notify(self) -> None:
        stamp = time.time()
        for viewer in list(self._viewers):
            try:
                viewer.put_nowait(stamp)
            except queue.Full:
                pass

    def _update(self, change: Callable[[LiveState], None]) -> None:
        with self._lock:
            change(self._state)
            self._notify()

    def listener(self, event: Any) -> None:
        """The search's event listener (runs on the search thread)."""
        self._update(lambda state: apply_event(state, event))

    def _set_rating(self, pending: PendingRating | None) -> None:
        def change(state: LiveState) -> None:
            state.rating = pending
            state.bump("rating", "status")

        self._update(change)

    # ------------------------------------------------------------------ starting

    def start(self, settings: SearchSettings, model_a: str, model_b: str, family: str | None = None,
              more_models: Sequence[str] = ()) -> None:
        """Start a new search of ``settings`` on the host's models ``model_a``/``model_b`` (titles) in the background;
        ``more_models``: titles of models 3-5 of a mix."""
        from ..search.preflight import preflight
        from ..search.session import check_plugins, start_search

        check_plugins(settings, self.plugins, "search form", generator=False)

        def prepare() -> Any:
            preflight(settings, host=self.host)  # before loading models: a search that cannot work stops here
            generators = self._make_generators([model_a, model_b, *more_models], settings.generator.options)
            try:
                scorer = self._ready_scorer(settings)
                return start_search(settings, host=self.host, listeners=[self.listener], generators=generators, scorer=scorer,
                                    plugins=self.plugins)
            except BaseException:
                _close_all(generators)
                raise

        self._launch(prepare, settings, family, message="preparing: loading models, scorer and payloads")

    def resume(self, run_dir: str | Path, overrides: Mapping[str, Any] | None = None) -> None:
        """Continue the run in ``run_dir`` (its manifest has the settings) in the background."""
        from ..search.history import read_manifest
        from ..search.runlock import check_run_free
        from ..search.session import check_plugins, resume_search
        from .form import settings_from_manifest

        manifest = read_manifest(Path(run_dir))
        settings = settings_from_manifest(manifest, f"{run_dir}/manifest.json")
        check_plugins(settings, self.plugins, f"{Path(run_dir).name}/manifest.json", generator=False)
        titles = [title_for_path(self.host, p) for p in ([settings.models.a or "", settings.models.b or ""] + settings.models.listed()[2:])]

        def prepare() -> Any:
            check_run_free(run_dir)  # another process searching in this run: refused before loading models
            generators = self._make_generators(titles, settings.generator.options)
            try:
                scorer = self._ready_scorer(settings)
                return resume_search(run_dir, overrides=overrides, host=self.host, listeners=[self.listener], generators=generators,
                                     scorer=scorer, plugins=self.plugins)
            except BaseException:
                _close_all(generators)
                raise

        stop = dict((overrides or {}).get("stop", {}))
        max_evaluations = stop.get("max_evaluations", settings.stop.max_evaluations)
        self._launch(prepare, settings, manifest.get("family"), message=f"preparing to resume {Path(run_dir).name}", max_evaluations=max_evaluations)

    def _ready_scorer(self, settings: SearchSettings) -> Scorer:
        """The run's scorer with its model loaded (during "Preparing": a broken scorer fails before any render)."""
        from ..scorers.registry import preload

        paths = getattr(self.host, "paths", None)
        scorer = make_ui_scorer(settings.scorer, self.rater, self.plugins, getattr(paths, "scorer_cache", None))
        preload(scorer)
        return scorer

    def _make_generators(self, titles: Sequence[str], options: Mapping[str, Any]) -> list[Generator]:
        if len(titles) > 2:
            make_mix = getattr(self.host, "make_mix_generator", None)
            if make_mix is None:
                raise MBWError(f"this host cannot mix {len(titles)} models at run time; search two models here")
            return [make_mix(list(titles), dict(options))]
        return [self.host.make_generator(titles[0], titles[1], dict(options))]

    def _launch(self, prepare: Callable[[], Any], settings: SearchSettings, family: str | None, message: str,
                max_evaluations: int | None = None) -> None:
        with self._lock:
            if self._state.active:
                raise UIBusyError("a search is running; stop it (or wait for it to end) before starting another")
            self._stop_requested = False
            self._session = None
            self._state = new_run_state(
                "preparing",
                max_evaluations=(max_evaluations or settings.stop.max_evaluations) * (settings.models.count - 1),
                rescore_top=settings.rescore_top,
                max_minutes=settings.stop.max_minutes,
                family=family or settings.models.family,
                message=message,
                previous=self._state,
            )
            self._notify()
            self._thread = threading.Thread(target=self._run, args=(prepare,), name="auto-mbw-ui-search", daemon=True)
            self._thread.start()

    def _run(self, prepare: Callable[[], Any]) -> None:
        try:
            session = prepare()
        except Exception as exc:
            self._finish("failed", _message(exc, "could not start the search"))
            return
        with self._lock:
            self._session = session
            self._state.family = session.family
            self._state.higher_is_better = bool(getattr(session.scorer, "higher_is_better", True))
            self._state.run_id, self._state.run_dir = session.run_id, str(session.run_dir)
            stop_now = self._stop_requested
            self._notify()
        if stop_now:
            session.close()
            self._finish("stopped", f"stopped before the first evaluation; resume it from Past runs ({session.run_id})")
            return
        try:
            outcome = session.execute()
        except Exception as exc:
            self._finish("failed", _message(exc, "the search ended with an error"))
            return

        stopped = getattr(outcome.result.stop_reason, "value", None) == "user_abort"

        def done(state: LiveState) -> None:
            state.errors = list(outcome.errors)
            state.outputs.update({k: str(v) for k, v in outcome.outputs.items()})
            if stopped:
                state.message = stopped_message(str(getattr(outcome.result, "stop_message", "") or ""), state.run_id)
            state.bump("final")

        self._update(done)
        self._finish("stopped" if stopped else "finished", None)

    def _finish(self, final_state: str, message: str | None) -> None:
        def change(state: LiveState) -> None:
            state.state = final_state
            state.current, state.progress, state.rating = None, None, None
            if message is not None:
                state.message = message
            state.bump("status", "current", "rating")

        self._update(change)

    # ------------------------------------------------------------------ control

    def pause(self) -> str:
        session = self._require_session("pause")
        session.run.request_pause()

        def change(state: LiveState) -> None:
            state.message = "pausing after the evaluation in flight"
            state.bump("status")

        self._update(change)
        return "pausing after the evaluation in flight"

    def resume_run(self) -> str:
        session = self._require_session("resume")
        session.run.resume()

        def change(state: LiveState) -> None:
            state.message = "resuming"
            state.bump("status")

        self._update(change)
        return "resuming"

    def stop(self) -> str:
        """Stop the search: the evaluation in flight is dropped, the model is restored, outputs are written."""
        with self._lock:
            if not self._state.active:
                raise UIBusyError("no search is running")
            self._stop_requested = True
            session = self._session
            self._state.state = "stopping"
            self._state.message = "stopping: finishing the current step, then restoring the model and writing outputs"
            self._state.bump("status")
            self._notify()
        if session is not None:
            session.run.request_stop("stopped by user in the UI")
        interrupt = getattr(self.host, "interrupt_generation", None)
        if callable(interrupt):
            try:
                interrupt()  # the WebUI stops the image being rendered instead of finishing it
            except Exception:
                log.exception("could not interrupt the host's generation")
        return "stopping"

    def _require_session(self, action: str) -> Any:
        with self._lock:
            if self._state.state not in ACTIVE or self._session is None:
                raise UIBusyError(f"no running search to {action}")
            return self._session

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the search thread to end (tests, shutdown); True if it has."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def submit_ratings(self, request_id: int, ratings: Sequence[float | None]) -> None:
        self.rater.submit(request_id, ratings)


def _close_all(generators: Sequence[Generator]) -> None:
    for generator in generators:
        try:
            generator.close()
        except Exception:
            log.exception("could not close generator %s", getattr(generator, "name", generator))


def _message(exc: BaseException, context: str) -> str:
    if isinstance(exc, MBWError):
        return f"{context}: {exc}"
    log.error("%s", context, exc_info=exc)
    return f"{context}: {type(exc).__name__}: {exc} (details in the console log)"


__all__ = ["RatingError", "SearchController", "UIBusyError", "UIRater", "make_ui_scorer", "title_for_path"]
