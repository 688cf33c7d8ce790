"""Search events -> live state -> what the live view shows (status, ETA, visualizer, galleries, plot, table)."""

from __future__ import annotations

import re

from PIL import Image

from lib_mbw.blocks import BLOCKS
from lib_mbw.generators.base import GeneratedImage
from lib_mbw.payloads import Payload
from lib_mbw.recipe import Recipe
from lib_mbw.search import events as ev
from lib_mbw.search.stopping import StopReason
from lib_mbw.ui.live import LiveState, PendingRating, apply_event, eta_seconds, format_duration, new_run_state, status_line
from lib_mbw.ui.views import convergence_svg, display_image, gallery_items, history_table, render_live, unet_html

PAYLOAD = Payload(name="house", prompt="a house", seed=7, batch_size=2)


def images(value: float) -> list[GeneratedImage]:
    return [GeneratedImage(Image.new("RGB", (64, 64), (int(255 * value), 0, 0)), PAYLOAD, "a house", "", 7 + i, i) for i in range(2)]


def done(index: int, score: float | None, *, best: float | None, new_best: bool, evaluations: int, status: str = "ok",
         phase: str = "search", seconds: float = 2.0) -> ev.IterationDone:
    recipe = Recipe.uniform(index / 10)
    return ev.IterationDone(index=index, recipe=recipe, status=status, score=score, payload_scores={"house": score} if score is not None else {},
                            images=images(index / 10), timings=ev.Timings(0.01, seconds - 0.51, 0.5), is_new_best=new_best, best_score=best,
                            evaluations=evaluations, max_evaluations=10, phase=phase, worker="w")


def at(event: ev.SearchEvent, t: float) -> ev.SearchEvent:
    event.time = t
    return event


def run_events() -> LiveState:
    state = new_run_state(max_evaluations=10, rescore_top=2)
    apply_event(state, at(ev.RunStarted("run-1", "/tmp/run-1", "random", 1, 2, 10, 0), 100.0))
    apply_event(state, at(ev.EvaluationStarted(0, Recipe.uniform(0.0), "search", "w"), 100.0))
    apply_event(state, at(done(0, 0.5, best=0.5, new_best=True, evaluations=1), 104.0))
    apply_event(state, at(ev.NewBest(0, Recipe.uniform(0.0), 0.5), 104.0))
    apply_event(state, at(ev.EvaluationStarted(1, Recipe.uniform(0.1), "search", "w"), 104.0))
    apply_event(state, at(done(1, 0.2, best=0.5, new_best=False, evaluations=2), 106.0))
    apply_event(state, at(ev.EvaluationStarted(2, Recipe.uniform(0.2), "search", "w"), 106.0))
    apply_event(state, at(ev.GenerationProgress(2, "house", 3, 20, "w"), 107.0))
    return state


def test_events_fill_the_state_and_bump_the_parts_that_changed() -> None:
    state = run_events()
    assert state.state == "running" and state.run_id == "run-1"
    assert state.evaluations == 2 and [r.score for r in state.rows] == [0.5, 0.2]
    assert state.best == Recipe.uniform(0.0) and state.best_score == 0.5 and state.best_index == 0
    assert state.current == Recipe.uniform(0.2) and state.progress == ("house", 3, 20)
    assert len(state.latest_images) == 2 and state.latest_index == 1
    assert len(state.best_images) == 2 and state.best_payload_scores == {"house": 0.5}
    versions = dict(state.versions)
    apply_event(state, at(ev.GenerationProgress(2, "house", 4, 20, "w"), 107.5))
    assert state.versions["status"] == versions["status"] + 1
    assert {k: v for k, v in state.versions.items() if k != "status"} == {k: v for k, v in versions.items() if k != "status"}


def test_eta_and_speed_come_from_recent_evaluations() -> None:
    state = run_events()
    # 2 evaluations in 6 s (first from the start at 100, then 104 -> 106 = 2 s each)
    assert eta_seconds(state, 107.0) == (10 - 2 + 2) * 2.0
    state.max_minutes = 0.2  # a 12 s budget with 7 s used ends the search first; then 2 re-scores
    assert eta_seconds(state, 107.0) == 5.0 + 2 * 2.0
    line = status_line(state, now=107.0)
    assert "evaluation 2 / 10" in line and "best 0.5 (evaluation 0)" in line and "last 0.2" in line
    assert "0.5 evaluations/s (2 s each)" in line and "elapsed 0:00:07" in line and "ETA 0:00:09" in line
    assert "rendering `house`: step 3 / 20" in line


def test_paused_time_is_not_elapsed_time() -> None:
    state = run_events()
    apply_event(state, at(ev.Paused("paused by user", True), 107.0))
    assert state.state == "paused" and "paused by user" in status_line(state, 200.0)
    apply_event(state, at(ev.Resumed(), 167.0))
    assert state.state == "running"
    assert "elapsed 0:00:10" in status_line(state, now=170.0)


def test_end_of_run_shows_the_returned_recipe_and_outputs() -> None:
    state = run_events()
    apply_event(state, at(ev.Stopped(StopReason.NO_IMPROVEMENT, "no improvement in the last 2 evaluations", 3), 110.0))
    apply_event(state, at(done(3, 0.45, best=0.5, new_best=False, evaluations=3, status="rescore", phase="rescore"), 112.0))
    apply_event(state, at(ev.FinalRecommendation(Recipe.uniform(0.0), 0.475, "best mean score over 2 evaluations", 1), 113.0))
    apply_event(state, at(ev.OutputsWritten({"recipe_json": "/tmp/run-1/best.recipe.json"}), 113.5))
    assert state.rows[-1].status == "selected" and state.rows[-1].score == 0.475
    assert state.shown_best == Recipe.uniform(0.0)
    state.state = "finished"
    line = status_line(state, 114.0)
    assert "Finished" in line and "returned recipe: score 0.475" in line and "outputs in `/tmp/run-1`: `best.recipe.json`" in line
    assert "re-scoring" not in line
    assert "ETA" not in line


def test_render_live_redraws_only_what_changed() -> None:
    state = run_events()
    first = render_live(state, {})
    assert first.unet and first.latest and first.best and first.history is not None and first.convergence is not None
    assert first.convergence.count("<circle") == 2 and 'data-role="best"' in first.convergence
    assert [row[0] for row in first.history] == [1, 0]  # newest first
    again = render_live(state, first.seen)
    assert again.status and again.unet is None and again.latest is None and again.best is None and again.history is None and again.convergence is None
    apply_event(state, at(ev.EvaluationStarted(3, Recipe.uniform(0.3), "search", "w"), 108.0))
    third = render_live(state, again.seen)
    assert third.unet is not None and third.latest is None and third.history is None


def test_rating_panel_appears_and_disappears() -> None:
    state = run_events()
    seen = render_live(state, {}).seen
    state.rating = PendingRating(4, images(0.5), 1, 5)
    state.bump("rating")
    view = render_live(state, seen, max_sliders=16)
    assert view.rating.visible and view.rating.count == 2 and view.rating.request_id == 4 and len(view.rating.images) == 2
    assert "from 1 (worst) to 5 (best)" in view.rating.message
    state.rating = None
    state.bump("rating")
    assert render_live(state, view.seen).rating.visible is False


def test_unet_visualizer_draws_current_and_best_weights() -> None:
    current = Recipe({b: 0.25 for b in BLOCKS})
    best = Recipe({b: 0.75 for b in BLOCKS}, base=0.4)
    svg = unet_html(current, best, "sdxl")
    assert svg.count('data-role="current"') == 21 and svg.count('data-role="best"') == 21  # SDXL: 21 blocks
    assert svg.count(">absent<") == 6
    assert 'data-weight="0.25"' in svg and 'data-weight="0.75"' in svg
    assert "BASE (text encoder) best: 0.4" in svg
    bars = [float(h) for h in re.findall(r'data-role="best"[^>]*height="([0-9.]+)"', svg)]
    assert bars and all(abs(h - 34 * 0.75) < 0.06 for h in bars)
    empty = unet_html(None, None)
    assert "data-role" not in empty and empty.count("<g ") == 27


def test_gallery_items_make_any_image_viewable() -> None:
    tiny = Image.new("F", (27, 1))
    tiny.putdata([i / 26 for i in range(27)])
    picture = display_image(tiny)
    assert picture.mode == "L" and min(picture.size) >= 128 and picture.getextrema() == (0, 255)
    items = gallery_items(images(0.3), {"house": 0.123456})
    assert items[1][1] == "house #1 · seed 8 · score 0.1235"


def test_history_table_and_durations() -> None:
    state = run_events()
    assert history_table(state.rows, limit=1) == [[1, "search", "ok", 0.2, "", 2.0, ""]]
    assert format_duration(None) == "–" and format_duration(3725) == "1:02:05" and format_duration(90000) == "1 d 1:00:00"


def test_listener_state_survives_a_stop_request() -> None:
    state = LiveState(state="stopping")
    apply_event(state, ev.Paused("paused by user", True))
    assert state.state == "stopping"


def test_convergence_chart_marks_statuses_best_line_and_returned_recipe() -> None:
    state = run_events()
    apply_event(state, at(done(2, None, best=0.5, new_best=False, evaluations=3, status="failed"), 108.0))
    apply_event(state, at(done(3, 0.9, best=0.9, new_best=True, evaluations=4), 110.0))
    apply_event(state, at(done(4, 0.7, best=0.9, new_best=False, evaluations=4, status="rescore", phase="rescore"), 112.0))
    apply_event(state, at(ev.FinalRecommendation(Recipe.uniform(0.3), 0.8, "mean", 1), 113.0))
    svg = convergence_svg(state.rows)
    assert svg.count('data-status="ok"') == 3 and svg.count('data-status="rescore"') == 1
    assert svg.count('data-status="failed"') == 1 and svg.count('data-status="selected"') == 1
    best_line = re.search(r'data-role="best" d="([^"]+)"', svg).group(1)
    assert best_line.count("V") == 5  # one step per evaluation after the first score (the failed one included)
    lower = convergence_svg(state.rows, higher_is_better=False)
    assert "lower is better" in lower and lower != svg
    assert "no scores yet" in convergence_svg([])
