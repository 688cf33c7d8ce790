"""The A1111/Forge host adapter on the fake WebUI: checkpoints, merge sessions, LoRA rules, locking."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from lib_mbw.errors import HostBusyError, MBWError
from lib_mbw.hosts.base import Host
from lib_mbw.hosts.webui import ModelChoiceError, UnsupportedModelError, WebUIHost, check_mergeable
from tests.runtime_double import merger_factory
from tests.webui_support import checkpoint_unet, expected_unet, host, live_state, recipe, unet_hash, webui  # noqa: F401


def models_dir(webui) -> Path:
    from modules import sd_models

    return Path(sd_models.model_path)


def test_host_lists_the_webui_checkpoints_and_folders(host, webui):
    from modules import paths

    assert isinstance(host, Host)
    assert host.name == webui.flavour
    assert host.list_models() == ["a.safetensors", "b.safetensors", "c.safetensors"]
    assert host.model_path("b.safetensors") == models_dir(webui) / "b.safetensors"
    p = host.paths
    assert p.models == models_dir(webui)
    assert p.payloads == host.ext_dir / "payloads" and p.wildcards == host.ext_dir / "payloads" / "wildcards"
    assert p.history == host.ext_dir / "csv" / "history"
    assert p.scorer_cache == Path(paths.models_path) / "ImageReward"


def test_settings_override_folders_and_reject_unknown_memory_mode(host, webui, tmp_path):
    from modules import shared

    from lib_mbw.hosts.webui import SETTINGS

    for spec in SETTINGS:
        shared.opts.add_option(spec.key, shared.OptionInfo(spec.default, spec.label))
    shared.opts.auto_mbw_payload_dir = str(tmp_path / "mine")
    shared.opts.auto_mbw_memory_mode = "cpu"
    s = host.settings()
    assert s.payload_dir == tmp_path / "mine" and s.wildcard_dir == tmp_path / "mine" / "wildcards"
    assert s.memory_mode == "cpu"
    shared.opts.auto_mbw_memory_mode = "gpu-please"
    with pytest.raises(MBWError, match="memory mode 'gpu-please'"):
        host.settings()


@pytest.mark.parametrize(
    "a, b, message",
    [
        ("", "b.safetensors", "model A is not chosen"),
        ("a.safetensors", None, "model B is not chosen"),
        ("a.safetensors", "zzz.safetensors", "'zzz.safetensors' is not in the WebUI's list"),
        ("a.safetensors", "a", "same checkpoint"),
    ],
)
def test_bad_model_choices_are_refused_before_anything_loads(host, webui, a, b, message):
    from modules import sd_models

    with pytest.raises(ModelChoiceError, match=message):
        host.make_generator(a, b, {})
    assert sd_models.load_count == 0


def test_same_checkpoint_under_its_hashed_title_is_refused(host, webui):
    from modules import sd_models

    sd_models.get_closet_checkpoint_match("a.safetensors").calculate_shorthash()
    titled = [t for t in host.list_models() if t.startswith("a.safetensors [")]
    assert titled, "calculate_shorthash renames the title"
    with pytest.raises(ModelChoiceError, match="same checkpoint"):
        host.check_pair(titled[0], "a.safetensors")


def test_session_on_the_loaded_model_applies_lerp_and_restores_bit_exactly(host, webui):
    webui.sd_model()  # the WebUI loads a.safetensors at start
    from modules import sd_models

    before = unet_hash(webui.unet())
    loads = sd_models.load_count
    session = host.session("a.safetensors", "b.safetensors", "auto")
    assert sd_models.load_count == loads, "A is already loaded: no reload"
    r = recipe(0.3, IN04=0.9, M00=0.0, OUT11=1.0, TIME_EMBED=0.5, OUT=0.25)
    session.apply(r)
    want = expected_unet(models_dir(webui) / "a.safetensors", models_dir(webui) / "b.safetensors", r)
    got = live_state(webui.unet())
    assert all(torch.equal(got[k], want[k]) for k in want)
    session.apply(recipe(0.7))
    session.restore()
    assert unet_hash(webui.unet()) == before
    session.apply(recipe(1.0))
    host.close_session()
    assert unet_hash(webui.unet()) == before
    assert host.current_session() is None


def test_session_loads_model_a_through_the_webui_and_reloads_the_users_model_after(tmp_path):
    from tests.fake_webui.harness import FakeWebUI

    for flavour in ("a1111", "forge"):
        fake = FakeWebUI(tmp_path / flavour, flavour=flavour, loaded="c.safetensors")
        try:
            from modules import shared

            host = WebUIHost(merger_factory=merger_factory())
            original = unet_hash(fake.unet())
            assert fake.sd_model().sd_checkpoint_info.name == "c.safetensors"
            session = host.session("a.safetensors", "b.safetensors", "auto")
            assert fake.sd_model().sd_checkpoint_info.name == "a.safetensors"
            assert shared.opts.sd_model_checkpoint.startswith("a.safetensors"), "process_images must keep A loaded"
            session.apply(recipe(0.5))
            host.close_session()
            assert fake.sd_model().sd_checkpoint_info.name == "c.safetensors"
            assert unet_hash(fake.unet()) == original
        finally:
            fake.close()


def test_the_users_chosen_checkpoint_survives_an_override_settings_call_and_a_session(host, webui):
    """An API call with override_settings leaves B loaded but the setting on A: the session gives back A (the choice)."""
    from modules import processing, shared, sd_models

    webui.sd_model()
    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", steps=1, width=64, height=64,
                                                    override_settings={"sd_model_checkpoint": "b.safetensors"},
                                                    do_not_save_samples=True, do_not_save_grid=True)
    processing.process_images(p)
    assert shared.opts.sd_model_checkpoint.startswith("a.safetensors"), "the WebUI put its setting back"
    assert webui.sd_model().sd_checkpoint_info.name == "b.safetensors", "and left B loaded (the real hosts do)"
    session = host.session("a.safetensors", "b.safetensors", "auto")
    assert session.previous.name == "a.safetensors", "the user's choice is the setting, not the leftover model"
    session.apply(recipe(0.5))
    host.close_session()
    assert shared.opts.sd_model_checkpoint.startswith("a.safetensors"), "the setting still names the user's model"
    assert webui.sd_model().sd_checkpoint_info.name == "a.safetensors", "and the loaded model agrees with it"
    live, file_a = live_state(webui.unet()), checkpoint_unet(sd_models.get_closet_checkpoint_match("a.safetensors").filename)
    assert all(torch.equal(live[k], file_a[k].to(live[k].dtype)) for k in file_a), "A's weights, exactly"


def test_other_checkpoint_loaded_during_a_session_stops_it_with_a_clear_error(host, webui):
    webui.sd_model()
    session = host.session("a.safetensors", "b.safetensors", "auto")
    session.apply(recipe(0.4))
    _load_elsewhere(webui, "c.safetensors")
    with pytest.raises(MBWError, match="loaded c.safetensors .* while auto-MBW was merging a.safetensors"):
        session.apply(recipe(0.6))


def test_model_a_reloaded_by_the_webui_is_merged_again(host, webui):
    webui.sd_model()
    session = host.session("a.safetensors", "b.safetensors", "auto")
    session.apply(recipe(0.4))
    _load_elsewhere(webui, "a.safetensors", forced=True)
    r = recipe(0.8)
    session.apply(r)
    want = expected_unet(models_dir(webui) / "a.safetensors", models_dir(webui) / "b.safetensors", r)
    got = live_state(webui.unet())
    assert all(torch.equal(got[k], want[k]) for k in want)


def _load_elsewhere(webui, title: str, forced: bool = False) -> None:
    """Another part of the WebUI loads ``title`` (settings, API, another extension)."""
    from modules import sd_models

    info = sd_models.get_closet_checkpoint_match(title)
    if webui.flavour == "forge":
        from modules_forge import main_entry

        main_entry.checkpoint_change(info.title, save=False, refresh=True)
        if forced:
            sd_models.model_data.forge_hash = ""
        sd_models.forge_model_reload()
    else:
        sd_models.reload_model_weights(info=info, forced_reload=forced)


def test_quantized_unets_are_refused():
    unet = torch.nn.Linear(2, 2)
    unet.weight = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.uint8), requires_grad=False)
    with pytest.raises(UnsupportedModelError, match="Diffusion in Low Bits"):
        check_mergeable(unet)


def test_exclusive_holds_the_queue_lock_for_the_whole_search_and_restores_on_error(host, webui):
    from modules import call_queue, shared

    webui.sd_model()
    before = unet_hash(webui.unet())
    with pytest.raises(RuntimeError, match="boom"):
        with host.exclusive():
            assert call_queue.queue_lock.locked() and host.searching
            assert shared.state.job == "auto-mbw"
            host.session("a.safetensors", "b.safetensors", "auto").apply(recipe(0.9))
            with pytest.raises(HostBusyError, match="already running"):
                with host.exclusive():
                    pass
            raise RuntimeError("boom")
    assert not call_queue.queue_lock.locked() and not host.searching
    assert host.current_session() is None
    assert unet_hash(webui.unet()) == before
    assert shared.state.job == ""


def test_exclusive_waits_for_a_running_webui_job(host, webui):
    from modules import call_queue

    started = threading.Event()
    release = threading.Event()

    def txt2img_job():
        with call_queue.queue_lock:
            started.set()
            release.wait(5)

    job = threading.Thread(target=txt2img_job)
    job.start()
    started.wait(5)
    threading.Timer(0.3, release.set).start()
    t0 = time.perf_counter()
    with host.exclusive():
        waited = time.perf_counter() - t0
    job.join()
    assert waited >= 0.25


def test_shutdown_restores_and_refuses_new_sessions(host, webui):
    webui.sd_model()
    before = unet_hash(webui.unet())
    host.session("a.safetensors", "b.safetensors", "auto").apply(recipe(0.6))
    host.shutdown()
    assert unet_hash(webui.unet()) == before
    with pytest.raises(MBWError, match="Reload UI"):
        host.session("a.safetensors", "b.safetensors", "auto")


def test_a_saved_merge_is_listed_with_its_hash(host, webui):
    from tests.fake_webui.harness import fake_checkpoint

    path = fake_checkpoint(models_dir(webui) / "merged.safetensors", 9)
    assert not any(t.startswith("merged") for t in host.list_models())
    host.model_saved(path)
    titles = [t for t in host.list_models() if t.startswith("merged.safetensors [")]
    assert len(titles) == 1 and host.model_path(titles[0]) == path


def test_a_checkpoint_the_user_loads_during_a_session_is_kept_when_it_closes(host, webui):
    from fake_sd_model import FAKE_UNET, build_unet

    from lib_mbw.keyspec import unet_layout

    c_unet = build_unet(unet_layout(FAKE_UNET, prefix=""))
    c_unet.load_state_dict(checkpoint_unet(models_dir(webui) / "c.safetensors"))
    webui.sd_model()
    session = host.session("a.safetensors", "b.safetensors", "auto")
    session.apply(recipe(0.5))
    _load_elsewhere(webui, "c.safetensors")
    host.close_session()
    assert webui.sd_model().sd_checkpoint_info.name == "c.safetensors"
    assert unet_hash(webui.unet()) == unet_hash(c_unet), "C's weights must not be overwritten with A's"


def test_info_messages_reach_the_console_when_the_webui_leaves_logging_at_warning(monkeypatch):
    import io
    import logging

    from lib_mbw.hosts.webui import ConsoleHandler, console_logging

    logger, root = logging.getLogger("lib_mbw"), logging.getLogger()
    saved = (list(logger.handlers), logger.level, list(root.handlers), root.level)
    monkeypatch.delenv("SD_WEBUI_LOG_LEVEL", raising=False)

    def reset(*root_handlers: logging.Handler) -> None:
        logger.handlers[:], root.handlers[:] = [], list(root_handlers)
        logger.setLevel(logging.NOTSET)
        root.setLevel(logging.WARNING)  # what A1111 / Forge leave without SD_WEBUI_LOG_LEVEL

    try:
        reset()  # no logging configured: only Python's last-resort handler (warnings) would print
        console = io.StringIO()
        assert console_logging(console) is True
        assert console_logging(console) is False, "once (Reload UI imports the script again)"
        logging.getLogger("lib_mbw.hosts.webui").info("auto-MBW: loading model A %s", "a.safetensors")
        logging.getLogger("lib_mbw.search").debug("not shown")
        assert console.getvalue() == "[auto-MBW] INFO: auto-MBW: loading model A a.safetensors\n"

        configured = io.StringIO()  # a library called logging.basicConfig(): a root handler, root at WARNING
        reset(logging.StreamHandler(configured))
        assert console_logging(console) is True and not any(isinstance(h, ConsoleHandler) for h in logger.handlers)
        logging.getLogger("lib_mbw.hosts.webui").info("auto-MBW: loading model A")
        assert configured.getvalue().count("auto-MBW: loading model A") == 1, "printed once, by the root handler"

        reset()
        monkeypatch.setenv("SD_WEBUI_LOG_LEVEL", "WARNING")  # the user chose a level
        assert console_logging(console) is False and logger.level == logging.NOTSET
    finally:
        logger.handlers[:], root.handlers[:] = saved[0], saved[2]
        logger.setLevel(saved[1])
        root.setLevel(saved[3])


def test_the_webuis_sampler_list_is_checked_before_a_search(host):
    from lib_mbw.errors import PayloadError

    host.check_sampler("Euler a", "Automatic", "p.json")
    host.check_sampler("DPM++ 2M Karras", "Automatic", "p.json")  # a schedule type appended to the name, as the WebUI allows
    with pytest.raises(PayloadError, match=r"p.json: field 'sampler': 'Eulr a' is not a sampler of this WebUI; use one of: DPM\+\+ 2M, "):
        host.check_sampler("Eulr a", "Automatic", "p.json")
    with pytest.raises(PayloadError, match=r"p.json: field 'scheduler': 'Karas' is not a schedule type of this WebUI"):
        host.check_sampler("Euler", "Karas", "p.json")
