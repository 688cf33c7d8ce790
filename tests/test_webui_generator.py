"""In-process generation through the (fake) WebUI's processing API: images, state, interrupt, LoRA, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lib_mbw.errors import EvaluationFailed, GenerationInterrupted
from lib_mbw.generators.base import Generator
from lib_mbw.generators.webui import RECIPE_INFOTEXT_KEY, WebUIGenerator
from tests.webui_support import expected_unet, host, payload, recipe, reference_image, unet_hash, webui  # noqa: F401


def models(webui) -> Path:
    from modules import sd_models

    return Path(sd_models.model_path)


def test_generate_renders_the_payload_with_the_applied_recipe(host, webui, tmp_path):
    gen = host.make_generator("a.safetensors", "b.safetensors", {})
    assert isinstance(gen, Generator) and isinstance(gen, WebUIGenerator)
    r = recipe(0.25, IN02=0.75, OUT05=1.0)
    with host.exclusive():
        gen.apply(r)
        images = gen.generate(payload(batch_size=2, seed=11))
        again = gen.generate(payload(batch_size=2, seed=11))
        gen.apply(recipe(0.9))
        other = gen.generate(payload(batch_size=2, seed=11))
    assert [g.seed for g in images] == [11, 12] and [g.index for g in images] == [0, 1]
    assert all(g.image.size == (16, 16) and g.prompt == "a red fox" and g.negative_prompt == "blurry" for g in images)
    assert [g.image.tobytes() for g in images] == [g.image.tobytes() for g in again]
    assert images[0].image.tobytes() != other[0].image.tobytes()
    want = reference_image(expected_unet(models(webui) / "a.safetensors", models(webui) / "b.safetensors", r), "a red fox", 11, 16)
    assert images[0].image.tobytes() == want.tobytes()
    assert RECIPE_INFOTEXT_KEY in images[0].params["infotext"]
    assert images[0].params["backend"] == "webui"
    assert not any((Path(webui.root) / "outputs").rglob("*.png")), "nothing written unless asked"


def test_forge_renders_on_its_main_thread_and_a1111_on_the_caller(host, webui):
    from modules import processing

    gen = host.make_generator("a.safetensors", "b.safetensors", {})
    with host.exclusive():
        gen.apply(recipe(0.5))
        gen.generate(payload(batch_size=1))
    if webui.flavour == "forge":
        assert processing.render_threads and threading.get_ident() not in processing.render_threads
        assert webui._main_thread.ident in processing.render_threads
    else:
        assert processing.render_threads == [threading.get_ident()]


def test_interrupt_stops_the_search_and_the_model_is_restored(host, webui):
    from modules import processing, shared

    webui.sd_model()
    before = unet_hash(webui.unet())
    gen = host.make_generator("a.safetensors", "b.safetensors", {})
    processing.sampling_hooks.append(lambda p, step: shared.state.interrupt() if step == 1 else None)
    with pytest.raises(GenerationInterrupted, match="interrupted"):
        with host.exclusive():
            gen.apply(recipe(0.8))
            gen.generate(payload())
    assert unet_hash(webui.unet()) == before


def test_skip_fails_only_that_evaluation(host, webui):
    from modules import processing, shared

    gen = host.make_generator("a.safetensors", "b.safetensors", {})
    hook = lambda p, step: shared.state.skip() if step == 2 else None  # noqa: E731
    with host.exclusive():
        gen.apply(recipe(0.5))
        processing.sampling_hooks.append(hook)
        with pytest.raises(EvaluationFailed, match="skipped"):
            gen.generate(payload())
        processing.sampling_hooks.remove(hook)
        assert len(gen.generate(payload())) == 2


def test_outside_a_search_each_call_waits_for_the_queue(host, webui):
    from modules import call_queue

    gen = host.make_generator("a.safetensors", "b.safetensors", {})
    done = threading.Event()
    call_queue.queue_lock.acquire()
    worker = threading.Thread(target=lambda: (gen.apply(recipe(0.5)), done.set()))
    worker.start()
    assert not done.wait(0.3), "apply must wait while a WebUI job holds the queue"
    call_queue.queue_lock.release()
    assert done.wait(10)
    worker.join()
    assert len(gen.generate(payload(batch_size=1))) == 1
    gen.close()
    assert not call_queue.queue_lock.locked()


def test_images_are_saved_only_when_asked(host, webui):
    from modules import shared

    shared.opts.outdir_txt2img_samples = str(Path(webui.root) / "outputs" / "txt2img")
    gen = host.make_generator("a.safetensors", "b.safetensors", {"save_images": True})
    with host.exclusive():
        gen.apply(recipe(0.5))
        gen.generate(payload(batch_size=2))
    assert len(list((Path(webui.root) / "outputs" / "txt2img").glob("*.png"))) == 2


def test_payload_fields_map_to_txt2img_and_unknown_ones_are_dropped(host, webui):
    from modules import processing, shared

    seen = {}
    processing.sampling_hooks.append(lambda p, step: seen.update(p=p, clip=shared.opts.CLIP_stop_at_last_layers))
    gen = host.make_generator("a.safetensors", "b.safetensors", {})
    p = payload(steps=3, cfg_scale=4.5, sampler="DPM++ 2M", width=24, height=8, clip_skip=2,
                extra={"enable_hr": False, "not_a_webui_field": 1, "reference": "ref.png"})
    with host.exclusive():
        images = gen.generate(p)
    sd = seen["p"]
    assert (sd.steps, sd.cfg_scale, sd.sampler_name, sd.width, sd.height, sd.n_iter) == (3, 4.5, "DPM++ 2M", 24, 8, 1)
    assert sd.do_not_save_samples and sd.do_not_save_grid
    assert seen["clip"] == 2 and shared.opts.CLIP_stop_at_last_layers == 1, "clip skip applied for the render only"
    assert images[0].image.size == (24, 8)


def test_progress_reports_sampling_steps(host, webui):
    from modules import processing

    processing.sampling_hooks.append(lambda p, step: __import__("time").sleep(0.1))
    reports = []
    gen = host.make_generator("a.safetensors", "b.safetensors", {})
    with host.exclusive():
        gen.generate(payload(steps=6, batch_size=1), progress=lambda done, total: reports.append((done, total)))
    assert reports and reports[-1] == (6, 6)
    assert all(total == 6 for _, total in reports)


@pytest.mark.parametrize("lora_first", [True, False])
def test_lora_in_prompts_applies_on_top_of_every_new_merge(host, webui, lora_first):
    """WEBUI-FACTS §6: LoRA backups/patches must never bring back weights of an earlier merge."""
    a, b = models(webui) / "a.safetensors", models(webui) / "b.safetensors"
    webui.sd_model()
    before = unet_hash(webui.unet())
    lora = payload(prompt="a fox <lora:style:0.8>", batch_size=1)
    plain = payload(prompt="a fox", batch_size=1)
    gen = host.make_generator("a.safetensors", "b.safetensors", {})
    with host.exclusive():
        if lora_first:  # a LoRA is merged into the live weights before the search opens its session
            from modules import processing

            p = processing.StableDiffusionProcessingTxt2Img(prompt="x <lora:style:0.8>", steps=1, width=8, height=8, do_not_save_samples=True)
            processing.process_images(p)
        for value in (0.2, 0.7, 0.7, 0.4):
            r = recipe(value, OUT03=1.0 - value)
            gen.apply(r)
            got_lora = gen.generate(lora)[0].image
            got_plain = gen.generate(plain)[0].image
            merged = expected_unet(a, b, r)
            assert got_lora.tobytes() == reference_image(merged, "a fox ", 7, 16, loras=[("style", 0.8)]).tobytes()
            assert got_plain.tobytes() == reference_image(merged, "a fox", 7, 16).tobytes()
        gen.generate(lora)  # leave the LoRA merged at the end
    assert unet_hash(webui.unet()) == before


def change_checkpoint_setting(webui, name: str) -> None:
    """What the checkpoint dropdown does while a search holds the queue: the setting changes at once,
    the model is loaded inside the next ``process_images`` (Forge: loading parameters; A1111: the option)."""
    from modules import shared

    if webui.flavour == "forge":
        from modules_forge import main_entry

        main_entry.checkpoint_change(name, save=False, refresh=True)
    else:
        shared.opts.data["sd_model_checkpoint"] = name


def test_a_checkpoint_loaded_during_a_render_fails_that_evaluation_and_stops_the_next(host, webui, caplog):
    from lib_mbw.generators.webui import CheckpointChangedError
    from lib_mbw.hosts.webui import checkpoint_of

    gen = host.make_generator("a.safetensors", "b.safetensors", {})
    with caplog.at_level("INFO"), host.exclusive():
        gen.apply(recipe(0.5))
        assert len(gen.generate(payload(batch_size=1))) == 1
        change_checkpoint_setting(webui, "c.safetensors")
        with pytest.raises(EvaluationFailed, match=r"loaded c\.safetensors .* instead of the merge of a\.safetensors .*not scored"):
            gen.generate(payload(batch_size=1))
        with pytest.raises(CheckpointChangedError, match="during the search, so the search stopped"):
            gen.apply(recipe(0.7))
        with pytest.raises(CheckpointChangedError):
            gen.generate(payload(batch_size=1))
        gen.restore()
    assert Path(checkpoint_of(webui.sd_model()).filename).name == "c.safetensors", "the user's new choice is kept"
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"], "no traceback on Stop"
    gen.close()
    with host.exclusive():  # a new search loads A again and runs
        gen.apply(recipe(0.5))
        assert len(gen.generate(payload(batch_size=1))) == 1


def test_a_search_never_scores_a_candidate_rendered_by_another_checkpoint(host, webui, caplog):
    from modules import processing

    from lib_mbw.search.loop import LoopSettings, SearchRun
    from lib_mbw.search.stopping import StopSettings
    from tests.test_webui_search import BrightnessScorer, RandomOptimizer

    renders = []

    def switch_at_third_render(p, step):
        if step == 0:
            renders.append(p.prompt)
            if len(renders) == 3:
                change_checkpoint_setting(webui, "b.safetensors")  # pure B would score like a merge

    processing.sampling_hooks.append(switch_at_third_render)
    optimizer = RandomOptimizer(seed=5)
    payloads = [payload("fox", batch_size=1), payload("city", prompt="a city at night", seed=99, batch_size=1)]
    gen = host.make_generator("a.safetensors", "b.safetensors", {})
    run = SearchRun(payloads, optimizer, gen, BrightnessScorer(), stop=StopSettings(max_evaluations=6, patience=None),
                    settings=LoopSettings(rescore_top=0))
    outcome = {}

    def search():
        with host.exclusive():
            outcome["result"] = run.run()

    with caplog.at_level("INFO"):
        thread = threading.Thread(target=search)
        thread.start()
        thread.join(120)
        if thread.is_alive():  # paused for failures: nobody would resume it
            run.request_stop()
            thread.join(30)
            pytest.fail("the search did not stop after the checkpoint changed")
    result = outcome["result"]
    assert len(optimizer.told) == 1, "only the evaluation before the change is scored"
    assert len(optimizer.failed) == 1, "the candidate rendered by model B failed"
    assert result.score == optimizer.told[0][1] and result.recipe == optimizer.told[0][0]
    assert "search stopped" in result.stop_message and "b.safetensors" in result.stop_message
    assert len(renders) == 4, "no render after the change was detected"
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"], "no traceback on Stop"
