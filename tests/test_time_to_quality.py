"""The time-to-quality benchmarks: the GPU script runs (tiny models, CPU), the baselines merge as ours does, the metrics."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent / "bench"
sys.path.insert(0, str(BENCH))

import time_to_quality as ttq  # noqa: E402
import time_to_quality_gpu as ttq_gpu  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_cpu_thread")


def test_gpu_script_runs_every_pipeline_on_tiny_sd1_and_sdxl(tmp_path, capsys) -> None:
    assert ttq_gpu.main(["--tiny", "--family", "sd1", "sdxl", "--evaluations", "1", "--payloads", "2", "--device", "cpu",
                         "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = re.findall(r"^time_to_quality_gpu family=(\w+) (.*)$", out, re.M)
    assert [family for family, _ in lines] == ["sd1", "sdxl"]
    for _, fields in lines:
        values = dict(item.split("=") for item in fields.split())
        assert set(values) == {"ours_s", "seed_s", "peer_s", "seed_per_eval_ratio", "peer_per_eval_ratio", "overhead"}
        assert all(float(v) > 0 for v in values.values())
        assert float(values["seed_per_eval_ratio"]) == pytest.approx(float(values["ours_s"]) / float(values["seed_s"]), rel=0.03, abs=2e-3)  # from 3-decimal prints
    for name in ttq.PIPELINES:
        rows = re.findall(rf"^\| {name} \| (.*) \|$", out, re.M)
        assert len(rows) == 2, f"a split row for {name} per family"
        merge, generate, score, optimizer, io, total = (float(v) for v in rows[0].split(" | "))
        assert generate > 0 and merge > 0 and score > 0
        assert total == pytest.approx(merge + generate + score + optimizer + io, abs=3e-3)


@pytest.fixture(scope="module")
def setup(demo_models, tmp_path_factory):
    return ttq.Setup(demo_models.model_a, demo_models.model_b, demo_models.config_dir, "sd1",
                     ttq.make_payloads(2, steps=2, size=64), work=tmp_path_factory.mktemp("ttq"))


def test_seed_and_peer_merges_and_the_http_round_trip_render_what_the_runtime_merger_renders(setup) -> None:
    """All three pipelines search the same merge: the hidden recipe gives the same images, whichever pipeline renders it."""
    import requests

    hidden = ttq.hidden_recipe(setup.blocks, 3)
    ours = setup.generator(merged=True)
    try:
        ours.apply(hidden)
        want = [np.asarray(img.image, dtype=np.int16) for img in ttq.render_all(ours, setup.payloads, batched=False)]
    finally:
        ours.close()
    plain = setup.generator(merged=False)
    server = ttq.RenderServer(plain)
    try:
        before = [np.asarray(img.image, dtype=np.int16) for img in ttq.render_all(plain, setup.payloads, batched=False)]
        assert max(np.abs(a - b).mean() for a, b in zip(before, want)) > 3, "model A alone renders other images"
        ttq.SeedMerge(plain, setup).apply(hidden)
        seed_images = [np.asarray(img.image, dtype=np.int16) for img in ttq.render_all(plain, setup.payloads, batched=False)]
        peer = ttq.PeerMerge(plain, setup, setup.work)
        peer.write_and_reload(peer.merge(hidden))
        assert peer.path.is_file()
        with requests.Session() as http:
            served = [img for p in setup.payloads for img in ttq.http_render(http, server.url, p)[0]]
        peer_images = [np.asarray(img.image, dtype=np.int16) for img in served]
    finally:
        server.close()
        plain.close()
    for got in (seed_images, peer_images):
        for a, b in zip(got, want):
            assert np.abs(a - b).max() <= 1, "same merge, same images (up to float rounding of the lerp)"


def trace(name: str, elapsed: list[float], scores: list[float]) -> ttq.Trace:
    t = ttq.Trace(name, 0)
    for e, s in zip(elapsed, scores):
        t.add(e, s, {k: e / len(elapsed) for k in ttq.SPLIT} | {"generate": 0.5 * e / len(elapsed)})
    return t


def test_ratios_compare_ours_time_to_the_baselines_final_quality_with_their_total_time() -> None:
    ours = trace("ours", [1, 2, 3, 4], [0.2, 0.6, 0.7, 0.9])
    seed = trace("seed", [5, 10, 20, 40], [0.1, 0.5, 0.6, 0.7])
    peer = trace("peer", [10, 20], [0.3, 0.95])
    result = ttq.HiddenResult(0, hidden_score=1.0, random_mean=0.0, traces={"ours": ours, "seed": seed, "peer": peer})
    assert ttq.ratio_to(result, "seed") == pytest.approx(3 / 40), "ours reaches 0.7 at 3 s; the seed ends at 40 s"
    assert ttq.ratio_to(result, "peer") == float("inf"), "ours never reaches 0.95"
    assert ours.reach(result.target(0.8)) == (4, 4)
    summary = ttq.summarize([result], 4)
    assert summary["pipelines"]["seed"]["evals_0.5"] == 2 and summary["pipelines"]["seed"]["seconds_0.9"] is None
    line = ttq.final_line(summary)
    assert line == "time_to_quality seed_ratio=0.075 peer_ratio=never fidelity_speedup=- overhead=0.889"


def test_fidelity_speedup_is_ours_time_to_its_own_final_quality_without_screening_over_with_it() -> None:
    """Screened-out candidates carry no score (-inf): only full-fidelity scores reach a quality."""
    ours = trace("ours", [1, 2, 3, 4], [0.2, 0.6, 0.7, 0.9])
    faster = trace("ours-screen", [0.5, 1, 1.5, 2], [0.3, -float("inf"), 0.9, -float("inf")])
    slower = trace("ours-screen", [0.5, 1, 1.5, 2], [0.3, -float("inf"), 0.8, 0.85])
    quick = ttq.HiddenResult(0, 1.0, 0.0, {"ours": ours, "ours-screen": faster})
    never = ttq.HiddenResult(1, 1.0, 0.0, {"ours": ours, "ours-screen": slower})
    assert ttq.fidelity_speedup(quick) == pytest.approx(4 / 1.5)
    assert ttq.fidelity_speedup(never) == 0.0, "the screened run never reaches ours' 0.9"
    assert ttq.fidelity_speedup(ttq.HiddenResult(2, 1.0, 0.0, {"ours": ours})) is None
    summary = ttq.summarize([quick, never, quick], 4)
    assert summary["fidelity_speedup"] == pytest.approx(4 / 1.5)
    assert " fidelity_speedup=2.67 " in ttq.final_line(summary)
    assert summary["pipelines"]["ours-screen"]["final_gap"] == pytest.approx(0.9)


def test_runs_split_by_pipeline_are_joined_and_a_missing_baseline_reads_as_unmeasured(tmp_path) -> None:
    ours = trace("ours", [1, 2, 3, 4], [0.2, 0.6, 0.7, 0.9])
    seed = trace("seed", [5, 10, 20, 40], [0.1, 0.5, 0.6, 0.7])
    for name, t in (("ours", ours), ("seed", seed)):
        ttq.write_json(tmp_path / f"{name}.json", {"evaluations": 4, "hidden": [ttq.hidden_record(ttq.HiddenResult(0, 1.0, 0.0, {name: t}))]})
    joined = ttq.join_results([r for name in ("ours", "seed") for r in ttq.load_results(tmp_path / f"{name}.json")])
    assert len(joined) == 1 and set(joined[0].traces) == {"ours", "seed"}
    summary = ttq.summarize(joined, 4)
    assert set(summary["pipelines"]) == {"ours", "seed"} and summary["peer_ratio"] is None
    assert ttq.final_line(summary).startswith("time_to_quality seed_ratio=0.075 peer_ratio=- ")
    with pytest.raises(SystemExit, match="no run of ours"):
        ttq.join_results(ttq.load_results(tmp_path / "seed.json"))
