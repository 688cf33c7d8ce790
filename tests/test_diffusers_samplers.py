"""WebUI sampler and schedule-type names map onto the diffusers schedulers that implement them."""

from __future__ import annotations

import pytest

from lib_mbw.errors import PayloadError
from lib_mbw.generators.diffusers_files import PACKAGE_CONFIGS, read_json
from lib_mbw.generators.diffusers_samplers import resolve_sampler, sampler_names, scheduler_for

SD1_SCHEDULER = read_json(PACKAGE_CONFIGS / "sd1" / "scheduler" / "scheduler_config.json")


@pytest.mark.parametrize(
    ("sampler", "schedule", "scheduler", "options"),
    [
        ("Euler", "Automatic", "EulerDiscreteScheduler", {}),
        ("Euler a", "Automatic", "EulerAncestralDiscreteScheduler", {}),
        ("DPM++ 2M", "Automatic", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        ("DPM++ 2M Karras", "Automatic", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
        ("DPM++ 2M", "Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
        ("DPM++ 2M SDE", "Exponential", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_exponential_sigmas": True}),
        ("DPM++ SDE Karras", "Automatic", "DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
        ("DDIM", "Automatic", "DDIMScheduler", {}),
        ("UniPC", "SGM Uniform", "UniPCMultistepScheduler", {"timestep_spacing": "trailing"}),
        ("Heun", "Automatic", "HeunDiscreteScheduler", {}),
        ("LMS Karras", "Automatic", "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
        ("PLMS", "Automatic", "PNDMScheduler", {}),
        ("k_euler_a", "Automatic", "EulerAncestralDiscreteScheduler", {}),
        ("euler A", "automatic", "EulerAncestralDiscreteScheduler", {}),
    ],
)
def test_webui_names_resolve_to_diffusers_schedulers(sampler: str, schedule: str, scheduler: str, options: dict) -> None:
    spec, resolved = resolve_sampler(sampler, schedule)
    assert spec.scheduler == scheduler
    assert options.items() <= resolved.items()
    built = scheduler_for(SD1_SCHEDULER, sampler, schedule)
    assert type(built).__name__ == scheduler
    for key, value in options.items():
        assert built.config[key] == value
    assert built.config["beta_schedule"] == "scaled_linear", "the model's own noise schedule is kept"


def test_every_listed_sampler_builds_and_sets_timesteps() -> None:
    names = sampler_names()
    assert {"Euler", "Euler a", "DPM++ 2M Karras", "DDIM", "UniPC", "Heun", "LMS", "DPM++ SDE"} <= set(names)
    for name in names:
        scheduler = scheduler_for(SD1_SCHEDULER, name)
        if "DPM2" not in name:  # KDPM2 takes a second to set timesteps; its constructor is what can fail here
            scheduler.set_timesteps(4)
            assert len(scheduler.timesteps) >= 4, name


@pytest.mark.parametrize(
    ("sampler", "schedule", "message"),
    [
        ("DPM fast", "Automatic", "'sampler'"),
        ("Euler", "Polyexponential", "'scheduler'"),
        ("Euler a", "Karras", "no 'Karras' schedule"),
        ("DPM++ 2M Karras", "Exponential", "already says Karras"),
    ],
)
def test_unknown_or_unsupported_names_are_payload_errors(sampler: str, schedule: str, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        resolve_sampler(sampler, schedule, source="payload 'x'")


def test_error_lists_the_samplers_that_work() -> None:
    with pytest.raises(PayloadError) as info:
        resolve_sampler("Restart")
    assert "Euler a" in str(info.value) and "DPM++ 2M" in str(info.value)
