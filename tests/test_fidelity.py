"""Multi-fidelity screening: cheap renders first, full renders for the promising ones, rungs in the history, exact resume."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from lib_mbw.blocks import BLOCKS
from lib_mbw.cli import main
from lib_mbw.errors import ScorerError
from lib_mbw.payloads import Payload
from lib_mbw.recipe import Recipe
from lib_mbw.scorers.reference import ReferenceScorer, fidelity_folder, load_references, save_references
from lib_mbw.search.fidelity import FidelityError, FidelitySettings, Screen, isotonic_fit, screen_payloads
from lib_mbw.search.history import HistoryError, RunHistory
from lib_mbw.search.loop import LoopSettings, SearchRun
from lib_mbw.search.settings import SearchSettings, SettingsError, settings_from_dict
from lib_mbw.search.stopping import StopSettings
from tests.conftest import LOOP_PLUGINS
from tests.loop_backend import FakeGenerator, FakeScorer, RandomGridOptimizer
from tests.test_loop import PAYLOADS
from tests.test_resume_exact import Killed, KilledAtApply, failing, optimizer_of

SCREEN = FidelitySettings(mode="screen", steps_fraction=0.5, warmup=4)
FULL_STEPS = {p.name: p.steps for p in PAYLOADS}


def recording_generator(**kwargs) -> FakeGenerator:
    """A fake generator that logs ("full" | "cheap", payload name) per render."""
    renders: list[tuple[str, str]] = []

    def on_generate(generator: FakeGenerator, payload: Payload) -> None:
        renders.append(("full" if payload.steps == FULL_STEPS[payload.name] else "cheap", payload.name))

    generator = FakeGenerator(on_generate=on_generate, **kwargs)
    generator.renders = renders  # type: ignore[attr-defined]
    return generator


def run(folder: Path, evals: int, fidelity: FidelitySettings = SCREEN, optimizer=None, generator=None, rescore_top: int = 2) -> tuple[SearchRun, object]:
    history = RunHistory.create(folder, BLOCKS, [p.name for p in PAYLOADS])
    search = SearchRun(PAYLOADS, optimizer or RandomGridOptimizer(BLOCKS, seed=7), generator or recording_generator(), FakeScorer(),
                       stop=StopSettings(max_evaluations=evals, patience=None), settings=LoopSettings(rescore_top=rescore_top, fidelity=fidelity),
                       history=history)
    return search, search.run()


def test_screening_renders_fewer_full_evaluations_and_the_history_shows_each_rung(tmp_path: Path) -> None:
    generator = recording_generator()
    _, result = run(tmp_path, 20, generator=generator)
    search_rows = [r for r in result.rows if r.source in ("optimizer", "initial")]
    rungs = [r.rung for r in search_rows]
    assert len(search_rows) == 20 and set(rungs) == {"screen", "full"}
    screened = [r for r in search_rows if r.status == "screened"]
    promoted = [r for r in search_rows if r.rung == "full"]
    assert screened and all(r.rung == "screen" for r in screened) and len(promoted) == 20 - len(screened)
    assert all(r.status == "ok" for r in search_rows[:4]), "the warm-up candidates are all promoted"
    full_renders = [name for kind, name in generator.renders if kind == "full"]  # type: ignore[attr-defined]
    cheap_renders = [name for kind, name in generator.renders if kind == "cheap"]  # type: ignore[attr-defined]
    rescored = sum(r.status == "rescore" for r in result.rows)
    assert len(cheap_renders) == 20 * len(PAYLOADS), "every candidate is screened (re-scoring is not)"
    assert len(full_renders) == (len(promoted) + rescored) * len(PAYLOADS) < (20 + rescored) * len(PAYLOADS)
    assert all(r.screen_score is not None for r in search_rows)
    # the history file says the same, column by column
    with open(tmp_path / "history.csv", encoding="utf-8", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["rung"] for row in table[: len(search_rows)]] == rungs
    assert all(row["rung"] == "" for row in table[len(search_rows):]), "re-score and selected rows have no rung"


def test_an_unpromoted_candidate_is_told_a_full_scale_estimate_and_never_becomes_the_best(tmp_path: Path) -> None:
    _, result = run(tmp_path, 20)
    full = [r.score for r in result.rows if r.status == "ok"]
    screened = [r for r in result.rows if r.status == "screened"]
    assert screened
    for row in screened:
        assert row.score <= max(full), "an estimate is a mean of full scores: never above the best"
        assert row.reason.startswith("screened out: cheap score") and "monotone fit" in row.reason
    selected = result.rows[-1]
    assert selected.status == "selected"
    assert any(r.recipe == selected.recipe and r.status in ("ok", "rescore") for r in result.rows[:-1])
    assert result.best_observed[0] not in {r.recipe for r in screened}


class RecommendsAScreenedOne(RandomGridOptimizer):
    """Recommends the last candidate the run screened out (``rows`` is set to the run's rows once it exists)."""

    rows = None

    def recommend(self):
        from tests.loop_backend import Recommendation

        screened = [r for r in self.rows() if r.status == "screened"]
        return Recommendation(screened[-1].recipe, "a screened-out candidate (test)", screened[-1].score)


def test_a_recommended_screened_out_candidate_is_not_returned(tmp_path: Path) -> None:
    optimizer = RecommendsAScreenedOne(BLOCKS, seed=7)
    history = RunHistory.create(tmp_path, BLOCKS, [p.name for p in PAYLOADS])
    search = SearchRun(PAYLOADS, optimizer, FakeGenerator(), FakeScorer(), stop=StopSettings(max_evaluations=20, patience=None),
                       settings=LoopSettings(rescore_top=0, fidelity=SCREEN), history=history)
    optimizer.rows = lambda: search.rows
    result = search.run()
    screened = {r.recipe for r in result.rows if r.status == "screened"}
    assert screened and result.recipe not in screened and result.recipe == result.best_observed[0]
    assert "screened out" in result.reason


def test_screening_is_off_by_default_and_a_run_without_it_has_no_rungs(tmp_path: Path) -> None:
    assert SearchSettings().fidelity.mode == "off" and LoopSettings().fidelity.mode == "off"
    generator = recording_generator()
    _, result = run(tmp_path, 6, fidelity=FidelitySettings(), generator=generator, rescore_top=0)
    assert {r.rung for r in result.rows} == {""} and all(r.screen_score is None for r in result.rows)
    assert {kind for kind, _ in generator.renders} == {"full"}  # type: ignore[attr-defined]


def test_same_steps_screening_reuses_the_cheap_images_in_the_full_render(tmp_path: Path) -> None:
    """steps_fraction 1 with 2 of 4 payloads: a promoted candidate renders only the other 2."""
    generator = recording_generator()
    _, result = run(tmp_path, 12, fidelity=FidelitySettings(mode="screen", steps_fraction=1.0, payloads=2, warmup=3),
                    generator=generator, rescore_top=0)
    promoted = sum(r.rung == "full" for r in result.rows)
    assert 0 < promoted < 12
    assert len(generator.renders) == 12 * 2 + promoted * 2  # type: ignore[attr-defined]
    ok = [r for r in result.rows if r.status == "ok"]
    assert all(None not in r.payload_scores.values() for r in ok), "a promoted candidate has every payload's score"


def test_promotion_rule_and_the_monotone_map() -> None:
    xs, ys = isotonic_fit([(1.0, 1.0), (2.0, 3.0), (3.0, 2.0), (4.0, 4.0)])
    assert xs == [1.0, 2.0, 3.0, 4.0] and ys == [1.0, 2.5, 2.5, 4.0]
    screen = Screen(FidelitySettings(mode="screen", warmup=2, min_promote=0.0), PAYLOADS, FakeScorer())
    assert screen.decide(-5.0).promote  # warm-up
    for cheap, full in ((0.1, 0.3), (0.5, 0.9)):
        screen.observe("full", "ok", cheap, full)
    assert screen.decide(0.35).promote and screen.decide(0.35).reason.startswith("promoted: cheap score 0.35 ≥ the 0.5 quantile 0.3 ")
    low = screen.decide(0.2)
    assert not low.promote and low.estimate == pytest.approx(0.3 + (0.9 - 0.3) * (0.2 - 0.1) / 0.4)
    assert screen.decide(-1.0).estimate == pytest.approx(0.3), "flat below the fitted range"
    floor = Screen(FidelitySettings(mode="screen", warmup=2, min_promote=0.5), PAYLOADS, FakeScorer())
    for cheap in (0.1, 0.5):
        floor.observe("full", "ok", cheap, cheap)
    for _ in range(2):
        floor.observe("screen", "screened", 0.0, 0.0)
    assert floor.decide(0.0).promote and "promotion rate" in floor.decide(0.0).reason  # 2 of 5 would be promoted: below 0.5
    with pytest.raises(FidelityError, match="renders as much as a full evaluation"):
        Screen(FidelitySettings(mode="screen", steps_fraction=1.0), PAYLOADS, FakeScorer())
    cheap = screen_payloads(PAYLOADS, FidelitySettings(mode="screen", steps_fraction=0.25, payloads=3, images=1))
    assert [(p.name, p.steps, p.batch_size) for p in cheap] == [(p.name, max(1, round(p.steps / 4)), 1) for p in PAYLOADS[:3]]


@pytest.mark.parametrize("strategy", ["default", "HillClimbing"])
def test_a_screened_run_killed_at_several_evaluations_resumes_to_the_same_run(tmp_path: Path, strategy: str, caplog) -> None:
    settings = LoopSettings(rescore_top=2, max_failures=20, fidelity=SCREEN)
    stop = StopSettings(max_evaluations=14, patience=None)
    make = optimizer_of(strategy)

    def new_run(folder: Path, generator: FakeGenerator) -> SearchRun:
        exists = (folder / "history.csv").exists()
        history = RunHistory.open(folder) if exists else RunHistory.create(folder, BLOCKS, [p.name for p in PAYLOADS])
        return SearchRun(PAYLOADS, make(), generator, FakeScorer(), stop=stop, settings=settings, history=history, optimizer_factory=make)

    def comparable(rows) -> list[tuple]:
        return [(r.index, r.status, r.source, r.recipe, r.score, r.rung, r.screen_score, r.reason) for r in rows]

    whole = new_run(tmp_path / "whole", FakeGenerator(fail_when=failing)).run()
    assert {"screened", "ok"} <= {r.status for r in whole.rows}
    caplog.set_level(logging.WARNING, logger="lib_mbw.search.loop")
    folder = tmp_path / "killed"
    for kill_after in (1, 4, 3, 5):  # evaluations each process makes before the kill lands (13 of 14)
        killed = new_run(folder, KilledAtApply(kill_after))
        with pytest.raises(Killed):
            killed.run()
        rows = RunHistory.open(folder).rows()
        assert comparable(rows) == comparable(whole.rows[: len(rows)])
    resumed = new_run(folder, FakeGenerator(fail_when=failing)).run()
    assert comparable(resumed.rows) == comparable(whole.rows)
    assert resumed.recipe == whole.recipe and resumed.score == whole.score
    assert "not what" not in caplog.text


def test_old_histories_stay_valid_and_a_bad_rung_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    header = ["index", "timestamp", "status", "source", "score", *BLOCKS, "payload:p", "merge_s", "generate_s", "score_s", "total_s", "worker", "reason"]
    row = ["0", "2026-01-01T00:00:00+00:00", "ok", "optimizer", "0.5", *["0.5"] * len(BLOCKS), "0.5", "0", "1", "0", "1", "fake", ""]
    with open(old / "history.csv", "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows([header, row])
    (read,) = RunHistory.open(old).rows()
    assert read.rung == "" and read.screen_score is None and read.score == 0.5
    new = tmp_path / "new"
    RunHistory.create(new, BLOCKS, ["p"]).append(__import__("lib_mbw.search.history", fromlist=["HistoryRow"]).HistoryRow(
        0, "screened", "optimizer", Recipe.uniform(0.5), score=0.4, rung="screen", screen_score=0.6))
    (back,) = RunHistory.open(new).rows()
    assert (back.status, back.rung, back.screen_score) == ("screened", "screen", 0.6)
    text = (new / "history.csv").read_text(encoding="utf-8").replace(",screen,0.6", ",half,0.6")
    (new / "history.csv").write_text(text, encoding="utf-8")
    with pytest.raises(HistoryError, match=r"history.csv:2: rung must be one of '', 'screen', 'full', got 'half'"):
        RunHistory.open(new)


def test_bad_fidelity_settings_name_the_key() -> None:
    for bad, key in (({"mode": "fast"}, "fidelity.mode"), ({"steps_fraction": 0.0}, "fidelity.steps_fraction"),
                     ({"promote_quantile": 1.0}, "fidelity.promote_quantile"), ({"warmup": 1}, "fidelity.warmup")):
        with pytest.raises(SettingsError, match=rf"setting {key} must be"):
            settings_from_dict({"fidelity": bad})
    with pytest.raises(SettingsError, match="unknown setting"):
        settings_from_dict({"fidelity": {"rungs": 3}})


def _image(value: int) -> Image.Image:
    return Image.new("RGB", (16, 16), (value, value, value))


def test_reference_scorer_compares_cheap_images_with_references_rendered_at_that_fidelity(tmp_path: Path) -> None:
    from lib_mbw.generators.base import GeneratedImage

    payload = Payload(name="p", prompt="x", seed=1, steps=4, width=16, height=16)
    cheap_payload = screen_payloads([payload], SCREEN)[0]
    full = [GeneratedImage(_image(200), payload, "x", "", 1, 0)]
    cheap = [GeneratedImage(_image(60), cheap_payload, "x", "", 1, 0)]
    folder = tmp_path / "refs"
    save_references(folder, full)
    scorer = ReferenceScorer.from_folder(folder, metric="neg_mse")
    with pytest.raises(ScorerError, match=r"@steps0.5/<payload>/<index>.png"):
        scorer.for_fidelity("steps0.5")
    save_references(fidelity_folder(folder, "steps0.5"), cheap)
    assert set(load_references(folder)) == {("p", 0)}, "the @ folder is not read as a payload"
    assert scorer.for_fidelity("steps0.5").score(cheap) == [0.0], "like with like: the cheap reference"
    assert scorer.score(cheap)[0] < -0.2, "the full reference would call the same image bad"


def test_a_reference_folder_without_cheap_references_is_refused_before_any_render(tmp_path: Path) -> None:
    payloads = [Payload(name="p", prompt="x", seed=1, steps=4)]
    folder = tmp_path / "refs"
    (folder / "p").mkdir(parents=True)
    _image(1).save(folder / "p" / "0.png")
    generator = FakeGenerator()
    with pytest.raises(ScorerError, match="no references rendered the same way"):
        SearchRun(payloads, RandomGridOptimizer(BLOCKS), generator, ReferenceScorer.from_folder(folder),
                  settings=LoopSettings(fidelity=SCREEN))
    assert generator.applies == 0


def test_cli_fidelity_flags_reach_the_run_and_its_history(work: Path, capsys) -> None:
    backend = ["--family", "sd1", "--generator", "tests.loop_backend:make_generator", "--scorer", "tests.loop_backend:make_scorer",
               "--strategy", "tests.loop_backend:make_optimizer", "--patience", "0", "--rescore-top", "0", "--seed", "3", "-q"]
    assert main(["search", *backend, "--max-evals", "12", "--fidelity", "screen", "--fidelity-steps", "0.25",
                 "--fidelity-quantile", "0.7", "--history-dir", "runs"]) == 0
    (folder,) = (work / "runs").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["settings"]["fidelity"] | {} == {**manifest["settings"]["fidelity"], "mode": "screen", "steps_fraction": 0.25,
                                                   "promote_quantile": 0.7}
    rows = RunHistory.open(folder).rows()
    assert {r.rung for r in rows if r.source == "optimizer"} == {"screen", "full"}
    assert main(["search", *backend, "--fidelity-quantile", "1", "--history-dir", "runs"]) == 2
    assert "--fidelity-quantile must be from 0 to 1 (a quantile, below 1), got 1" in capsys.readouterr().err
    assert main(["search", "--resume", str(folder), *LOOP_PLUGINS, "--fidelity", "off", "-q"]) == 2
    assert "cannot change fidelity when resuming" in capsys.readouterr().err


def test_the_ui_form_sets_screening_and_the_live_table_shows_the_rung(tmp_path: Path) -> None:
    from lib_mbw.search.events import IterationDone, Timings
    from lib_mbw.ui.form import form_from_settings
    from lib_mbw.ui.live import LiveState, apply_event
    from lib_mbw.ui.views import history_table
    from tests.test_ui_form import build, good_form, paths as paths_fixture

    paths = paths_fixture.__wrapped__(tmp_path)
    result = build(good_form(fidelity_mode="screen", fidelity_steps=0.25, fidelity_payloads="1", fidelity_quantile=0.6), paths)
    assert result.ok, result.errors
    fidelity = result.settings.fidelity
    assert (fidelity.mode, fidelity.steps_fraction, fidelity.payloads, fidelity.promote_quantile) == ("screen", 0.25, 1, 0.6)
    back = form_from_settings(result.settings)
    assert (back.fidelity_mode, back.fidelity_steps, back.fidelity_payloads, back.fidelity_quantile) == ("screen", 0.25, "1", 0.6)
    bad = build(good_form(fidelity_mode="fast", fidelity_steps=0), paths)
    assert "fidelity_mode" in bad.errors and "fidelity_steps" in bad.errors and "fidelity" in bad.section_messages()["scoring"]

    state = LiveState()
    for index, (status, rung) in enumerate((("ok", "full"), ("screened", "screen"), ("ok", ""))):
        apply_event(state, IterationDone(index, Recipe.uniform(0.5), status, 0.5, {}, [], Timings(), False, 0.5, index + 1, 10,
                                         "search", "fake", rung=rung), now=float(index))
    assert [row[2] for row in history_table(state.rows)] == ["ok", "screened (screen rung)", "ok (full rung)"]


@pytest.mark.usefixtures("single_cpu_thread")
def test_screening_on_the_tiny_demo_models_renders_fewer_full_evaluations_against_references_per_fidelity(demo_models, tmp_path: Path) -> None:
    """The real pipeline (runtime merge, diffusers, SSIM references) as the time-to-quality benchmark runs it."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
    import time_to_quality as ttq

    setup = ttq.Setup(demo_models.model_a, demo_models.model_b, demo_models.config_dir, "sd1", ttq.make_payloads(2, steps=4, size=64), work=tmp_path)
    hidden = ttq.hidden_recipe(setup.blocks, 1)
    trace = ttq.run_ours(setup, hidden, 10, 1, {"mode": "screen", "warmup": 3})
    (folder,) = (tmp_path / "history").iterdir()
    search_rows = [r for r in RunHistory.open(folder).rows() if r.source in ("optimizer", "initial")]
    promoted = sum(r.rung == "full" for r in search_rows)
    assert len(search_rows) == 10 and 3 <= promoted < 10 and {r.rung for r in search_rows} == {"screen", "full"}
    assert trace.screened == 10 - promoted
    references = tmp_path / "ours-refs-1"
    cheap_payloads = screen_payloads(setup.payloads, FidelitySettings(mode="screen"))
    assert all((fidelity_folder(references, "steps0.5") / p.name / "0.png").is_file() for p in setup.payloads)
    generator = setup.generator(merged=True)
    try:
        generator.apply(hidden)
        cheap_hidden = ttq.render_all(generator, cheap_payloads, batched=True)
    finally:
        generator.close()
    scorer = ReferenceScorer.from_folder(references)
    assert min(scorer.for_fidelity("steps0.5").score(cheap_hidden)) > 0.99, "the hidden recipe's cheap renders match the cheap references"
    assert max(scorer.score(cheap_hidden)) < 0.99, "...and would not match the full ones"


def test_a_window_compares_with_the_recent_cheap_scores_only() -> None:
    everything = Screen(FidelitySettings(mode="screen", warmup=2, min_promote=0.0), PAYLOADS, FakeScorer())
    recent = Screen(FidelitySettings(mode="screen", warmup=2, min_promote=0.0, window=2), PAYLOADS, FakeScorer())
    for screen in (everything, recent):
        for value in (0.1, 0.2, 0.8, 0.9):
            screen.observe("full", "ok", value, value)
    assert everything.decide(0.6).promote  # above the median 0.5 of all four
    low = recent.decide(0.6)
    assert not low.promote and "quantile 0.85 of the last 2 cheap scores" in low.reason


def test_screening_with_several_workers_records_a_rung_for_every_candidate(tmp_path: Path) -> None:
    history = RunHistory.create(tmp_path, BLOCKS, [p.name for p in PAYLOADS])
    generators = [recording_generator(name="w0"), recording_generator(name="w1")]
    result = SearchRun(PAYLOADS, RandomGridOptimizer(BLOCKS, seed=3), generators, FakeScorer(),
                       stop=StopSettings(max_evaluations=16, patience=None), settings=LoopSettings(rescore_top=0, fidelity=SCREEN),
                       history=history).run()
    search_rows = [r for r in result.rows if r.source in ("optimizer", "initial")]
    assert len(search_rows) == 16 and {r.rung for r in search_rows} <= {"screen", "full"}
    assert sum(r.status == "screened" for r in search_rows) > 0 and {r.worker for r in search_rows} == {"w0#0", "w1#1"}


def test_a_warm_start_from_a_screened_run_takes_full_scores_only(tmp_path: Path) -> None:
    from lib_mbw.search.history import HistoryRow, read_history_scores

    history = RunHistory.create(tmp_path, BLOCKS, ["p"])
    full, screened = Recipe.uniform(0.5), Recipe.uniform(0.25)
    for row in (HistoryRow(0, "ok", "optimizer", full, score=0.9, rung="full", screen_score=0.8),
                HistoryRow(1, "screened", "optimizer", screened, score=0.4, rung="screen", screen_score=0.3),
                HistoryRow(2, "cached", "optimizer", screened, score=0.4),
                HistoryRow(3, "cached", "optimizer", full, score=0.9)):
        history.append(row)
    assert read_history_scores(tmp_path) == [(full, 0.9), (full, 0.9)], "an estimate, even repeated as cached, is no score"
