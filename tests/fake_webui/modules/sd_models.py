"""Fake modules.sd_models: checkpoint list, CheckpointInfo titles/aliases/hashes, and model loading.

A1111 flavour: ``reload_model_weights`` copies a checkpoint into the SAME
model object (``load_state_dict``), writes ``opts.sd_model_checkpoint``, and
fires on_model_loaded; it returns at once when that file is already loaded.
Forge flavour (``harness.FakeWebUI(flavour="forge")``): ``reload_model_weights``
is a stub and ``forge_model_reload`` builds a NEW model object when the
loading parameters changed. Titles gain their short hash the first time a
checkpoint is loaded (``calculate_shorthash``), as in the WebUI.
"""

import hashlib
import os
import re
import threading

from safetensors.torch import load_file

from modules import paths, script_callbacks, shared

model_dir = "Stable-diffusion"
model_path = os.path.abspath(os.path.join(paths.models_path, model_dir))

checkpoints_list = {}
checkpoint_aliases = {}
sha256_cache = {}  #: filename -> sha256 ("cache.json" of the real WebUI)
load_count = 0  #: checkpoint loads so far (tests check reloads)


def replace_key(d, key, new_key, value):
    keys = list(d.keys())
    d[new_key] = value
    if key not in keys:
        return d
    keys[keys.index(key)] = new_key
    new_d = {k: d[k] for k in keys}
    d.clear()
    d.update(new_d)
    return d


def _file_sha256(filename):
    h = hashlib.sha256()
    with open(filename, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_hash(filename):
    try:
        with open(filename, "rb") as file:
            m = hashlib.sha256()
            file.seek(0x100000)
            m.update(file.read(0x10000))
            return m.hexdigest()[0:8]
    except FileNotFoundError:
        return "NOFILE"


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        abspath = os.path.abspath(filename)
        if abspath.startswith(model_path):
            name = abspath.replace(model_path, "")
        else:
            name = os.path.basename(filename)
        if name.startswith("\\") or name.startswith("/"):
            name = name[1:]
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        self.name = name
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = model_hash(filename)
        self.sha256 = sha256_cache.get(filename)
        self.shorthash = self.sha256[0:10] if self.sha256 else None
        self.title = name if self.shorthash is None else f"{name} [{self.shorthash}]"
        self.short_title = self.name_for_extra if self.shorthash is None else f"{self.name_for_extra} [{self.shorthash}]"
        self.ids = [self.hash, self.model_name, self.title, name, self.name_for_extra, f"{name} [{self.hash}]"]
        if self.shorthash:
            self.ids += [self.shorthash, self.sha256, f"{self.name} [{self.shorthash}]"]
        self.metadata = {}

    def register(self):
        checkpoints_list[self.title] = self
        for id in self.ids:
            checkpoint_aliases[id] = self

    def calculate_shorthash(self):
        self.sha256 = sha256_cache.setdefault(self.filename, _file_sha256(self.filename))
        shorthash = self.sha256[0:10]
        if self.shorthash == shorthash:
            return self.shorthash
        self.shorthash = shorthash
        if self.shorthash not in self.ids:
            self.ids += [self.shorthash, self.sha256, f"{self.name} [{self.shorthash}]"]
        old_title = self.title
        self.title = f"{self.name} [{self.shorthash}]"
        self.short_title = f"{self.name_for_extra} [{self.shorthash}]"
        replace_key(checkpoints_list, old_title, self.title, self)
        self.register()
        return self.shorthash


def list_models():
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    if not os.path.isdir(model_path):
        return
    for filename in sorted(os.listdir(model_path), key=str.lower):
        if filename.endswith((".safetensors", ".ckpt")):
            CheckpointInfo(os.path.join(model_path, filename)).register()


re_strip_checksum = re.compile(r"\s*\[[^]]+]\s*$")


def get_closet_checkpoint_match(search_string):
    if not search_string:
        return None
    checkpoint_info = checkpoint_aliases.get(search_string, None)
    if checkpoint_info is not None:
        return checkpoint_info
    found = sorted([info for info in checkpoints_list.values() if search_string in info.title], key=lambda x: len(x.title))
    if found:
        return found[0]
    stripped = re.sub(re_strip_checksum, "", search_string)
    found = sorted([info for info in checkpoints_list.values() if stripped in info.title], key=lambda x: len(x.title))
    return found[0] if found else None


def select_checkpoint():
    checkpoint_info = checkpoint_aliases.get(shared.opts.sd_model_checkpoint, None)
    if checkpoint_info is not None:
        return checkpoint_info
    if len(checkpoints_list) == 0:
        return None
    return next(iter(checkpoints_list.values()))


def read_state_dict(checkpoint_file, print_global_state=False, map_location=None):
    return load_file(checkpoint_file, device=map_location or "cpu")


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []
        self.was_loaded_at_least_once = False
        self.lock = threading.Lock()
        self.forge_loading_parameters = {}
        self.forge_hash = ""

    def get_sd_model(self):
        if self.was_loaded_at_least_once:
            return self.sd_model
        if self.sd_model is None:
            with self.lock:
                if self.sd_model is None and not self.was_loaded_at_least_once:
                    if FLAVOUR == "forge":
                        from modules_forge import main_entry

                        main_entry.refresh_model_loading_parameters()
                        _forge_model_reload()
                    else:
                        load_model()
        return self.sd_model

    def set_sd_model(self, v, already_loaded=False):
        self.sd_model = v
        if v in self.loaded_sd_models:
            self.loaded_sd_models.remove(v)
        if v is not None:
            self.loaded_sd_models.insert(0, v)


model_data = SdModelData()
FLAVOUR = "a1111"


def load_model_weights(model, checkpoint_info, state_dict=None, timer=None):
    global load_count
    from fake_sd_model import unet_state_dict

    sd_model_hash = checkpoint_info.calculate_shorthash()
    shared.opts.data["sd_model_checkpoint"] = checkpoint_info.title
    if state_dict is None:
        state_dict = read_state_dict(checkpoint_info.filename)
    model.model.diffusion_model.load_state_dict(unet_state_dict(state_dict), strict=False)
    load_count += 1
    model.sd_model_hash = sd_model_hash
    model.sd_model_checkpoint = checkpoint_info.filename
    model.sd_checkpoint_info = checkpoint_info
    shared.opts.data["sd_checkpoint_hash"] = checkpoint_info.sha256


def load_model(checkpoint_info=None, already_loaded_state_dict=None):
    from fake_sd_model import FakeSDModel

    checkpoint_info = checkpoint_info or select_checkpoint()
    sd_model = FakeSDModel()
    load_model_weights(sd_model, checkpoint_info, already_loaded_state_dict)
    model_data.set_sd_model(sd_model)
    model_data.was_loaded_at_least_once = True
    script_callbacks.model_loaded_callback(sd_model)
    return sd_model


def _a1111_reload_model_weights(sd_model=None, info=None, forced_reload=False):
    checkpoint_info = info or select_checkpoint()
    if not sd_model:
        sd_model = model_data.sd_model
    if sd_model is None:
        return load_model(checkpoint_info)
    if sd_model.sd_model_checkpoint == checkpoint_info.filename and not forced_reload:
        return sd_model
    load_model_weights(sd_model, checkpoint_info)
    script_callbacks.model_loaded_callback(sd_model)
    model_data.set_sd_model(sd_model)
    return sd_model


def _forge_reload_model_weights(sd_model=None, info=None, forced_reload=False):
    pass


def _forge_model_reload():
    global load_count
    from fake_sd_model import FakeForgeModel

    current_hash = str(model_data.forge_loading_parameters)
    if model_data.forge_hash == current_hash:
        return model_data.sd_model, False
    model_data.sd_model = None
    checkpoint_info = model_data.forge_loading_parameters["checkpoint_info"]
    sd_model = FakeForgeModel(checkpoint_info, read_state_dict(checkpoint_info.filename))
    load_count += 1
    sd_model.sd_model_hash = checkpoint_info.calculate_shorthash()
    shared.opts.data["sd_checkpoint_hash"] = checkpoint_info.sha256
    model_data.set_sd_model(sd_model)
    model_data.was_loaded_at_least_once = True
    script_callbacks.model_loaded_callback(sd_model)
    model_data.forge_hash = current_hash
    return sd_model, True


reload_model_weights = _a1111_reload_model_weights


def configure(flavour):
    """Switch this module between the A1111 and the Forge behaviour (harness only)."""
    global FLAVOUR, reload_model_weights, model_path, load_count
    FLAVOUR = flavour
    model_path = os.path.abspath(os.path.join(paths.models_path, model_dir))
    model_data.__init__()
    sha256_cache.clear()
    load_count = 0
    if flavour == "forge":
        reload_model_weights = _forge_reload_model_weights
        globals()["forge_model_reload"] = _forge_model_reload
    else:
        reload_model_weights = _a1111_reload_model_weights
        globals().pop("forge_model_reload", None)
