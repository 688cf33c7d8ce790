"""The diffusers backend: a local Stable Diffusion pipeline whose UNet is merged in place.

Owns loading a model A into a diffusers pipeline without the model hub
(single-file WebUI checkpoints through ``from_single_file`` with a local
config folder, or diffusers folders through ``from_pretrained``), the map
between the diffusers UNet's parameter names and the checkpoint's UNet keys
(computed once, from diffusers' own ldm -> diffusers conversion), and
rendering payloads with WebUI conventions (sampler names, seed + i per image
of a batch, CLIP skip), several payloads in one pipeline call where their
call settings agree (``generate_many``, ``plan_batches``). Model B is
handed to ``lib_mbw.runtime.RuntimeMerger`` together with the live UNet and
that key map; ``apply(recipe)`` merges the
UNet in place and ``generate`` renders under the merger's lock.

Runs on CUDA (fp16), MPS or the CPU (fp32, the default where nothing else is
available). Initial noise always comes from CPU generators, so a seed gives
the same image on every device up to floating-point differences.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch

from ..blocks import ModelArch
from ..checkpoint import PICKLE_SUFFIXES, Checkpoint, open_checkpoint, state_dict_checkpoint
from ..errors import GenerationInterrupted, MBWError, ModelFormatError, PayloadError
from ..payloads import Payload
from ..recipe import Recipe
from .base import GeneratedImage, ProgressCallback
from .diffusers_files import config_folder, read_json, unet_config_from_diffusers
from .diffusers_samplers import scheduler_for

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: The prefix diffusers' converter expects on UNet keys.
LDM_UNET_PREFIX = "model.diffusion_model."

PIPELINE_CLASSES: dict[str, str] = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}
FAMILY_OF_PIPELINE: dict[str, str] = {"StableDiffusionPipeline": "sd1", "StableDiffusionXLPipeline": "sdxl"}

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")


class GeneratorError(MBWError):
    """The diffusers backend cannot do what was asked (no model B, bad option, closed generator)."""


# --- device and dtype ---


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA if present, else MPS, else CPU; other names are taken as given."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere, unless ``dtype`` ("fp16", "bf16", "fp32" or a torch dtype) says otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype is not None:
        if dtype not in names:
            raise GeneratorError(f"dtype {dtype!r} is not supported; use one of: fp16, bf16, fp32")
        return names[dtype]
    return torch.float16 if device.type == "cuda" else torch.float32


# --- the key map ---


def unet_key_map(unet_config: Mapping[str, Any], checkpoint_unet_keys: Iterable[str], param_names: Iterable[str]) -> dict[str, str]:
    """Diffusers UNet parameter name -> checkpoint UNet key (without prefix), from diffusers' own converter.

    Runs ``convert_ldm_unet_checkpoint`` over a state dict whose values are
    the keys themselves, so each converted entry says which key it came from.
    Raises ModelFormatError unless the result is a bijection between the
    checkpoint's UNet keys and every UNet parameter.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    keys = list(checkpoint_unet_keys)
    tagged = {LDM_UNET_PREFIX + key: key for key in keys}
    converted = convert_ldm_unet_checkpoint(tagged, dict(unet_config))
    params = set(param_names)
    key_map = {name: source for name, source in converted.items() if isinstance(source, str)}
    problems: list[str] = []
    missing = sorted(params - set(key_map))
    if missing:
        problems.append(f"{len(missing)} UNet parameter(s) get no checkpoint tensor (e.g. {', '.join(missing[:3])})")
    extra = sorted(set(key_map) - params)
    if extra:
        problems.append(f"{len(extra)} converted name(s) are no UNet parameter (e.g. {', '.join(extra[:3])})")
    unused = sorted(set(keys) - set(key_map.values()))
    if unused:
        problems.append(f"{len(unused)} checkpoint UNet key(s) are not used (e.g. {', '.join(unused[:3])})")
    if len(set(key_map.values())) != len(key_map):
        problems.append("some checkpoint keys feed several parameters")
    if problems:
        raise ModelFormatError("the checkpoint's UNet does not match the diffusers UNet config: " + "; ".join(problems))
    return key_map


def ldm_unet_keys(unet_config: Mapping[str, Any]) -> list[str]:
    """The checkpoint UNet keys (without prefix) of a diffusers UNet config, from ``lib_mbw.keyspec``."""
    from ..keyspec import unet_layout

    return list(unet_layout(unet_config_from_diffusers(unet_config), prefix=""))


# --- loading ---


@dataclass
class LoadedPipeline:
    """A pipeline and what the generator needs to know about it."""

    pipe: "DiffusionPipeline"
    family: str
    source: Path
    key_map: dict[str, str]
    device: torch.device
    dtype: torch.dtype

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipe.unet


def _pipeline_class(name: str) -> Any:
    import diffusers

    return getattr(diffusers, name)


def _check_loadable_arch(arch: ModelArch, path: Path) -> None:
    if arch.variant != "base":
        raise ModelFormatError(f"{path}: {arch.label} models are not supported by the diffusers backend; use a txt2img (base) model")
    if arch.unet_prefix != LDM_UNET_PREFIX:
        raise ModelFormatError(
            f"{path}: UNet keys start with {arch.unet_prefix!r}; the diffusers loader needs {LDM_UNET_PREFIX!r} "
            "(save the checkpoint in WebUI layout first)"
        )


def _apply_prediction_type(pipe: "DiffusionPipeline", prediction_type: str | None) -> None:
    if prediction_type is None:
        return
    if prediction_type not in PREDICTION_TYPES:
        raise GeneratorError(f"prediction_type {prediction_type!r} is not supported; use one of: {', '.join(PREDICTION_TYPES)}")
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)


def load_single_file(
    path: str | Path,
    *,
    config_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str | torch.dtype | None = None,
    prediction_type: str | None = None,
    allow_pickle: bool = False,
) -> LoadedPipeline:
    """Load a WebUI single-file checkpoint into a diffusers pipeline from local configs only.

    ``config_dir`` is a diffusers config folder (model_index.json, component
    configs, tokenizers); by default the packaged config of the checkpoint's
    architecture (SD1.5, SD2.1 768-v, SDXL base) is used. Nothing is downloaded.
    """
    path = Path(path)
    with open_checkpoint(path, allow_pickle=allow_pickle) as ckpt:
        arch = ckpt.arch
        _check_loadable_arch(arch, path)
        unet_keys = [k[len(arch.unet_prefix) :] for k in ckpt.unet_keys()]
    folder = Path(config_dir) if config_dir is not None else config_folder(arch.family)
    if not (folder / "model_index.json").is_file():
        raise ModelFormatError(f"{folder}: not a diffusers config folder (no model_index.json)")
    class_name = read_json(folder / "model_index.json").get("_class_name", PIPELINE_CLASSES[arch.family])
    if class_name != PIPELINE_CLASSES[arch.family]:
        raise ModelFormatError(f"{folder}: config is for {class_name}, but {path.name} is an {arch.label} checkpoint")
    target = pick_device(device)
    torch_dtype = pick_dtype(target, dtype)
    try:
        pipe = _pipeline_class(class_name).from_single_file(
            str(path), config=str(folder), local_files_only=True, torch_dtype=torch_dtype
        )
    except MBWError:
        raise
    except Exception as exc:  # diffusers raises ValueError/OSError/RuntimeError with its own wording
        raise ModelFormatError(
            f"{path}: diffusers could not load it with the config in {folder} ({exc}); "
            "the config folder must describe this checkpoint's architecture and sizes"
        ) from exc
    _apply_prediction_type(pipe, prediction_type)
    key_map = unet_key_map(pipe.unet.config, unet_keys, (name for name, _ in pipe.unet.named_parameters()))
    pipe.to(target)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, arch.family, path, key_map, target, torch_dtype)


def load_diffusers_folder(
    folder: str | Path,
    *,
    device: str = "auto",
    dtype: str | torch.dtype | None = None,
    prediction_type: str | None = None,
) -> LoadedPipeline:
    """Load a diffusers model folder (``from_pretrained``, local files only)."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ModelFormatError(f"{folder}: is a folder but no diffusers model (no model_index.json)")
    class_name = read_json(index_path).get("_class_name")
    family = FAMILY_OF_PIPELINE.get(class_name or "")
    if family is None:
        raise ModelFormatError(f"{folder}: pipeline {class_name!r} is not supported; use a Stable Diffusion 1/2 or SDXL model")
    target = pick_device(device)
    torch_dtype = pick_dtype(target, dtype)
    try:
        pipe = _pipeline_class(class_name).from_pretrained(
            str(folder), local_files_only=True, torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
        )
    except Exception as exc:
        raise ModelFormatError(f"{folder}: diffusers could not load it ({exc})") from exc
    if family == "sd1" and int(pipe.unet.config.cross_attention_dim) == 1024:
        family = "sd2"
    _apply_prediction_type(pipe, prediction_type)
    key_map = unet_key_map(pipe.unet.config, ldm_unet_keys(pipe.unet.config), (n for n, _ in pipe.unet.named_parameters()))
    pipe.to(target)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, family, folder, key_map, target, torch_dtype)


def load_pipeline(model: str | Path, **options: Any) -> LoadedPipeline:
    """Load ``model`` (a single-file checkpoint or a diffusers folder) as a pipeline; see the two loaders."""
    path = Path(model)
    if path.is_dir():
        options.pop("config_dir", None)
        options.pop("allow_pickle", None)
        return load_diffusers_folder(path, **options)
    return load_single_file(path, **options)


def diffusers_unet_checkpoint(folder: str | Path, key_map: Mapping[str, str]) -> Checkpoint:
    """The UNet of a diffusers folder as a checkpoint with WebUI key names (for use as model B)."""
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", local_files_only=True)
    state = unet.state_dict()
    missing = sorted(set(key_map) - set(state))
    if missing:
        raise ModelFormatError(f"{folder}: UNet lacks {len(missing)} parameter(s) model A has (e.g. {missing[0]}); architectures differ")
    return state_dict_checkpoint({LDM_UNET_PREFIX + key_map[name]: state[name] for name in key_map}, name=str(folder))


# --- batching ---

#: Payload fields that must be equal for payloads to share one pipeline call.
BatchKey = tuple[int, int, int, str, str, float, int, bool]


def batch_key(payload: Payload) -> BatchKey:
    """What a pipeline call fixes for all its images: size, steps, sampler, schedule, CFG, CLIP skip, negative or not.

    Whether a negative prompt is given is part of the key because SDXL
    pipelines use zero embeddings for a missing negative prompt and encode an
    empty one otherwise; a call with some empty negative prompts would change
    those images.
    """
    return (payload.width, payload.height, payload.steps, payload.sampler, payload.scheduler,
            float(payload.cfg_scale), payload.clip_skip, bool(payload.negative_prompt))


def plan_batches(payloads: Sequence[Payload], max_images: int) -> list[list[int]]:
    """Indices of the payloads rendered together, in first-seen order of their ``batch_key``.

    A call holds at most ``max_images`` images (``max_images`` < 1: no limit);
    a payload with more images than that is a call of its own, as it would be
    alone.
    """
    limit = max_images if max_images >= 1 else sum(p.batch_size for p in payloads) or 1
    open_calls: dict[BatchKey, list[int]] = {}
    sizes: dict[BatchKey, int] = {}
    calls: list[list[int]] = []
    for index, payload in enumerate(payloads):
        key = batch_key(payload)
        current = open_calls.get(key)
        if current is not None and sizes[key] + payload.batch_size <= limit:
            current.append(index)
            sizes[key] += payload.batch_size
            continue
        open_calls[key] = [index]
        sizes[key] = payload.batch_size
        calls.append(open_calls[key])
    return calls


def _prompt_arguments(payloads: Sequence[Payload]) -> dict[str, Any]:
    """The pipeline's prompt arguments for payloads of one call, images in payload order.

    One payload, or payloads of one batch size: one prompt per payload and
    ``num_images_per_prompt`` (diffusers repeats each prompt's embeddings for
    its images, so a single payload is called exactly as before batching).
    Mixed batch sizes: one prompt per image.
    """
    sizes = {p.batch_size for p in payloads}
    if len(sizes) == 1:
        prompts = [p.prompt for p in payloads]
        negatives = [p.negative_prompt for p in payloads]
        per_prompt = sizes.pop()
    else:
        prompts = [p.prompt for p in payloads for _ in range(p.batch_size)]
        negatives = [p.negative_prompt for p in payloads for _ in range(p.batch_size)]
        per_prompt = 1
    with_negative = any(negatives)
    if len(payloads) == 1:
        return dict(prompt=prompts[0], negative_prompt=negatives[0] or None, num_images_per_prompt=per_prompt)
    return dict(prompt=prompts, negative_prompt=negatives if with_negative else None, num_images_per_prompt=per_prompt)


# --- the generator ---


@dataclass
class DiffusersOptions:
    """How the diffusers backend loads and runs models.

    ``config_dir``: local diffusers config folder for single-file checkpoints
    (default: the packaged config of the detected architecture).
    ``prediction_type``: override the scheduler's (SD2 768-v models use
    ``v_prediction``, the packaged SD2 default; SD2 512-base models ``epsilon``).
    ``merge_mode``: placement mode handed to the runtime merger.
    ``cpu_threads``: set torch's CPU thread count (process-wide) when given;
    tiny models render fastest with 1 on a busy machine.
    ``max_batch``: most images ``generate_many`` renders in one pipeline call
    (payloads that share their call settings); 1 renders payload by payload.
    """

    config_dir: str | Path | None = None
    device: str = "auto"
    dtype: str | None = None
    prediction_type: str | None = None
    merge_mode: str = "auto"
    cpu_threads: int | None = None
    allow_pickle: bool = False
    max_batch: int = 8


MergerFactory = Callable[..., Any]


def _default_merger_factory(unet: torch.nn.Module, model_a: Any, model_b: Any, *, key_map: Mapping[str, str], mode: str) -> Any:
    try:
        from ..runtime import RuntimeMerger
    except ImportError:
        raise GeneratorError("merging needs lib_mbw.runtime, which this installation lacks") from None
    return RuntimeMerger(unet, model_a, model_b, key_map=key_map, mode=mode)


class DiffusersGenerator:
    """A Generator on a local diffusers pipeline: model A loaded, model B merged in through the runtime merger.

    ``model_b`` may be None for plain generation (``apply`` then refuses).
    ``merger_factory(unet, model_a, model_b, key_map=..., mode=...)`` builds
    the merger; the default is ``lib_mbw.runtime.RuntimeMerger``. ``loaded``
    is a pipeline already loaded from ``model_a`` (``load_pipeline``), used
    instead of loading it again.
    """

    name = "diffusers"

    def __init__(
        self,
        model_a: str | Path,
        model_b: str | Path | None = None,
        *,
        options: DiffusersOptions | None = None,
        merger_factory: MergerFactory | None = None,
        loaded: LoadedPipeline | None = None,
    ) -> None:
        self.options = options or DiffusersOptions()
        if self.options.cpu_threads:
            torch.set_num_threads(int(self.options.cpu_threads))
        self.model_a = Path(model_a)
        self.model_b = Path(model_b) if model_b is not None else None
        self.loaded = loaded or load_pipeline(
            self.model_a,
            config_dir=self.options.config_dir,
            device=self.options.device,
            dtype=self.options.dtype,
            prediction_type=self.options.prediction_type,
            allow_pickle=self.options.allow_pickle,
        )
        self._base_scheduler_config = dict(self.loaded.pipe.scheduler.config)
        self._schedulers: dict[tuple[str, str], Any] = {}
        self._merger: Any = None
        self._merger_factory = merger_factory or _default_merger_factory
        self._closed = False
        self._interrupt = threading.Event()

    # the loaded model

    @property
    def pipe(self) -> "DiffusionPipeline":
        self._check_open()
        return self.loaded.pipe

    @property
    def family(self) -> str:
        return self.loaded.family

    @property
    def key_map(self) -> dict[str, str]:
        """Diffusers UNet parameter name -> checkpoint UNet key without prefix."""
        return self.loaded.key_map

    @property
    def merger(self) -> Any:
        """The runtime merger, created on first use (needs model B).

        The live UNet was just loaded from A, so the merger takes its weights
        as A (``model_a=None``: no second copy of A is read from disk).
        """
        self._check_open()
        if self._merger is None:
            if self.model_b is None:
                raise GeneratorError("no model B was given, so there is nothing to merge; pass model_b")
            model_b: Any = self.model_b
            if self.model_b.is_dir():
                model_b = diffusers_unet_checkpoint(self.model_b, self.key_map)
            elif self.options.allow_pickle and self.model_b.suffix.lower() in PICKLE_SUFFIXES:
                model_b = open_checkpoint(self.model_b, allow_pickle=True)
            self._merger = self._merger_factory(
                self.loaded.unet, None, model_b, key_map=self.key_map, mode=self.options.merge_mode
            )
        return self._merger

    def interrupt(self) -> None:
        """Stop the generation in progress (from another thread) after its current step.

        That ``generate`` call raises GenerationInterrupted; later calls run normally.
        """
        self._interrupt.set()

    def _check_open(self) -> None:
        if self._closed:
            raise GeneratorError("this diffusers generator was closed; create a new one")

    # Generator protocol

    def apply(self, recipe: Recipe) -> float:
        """Merge the live UNet to ``recipe`` (fractions of B); returns the seconds it took."""
        started = time.perf_counter()
        stats = self.merger.apply(recipe)
        seconds = getattr(stats, "seconds", None)
        return float(seconds) if seconds is not None else time.perf_counter() - started

    def restore(self) -> None:
        """Put model A's UNet weights back (no-op if nothing was merged)."""
        if self._merger is not None:
            self._merger.restore()

    def close(self) -> None:
        """Restore, release the merger and the pipeline."""
        if self._closed:
            return
        try:
            if self._merger is not None:
                self._merger.restore()
                self._merger.close()
        finally:
            self._merger = None
            self._schedulers.clear()
            device = self.loaded.device
            del self.loaded
            self._closed = True
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def __enter__(self) -> "DiffusersGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, payload: Payload, progress: ProgressCallback | None = None) -> list[GeneratedImage]:
        """Render ``payload``: ``batch_size`` images, image i from seed ``payload.seed + i`` (WebUI convention)."""
        return self._render([payload], progress)[0]

    def generate_many(self, payloads: Sequence[Payload], progress: ProgressCallback | None = None) -> list[list[GeneratedImage]]:
        """Render several payloads in as few pipeline calls as possible; the images of each payload, in order.

        Payloads that share size, steps, sampler, schedule, CFG scale, CLIP
        skip and whether they have a negative prompt go into one call (at most
        ``options.max_batch`` images; a larger payload goes alone). Every image
        keeps its own CPU generator seeded ``payload.seed + i``, so an image is
        the one ``generate`` renders, up to floating-point differences of the
        batch size (see docs/diffusers.md, "Batching"). ``progress(done,
        total)`` counts the sampling steps of all calls together.
        """
        payloads = list(payloads)
        for payload in payloads:
            self._check_payload(payload, f"payload {payload.name!r}")
        groups = plan_batches(payloads, self.options.max_batch)
        total = sum(payloads[group[0]].steps for group in groups)
        results: list[list[GeneratedImage]] = [[] for _ in payloads]
        done = 0
        for group in groups:
            group_progress = None
            if progress is not None:
                offset = done

                def group_progress(step: int, steps: int, offset: int = offset) -> None:
                    progress(offset + step, total)

            for index, images in zip(group, self._render([payloads[i] for i in group], group_progress)):
                results[index] = images
            done += payloads[group[0]].steps
        return results

    def _render(self, payloads: Sequence[Payload], progress: ProgressCallback | None) -> list[list[GeneratedImage]]:
        """One pipeline call for ``payloads`` (same ``batch_key``); the images of each payload."""
        pipe = self.pipe
        first = payloads[0]
        source = f"payload {first.name!r}" if len(payloads) == 1 else "payloads " + ", ".join(repr(p.name) for p in payloads)
        seeds: list[list[int]] = []
        for payload in payloads:
            self._check_payload(payload, f"payload {payload.name!r}")
            seed = payload.seed if payload.seed >= 0 else random.randrange(2**32)
            seeds.append([seed + i for i in range(payload.batch_size)])
        pipe.scheduler = self._scheduler(first, source)
        call: dict[str, Any] = dict(
            num_inference_steps=first.steps,
            guidance_scale=first.cfg_scale,
            width=first.width,
            height=first.height,
            generator=[torch.Generator("cpu").manual_seed(s) for group in seeds for s in group],
            output_type="pil",
        )
        call.update(_prompt_arguments(payloads))
        if first.clip_skip > 1:
            call["clip_skip"] = first.clip_skip - 1
        call["callback_on_step_end"] = self._step_callback(progress)
        self._interrupt.clear()
        lock = self._merger.generating() if self._merger is not None else contextlib.nullcontext()
        with lock, torch.inference_mode():
            output = pipe(**call)
        if self._interrupt.is_set():
            self._interrupt.clear()
            raise GenerationInterrupted(f"{source}: generation was interrupted")
        params = {
            "backend": self.name,
            "model": self.model_a.name,
            "sampler": first.sampler,
            "scheduler": first.scheduler,
            "steps": first.steps,
            "cfg_scale": first.cfg_scale,
            "width": first.width,
            "height": first.height,
            "clip_skip": first.clip_skip,
            "device": str(self.loaded.device),
            "dtype": str(self.loaded.dtype).replace("torch.", ""),
        }
        current = getattr(self._merger, "current", None)
        if current is not None:
            params["recipe"] = current.to_dict() if hasattr(current, "to_dict") else current
        images = iter(output.images)
        return [
            [
                GeneratedImage(next(images), payload, payload.prompt, payload.negative_prompt, s, i, {**params, "seed": s})
                for i, s in enumerate(payload_seeds)
            ]
            for payload, payload_seeds in zip(payloads, seeds)
        ]

    def _step_callback(self, progress: ProgressCallback | None) -> Callable[..., dict[str, Any]]:
        """Reports progress after each step and makes diffusers skip the remaining steps once interrupted."""

        def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if progress is not None:
                progress(step + 1, int(getattr(pipe, "_num_timesteps", 0) or step + 1))
            if self._interrupt.is_set():
                pipe._interrupt = True  # the SD pipelines check this flag before every step
            return callback_kwargs

        return on_step_end

    def _check_payload(self, payload: Payload, source: str) -> None:
        for name in ("width", "height"):
            value = getattr(payload, name)
            if value < 8 or value % 8:
                raise PayloadError(f"{source}: field {name!r} must be a positive multiple of 8 for diffusers, got {value}")
        if payload.steps < 1:
            raise PayloadError(f"{source}: field 'steps' must be at least 1, got {payload.steps}")
        if payload.batch_size < 1:
            raise PayloadError(f"{source}: field 'batch_size' must be at least 1, got {payload.batch_size}")
        layers = int(self.loaded.pipe.text_encoder.config.num_hidden_layers)
        if not 1 <= payload.clip_skip <= layers:
            raise PayloadError(f"{source}: field 'clip_skip' must be between 1 and {layers} for this model, got {payload.clip_skip}")

    def _scheduler(self, payload: Payload, source: str) -> Any:
        key = (payload.sampler, payload.scheduler)
        if key not in self._schedulers:
            self._schedulers[key] = scheduler_for(self._base_scheduler_config, payload.sampler, payload.scheduler, source)
        return self._schedulers[key]


# --- factory for registries and the command line ---

_BOOL_TEXT = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    parsed = _BOOL_TEXT.get(str(value).strip().lower())
    if parsed is None:
        raise GeneratorError(f"diffusers option {name}: expected true or false, got {value!r}")
    return parsed


def options_from(values: Mapping[str, Any]) -> DiffusersOptions:
    """``DiffusersOptions`` from keyword options, which may be strings (command line ``K=V`` pairs)."""
    known = set(DiffusersOptions.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise GeneratorError(f"unknown diffusers option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    parsed: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value == "":
            continue
        if name in ("cpu_threads", "max_batch"):
            try:
                parsed[name] = int(value)
            except (TypeError, ValueError):
                raise GeneratorError(f"diffusers option {name}: expected a whole number, got {value!r}") from None
        elif name == "allow_pickle":
            parsed[name] = _parse_bool(name, value)
        else:
            parsed[name] = str(value) if not isinstance(value, Path) else value
    return DiffusersOptions(**parsed)


def mix_merger_factory(more_models: Sequence[str | Path]) -> MergerFactory:
    """A merger factory for a block mix of 3-5 models: the live model 1, ``model_b`` and ``more_models``
    through ``runtime.multi.MultiMerger`` (its memory plan is checked when it is built)."""
    others = [Path(m) for m in more_models]

    def factory(unet: torch.nn.Module, model_a: Any, model_b: Any, *, key_map: Mapping[str, str], mode: str) -> Any:
        from ..runtime.multi import MultiMerger

        return MultiMerger(unet, [None, model_b, *others], key_map=key_map, mode=mode)

    return factory


def create(
    model_a: str | Path | None = None, model_b: str | Path | None = None, more_models: Sequence[str | Path] = (), **options: Any
) -> DiffusersGenerator:
    """Factory for ``lib_mbw.generators.registry`` and ``--generator diffusers --generator-option K=V``.

    ``more_models``: models 3-5 of a block mix (``apply`` then takes ``RecipeN``s).
    """
    if not model_a:
        raise GeneratorError("the diffusers generator needs model A (a .safetensors checkpoint or a diffusers folder)")
    factory = mix_merger_factory(more_models) if more_models else None
    return DiffusersGenerator(model_a, model_b, options=options_from(options), merger_factory=factory)
