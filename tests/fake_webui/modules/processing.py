"""Fake modules.processing: the txt2img processing classes, Processed and process_images.

Follows the WebUI's control flow: override_settings applied and restored,
the checkpoint (re)loaded before and in every batch, ``state`` checks for
interrupt/skip, LoRA activation from ``<lora:name:w>`` prompt tags, images
saved only when ``do_not_save_samples`` is False, a grid first when
``do_not_save_grid`` is False and the batch has several images.
"""

import json
import os
import threading
from dataclasses import dataclass

import torch
from PIL import Image

from modules import sd_models, shared
from modules.shared import opts, state

sampling_hooks = []  #: callables(p, step) run at every sampling step (tests use them to interrupt or skip)
render_threads = []  #: thread ids that rendered (Forge runs this on its main thread)


def get_fixed_seed(seed):
    if seed == "" or seed is None:
        seed = -1
    elif isinstance(seed, str):
        seed = int(seed)
    if seed == -1:
        return 123456789
    return seed


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict = None
    overlay_images: list = None
    eta: float = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float = None
    override_settings: dict = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int = None
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    disable_extra_networks: bool = False

    scripts = None
    script_args = None
    is_api = False

    def __post_init__(self):
        self.styles = self.styles or []
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = dict(self.override_settings or {})
        self.closed = False

    @property
    def sd_model(self):
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    def save_samples(self):
        return not self.do_not_save_samples and not state.interrupted and not state.skipped

    def close(self):
        self.closed = True


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0
    hr_upscaler: str = None
    hr_second_pass_steps: int = 0
    hr_checkpoint_name: str = None
    hr_sampler_name: str = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str = None


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments="", extra_images_list=[]):
        self.images = images_list
        self.extra_images = extra_images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.info = info
        self.width = p.width
        self.height = p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.sd_model_name = p.sd_model_name
        self.sd_model_hash = p.sd_model_hash
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.all_prompts = all_prompts or p.all_prompts
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts
        self.all_seeds = all_seeds or p.all_seeds
        self.all_subseeds = all_subseeds or p.all_subseeds
        self.infotexts = infotexts or [info] * len(images_list)

    def js(self):
        obj = {
            "prompt": self.all_prompts[0],
            "all_prompts": self.all_prompts,
            "negative_prompt": self.all_negative_prompts[0],
            "all_negative_prompts": self.all_negative_prompts,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "subseed": self.subseed,
            "all_subseeds": self.all_subseeds,
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler_name,
            "cfg_scale": self.cfg_scale,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "sd_model_name": self.sd_model_name,
            "sd_model_hash": self.sd_model_hash,
            "extra_generation_params": self.extra_generation_params,
            "index_of_first_image": self.index_of_first_image,
            "infotexts": self.infotexts,
        }
        return json.dumps(obj, default=lambda o: None)


def create_infotext(p, prompt, seed, index):
    params = {"Steps": p.steps, "Sampler": p.sampler_name, "CFG scale": p.cfg_scale, "Seed": seed,
              "Size": f"{p.width}x{p.height}", "Model": p.sd_model_name, **p.extra_generation_params}
    text = ", ".join(f"{k}: {v}" for k, v in params.items() if v is not None)
    return f"{prompt}\nNegative prompt: {p.negative_prompt}\n{text}"


def _reload_model():
    if sd_models.FLAVOUR == "forge":
        return sd_models.forge_model_reload()[0]
    return sd_models.reload_model_weights()


def process_images(p):
    stored_opts = {k: opts.data[k] for k in p.override_settings.keys() if k in opts.data}
    try:
        if sd_models.checkpoint_aliases.get(p.override_settings.get("sd_model_checkpoint")) is None:
            p.override_settings.pop("sd_model_checkpoint", None)
            _reload_model()
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
            if k == "sd_model_checkpoint":
                if sd_models.FLAVOUR == "forge":
                    from modules_forge import main_entry

                    main_entry.refresh_model_loading_parameters()
                _reload_model()
        res = process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)
    return res


def _activate_loras(p, prompt):
    from fake_sd_model import a1111_network_apply_weights, forge_lora_patches, lora_layers, loras_in

    wanted = () if p.disable_extra_networks else loras_in(prompt)
    if sd_models.FLAVOUR == "forge":
        patcher = p.sd_model.forge_objects.unet
        patcher.model.lora_loader.refresh(forge_lora_patches(patcher.model.diffusion_model, wanted), patcher.offload_device)
        return patcher.model.diffusion_model
    unet = p.sd_model.model.diffusion_model
    for name, layer in lora_layers(unet):
        layer.network_layer_name = name
        a1111_network_apply_weights(layer, name, wanted)
    return unet


def process_images_inner(p):
    from fake_sd_model import LORA_RE, render

    render_threads.append(threading.get_ident())
    seed = get_fixed_seed(p.seed)
    p.sd_model_name = shared.sd_model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = shared.sd_model.sd_model_hash
    count = p.n_iter * p.batch_size
    p.all_prompts = [p.prompt] * count
    p.all_negative_prompts = [p.negative_prompt] * count
    p.all_seeds = [int(seed) + x for x in range(count)]
    p.all_subseeds = [int(get_fixed_seed(p.subseed)) + x for x in range(count)]
    infotexts = []
    output_images = []
    with torch.inference_mode():
        if state.job_count == -1:
            state.job_count = p.n_iter
        for n in range(p.n_iter):
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break
            _reload_model()
            if sd_models.FLAVOUR == "forge":
                p.sd_model.forge_objects = p.sd_model.forge_objects_original.shallow_copy()
            prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            unet = _activate_loras(p, prompts[0])
            state.sampling_steps = p.steps
            for step in range(p.steps):
                state.sampling_step = step
                for hook in list(sampling_hooks):
                    hook(p, step)
                if state.interrupted or state.skipped:
                    break
            for i, (prompt, s) in enumerate(zip(prompts, seeds)):
                image = render(unet, LORA_RE.sub("", prompt), s, p.width, p.height)
                text = create_infotext(p, prompt, s, i)
                infotexts.append(text)
                output_images.append(image)
                if p.save_samples():
                    os.makedirs(p.outpath_samples, exist_ok=True)
                    image.save(os.path.join(p.outpath_samples, f"{s}-{i}.png"))
            state.nextjob()
        index_of_first_image = 0
        if len(output_images) > 1 and opts.return_grid and not p.do_not_save_grid:
            grid = Image.new("RGB", (p.width * len(output_images), p.height))
            for i, image in enumerate(output_images):
                grid.paste(image, (i * p.width, 0))
            output_images.insert(0, grid)
            infotexts.insert(0, infotexts[0])
            index_of_first_image = 1
    return Processed(p, output_images, p.all_seeds[0], infotexts[0] if infotexts else "", p.all_subseeds[0],
                     index_of_first_image=index_of_first_image, infotexts=infotexts)
