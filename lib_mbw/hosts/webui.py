"""The AUTOMATIC1111 / Forge host: checkpoints, the live UNet, the queue lock, LoRA rules, settings.

This is the only place (with ``generators/webui.py``) that talks to the
WebUI's ``modules``; every import of them is inside a function, so
``lib_mbw`` imports without a WebUI. What it owns:

* ``WebUIHost`` implements ``hosts.base.Host`` (checkpoint list, folders,
  ``exclusive()`` = the WebUI's queue lock for a whole search) and the
  worker service behind ``hosts.worker_api`` (apply/status/restore/stop).
* ``MergeSession``: one runtime merge of (A, B), or a block mix of A, B and
  models 3-5, on the WebUI's live UNet. Model A is loaded through the WebUI's
  own checkpoint loading, so the live weights *are* A
  (``RuntimeMerger(unet, None, B)`` or ``RuntimeMerger(unet, None, [B, C, ...])``);
  the others are read from their files. Closing a session restores A bit-exactly and loads the checkpoint the
  user had before, if A was a different one.
* The LoRA rules of A1111 (per-layer network backups) and Forge (the
  LoraLoader's Parameter backup): before every weight edit the LoRA is
  un-merged, after it the caches that would put stale weights back are
  dropped, so a payload with ``<lora:...>`` sees ``merge + LoRA``.

Locking (see docs/webui.md): a search holds ``modules.call_queue.queue_lock``
for its whole run through ``exclusive()``; generation inside it calls
``process_images`` directly and never takes the lock again (it is not
reentrant). Outside a search, generators and API routes take the lock around
each operation. Forge runs generation and model loading on its main thread
(``modules_forge.main_thread``); ``run_on_main_thread`` does that and
re-raises errors, which Forge's helper would swallow.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from ..errors import HostBusyError, MBWError, PayloadError
from ..recipe import Recipe
from ..recipe_n import MAX_MODELS, RecipeN
from .base import HostPaths

if TYPE_CHECKING:
    import torch

    from ..generators.webui import WebUIGenerator

log = logging.getLogger(__name__)

A1111 = "a1111"
FORGE = "forge"

#: The extension's folder (holds payloads/, csv/).
EXTENSION_DIR = Path(__file__).resolve().parents[2]

#: Placements of the runtime merger (lib_mbw.runtime): where A and B live while searching.
MEMORY_MODES: tuple[str, ...] = ("auto", "device", "stream", "cpu")

#: How long an API call waits for the WebUI's queue before answering "busy".
API_LOCK_TIMEOUT_S = 30.0


class ModelChoiceError(MBWError):
    """Model A or B is not chosen, unknown to the WebUI, or both are the same checkpoint."""


class UnsupportedModelError(MBWError):
    """The loaded model cannot be merged in place (quantized storage, no UNet)."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SettingSpec:
    """One auto-MBW option in the WebUI's Settings tab (``scripts/auto_mbw.py`` registers them)."""

    key: str
    default: Any
    label: str
    kind: str = "text"  #: "text", "radio" or "checkbox"
    choices: tuple[str, ...] = ()


SETTINGS_SECTION: tuple[str, str] = ("auto_mbw", "auto-MBW")

SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("auto_mbw_payload_dir", "", "Payload folder (empty: the extension's payloads/)"),
    SettingSpec("auto_mbw_wildcard_dir", "", "Wildcard folder (empty: payloads/wildcards/)"),
    SettingSpec("auto_mbw_history_dir", "", "Search history folder (empty: the extension's csv/history/)"),
    SettingSpec("auto_mbw_scorer_cache", "", "Scorer model cache (empty: models/ImageReward/)"),
    SettingSpec(
        "auto_mbw_memory_mode",
        "auto",
        "Where models A and B stay while searching (auto: fastest that fits in free VRAM; cpu: no extra VRAM)",
        "radio",
        MEMORY_MODES,
    ),
    SettingSpec("auto_mbw_save_images", False, "Also save searched images to the WebUI's txt2img output folder", "checkbox"),
)


@dataclass(frozen=True)
class WebUISettings:
    """auto-MBW's settings as read from the WebUI's options, defaults resolved to folders."""

    payload_dir: Path
    wildcard_dir: Path
    history_dir: Path
    scorer_cache: Path
    memory_mode: str
    save_images: bool

    @classmethod
    def from_opts(cls, opts: Any, models_path: Path, ext_dir: Path = EXTENSION_DIR) -> "WebUISettings":
        def folder(key: str, default: Path) -> Path:
            value = str(getattr(opts, key, "") or "").strip()
            return Path(value).expanduser() if value else default

        payloads = folder("auto_mbw_payload_dir", ext_dir / "payloads")
        mode = str(getattr(opts, "auto_mbw_memory_mode", "auto") or "auto")
        if mode not in MEMORY_MODES:
            raise MBWError(f"Settings > auto-MBW: memory mode {mode!r} is unknown; choose one of {', '.join(MEMORY_MODES)}")
        return cls(
            payload_dir=payloads,
            wildcard_dir=folder("auto_mbw_wildcard_dir", payloads / "wildcards"),
            history_dir=folder("auto_mbw_history_dir", ext_dir / "csv" / "history"),
            scorer_cache=folder("auto_mbw_scorer_cache", models_path / "ImageReward"),
            memory_mode=mode,
            save_images=bool(getattr(opts, "auto_mbw_save_images", False)),
        )


# --------------------------------------------------------------------------- console


class ConsoleHandler(logging.StreamHandler):
    """Writes to the console the process has now (``sys.stderr`` looked up per message, unless a stream is given)."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._fixed = stream

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        self.stream = self._fixed or sys.stderr
        super().emit(record)


def console_logging(stream: Any = None) -> bool:
    """Make auto-MBW's INFO messages reach the WebUI's console; True if logging was changed.

    Unless ``SD_WEBUI_LOG_LEVEL`` is set, AUTOMATIC1111 and Forge leave Python
    logging at WARNING, so ``lib_mbw``'s INFO lines (model loading, waiting for
    the queue) would never show. The ``lib_mbw`` logger is then set to INFO;
    when no logging is configured at all (Python's last-resort handler prints
    warnings only) it also gets a console handler. Records still propagate, so
    each line prints once. With ``SD_WEBUI_LOG_LEVEL`` set, that level decides.
    """
    import os

    logger = logging.getLogger("lib_mbw")
    if os.environ.get("SD_WEBUI_LOG_LEVEL") or logger.getEffectiveLevel() <= logging.INFO:
        return False
    logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        handler = ConsoleHandler(stream)
        handler.setFormatter(logging.Formatter("[auto-MBW] %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    return True


# --------------------------------------------------------------------------- WebUI access


def detect_flavour() -> str:
    """``forge`` when the WebUI loads models through Forge's backend, else ``a1111``."""
    from modules import sd_models

    return FORGE if hasattr(sd_models, "forge_model_reload") else A1111


def run_on_main_thread(flavour: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``func`` where the WebUI runs generation: Forge's main thread, or right here on A1111.

    Forge's ``main_thread.run_and_wait_result`` prints and swallows exceptions
    (returning None); the wrapper carries the exception back and re-raises it.
    """
    if flavour != FORGE:
        return func(*args, **kwargs)
    from modules_forge import main_thread

    def call() -> tuple[bool, Any]:
        try:
            return True, func(*args, **kwargs)
        except BaseException as exc:  # re-raised on the caller's thread
            return False, exc

    outcome = main_thread.run_and_wait_result(call)
    if outcome is None:
        raise MBWError("Forge's main thread did not run the auto-MBW task; see the console for its error")
    ok, value = outcome
    if not ok:
        raise value
    return value


def live_unet(sd_model: Any, flavour: str) -> "torch.nn.Module":
    """The UNet module of the loaded model, whose parameter names are the checkpoint's UNet keys."""
    try:
        if flavour == FORGE:
            objects = getattr(sd_model, "forge_objects", None) or sd_model.forge_objects_original
            return objects.unet.model.diffusion_model
        return sd_model.model.diffusion_model
    except AttributeError:
        raise UnsupportedModelError(
            "the WebUI has no Stable Diffusion UNet loaded (is a model loaded? SD3/Flux models have no UNet blocks)"
        ) from None


def check_mergeable(unet: "torch.nn.Module") -> None:
    """Refuse UNets whose weights are stored quantized (Forge's nf4/fp4/gguf): they cannot be merged in place."""
    for name, param in unet.named_parameters():
        if getattr(param, "bnb_quantized", None) is not None or getattr(param, "gguf_cls", None) is not None or not (
            param.dtype.is_floating_point
        ):
            raise UnsupportedModelError(
                f"the loaded UNet stores {name} as {param.dtype} (quantized); auto-MBW merges float weights only: "
                "in Forge set 'Diffusion in Low Bits' to 'Automatic' or 'float16' and load the model again"
            )
        if param.device.type == "meta":
            raise UnsupportedModelError(f"the loaded UNet has no data for {name} (meta tensor); load the model again")


def _loaded_model() -> Any:
    from modules import shared

    return shared.sd_model


def _live_dtype_and_device(flavour: str) -> tuple[int, "torch.device"]:
    """Element size and device of the loaded UNet's weights, without loading a model (the WebUI loads lazily):
    the WebUI's UNet dtype and device (``modules.devices``) when none is loaded yet."""
    import torch

    from modules import devices, sd_models

    sd_model = getattr(getattr(sd_models, "model_data", None), "sd_model", None)
    if sd_model is not None:
        unet = live_unet(sd_model, flavour)
        check_mergeable(unet)
        first = next(iter(unet.parameters()))
        return first.element_size(), first.device
    dtype = getattr(devices, "dtype_unet", None) or torch.float16
    return dtype.itemsize, torch.device(getattr(devices, "device", "cpu"))


def checkpoint_of(sd_model: Any) -> Any | None:
    """The CheckpointInfo of the loaded model, or None when nothing is loaded."""
    return getattr(sd_model, "sd_checkpoint_info", None)


def chosen_checkpoint() -> Any | None:
    """The checkpoint the user chose: the ``sd_model_checkpoint`` setting as a CheckpointInfo (None if unset/unknown).

    Not the loaded model: after an API call with ``override_settings`` naming
    another checkpoint, both A1111 and Forge put the setting back but leave
    the other model loaded until the next generation.
    """
    from modules import sd_models, shared

    title = str(getattr(shared.opts, "sd_model_checkpoint", "") or "").strip()
    return sd_models.get_closet_checkpoint_match(title) if title else None


def load_checkpoint(info: Any, flavour: str) -> None:
    """Load ``info`` through the WebUI's own loading path (it fires on_model_loaded).

    A1111: ``reload_model_weights(info=...)``, which also points the
    ``sd_model_checkpoint`` option at it, so ``process_images`` keeps it.
    Forge: select it like the checkpoint dropdown does (option + loading
    parameters, not saved to config) and run ``forge_model_reload`` on the
    main thread.
    """
    from modules import sd_models

    if flavour == FORGE:
        from modules_forge import main_entry

        if not main_entry.checkpoint_change(info.title, save=False, refresh=True):
            # the setting already names it (put back after an override_settings call) while another model is loaded
            main_entry.refresh_model_loading_parameters()
        run_on_main_thread(flavour, sd_models.forge_model_reload)
    else:
        sd_models.reload_model_weights(info=info)


def same_file(a: Any, b: Any) -> bool:
    """Whether two checkpoints (CheckpointInfos or paths) are the same file."""
    try:
        return Path(getattr(a, "filename", a)).resolve() == Path(getattr(b, "filename", b)).resolve()
    except (OSError, TypeError):
        return False


# --------------------------------------------------------------------------- LoRA rules


class LoraRules:
    """What to do around an in-place weight edit so the WebUI's LoRA code never restores stale weights."""

    def release(self, sd_model: Any, unet: "torch.nn.Module") -> bool:
        """Un-merge any LoRA from the live weights; True if Parameter objects were replaced (merger must resync)."""
        return False

    def after_edit(self, unet: "torch.nn.Module") -> None:
        """Drop caches made from the old weights."""


class A1111LoraRules(LoraRules):
    """extensions-builtin/Lora: per-layer ``network_weights_backup``, taken once and kept (WEBUI-FACTS §6).

    Before an edit, layers with a LoRA merged (``network_current_names``) get
    their backup copied back (values only; Parameter identity kept). After
    it, backups and fp8-mode ``fp16_weight`` copies are dropped, so the next
    LoRA application backs up the new merge.
    """

    def release(self, sd_model: Any, unet: "torch.nn.Module") -> bool:
        import torch

        with torch.inference_mode():  # backups are inference tensors, made during a forward
            for module in unet.modules():
                if getattr(module, "network_current_names", ()):
                    _restore_network_backup(module)
                    module.network_current_names = ()
        return False

    def after_edit(self, unet: "torch.nn.Module") -> None:
        for module in unet.modules():
            if hasattr(module, "network_current_names") or hasattr(module, "network_weights_backup"):
                module.network_current_names = ()
                module.network_weights_backup = None
                module.network_bias_backup = None
            for cached in ("fp16_weight", "fp16_bias"):
                if hasattr(module, cached):
                    delattr(module, cached)


def _restore_network_backup(module: Any) -> None:
    weights = getattr(module, "network_weights_backup", None)
    bias = getattr(module, "network_bias_backup", None)
    if weights is not None:
        if isinstance(weights, tuple):  # nn.MultiheadAttention: (in_proj_weight, out_proj.weight)
            module.in_proj_weight.copy_(weights[0])
            module.out_proj.weight.copy_(weights[1])
        else:
            module.weight.copy_(weights)
    if bias is not None:
        target = module.out_proj.bias if hasattr(module, "out_proj") else module.bias
        target.copy_(bias)


class ForgeLoraRules(LoraRules):
    """Forge's LoraLoader keeps the original Parameters in ``backup`` and installs new merged ones.

    ``refresh({})`` is Forge's own way back to the un-patched weights (it also
    resets the patch hash, so the next generation re-applies its LoRAs on top
    of the new merge). The restored Parameters are new objects holding the
    current merge, so the merger must resync.
    """

    def release(self, sd_model: Any, unet: "torch.nn.Module") -> bool:
        objects = getattr(sd_model, "forge_objects", None) or getattr(sd_model, "forge_objects_original", None)
        patcher = getattr(objects, "unet", None)
        loader = getattr(getattr(patcher, "model", None), "lora_loader", None)
        if loader is None or not (loader.backup or getattr(loader, "online_backup", None)):
            return False
        loader.refresh({}, offload_device=patcher.offload_device)
        return True


def lora_rules(flavour: str) -> LoraRules:
    return ForgeLoraRules() if flavour == FORGE else A1111LoraRules()


# --------------------------------------------------------------------------- merge session

MergerFactory = Callable[..., Any]


def default_merger_factory(unet: Any, model_a: Any, model_b: Any, *, mode: str) -> Any:
    """The runtime merger on the live UNet; ``model_b`` is a list (B, models 3..N) for a block mix."""
    from ..runtime import RuntimeMerger

    return RuntimeMerger(unet, model_a, model_b, mode=mode)


@dataclass(frozen=True)
class SessionKey:
    """What identifies a session: the checkpoints (by file; ``more``: models 3..N of a mix) and the merger placement."""

    model_a: str
    model_b: str
    mode: str
    more: tuple[str, ...] = ()


class MergeSession:
    """A runtime merge of checkpoints A and B (and ``more_infos``: models 3..N of a block mix) on the WebUI's live UNet.

    ``open()`` loads A through the WebUI (when it is not the loaded model),
    un-merges LoRA, and snapshots the live weights as A; ``apply`` sets a
    recipe; ``restore`` gives A back bit-exactly; ``close`` restores, frees A
    and B, and loads the checkpoint the user had chosen (the checkpoint
    setting, which may differ from the model that was loaded), so the setting
    and the loaded model agree afterwards.
    """

    def __init__(
        self, key: SessionKey, info_a: Any, info_b: Any, flavour: str, merger_factory: MergerFactory, more_infos: tuple[Any, ...] = ()
    ) -> None:
        self.key = key
        self.info_a = info_a
        self.info_b = info_b
        self.more_infos = tuple(more_infos)
        self.flavour = flavour
        self._merger_factory = merger_factory
        self._rules = lora_rules(flavour)
        self.merger: Any = None
        self.unet: Any = None
        self.previous: Any = None  #: checkpoint the user had chosen before (loaded again on close)
        self.applies = 0
        self.recipe: Recipe | RecipeN | None = None
        self._model_changed = False
        self._loading = False

    @property
    def infos(self) -> tuple[Any, ...]:
        """Every checkpoint of the merge in order: A, B, then models 3..N."""
        return (self.info_a, self.info_b, *self.more_infos)

    # -- lifecycle

    def open(self) -> None:
        loaded = checkpoint_of(_loaded_model())
        self.previous = chosen_checkpoint() or loaded
        if loaded is None or not same_file(loaded, self.info_a):
            log.info("auto-MBW: loading model A %s", self.info_a.title)
            self._load(self.info_a)
        self._attach()

    def _load(self, info: Any) -> None:
        self._loading = True
        try:
            load_checkpoint(info, self.flavour)
        finally:
            self._loading = False

    def _attach(self) -> None:
        """Build the merger on the live UNet, which must hold pure A (no LoRA merged)."""
        import torch

        self._require_a_loaded("model A ({a}) is not the loaded checkpoint ({loaded}); the WebUI could not load it, see its console")
        sd_model = _loaded_model()
        unet = live_unet(sd_model, self.flavour)
        check_mergeable(unet)
        with torch.no_grad():
            self._rules.release(sd_model, unet)
            self._rules.after_edit(unet)
            others = [Path(info.filename) for info in self.infos[1:]]
            self.merger = self._merger_factory(unet, None, others if self.more_infos else others[0], mode=self.key.mode)
        self.unet = unet
        self.recipe = None
        self._model_changed = False

    def _require_a_loaded(self, problem: str) -> None:
        loaded = checkpoint_of(_loaded_model())
        if not same_file(loaded, self.info_a):
            raise MBWError(problem.format(a=self.info_a.title, loaded=getattr(loaded, "title", None) or "nothing"))

    def close(self, reload_previous: bool = True) -> None:
        """Restore A, release the merger, and load the user's chosen checkpoint if A was not it.

        When the WebUI loaded other weights under the merger, those are kept
        (never overwritten with A) and the user's newer choice is not undone.
        """
        replaced = self.merger is not None and (self._model_changed or self._model_replaced())
        try:
            if self.merger is not None and not replaced:
                self.restore()
        finally:
            self._drop_merger(keep_live=replaced)
            still_a = same_file(checkpoint_of(_loaded_model()), self.info_a)
            if reload_previous and still_a and self.previous is not None and not same_file(self.previous, self.info_a):
                log.info("auto-MBW: loading the checkpoint you had chosen, %s", self.previous.title)
                self._load(self.previous)

    def _drop_merger(self, keep_live: bool = False) -> None:
        """Close the merger; ``keep_live``: the live weights are the WebUI's now, so they are kept, not restored."""
        merger, self.merger = self.merger, None
        if merger is None:
            return
        try:
            if keep_live and not self._same_unet():
                getattr(merger, "abandon", merger.close)()  # the old UNet is discarded: nothing to restore there
                return
            merger.close(restore=not keep_live)
        except Exception:  # the old module may be gone (Forge builds a new model object per load)
            log.warning("auto-MBW: closing the runtime merger failed", exc_info=True)

    def _same_unet(self) -> bool:
        try:
            return live_unet(_loaded_model(), self.flavour) is self.unet
        except UnsupportedModelError:
            return False

    # -- weights

    def _edit(self, operation: Callable[[Any], Any]) -> float:
        import torch

        if self._model_changed or self._model_replaced():
            self._reattach()
        if self.merger is None:
            raise MBWError("the auto-MBW merge session is closed; start the search again")
        start = time.perf_counter()
        with torch.no_grad():
            if self._rules.release(_loaded_model(), self.unet):
                self.merger.resync(reload=False)  # new Parameter objects holding the current merge
            operation(self.merger)
            self._rules.after_edit(self.unet)
        return time.perf_counter() - start

    def apply(self, recipe: Recipe | RecipeN) -> float:
        """Set ``recipe`` (a ``RecipeN`` for a mix) on the live UNet; seconds it took (LoRA handling included)."""
        seconds = self._edit(lambda merger: merger.apply(recipe))
        self.recipe = recipe
        self.applies += 1
        return seconds

    def restore(self) -> None:
        """Put A's weights back, bit-exactly; if the WebUI loaded a model meanwhile, keep it (the merge is gone)."""
        if self.merger is not None and self.model_change() is not None:
            log.info("auto-MBW: the WebUI loaded another model during the merge; keeping it, nothing to restore")
            self._drop_merger(keep_live=True)
        else:
            self._edit(lambda merger: merger.restore())
        self.recipe = None

    def generating(self) -> contextlib.AbstractContextManager[Any]:
        """Held around a generation: no apply/restore runs while the weights are in use."""
        if self.merger is None:
            return contextlib.nullcontext()
        return self.merger.generating()

    # -- host events

    def model_loaded(self, sd_model: Any) -> None:
        """on_model_loaded: the WebUI (re)loaded weights under the merger; rebuild before the next edit."""
        if self._loading or self.merger is None:
            return
        self._model_changed = True

    def model_change(self) -> str | None:
        """Why the live model is no longer this session's merge (the WebUI loaded a checkpoint), or None."""
        if self.merger is None or not (self._model_changed or self._model_replaced()):
            return None
        loaded = checkpoint_of(_loaded_model())
        if same_file(loaded, self.info_a):
            return f"the WebUI reloaded model A ({self.info_a.title}), which undid the merge"
        name = getattr(loaded, "title", None) or "another model"
        if self.more_infos:
            return f"the WebUI loaded {name} instead of the mix of {', '.join(info.title for info in self.infos)}"
        return f"the WebUI loaded {name} instead of the merge of {self.info_a.title} and {self.info_b.title}"

    def _model_replaced(self) -> bool:
        """The loaded checkpoint or UNet object is no longer the one merged (even if on_model_loaded was missed)."""
        return not same_file(checkpoint_of(_loaded_model()), self.info_a) or not self._same_unet()

    def _reattach(self) -> None:
        self._require_a_loaded(
            "the WebUI loaded {loaded} while auto-MBW was merging {a}: the merge is gone; "
            "do not change the checkpoint during a search, then resume it"
        )
        log.info("auto-MBW: the WebUI reloaded model A; rebuilding the runtime merge")
        self._drop_merger(keep_live=True)
        self._attach()

    def describe(self) -> dict[str, Any]:
        return {
            "model_a": self.info_a.title,
            "model_b": self.info_b.title,
            **({"more_models": [info.title for info in self.more_infos]} if self.more_infos else {}),
            "mode": self.key.mode,
            "applies": self.applies,
            "recipe": self.recipe.to_dict() if self.recipe is not None else None,
            "merged": self.recipe is not None and not self._model_changed,
        }


# --------------------------------------------------------------------------- the host


class WebUIHost:
    """The WebUI (A1111 or Forge) as an auto-MBW host, and the worker service of ``/auto-mbw/v1``."""

    def __init__(self, *, flavour: str | None = None, merger_factory: MergerFactory | None = None, ext_dir: Path = EXTENSION_DIR) -> None:
        self.name = flavour or detect_flavour()
        self.ext_dir = ext_dir
        self._merger_factory = merger_factory or default_merger_factory
        self._session: MergeSession | None = None
        self._session_lock = threading.RLock()
        self._exclusive = threading.Lock()  #: held while a search owns the WebUI's queue
        self._closed = False

    # -- Host protocol

    def settings(self) -> WebUISettings:
        from modules import paths, shared

        return WebUISettings.from_opts(shared.opts, Path(paths.models_path), self.ext_dir)

    @property
    def paths(self) -> HostPaths:
        from modules import sd_models

        s = self.settings()
        return HostPaths(s.payload_dir, s.wildcard_dir, s.history_dir, Path(sd_models.model_path), s.scorer_cache)

    def list_models(self) -> list[str]:
        """Checkpoint titles as in the WebUI's checkpoint dropdown."""
        from modules import sd_models

        return [info.title for info in sd_models.checkpoints_list.values()]

    def checkpoint(self, title: str, role: str = "model") -> Any:
        """The WebUI's CheckpointInfo for a dropdown value (title, name or hash)."""
        from modules import sd_models

        if not title or not str(title).strip():
            raise ModelChoiceError(f"{role} is not chosen; pick a checkpoint")
        info = sd_models.get_closet_checkpoint_match(str(title))
        if info is None:
            raise ModelChoiceError(
                f"{role}: checkpoint {title!r} is not in the WebUI's list; put it in models/Stable-diffusion "
                "and press the refresh button next to the checkpoint dropdown"
            )
        return info

    def model_path(self, title: str) -> Path:
        return Path(self.checkpoint(title).filename)

    def check_sampler(self, sampler: str, scheduler: str, source: str) -> None:
        """Refuse a sampler or schedule type this WebUI lacks: it would silently render with its first sampler.

        The WebUI accepts a sampler name with a schedule type appended (``"DPM++ 2M Karras"``) and
        corrects unknown names to its default with only a console warning, so the check runs before a search.
        """
        try:
            from modules import sd_samplers, sd_schedulers
        except ImportError:  # a WebUI without these modules: its failures show in the evaluations
            return
        schedules = list(getattr(sd_schedulers, "schedulers", []))
        name = sampler
        for schedule in schedules:
            suffixes = (schedule.label, schedule.name, *(getattr(schedule, "aliases", None) or []))
            suffix = next((f" {s}" for s in suffixes if name.endswith(f" {s}")), None)
            if suffix:
                name = name[: -len(suffix)]
                break
        known = list(sd_samplers.all_samplers_map)
        if name not in sd_samplers.all_samplers_map:
            raise PayloadError(f"{source}: field 'sampler': {sampler!r} is not a sampler of this WebUI; use one of: {', '.join(known)}")
        schedule_names = getattr(sd_schedulers, "schedulers_map", {})
        if scheduler and schedules and scheduler not in schedule_names:
            labels = ", ".join(s.label for s in schedules)
            raise PayloadError(f"{source}: field 'scheduler': {scheduler!r} is not a schedule type of this WebUI; use one of: {labels}")

    def check_pair(self, model_a: str, model_b: str) -> tuple[Any, Any]:
        """CheckpointInfos of A and B; ModelChoiceError if either is missing or they are the same file."""
        info_a = self.checkpoint(model_a, "model A")
        info_b = self.checkpoint(model_b, "model B")
        if same_file(info_a, info_b) or (info_a.sha256 and info_a.sha256 == info_b.sha256):
            raise ModelChoiceError(
                f"model A and model B are the same checkpoint ({info_a.title}): every merge would score the same; "
                "pick two different models"
            )
        return info_a, info_b

    def check_models(self, models: Sequence[str]) -> list[Any]:
        """CheckpointInfos of the 2-5 models of a mix, in order; ModelChoiceError for a missing or repeated one."""
        if not 2 <= len(models) <= MAX_MODELS:
            raise ModelChoiceError(f"a mix takes 2 to {MAX_MODELS} models, got {len(models)}")
        infos = [self.checkpoint(title, f"model {chr(ord('A') + i)}") for i, title in enumerate(models)]
        for i, x in enumerate(infos):
            for j in range(i + 1, len(infos)):
                y = infos[j]
                if same_file(x, y) or (x.sha256 and x.sha256 == y.sha256):
                    raise ModelChoiceError(
                        f"model {chr(ord('A') + i)} and model {chr(ord('A') + j)} are the same checkpoint ({x.title}); "
                        "each model of a mix must be different"
                    )
        return infos

    def make_mix_generator(self, models: Sequence[str], options: Mapping[str, Any]) -> "WebUIGenerator":
        """An in-process generator mixing 3-5 models (titles; the first is loaded, the others mixed in at run time).

        Checks the models now; the merge session (model 1 loaded, the merger built) opens on first use, inside
        the search's hold on the WebUI's queue. ``memory_plan()`` states the mix's memory before that.
        """
        from ..generators.webui import WebUIGenerator

        self.check_models(models)
        settings = self.settings()
        mode = str(options.get("mode") or settings.memory_mode)
        if mode not in MEMORY_MODES:
            raise MBWError(f"memory mode {mode!r} is unknown; use one of {', '.join(MEMORY_MODES)}")
        return WebUIGenerator(self, models[0], models[1], mode=mode, save_images=bool(options.get("save_images", settings.save_images)),
                              more_models=tuple(models[2:]))

    def mix_memory_plan(self, models: Sequence[str], mode: str) -> Any:
        """The memory plan of mixing ``models`` on the loaded UNet, from model 1's file and the live dtype and device.

        The same numbers the merger checks when it is built (``runtime.merger.plan_for_checkpoint``), stated before the
        search takes the WebUI's queue; stores are counted at the live dtype (an upper bound).
        """
        from ..runtime.merger import plan_for_checkpoint

        infos = self.check_models(models)
        element_bytes, device = _live_dtype_and_device(self.name)
        return plan_for_checkpoint(Path(infos[0].filename), element_bytes, len(models), mode, device)

    def make_generator(self, model_a: str, model_b: str, options: Mapping[str, Any]) -> "WebUIGenerator":
        """An in-process generator for (A, B); checks the pair now, loads A on first use."""
        from ..generators.webui import WebUIGenerator

        self.check_pair(model_a, model_b)
        settings = self.settings()
        mode = str(options.get("mode") or settings.memory_mode)
        if mode not in MEMORY_MODES:
            raise MBWError(f"memory mode {mode!r} is unknown; use one of {', '.join(MEMORY_MODES)}")
        return WebUIGenerator(self, model_a, model_b, mode=mode, save_images=bool(options.get("save_images", settings.save_images)))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Own the WebUI's queue for a whole search; on exit the model is restored whatever happened.

        Not reentrant: a second search while one runs gets HostBusyError.
        """
        from modules import call_queue, shared

        if not self._exclusive.acquire(blocking=False):
            raise HostBusyError("an auto-MBW search is already running in this WebUI; stop it or wait for it to finish")
        try:
            if not call_queue.queue_lock.acquire(blocking=False):
                log.info("auto-MBW: waiting for the WebUI to finish its current job")
                call_queue.queue_lock.acquire()
            try:
                shared.state.begin(job="auto-mbw")
                try:
                    yield
                finally:
                    try:
                        self.close_session()
                    finally:
                        shared.state.end()
            finally:
                call_queue.queue_lock.release()
        finally:
            self._exclusive.release()

    def model_saved(self, path: Path) -> None:
        """List a merged model among the WebUI's checkpoints, with its hash, as the WebUI's own merger does."""
        from modules import sd_models

        sd_models.list_models()
        for info in list(sd_models.checkpoints_list.values()):
            if same_file(info, path):
                info.calculate_shorthash()
                return
        log.warning("auto-MBW: %s is not in a folder the WebUI scans for checkpoints", path)

    # -- locking helpers for generators and the API

    @property
    def searching(self) -> bool:
        """True while a search owns the queue (``exclusive``)."""
        return self._exclusive.locked()

    @contextlib.contextmanager
    def queue_turn(self, timeout: float | None = None) -> Iterator[None]:
        """The WebUI's queue lock for one operation, unless a search already holds it for us.

        ``timeout`` None waits as long as it takes; otherwise HostBusyError after ``timeout`` seconds.
        """
        from modules import call_queue

        if self.searching:
            yield
            return
        lock = call_queue.queue_lock
        if timeout is None:
            lock.acquire()
        elif not _acquire_with_timeout(lock, timeout):
            raise HostBusyError(f"the WebUI has been busy for {timeout:.0f} s (a generation is running); try again later")
        try:
            yield
        finally:
            lock.release()

    # -- sessions

    def session(self, model_a: str, model_b: str, mode: str, more_models: Sequence[str] = ()) -> MergeSession:
        """The open session for (A, B, models 3..N, mode), opening it (and closing another) as needed."""
        with self._session_lock:
            if self._closed:
                raise MBWError("auto-MBW was unloaded (Reload UI); start the search again")
            if more_models:
                info_a, info_b, *more = self.check_models([model_a, model_b, *more_models])
            else:
                (info_a, info_b), more = self.check_pair(model_a, model_b), []
            files = [str(Path(info.filename).resolve()) for info in (info_a, info_b, *more)]
            key = SessionKey(files[0], files[1], mode, tuple(files[2:]))
            if self._session is not None and self._session.key == key:
                return self._session
            self.close_session()
            session = MergeSession(key, info_a, info_b, self.name, self._merger_factory, tuple(more))
            session.open()
            self._session = session
            return session

    def current_session(self) -> MergeSession | None:
        return self._session

    def restore_session(self) -> None:
        with self._session_lock:
            if self._session is not None:
                self._session.restore()

    def close_session(self) -> None:
        """Restore and close the open session, if any (idempotent)."""
        with self._session_lock:
            session, self._session = self._session, None
            if session is not None:
                session.close()

    # -- WebUI callbacks

    def on_model_loaded(self, sd_model: Any) -> None:
        session = self._session
        if session is not None:
            session.model_loaded(sd_model)

    def interrupt_generation(self) -> bool:
        """Stop the image being rendered now (the WebUI's Interrupt); the search then stops. False if none runs."""
        from modules import shared

        if not self.searching:
            return False
        shared.state.interrupt()
        return True

    def shutdown(self) -> None:
        """on_script_unloaded (Reload UI): restore the weights and refuse further work from this object."""
        self.interrupt_generation()
        with self._session_lock:
            self._closed = True
            self.close_session()

    # -- worker service (hosts.worker_api)

    def api_status(self) -> dict[str, Any]:
        from modules import shared

        from .. import __version__

        session = self._session
        loaded = checkpoint_of(shared.sd_model)
        return {
            "auto_mbw": __version__,
            "host": self.name,
            "searching": self.searching,
            "loaded_checkpoint": getattr(loaded, "title", None),
            "session": session.describe() if session is not None else None,
        }

    def api_apply(self, model_a: str, model_b: str, recipe: Recipe, mode: str | None = None) -> dict[str, Any]:
        if self.searching:
            raise HostBusyError("a search is running inside this WebUI; it cannot serve as a worker now")
        with self.queue_turn(API_LOCK_TIMEOUT_S):
            session = self.session(model_a, model_b, mode or self.settings().memory_mode)
            seconds = session.apply(recipe)
            return {"seconds": seconds, **session.describe()}

    def api_restore(self) -> dict[str, Any]:
        if self.searching:
            raise HostBusyError("a search is running inside this WebUI; stop it from its tab")
        with self.queue_turn(API_LOCK_TIMEOUT_S):
            restored = self._session is not None
            self.restore_session()
            return {"restored": restored}

    def api_stop(self) -> dict[str, Any]:
        """Stop: interrupt a search running here, or restore and close the worker session."""
        if self.interrupt_generation():
            return {"stopped": "search", "detail": "the running search stops after the current image"}
        with self.queue_turn(API_LOCK_TIMEOUT_S):
            had = self._session is not None
            self.close_session()
            return {"stopped": "session" if had else None}


def _acquire_with_timeout(lock: Any, timeout: float) -> bool:
    """Acquire a lock that may lack a timeout argument (the WebUI's FIFOLock) within ``timeout`` seconds."""
    try:
        return bool(lock.acquire(timeout=timeout))
    except TypeError:
        deadline = time.monotonic() + timeout
        while True:
            if lock.acquire(blocking=False):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


__all__ = [
    "A1111",
    "FORGE",
    "MergeSession",
    "ModelChoiceError",
    "SETTINGS",
    "SETTINGS_SECTION",
    "UnsupportedModelError",
    "WebUIHost",
    "WebUISettings",
    "console_logging",
]
