"""The UI's search controller on real sessions (test doubles for generator, scorer, optimizer), without a server."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lib_mbw.hosts.base import HostPaths
from lib_mbw.hosts.standalone import StandaloneHost
from lib_mbw.search.history import read_history_rows
from lib_mbw.ui import actions
from lib_mbw.ui.controller import RatingError, SearchController, UIBusyError
from lib_mbw.ui.form import FormValues, settings_from_form
from lib_mbw.ui.live import status_line

PAYLOAD = {"prompt": "a {red|blue} house", "steps": 2, "width": 64, "height": 64, "seed": 5, "batch_size": 2}


class RecordingHost(StandaloneHost):
    """A standalone host that keeps the generators it made (to check restore/close) and counts interrupts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.made: list[Any] = []
        self.interrupts = 0

    def interrupt_generation(self) -> bool:
        self.interrupts += 1
        return True

    def make_generator(self, model_a: str, model_b: str, options: Any) -> Any:
        generator = super().make_generator(model_a, model_b, options)
        self.made.append(generator)
        return generator


@pytest.fixture
def host(tmp_path: Path, tiny_checkpoints: dict[str, tuple[Path, Path]]) -> RecordingHost:
    models = tmp_path / "models"
    models.mkdir()
    a, b = tiny_checkpoints["sd1"]
    (models / "A.safetensors").symlink_to(a)
    (models / "B.safetensors").symlink_to(b)
    payloads = tmp_path / "payloads"
    payloads.mkdir()
    for name, seed in (("house", 5), ("street", 6)):
        (payloads / f"{name}.json").write_text(json.dumps({**PAYLOAD, "seed": seed}))
    paths = HostPaths(payloads, payloads / "wildcards", tmp_path / "history", models)
    return RecordingHost(models, generator="tests.ui_backend:make_generator", paths=paths)


def form(**changes: Any) -> FormValues:
    values = FormValues(model_a="A.safetensors", model_b="B.safetensors", strategy="tests.loop_backend:make_optimizer",
                        scorer="tests.ui_backend:make_scorer", max_evaluations=5, patience=0, rescore_top=1, init_random=2,
                        run_name="ui-test")
    for key, value in changes.items():
        setattr(values, key, value)
    return values


def wait_until(condition, timeout: float = 20.0, what: str = "condition", controller: SearchController | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            state = f"; state {controller.snapshot().state}: {controller.snapshot().message}" if controller else ""
            raise AssertionError(f"timed out waiting for {what}{state}")
        time.sleep(0.02)


def start(host: RecordingHost, controller: SearchController, **changes: Any) -> None:
    result = actions.start_from_form(host, controller, form(**changes))
    assert result.ok, result.errors


def test_search_streams_frames_to_a_viewer_until_it_ends(host: RecordingHost) -> None:
    controller = SearchController(host)
    start(host, controller)
    frames = list(controller.watch(frame_interval=0.01, heartbeat=0.5))
    assert controller.wait(20)
    state = controller.snapshot()
    assert state.state == "finished", state.message
    assert state.evaluations == 5 and state.final_recipe is not None
    assert len(frames) >= 2 and "Finished" in frames[-1].status
    assert frames[0].unet is not None and any(f.latest for f in frames) and any(f.convergence is not None for f in frames)
    assert controller.viewers == 0  # the viewer unsubscribed when the run ended
    rows = read_history_rows(state.run_dir)
    assert [r.status for r in rows].count("ok") == 5 and rows[-1].status == "selected"
    assert "recipe_json" in state.outputs and Path(state.outputs["recipe_json"]).is_file()
    generator = host.made[0]
    assert generator.closed and generator.restores >= 1 and generator.applied is None


def test_two_viewers_and_a_late_one_see_the_same_run(host: RecordingHost) -> None:
    controller = SearchController(host)
    start(host, controller, generator_options='{"delay": 0.02}')
    results: list[list[Any]] = [[], []]
    threads = [threading.Thread(target=lambda i=i: results[i].extend(controller.watch(frame_interval=0.01, heartbeat=0.2))) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    late = list(controller.watch())
    assert all("Finished" in frames[-1].status for frames in results)
    assert len(late) == 1 and late[0].history is not None and len(late[0].history) == 5 + 1 + 1
    assert controller.viewers == 0


def test_pause_resume_and_stop_restore_the_model(host: RecordingHost) -> None:
    controller = SearchController(host)
    start(host, controller, max_evaluations=200, generator_options='{"delay": 0.02}')
    wait_until(lambda: controller.snapshot().evaluations >= 1, what="the first evaluation")
    assert "pausing" in controller.pause()
    wait_until(lambda: controller.snapshot().state == "paused", what="the pause")
    paused_at = controller.snapshot().evaluations
    time.sleep(0.3)
    assert controller.snapshot().evaluations == paused_at
    controller.resume_run()
    wait_until(lambda: controller.snapshot().evaluations > paused_at, what="the search to go on")
    busy = actions.start_from_form(host, controller, form())
    assert "a search is running" in busy.errors["run_name"]
    controller.stop()
    assert host.interrupts == 1, "Stop also interrupts the host's generation (the WebUI's Interrupt)"
    assert controller.wait(20)
    state = controller.snapshot()
    assert state.state == "stopped" and "restored" in state.message and "interrupted" not in state.message
    assert "**Stopped**" in status_line(state) and "Finished" not in status_line(state)
    assert state.evaluations < 200
    generator = host.made[0]
    assert generator.applied is None and generator.restores >= 1 and generator.closed
    with pytest.raises(UIBusyError):
        controller.pause()


def test_a_stopped_run_resumes_from_past_runs(host: RecordingHost) -> None:
    controller = SearchController(host)
    start(host, controller, max_evaluations=200, generator_options='{"delay": 0.02}')
    wait_until(lambda: controller.snapshot().evaluations >= 2, what="two evaluations")
    controller.stop()
    assert controller.wait(20)
    run_dir = Path(controller.snapshot().run_dir)
    done_before = sum(1 for r in read_history_rows(run_dir) if r.source in ("optimizer", "initial"))
    controller.resume(run_dir, actions.resume_overrides(done_before + 3))
    assert controller.wait(30)
    state = controller.snapshot()
    assert state.state == "finished", state.message
    assert state.resumed_evaluations == done_before and state.evaluations == done_before + 3
    searched = [r for r in read_history_rows(run_dir) if r.source in ("optimizer", "initial")]
    assert len(searched) == done_before + 3


def test_warm_start_form_from_a_past_run(host: RecordingHost) -> None:
    controller = SearchController(host)
    start(host, controller, levels=11, max_minutes=5)
    assert controller.wait(20)
    run_dir = Path(controller.snapshot().run_dir)
    values = actions.warm_start_form(host, run_dir)
    assert values.model_a == "A.safetensors" and values.model_b == "B.safetensors"
    assert values.levels == 11 and values.max_minutes == 5.0
    assert values.warm_start_paths.splitlines()[0] == str(run_dir)
    result = settings_from_form(values, host.paths, model_path=host.model_path, generator="x", family="sd1")
    assert result.ok and result.settings.warm_start == [str(run_dir)]


def test_human_rating_through_the_ui_rater(host: RecordingHost) -> None:
    controller = SearchController(host)
    start(host, controller, scorer="tests.ui_backend:make_rating_scorer", max_evaluations=2, rescore_top=0,
          payload_names=["house"], scorer_options='{"low": 1, "high": 5}')
    wait_until(lambda: controller.snapshot().rating is not None, what="images to rate")
    pending = controller.snapshot().rating
    assert len(pending.images) == 2 and (pending.low, pending.high) == (1, 5)
    with pytest.raises(RatingError):
        controller.submit_ratings(pending.request_id, [3.0])
    with pytest.raises(RatingError):
        controller.submit_ratings(pending.request_id, [3.0, 9.0])
    with pytest.raises(RatingError):
        controller.submit_ratings(pending.request_id + 1, [3.0, 4.0])
    controller.submit_ratings(pending.request_id, actions.parse_ratings([3, 5, 1], "", 2))
    wait_until(lambda: controller.snapshot().rating is not None and controller.snapshot().rating.request_id != pending.request_id,
               what="the second request")
    second = controller.snapshot().rating
    controller.submit_ratings(second.request_id, actions.parse_ratings([], "2, 4", 2))
    assert controller.wait(20)
    state = controller.snapshot()
    assert state.state == "finished" and state.rating is None
    assert [r.score for r in state.rows if r.phase == "search"] == [4.0, 3.0]


def test_stop_while_waiting_for_ratings_ends_the_run(host: RecordingHost) -> None:
    controller = SearchController(host)
    start(host, controller, scorer="tests.ui_backend:make_rating_scorer", max_evaluations=3, rescore_top=0, payload_names=["house"])
    wait_until(lambda: controller.snapshot().rating is not None, what="images to rate")
    controller.stop()
    assert controller.wait(20)
    state = controller.snapshot()
    assert state.state == "stopped" and state.rating is None
    assert host.made[0].applied is None
    rows = read_history_rows(state.run_dir)
    assert not any(r.status == "failed" for r in rows), "a stop while rating is no failed evaluation"


def test_parse_ratings() -> None:
    assert actions.parse_ratings([1, 2, 3], "", 2) == [1.0, 2.0]
    assert actions.parse_ratings([], "7, s 9", 3) == [7.0, None, 9.0]
    with pytest.raises(Exception, match="type 2 ratings"):
        actions.parse_ratings([], "1", 2)
    with pytest.raises(Exception, match="number or 's'"):
        actions.parse_ratings([], "x 1", 2)
    with pytest.raises(Exception, match="only 1 sliders"):
        actions.parse_ratings([1], "", 2)


def test_a_failed_start_is_shown_and_frees_the_generators(host: RecordingHost) -> None:
    controller = SearchController(host)
    start(host, controller, strategy="nowhere.module:factory")
    assert controller.wait(20)
    state = controller.snapshot()
    assert state.state == "failed" and "could not start the search" in state.message and "nowhere.module" in state.message
    assert host.made and host.made[0].closed
    frames = list(controller.watch())
    assert len(frames) == 1 and "Failed" in frames[0].status


def test_describe_models_reports_the_architecture(host: RecordingHost, tiny_checkpoints: dict[str, tuple[Path, Path]]) -> None:
    info = actions.describe_models(host, "A.safetensors", "B.safetensors")
    assert info.family == "sd1" and info.text.startswith("SD1.x: 27 blocks") and not info.mismatch
    (host.models_dir / "XL.safetensors").symlink_to(tiny_checkpoints["sdxl"][0])
    info = actions.describe_models(host, "A.safetensors", "XL.safetensors")
    assert info.family is None and "architectures differ" in info.text and info.mismatch
    result = actions.start_from_form(host, SearchController(host), form(model_b="XL.safetensors"))
    assert "architectures differ" in result.errors["model_b"]
    (host.models_dir / "broken.safetensors").write_bytes(b"not a model")
    unreadable = actions.describe_models(host, "A.safetensors", "broken.safetensors")
    assert not unreadable.mismatch and "read when the search starts" in unreadable.text


def test_the_registered_human_scorer_asks_the_ui(host: RecordingHost) -> None:
    controller = SearchController(host)
    start(host, controller, scorer="human", human_low=1, human_high=5, max_evaluations=1, rescore_top=0, payload_names=["house"])
    wait_until(lambda: controller.snapshot().rating is not None, what="images to rate", controller=controller)
    pending = controller.snapshot().rating
    assert (pending.low, pending.high) == (1, 5) and len(pending.images) == 2
    controller.submit_ratings(pending.request_id, [4, 5])
    assert controller.wait(20)
    state = controller.snapshot()
    assert state.state == "finished", state.message
    assert [r.score for r in state.rows if r.phase == "search"] == [4.5]


def test_the_webuis_interrupt_ends_the_run_as_interrupted_not_finished(host: RecordingHost) -> None:
    controller = SearchController(host)
    start(host, controller, max_evaluations=200, generator_options='{"interrupt_after": 3}')
    assert controller.wait(20)
    state = controller.snapshot()
    assert state.state == "stopped" and "interrupted in the WebUI" in state.message, state.message
    line = status_line(state)
    assert "**Stopped**" in line and "Finished" not in line and "interrupted" in line
    assert host.made[0].applied is None and host.made[0].closed, "the model is restored"


def test_a_scorer_that_cannot_load_fails_while_preparing_before_any_render(host: RecordingHost) -> None:
    controller = SearchController(host)
    start(host, controller, scorer="tests.ui_backend:make_broken_scorer")
    assert controller.wait(20)
    state = controller.snapshot()
    assert state.state == "failed" and "cannot load the test model" in state.message, state.message
    assert host.made and host.made[0].renders == 0, "no candidate was rendered"
    assert state.run_id == "" and not (host.paths.history.exists() and any(host.paths.history.iterdir())), "no run folder"


def test_the_hosts_scorer_cache_reaches_scorers_that_download_models(tmp_path: Path) -> None:
    from lib_mbw.search.settings import ScorerSettings
    from lib_mbw.ui.controller import make_ui_scorer

    cache = tmp_path / "models" / "ImageReward"
    scorer = make_ui_scorer(ScorerSettings("imagereward", {}), rater=None, model_cache=cache)
    assert scorer.settings.download_root == str(cache), "the WebUI's models/ImageReward, not ~/.cache"
    mine = make_ui_scorer(ScorerSettings("imagereward", {"download_root": "/elsewhere"}), rater=None, model_cache=cache)
    assert mine.settings.download_root == "/elsewhere", "a folder in the scorer options wins"
    assert make_ui_scorer(ScorerSettings("reference", {}), rater=None, model_cache=cache).name.startswith("reference")
