"""The search loop with test doubles: order, events, stopping, control from other threads, failures, dedup, workers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lib_mbw.blocks import BLOCKS
from lib_mbw.errors import EvaluationFailed
from lib_mbw.payloads import Payload
from lib_mbw.recipe import Recipe
from lib_mbw.scorers.tally import Tally
from lib_mbw.search.events import (
    EvaluationFailure,
    EvaluationStarted,
    FinalRecommendation,
    GenerationProgress,
    IterationDone,
    NewBest,
    Paused,
    Resumed,
    RunStarted,
    Stopped,
)
from lib_mbw.search.history import RunHistory
from lib_mbw.search.loop import LoopError, LoopSettings, SearchRun
from lib_mbw.search.settings import AbandonSettings
from lib_mbw.search.stopping import StopReason, StopSettings
from tests.loop_backend import TARGET, FakeGenerator, FakeScorer, RandomGridOptimizer, ScriptedOptimizer, VirtualClock, true_score

PAYLOADS = [
    Payload(name="p1", prompt="one", seed=3, batch_size=2),
    Payload(name="p2", prompt="two", seed=10),
    Payload(name="p3", prompt="three", seed=5, weight=2.0),
    Payload(name="p4", prompt="four", seed=8),
]


def uniform(value: float) -> Recipe:
    return Recipe.uniform(value)


BEST = Recipe(dict(TARGET))


def make_run(optimizer=None, generators=None, scorer=None, *, stop=None, settings=None, history=None, payloads=PAYLOADS, **kwargs):
    events: list = []
    run = SearchRun(
        payloads,
        optimizer or RandomGridOptimizer(BLOCKS, seed=1),
        generators or FakeGenerator(),
        scorer or FakeScorer(),
        stop=stop or StopSettings(max_evaluations=5, patience=None),
        settings=settings or LoopSettings(rescore_top=0),
        history=history,
        listeners=[events.append],
        **kwargs,
    )
    return run, events


def of_type(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def test_one_evaluation_applies_then_renders_each_payload_then_scores_once() -> None:
    generator, scorer = FakeGenerator(), FakeScorer()
    run, _ = make_run(ScriptedOptimizer([uniform(0.5)]), generator, scorer, stop=StopSettings(max_evaluations=1, patience=None))
    result = run.run()
    assert [step for step, _ in generator.log] == ["apply", "generate", "generate", "generate", "generate"]
    assert [key for step, key in generator.log if step == "generate"] == ["p1", "p2", "p3", "p4"]
    assert scorer.calls == 1 and scorer.images_scored == 5  # one batch for the whole evaluation
    assert generator.restores >= 1 and generator.applied is None  # the model is restored at the end
    row = result.rows[0]
    assert row.status == "ok" and row.recipe == uniform(0.5)
    # per-payload scores are image means; the run score is their weighted tally
    expected = {p.name: sum(-10 * sum((0.5 - TARGET[b]) ** 2 for b in BLOCKS) / 27 + ((p.seed + i) % 7) * 0.01 for i in range(p.batch_size)) / p.batch_size for p in PAYLOADS}
    assert row.payload_scores == pytest.approx(expected, abs=1e-5)
    weights = [p.weight for p in PAYLOADS]
    assert row.score == pytest.approx(sum(w * expected[p.name] for w, p in zip(weights, PAYLOADS)) / sum(weights), abs=1e-5)


def test_events_describe_the_run() -> None:
    run, events = make_run(ScriptedOptimizer([uniform(0.2), BEST, uniform(0.9)]), stop=StopSettings(max_evaluations=3, patience=None))
    result = run.run()
    assert isinstance(events[0], RunStarted) and events[0].payloads == 4 and events[0].images_per_evaluation == 5
    assert isinstance(events[-1], FinalRecommendation) and events[-1].recipe == BEST
    done = of_type(events, IterationDone)
    assert [d.index for d in done] == [0, 1, 2]
    assert [d.is_new_best for d in done] == [True, True, False]
    assert done[1].best_score == pytest.approx(result.best_observed[1])
    assert set(done[0].payload_scores) == {"p1", "p2", "p3", "p4"} and len(done[0].images) == 5
    assert done[0].timings.merge_s == pytest.approx(0.001) and done[0].timings.generate_s >= 0
    assert [b.recipe for b in of_type(events, NewBest)] == [uniform(0.2), BEST]
    assert len(of_type(events, EvaluationStarted)) == 3 and len(of_type(events, GenerationProgress)) == 3 * 5
    (stopped,) = of_type(events, Stopped)
    assert stopped.reason == StopReason.MAX_EVALUATIONS and stopped.evaluations == 3
    assert events.index(stopped) < events.index(events[-1])
    assert events[0].to_dict()["kind"] == "RunStarted"
    assert done[0].to_dict()["recipe"]["IN00"] == 0.2 and "images" in done[0].to_dict()


def test_listener_errors_never_stop_a_search() -> None:
    run, _ = make_run(stop=StopSettings(max_evaluations=2, patience=None))
    run.add_listener(lambda event: 1 / 0)
    assert run.run().evaluations == 2


def test_patience_stops_after_evaluations_without_improvement() -> None:
    script = [BEST] + [uniform(v / 20) for v in range(10)]
    run, events = make_run(ScriptedOptimizer(script), stop=StopSettings(max_evaluations=50, patience=4))
    result = run.run()
    assert result.stop_reason == StopReason.NO_IMPROVEMENT and result.evaluations == 5
    assert of_type(events, Stopped)[0].message == "no improvement in the last 4 evaluations"


def test_tolerance_makes_small_gains_count_as_no_improvement() -> None:
    near = Recipe({**TARGET, "IN00": min(1.0, TARGET["IN00"] + 0.05)})
    script = [uniform(0.5), near, BEST]  # each better than the last, but BEST - near is tiny
    run, _ = make_run(ScriptedOptimizer(script), stop=StopSettings(max_evaluations=10, patience=1, tol_abs=0.01))
    result = run.run()
    assert result.stop_reason == StopReason.NO_IMPROVEMENT and result.evaluations == 3


def test_target_score_stops_the_search() -> None:
    run, _ = make_run(ScriptedOptimizer([uniform(0.0), BEST, uniform(1.0)]), stop=StopSettings(max_evaluations=10, patience=None, target_score=-0.01))
    result = run.run()
    assert result.stop_reason == StopReason.TARGET_SCORE and result.evaluations == 2


def test_time_budget_uses_the_clock() -> None:
    clock = VirtualClock()
    generator = FakeGenerator(clock=clock, virtual_seconds=3.0)  # 4 payloads × 3 s = 12 s per evaluation
    run, _ = make_run(generators=generator, stop=StopSettings(max_evaluations=100, patience=None, max_minutes=1.0), clock=clock)
    result = run.run()
    assert result.stop_reason == StopReason.TIME_BUDGET and result.evaluations == 5  # 5 × 12 s = 60 s


def test_exhausted_optimizer_ends_the_search() -> None:
    class Empty(RandomGridOptimizer):
        def ask(self, n=1):
            return [] if self.asks >= 2 else super().ask(n)

    run, _ = make_run(Empty(BLOCKS), stop=StopSettings(max_evaluations=10, patience=None))
    result = run.run()
    assert result.stop_reason == StopReason.EXHAUSTED and result.evaluations == 2


def test_identical_recipe_is_not_rendered_twice() -> None:
    generator = FakeGenerator()
    optimizer = ScriptedOptimizer([uniform(0.3), uniform(0.3), BEST, uniform(0.3)])
    run, events = make_run(optimizer, generator, stop=StopSettings(max_evaluations=4, patience=None))
    result = run.run()
    assert [r.status for r in result.rows] == ["ok", "cached", "ok", "cached", "selected"]
    assert generator.applies == 2  # two distinct recipes rendered
    assert result.rows[1].score == result.rows[0].score
    assert [s for _, s in optimizer.observations] == [result.rows[i].score for i in range(4)]  # the cache is told again


def test_failures_are_recorded_and_pause_after_three_in_a_row() -> None:
    failing = {uniform(v) for v in (0.1, 0.2, 0.3, 0.35, 0.4)}
    generator = FakeGenerator(fail_when=lambda recipe, payload: payload.key == "p2" and recipe in failing)
    optimizer = ScriptedOptimizer([uniform(0.1), uniform(0.2), BEST, uniform(0.3), uniform(0.35), uniform(0.4), uniform(0.6)])
    run, events = make_run(optimizer, generator, stop=StopSettings(max_evaluations=7, patience=None))
    paused = threading.Event()

    def on_event(event):
        if isinstance(event, Paused):
            paused.set()
            run.request_stop("stopped after repeated failures")

    run.add_listener(on_event)
    result = run.run()
    assert [r.status for r in result.rows[:6]] == ["failed", "failed", "ok", "failed", "failed", "failed"]
    assert "fake generator crashed on p2" in result.rows[0].reason
    assert [s for _, s in optimizer.observations[:2]] == [None, None]  # tell_failed, never a made-up score
    assert [e.consecutive for e in of_type(events, EvaluationFailure)] == [1, 2, 1, 2, 3]
    (pause,) = of_type(events, Paused)
    assert not pause.by_user and "3 evaluations failed in a row" in pause.reason and "crashed on p2" in pause.reason
    assert result.stop_reason == StopReason.USER_ABORT and result.stop_message == "stopped after repeated failures"
    assert result.recipe == BEST  # the result is still the best successful evaluation
    assert generator.applied is None


def test_scorer_failure_is_a_failed_evaluation() -> None:
    run, _ = make_run(ScriptedOptimizer([BEST, uniform(0.5)]), scorer=FakeScorer(fail_calls={1}), stop=StopSettings(max_evaluations=2, patience=None))
    result = run.run()
    assert [r.status for r in result.rows[:2]] == ["failed", "ok"]
    assert "all-black image in p1" in result.rows[0].reason


def test_pause_resume_and_stop_from_another_thread() -> None:
    generator = FakeGenerator(delay=0.002)
    run, events = make_run(generators=generator, stop=StopSettings(max_evaluations=1000, patience=None))
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("result", run.run()))
    worker.start()
    while len(of_type(events, IterationDone)) < 2:
        time.sleep(0.005)
    run.request_pause()
    while not of_type(events, Paused):
        time.sleep(0.005)
    assert run.paused
    rendered = generator.generated
    time.sleep(0.15)
    assert generator.generated == rendered  # nothing renders while paused
    run.resume()
    while not of_type(events, Resumed):
        time.sleep(0.005)
    while generator.generated == rendered:
        time.sleep(0.005)
    run.request_stop()
    worker.join(timeout=10)
    assert not worker.is_alive()
    result = outcome["result"]
    assert result.stop_reason == StopReason.USER_ABORT and 2 <= result.evaluations < 1000
    assert of_type(events, Paused)[0].by_user
    assert generator.applied is None  # restored on stop
    # only complete evaluations were recorded: every ok row has all four payload scores
    assert all(len([v for v in r.payload_scores.values() if v is not None]) == 4 for r in result.rows if r.status == "ok")


def test_model_is_restored_when_the_run_crashes() -> None:
    class Exploding(FakeScorer):
        def score(self, images):
            raise KeyboardInterrupt

    generator = FakeGenerator()
    run, _ = make_run(generators=generator, scorer=Exploding())
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert generator.restores == 1 and generator.applied is None


def test_early_abandon_skips_the_rest_of_clearly_worse_candidates() -> None:
    def search(margin):
        clock = VirtualClock()
        generator = FakeGenerator(clock=clock, virtual_seconds=1.0)
        optimizer = ScriptedOptimizer([BEST] + [uniform(v / 10) for v in range(11)] + [Recipe({**TARGET, "M00": 0.95})])
        run, _ = make_run(
            optimizer,
            generator,
            stop=StopSettings(max_evaluations=13, patience=None),
            settings=LoopSettings(rescore_top=0, abandon=AbandonSettings(margin=margin, after=2)),
            clock=clock,
        )
        return run.run(), clock.now, optimizer

    full, full_seconds, _ = search(None)
    fast, fast_seconds, optimizer = search(0.5)
    assert full_seconds == 13 * 4  # 4 payloads × 1 s per evaluation
    statuses = [r.status for r in fast.rows[:13]]
    assert statuses[0] == "ok" and statuses[-1] == "ok"  # the near-best candidate is evaluated fully
    assert statuses[1:12].count("abandoned") == 11  # every uniform recipe is far below the optimum
    assert fast_seconds == 4 + 11 * 2 + 4  # abandoned after 2 of 4 payloads
    assert fast_seconds / full_seconds < 0.6
    assert fast.recipe == full.recipe == BEST  # same answer, 42 % less rendering
    abandoned = fast.rows[1]
    assert "abandoned after 2 of 4 payloads" in abandoned.reason
    assert abandoned.payload_scores["p3"] is None and abandoned.payload_scores["p1"] is not None
    assert optimizer.observations[1][1] == pytest.approx(abandoned.score)  # told its partial tally


def test_three_workers_evaluate_concurrently_and_results_are_told() -> None:
    generators = [FakeGenerator(name="w", delay=0.02) for _ in range(3)]
    optimizer = RandomGridOptimizer(BLOCKS, seed=4)
    run, events = make_run(optimizer, generators, stop=StopSettings(max_evaluations=9, patience=None))
    started = time.perf_counter()
    result = run.run()
    elapsed = time.perf_counter() - started
    search_rows = [r for r in result.rows if r.source == "optimizer"]
    assert len(search_rows) == 9 and all(r.status == "ok" for r in search_rows)
    assert {r.worker for r in search_rows} == {"w#0", "w#1", "w#2"}
    assert sum(g.applies for g in generators) == 9
    assert len(optimizer.observations) == 9
    assert elapsed < 9 * 4 * 0.02 * 0.8  # clearly faster than one worker
    assert all(g.applied is None for g in generators)


def test_workers_stop_on_request_and_drop_unfinished_evaluations() -> None:
    generators = [FakeGenerator(name="w", delay=0.01) for _ in range(2)]
    run, events = make_run(generators=generators, stop=StopSettings(max_evaluations=500, patience=None))

    def stop_after_three(event):
        if isinstance(event, IterationDone) and event.index == 2:
            run.request_stop()

    run.add_listener(stop_after_three)
    result = run.run()
    assert result.stop_reason == StopReason.USER_ABORT
    assert 3 <= result.evaluations <= 4
    assert all(g.applied is None for g in generators)


def test_rescoring_uses_new_seeds_and_picks_the_best_mean() -> None:
    generator = FakeGenerator()
    script = [uniform(0.4), BEST, Recipe({**TARGET, "OUT": 0.0}), uniform(0.6)]
    run, events = make_run(
        ScriptedOptimizer(script),
        generator,
        stop=StopSettings(max_evaluations=4, patience=None),
        settings=LoopSettings(rescore_top=2, rescore_seed_offset=100),
    )
    result = run.run()
    rescores = [r for r in result.rows if r.status == "rescore"]
    assert [r.recipe for r in rescores] == [BEST, script[2]]
    seeds = [image.seed for e in of_type(events, IterationDone) if e.phase == "rescore" for image in e.images]
    assert seeds[:2] == [103, 104]  # p1's seeds 3, 4 moved by the offset
    selected = result.rows[-1]
    assert selected.status == "selected" and selected.recipe == BEST == result.recipe
    assert "re-score" in selected.reason and "top 2 candidates" in result.reason
    assert result.score == pytest.approx((result.rows[1].score + rescores[0].score) / 2)
    assert len(result.images) == 5  # images of the returned recipe, from its re-score


def test_lower_is_better_scorer() -> None:
    run, _ = make_run(ScriptedOptimizer([uniform(0.2), BEST, uniform(0.8)]), scorer=FakeScorer(higher_is_better=False), stop=StopSettings(max_evaluations=3, patience=None))
    result = run.run()
    assert result.recipe == BEST and result.score == min(r.score for r in result.rows)


def test_initial_recipes_are_evaluated_first() -> None:
    optimizer = RandomGridOptimizer(BLOCKS, seed=2)
    run, _ = make_run(optimizer, initial_recipes=[uniform(0.25), BEST], stop=StopSettings(max_evaluations=4, patience=None))
    result = run.run()
    assert [r.source for r in result.rows[:4]] == ["initial", "initial", "optimizer", "optimizer"]
    assert result.rows[1].recipe == BEST and optimizer.asks == 2


def test_no_successful_evaluation_returns_no_recipe() -> None:
    generator = FakeGenerator(fail_when=lambda recipe, payload: True)
    run, _ = make_run(generators=generator, stop=StopSettings(max_evaluations=2, patience=None), settings=LoopSettings(rescore_top=3, max_failures=5))
    result = run.run()
    assert result.recipe is None and result.reason == "no evaluation succeeded"


def test_bad_setup_is_refused() -> None:
    with pytest.raises(LoopError, match="at least one payload"):
        SearchRun([], RandomGridOptimizer(BLOCKS), FakeGenerator(), FakeScorer())
    with pytest.raises(LoopError, match="distinct"):
        SearchRun([PAYLOADS[0], PAYLOADS[0]], RandomGridOptimizer(BLOCKS), FakeGenerator(), FakeScorer())


def test_geometric_tally_with_negative_scores_ranks_like_the_objective() -> None:
    run, _ = make_run(ScriptedOptimizer([uniform(0.0), BEST, uniform(1.0)]), tally=Tally("geometric"), stop=StopSettings(max_evaluations=3, patience=None))
    result = run.run()
    assert all(r.score < 0.1 for r in result.rows)  # scores are negative...
    assert result.recipe == BEST  # ...and the tally still picks the true optimum
    assert true_score(BEST) == 0.0


def test_history_rows_are_fsynced_as_they_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    history = RunHistory.create(tmp_path, BLOCKS, [p.name for p in PAYLOADS])
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    seen_lines: list[int] = []

    def check_file(event):
        if isinstance(event, EvaluationStarted):
            # the previous evaluation's row is on disk before the next evaluation starts
            seen_lines.append(len((tmp_path / "history.csv").read_text().splitlines()) - 1)

    run, _ = make_run(history=history, stop=StopSettings(max_evaluations=4, patience=None))
    run.add_listener(check_file)
    result = run.run()
    assert seen_lines == [0, 1, 2, 3]
    assert len(synced) >= len(result.rows)  # every row is fsync'd
    reread = RunHistory.open(tmp_path).rows()
    assert [(r.status, r.recipe, r.score, r.payload_scores) for r in reread] == [(r.status, r.recipe, r.score, r.payload_scores) for r in result.rows]


def test_evaluation_failed_from_generator_keeps_its_reason() -> None:
    class Black(FakeGenerator):
        def generate(self, payload, progress=None):
            raise EvaluationFailed("NSFW filter returned a black image")

    run, _ = make_run(generators=Black(), stop=StopSettings(max_evaluations=1, patience=None))
    assert run.run().rows[0].reason == "NSFW filter returned a black image"


def test_host_interrupt_stops_the_search_without_blaming_the_recipe() -> None:
    from lib_mbw.errors import GenerationInterrupted

    def interrupt(generator, payload):
        if generator.generated == 5:  # second evaluation, second payload
            raise GenerationInterrupted("Interrupt pressed in the WebUI")

    optimizer = ScriptedOptimizer([BEST, uniform(0.3), uniform(0.6)])
    run, _ = make_run(optimizer, FakeGenerator(on_generate=interrupt), stop=StopSettings(max_evaluations=3, patience=None))
    result = run.run()
    assert result.stop_reason == StopReason.USER_ABORT and "Interrupt pressed" in result.stop_message
    assert [r.status for r in result.rows if r.status != "selected"] == ["ok"]  # the interrupted one is neither score nor failure
    assert [s for _, s in optimizer.observations if s is None] == []


def test_dead_worker_pauses_the_run_and_its_recipe_is_evaluated_after_resume() -> None:
    from lib_mbw.errors import WorkerUnavailableError

    down = {"now": False, "times": 0}

    def flaky(generator, payload):
        if generator.generated == 5 and down["times"] == 0:
            down["times"] += 1
            raise WorkerUnavailableError("worker http://127.0.0.1:9 is down (connection refused)")

    optimizer = ScriptedOptimizer([uniform(0.2), BEST, uniform(0.6)])
    run, events = make_run(optimizer, FakeGenerator(on_generate=flaky), stop=StopSettings(max_evaluations=3, patience=None))
    run.add_listener(lambda event: run.resume() if isinstance(event, Paused) else None)
    result = run.run()
    (pause,) = of_type(events, Paused)
    assert not pause.by_user and "is down" in pause.reason and "resume when the worker is back" in pause.reason
    search_rows = [r for r in result.rows if r.status != "selected"]
    assert [r.status for r in search_rows] == ["ok", "ok", "ok"]  # no failure was recorded for the dead worker
    assert [r.recipe for r in search_rows] == [uniform(0.2), BEST, uniform(0.6)]  # BEST was retried, not lost
    assert all(s is not None for _, s in optimizer.observations)


def test_the_default_optimizer_re_scores_from_the_cache_and_the_log_says_when_its_model_leads(caplog):
    """The default scores its best recipe again after 11 scores; the loop answers from its cache (fixed seeds give
    the same score), renders nothing, and logs that the optimizer's model picks every recipe from then on."""
    from lib_mbw.search.optimizer import InitSettings, make_optimizer
    from lib_mbw.search.space import SearchSpace

    generator = FakeGenerator()
    optimizer = make_optimizer("default", SearchSpace(), seed=0, init=InitSettings(random=10))
    run, _ = make_run(optimizer, generator, stop=StopSettings(max_evaluations=14, patience=None))
    with caplog.at_level("INFO", logger="lib_mbw.search.loop"):
        run.run()
    statuses = [row.status for row in run.rows if row.source in ("optimizer", "initial")]
    assert len(statuses) == 14 and statuses.count("cached") == 1 and statuses[11] == "cached", statuses
    assert generator.applies == 13  # the re-score rendered nothing
    assert optimizer.describe()["model_led"] is True
    assert [r.message for r in caplog.records if "noise-free" in r.message] == [
        "optimizer: the scores look noise-free; from evaluation 13 its model picks every recipe"
    ]
