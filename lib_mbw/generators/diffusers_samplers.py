"""WebUI sampler and schedule-type names -> diffusers schedulers.

A payload names its sampler as the WebUI does ("Euler a", "DPM++ 2M Karras")
and, since WebUI 1.9, a separate schedule type ("Karras", "Exponential").
``scheduler_for`` turns that pair into a diffusers scheduler built from the
model's own scheduler config (betas, timesteps, prediction type), following
the equivalence table of the diffusers documentation. The samplers are the
same algorithms as the WebUI's k-diffusion ones, not bit-identical ports, so
images resemble but do not equal the WebUI's.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import PayloadError


@dataclass(frozen=True)
class SamplerSpec:
    """A diffusers scheduler class and the config options that make it a WebUI sampler."""

    scheduler: str
    options: Mapping[str, Any] = field(default_factory=dict)
    needs: str | None = None  #: an extra package the scheduler imports


_DPMPP_SDE = {"algorithm_type": "sde-dpmsolver++"}

_BASE_SAMPLERS: dict[str, SamplerSpec] = {
    "Euler": SamplerSpec("EulerDiscreteScheduler"),
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "Heun": SamplerSpec("HeunDiscreteScheduler"),
    "LMS": SamplerSpec("LMSDiscreteScheduler"),
    "DPM2": SamplerSpec("KDPM2DiscreteScheduler"),
    "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler"),
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE": SamplerSpec("DPMSolverMultistepScheduler", {**_DPMPP_SDE, "solver_order": 2}),
    "DPM++ 3M SDE": SamplerSpec("DPMSolverMultistepScheduler", {**_DPMPP_SDE, "solver_order": 3}),
    "DPM++ 2S": SamplerSpec("DPMSolverSinglestepScheduler", {"solver_order": 2}),
    "DPM++ SDE": SamplerSpec("DPMSolverSDEScheduler", needs="torchsde"),
    "DDIM": SamplerSpec("DDIMScheduler"),
    "PLMS": SamplerSpec("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": SamplerSpec("UniPCMultistepScheduler"),
    "DEIS": SamplerSpec("DEISMultistepScheduler"),
    "LCM": SamplerSpec("LCMScheduler"),
}

#: Schedule types (WebUI's "Schedule type" / the "Karras" sampler suffix) -> scheduler options.
SCHEDULE_TYPES: dict[str, Mapping[str, Any]] = {
    "automatic": {},
    "uniform": {},
    "normal": {},
    "simple": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "sgm uniform": {"timestep_spacing": "trailing"},
}

#: Old WebUI / k-diffusion spellings seen in payloads and API calls.
ALIASES: dict[str, str] = {
    "k_euler": "Euler",
    "euler_a": "Euler a",
    "k_euler_a": "Euler a",
    "k_euler_ancestral": "Euler a",
    "euler_ancestral": "Euler a",
    "k_heun": "Heun",
    "k_lms": "LMS",
    "k_dpm_2": "DPM2",
    "k_dpm_2_a": "DPM2 a",
    "dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "dpmpp_sde": "DPM++ SDE",
    "k_dpmpp_sde": "DPM++ SDE",
    "ddim": "DDIM",
    "plms": "PLMS",
    "unipc": "UniPC",
}


def sampler_names() -> list[str]:
    """Every sampler name accepted (base names, each also with a ' Karras' suffix where it applies)."""
    names = list(_BASE_SAMPLERS)
    names += [f"{n} Karras" for n, spec in _BASE_SAMPLERS.items() if "use_karras_sigmas" in _init_parameters(spec.scheduler)]
    return names


def _init_parameters(scheduler: str) -> set[str]:
    import diffusers

    cls = getattr(diffusers, scheduler)
    return set(inspect.signature(cls.__init__).parameters)


def resolve_sampler(sampler: str, schedule_type: str = "Automatic", source: str = "payload") -> tuple[SamplerSpec, dict[str, Any]]:
    """The scheduler spec and the options for a WebUI sampler name and schedule type.

    Raises PayloadError naming the field and the accepted values.
    """
    name = ALIASES.get(sampler.strip().lower(), sampler.strip())
    by_lower = {n.lower(): n for n in _BASE_SAMPLERS}
    schedule = (schedule_type or "Automatic").strip().lower()
    if name.lower() not in by_lower and name.lower().endswith(" karras"):
        name = name[: -len(" karras")]
        if schedule not in ("automatic", "karras"):
            raise PayloadError(f"{source}: sampler {sampler!r} already says Karras but scheduler is {schedule_type!r}")
        schedule = "karras"
    canonical = by_lower.get(name.lower())
    if canonical is None:
        raise PayloadError(
            f"{source}: field 'sampler': {sampler!r} is not available with the diffusers backend; "
            f"use one of: {', '.join(sampler_names())}"
        )
    if schedule not in SCHEDULE_TYPES:
        raise PayloadError(
            f"{source}: field 'scheduler': schedule type {schedule_type!r} is not available with the diffusers backend; "
            f"use one of: {', '.join(s.title() for s in SCHEDULE_TYPES)}"
        )
    spec = _BASE_SAMPLERS[canonical]
    options = dict(spec.options)
    extra = SCHEDULE_TYPES[schedule]
    unsupported = [k for k in extra if k not in _init_parameters(spec.scheduler)]
    if unsupported:
        raise PayloadError(
            f"{source}: sampler {canonical!r} has no {schedule_type!r} schedule in diffusers; "
            "use schedule type 'Automatic' or another sampler"
        )
    options.update(extra)
    return spec, options


def check_sampler(sampler: str, schedule_type: str = "Automatic", source: str = "payload") -> None:
    """Refuse (PayloadError naming the field) a sampler/schedule pair the diffusers backend cannot run here.

    The same checks ``scheduler_for`` makes when a payload renders, done
    before a search starts: unknown names, a schedule the scheduler lacks, a
    package the sampler needs but that is not installed.
    """
    import importlib.util

    spec, _ = resolve_sampler(sampler, schedule_type, source)
    if spec.needs and importlib.util.find_spec(spec.needs) is None:
        raise PayloadError(f"{source}: sampler {sampler!r} needs the {spec.needs} package; install it with: pip install {spec.needs}")


def scheduler_for(base_config: Mapping[str, Any], sampler: str, schedule_type: str = "Automatic", source: str = "payload") -> Any:
    """A new diffusers scheduler for ``sampler``/``schedule_type`` built on the model's scheduler config."""
    import diffusers

    spec, options = resolve_sampler(sampler, schedule_type, source)
    if spec.needs:
        try:
            __import__(spec.needs)
        except ImportError:
            raise PayloadError(
                f"{source}: sampler {sampler!r} needs the {spec.needs} package; install it with: pip install {spec.needs}"
            ) from None
    cls = getattr(diffusers, spec.scheduler)
    accepted = _init_parameters(spec.scheduler)
    config = {k: v for k, v in base_config.items() if k in accepted}
    config.update(options)
    return cls.from_config(config)
