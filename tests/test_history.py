"""Run folders, history.csv, state and manifest files, warm-start readers (ours and the seed's), recipe outputs."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from lib_mbw.blocks import BLOCKS, present_blocks
from lib_mbw.errors import RecipeError
from lib_mbw.recipe import ORDERS, Recipe, from_positional, read_recipe
from lib_mbw.search.history import (
    HistoryError,
    HistoryRow,
    LoopState,
    RunHistory,
    create_run_folder,
    load_warm_start,
    new_run_id,
    read_seed_csv,
    write_best_recipe,
)


def recipe(seed: int, blocks=BLOCKS, base: float | None = None) -> Recipe:
    rng = random.Random(seed)
    return Recipe({b: rng.randrange(21) / 20 for b in blocks}, base=base)


def test_run_ids_are_unique_and_safe(tmp_path: Path) -> None:
    folders = {create_run_folder(tmp_path, "../../etc/passwd") for _ in range(50)}
    assert len(folders) == 50
    assert all(f.parent == tmp_path for f in folders)
    assert all("/" not in f.name and ".." not in f.name and "etc_passwd" in f.name for f in folders)
    assert new_run_id("my search!").split("-")[2] == "my_search"


def test_rows_round_trip_exactly(tmp_path: Path) -> None:
    history = RunHistory.create(tmp_path, present_blocks("sdxl"), ["portrait", "land scape"], with_base=True)
    rows = [
        HistoryRow(0, "ok", "optimizer", recipe(1, present_blocks("sdxl"), base=0.35), score=0.1 + 0.2, payload_scores={"portrait": -1 / 3, "land scape": 2.5}, merge_s=0.01, generate_s=12.5, score_s=0.25, worker="w#0"),
        HistoryRow(1, "failed", "optimizer", recipe(2, present_blocks("sdxl"), base=0.0), payload_scores={"portrait": 0.5}, reason='CUDA out of memory,\n "retry"'),
        HistoryRow(2, "selected", "final", recipe(1, present_blocks("sdxl"), base=0.35), score=0.3, reason="best mean"),
    ]
    for row in rows:
        history.append(row)
    history.close()
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    assert "IN09" not in header and "OUT08" in header and header.index("BASE") == header.index("OUT") + 1
    reread = RunHistory.open(tmp_path).rows()
    for old, new in zip(rows, reread):
        assert (new.status, new.source, new.recipe, new.score) == (old.status, old.source, old.recipe, old.score)
        assert new.payload_scores == {"portrait": old.payload_scores.get("portrait"), "land scape": old.payload_scores.get("land scape")}
    assert reread[0].score == 0.1 + 0.2  # repr keeps every bit
    assert reread[1].reason == 'CUDA out of memory, "retry"'  # one line per row
    assert reread[0].total_s == pytest.approx(12.76)


def test_torn_last_line_is_cut_and_appending_goes_on(tmp_path: Path) -> None:
    history = RunHistory.create(tmp_path, BLOCKS, ["p"])
    history.append(HistoryRow(0, "ok", "optimizer", recipe(3), score=1.0, payload_scores={"p": 1.0}))
    history.close()
    with open(tmp_path / "history.csv", "a") as handle:
        handle.write("1,2024,ok,optimizer,0.5,0.1,0.2")  # the write a SIGKILL interrupted
    reopened = RunHistory.open(tmp_path)
    assert len(reopened) == 1
    reopened.append(HistoryRow(1, "ok", "optimizer", recipe(4), score=2.0, payload_scores={"p": 2.0}))
    reopened.close()
    assert [r.score for r in RunHistory.open(tmp_path).rows()] == [1.0, 2.0]


def test_existing_history_is_never_overwritten(tmp_path: Path) -> None:
    RunHistory.create(tmp_path, BLOCKS, ["p"]).close()
    with pytest.raises(HistoryError, match="already exists"):
        RunHistory.create(tmp_path, BLOCKS, ["p"])
    with pytest.raises(HistoryError, match="no history.csv"):
        RunHistory.open(tmp_path / "elsewhere")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "history.csv").write_text("a,b,c\n")
    with pytest.raises(HistoryError, match="not an auto-MBW history"):
        RunHistory.open(tmp_path / "other")


def test_state_and_manifest_are_written_atomically(tmp_path: Path) -> None:
    history = RunHistory.create(tmp_path, BLOCKS, ["p"])
    assert history.read_state() is None
    for i in range(3):  # a state covers rows that exist (one ahead of the history is refused: test_history_validation)
        history.append(HistoryRow(i, "ok", "optimizer", recipe(5 + i), score=float(i), payload_scores={"p": float(i)}))
    state = LoopState(rows=3, phase="rescore", stop_reason="no_improvement", elapsed_s=12.5, candidates=[recipe(5)])
    history.write_state(state)
    assert history.read_state() == state
    assert "optimizer" not in json.loads((tmp_path / "state.json").read_text())  # numbers and words, no optimizer state
    history.write_manifest({"format": "auto-mbw-run", "x": [1, 2]})
    assert history.read_manifest()["x"] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "manifest.json", "state.json"]  # no temp files
    (tmp_path / "state.json").write_text("{}")
    with pytest.raises(HistoryError, match="not a valid search state"):
        history.read_state()


def seed_csv_text(pairs: list[tuple[list[float], float]], header: bool = True) -> str:
    lines = [",".join(str(i) for i in range(27)) + ",score,eval_times,iter_times"] if header else []
    for values, score in pairs:
        lines.append(",".join(map(str, values)) + f",{score},174590.8,174624.9")
    return "\n".join(lines) + "\n"


def test_seed_csv_uses_the_seed_block_order(tmp_path: Path) -> None:
    values = [i / 100 for i in range(27)]
    path = tmp_path / "run.csv"
    path.write_text(seed_csv_text([(values, 0.6132534303822829), (values[::-1], float("nan"))]))
    ((first, score),) = read_seed_csv(path)  # the NaN row is skipped
    assert score == 0.6132534303822829
    # rt order: position 13 is TIME_EMBED, 26 is OUT
    assert first.weights["TIME_EMBED"] == 0.13 and first.weights["OUT00"] == 0.14 and first.weights["OUT"] == 0.26
    (fork, _), = read_seed_csv(path, order="rt-fork")
    assert fork.weights["OUT"] == 0.13 and fork.weights["TIME_EMBED"] == 0.26
    headerless = tmp_path / "noheader.csv"
    headerless.write_text(seed_csv_text([(values, 0.5)], header=False))
    assert read_seed_csv(headerless)[0][0] == first


def test_bad_seed_csv_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(seed_csv_text([([0.5] * 27, 0.1)]) + "0.5,0.5\n")
    with pytest.raises(HistoryError, match=r"bad.csv:3: expected 27 weights and a score"):
        read_seed_csv(path)
    path.write_text(seed_csv_text([([1.5] * 27, 0.1)]))
    with pytest.raises(RecipeError, match="between 0 and 1"):
        read_seed_csv(path)


def test_warm_start_from_every_source(tmp_path: Path) -> None:
    # our run folder: only fully scored rows
    run = tmp_path / "run"
    history = RunHistory.create(run, BLOCKS, ["p"])
    for i, status in enumerate(["ok", "failed", "abandoned", "rescore", "selected"]):
        history.append(HistoryRow(i, status, "optimizer" if status != "selected" else "final", recipe(i), score=None if status == "failed" else float(i)))
    history.close()
    assert [s for _, s in load_warm_start(str(run)).scored] == [0.0, 3.0]
    assert [s for _, s in load_warm_start(str(run / "history.csv")).scored] == [0.0, 3.0]
    # a seed folder csv/history/<run>/ with its CSVs
    seed_folder = tmp_path / "seed_run"
    seed_folder.mkdir()
    (seed_folder / "a.csv").write_text(seed_csv_text([([0.5] * 27, 0.2)]))
    (seed_folder / "b.csv").write_text(seed_csv_text([([0.25] * 27, 0.3)]))
    assert [s for _, s in load_warm_start(str(seed_folder)).scored] == [0.2, 0.3]
    # a recipe (file or text, any format): evaluated first, no score
    assert load_warm_start(",".join(["0.5"] * 27)).unscored == [Recipe.uniform(0.5)]
    (tmp_path / "r.json").write_text(recipe(9).to_json())
    assert load_warm_start(str(tmp_path / "r.json")).unscored == [recipe(9)]


def test_best_recipe_files_parse_back(tmp_path: Path) -> None:
    best = recipe(11, base=0.4)
    paths = write_best_recipe(tmp_path, best, family="sd1", score=0.75, reason="best mean of 2", run_id="r1")
    assert read_recipe(str(paths["recipe_json"])) == best
    data = json.loads(paths["recipe_json"].read_text())
    assert data["search"] == {"run_id": "r1", "score": 0.75, "reason": "best mean of 2"}
    text = paths["recipe_txt"].read_text()
    lines = dict(line.split(": ", 1) for line in text.splitlines() if line and not line.startswith("#") and ": " in line and line.split(":")[0] in (*ORDERS, "preset"))
    for order in ORDERS:
        assert from_positional(lines[order], order).weights == best.weights
    assert lines["preset"].split(",")[0] == "0.4"  # BASE first
    assert "# warning:" in text  # TIME_EMBED/OUT differ from the blocks a preset folds them into
    with pytest.raises(Exception, match="already exists"):
        write_best_recipe(tmp_path, best, family="sd1")


def test_history_csv_reads_with_plain_csv_tools(tmp_path: Path) -> None:
    history = RunHistory.create(tmp_path, BLOCKS, ["p"])
    history.append(HistoryRow(0, "ok", "optimizer", Recipe.uniform(0.5), score=1.5, payload_scores={"p": 1.5}))
    history.close()
    with open(tmp_path / "history.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["IN00"] == "0.5" and row["score"] == "1.5" and row["payload:p"] == "1.5" and row["status"] == "ok"
