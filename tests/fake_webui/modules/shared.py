"""Fake modules.shared: opts, cmd_opts, state, and the sd_model module property (as shared_items.py makes it)."""

import argparse
import sys
import types

from modules import options, shared_state
from modules.options import OptionInfo  # noqa: F401  (re-exported like the real shared)

cmd_opts = argparse.Namespace(api_auth=None, ckpt_dir=None, ckpt=None, medvram=False, lowvram=False, no_half=False,
                              nowebui=False, api=False, listen=False, freeze_settings=False)

state = shared_state.State()


def _default_options():
    return {
        "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint"),
        "sd_checkpoint_hash": OptionInfo("", "SHA256 hash of the current checkpoint"),
        "CLIP_stop_at_last_layers": OptionInfo(1, "Clip skip"),
        "outdir_txt2img_samples": OptionInfo("outputs/txt2img-images", "txt2img output folder"),
        "outdir_txt2img_grids": OptionInfo("outputs/txt2img-grids", "txt2img grid folder"),
        "return_grid": OptionInfo(True, "Show grid in gallery"),
        "samples_format": OptionInfo("png", "File format for images"),
        "forge_additional_modules": OptionInfo([], "VAE / Text Encoder"),
        "forge_unet_storage_dtype": OptionInfo("Automatic", "Diffusion in Low Bits"),
    }


opts = options.Options(_default_options())


def reset():
    """Fresh options, command line options and state (used between tests); objects are kept, as modules import them."""
    fresh = options.Options(_default_options())
    opts.data_labels = fresh.data_labels
    opts.data = fresh.data
    state.__dict__.clear()
    for key in ("api_auth", "ckpt_dir", "ckpt"):
        setattr(cmd_opts, key, None)
    cmd_opts.medvram = cmd_opts.lowvram = False
    cmd_opts.api = cmd_opts.nowebui = cmd_opts.listen = False


class _Shared(types.ModuleType):
    @property
    def sd_model(self):
        from modules import sd_models

        return sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        from modules import sd_models

        sd_models.model_data.set_sd_model(value)


sys.modules[__name__].__class__ = _Shared
