"""Tiny offline Stable Diffusion 1 models: two "fine-tunes" A and B for the demo and integration tests.

``ensure_demo_models()`` writes, deterministically from a seed and in about a
second, a folder with two single-file checkpoints in WebUI layout (the real
SD1 key names and block structure, small channel counts:
``lib_mbw.keyspec.tiny_config("sd1")``) and the diffusers config folder they
load with, including CLIP tokenizer files derived from clip-anytorch. They
load through exactly the code path real checkpoints take
(``lib_mbw.generators.diffusers.load_single_file``); nothing is downloaded.

Random weights alone give images that depend on the seed and hardly on the
model or the prompt, and that jump chaotically when weights change. The
weights are therefore shaped (``DemoShape``, documented in docs/diffusers.md):

* A and B are fine-tunes of one random base: each UNet tensor is
  ``lerp(base, own_random, finetune)``, so merges move smoothly between them;
  they share the base's text encoder and VAE (the runtime merge touches the
  UNet only, so a recipe of all ones renders exactly what B renders).
* The UNet's output convolution is scaled up (``noise_gain``) so the
  predicted noise, not only the seed's initial noise, decides the final
  latent; cross-attention outputs are scaled (``cross_attention_gain``) so
  the prompt matters; the residual branches of the 1x1-resolution blocks and
  the time embedding are scaled (``deep_gain``), or those blocks would barely
  change anything at 64x64 pixels.
* The VAE decoder is a smooth colour mapper: residual branches and the
  middle attention are zeroed and every upsampling convolution is a per
  channel 3x3 blur, so an 8x8 latent becomes a 64x64 field of colour blobs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

from .errors import OutputExistsError
from .generators.diffusers_files import data_root, publish_folder, write_config_folder
from .keyspec import UNET_PREFIX, VAE_PREFIX, CheckpointConfig, checkpoint_layout, tiny_config
from .synthetic import random_state_dict

#: Bump when the generated files change, so cached demo folders are rebuilt.
DEMO_VERSION = 1
STAMP = "demo.json"
FAMILY = "sd1"

#: UNet blocks at the 1x1 latent resolution of a 64x64 image (IN10, IN11, M00, OUT00-OUT02).
DEEP_PREFIXES: tuple[str, ...] = (
    "input_blocks.10.",
    "input_blocks.11.",
    "middle_block.",
    "output_blocks.0.",
    "output_blocks.1.",
    "output_blocks.2.",
)

BLUR_3X3 = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


@dataclass(frozen=True)
class DemoShape:
    """How the random weights are shaped so that images depend on model, prompt and blocks smoothly."""

    finetune: float = 0.3
    noise_gain: float = 128.0
    cross_attention_gain: float = 3.0
    deep_gain: float = 32.0
    time_embed_gain: float = 32.0
    smooth_vae: bool = True


@dataclass(frozen=True)
class DemoModels:
    """A demo folder: checkpoints A and B and the diffusers config folder they load with."""

    folder: Path
    model_a: Path
    model_b: Path
    config_dir: Path
    seed: int
    shape: DemoShape = field(default_factory=DemoShape)


def demo_config() -> CheckpointConfig:
    """The architecture of the demo models: tiny SD1."""
    return tiny_config(FAMILY)


def default_demo_folder() -> Path:
    """``<data root>/demo`` (``$AUTO_MBW_DATA`` or the repository's ``data`` folder)."""
    return data_root() / "demo"


# --- weights ---


def _blur_identity(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight that blurs each channel on its own (no channel mixing)."""
    out = torch.zeros_like(weight)
    for c in range(min(weight.shape[0], weight.shape[1])):
        out[c, c] = BLUR_3X3.to(weight.dtype)
    return out


def smooth_vae_decoder(state: dict[str, torch.Tensor]) -> None:
    """Make the VAE decoder a smooth colour mapper (in place); the encoder is left random."""
    decoder = VAE_PREFIX + "decoder."
    for key in list(state):
        if not key.startswith(decoder):
            continue
        if ".conv2." in key or ".attn_1.proj_out." in key:
            state[key] = torch.zeros_like(state[key])
        elif key.endswith("upsample.conv.weight"):
            state[key] = _blur_identity(state[key])
        elif key.endswith("upsample.conv.bias"):
            state[key] = torch.zeros_like(state[key])


def shape_unet(state: dict[str, torch.Tensor], shape: DemoShape) -> None:
    """Scale UNet tensors of a fine-tuned state dict as ``shape`` says (in place)."""
    for key in state:
        if not key.startswith(UNET_PREFIX):
            continue
        name = key[len(UNET_PREFIX) :]
        gain = 1.0
        if name == "out.2.weight":
            gain = shape.noise_gain
        elif ".attn2.to_out.0.weight" in name:
            gain = shape.cross_attention_gain
        elif name.startswith(DEEP_PREFIXES) and (".out_layers.3." in name or ".proj_out." in name):
            gain = shape.deep_gain
        elif name == "time_embed.2.weight":
            gain = shape.time_embed_gain
        if gain != 1.0:
            state[key] = state[key] * gain


def demo_state_dicts(seed: int = 0, shape: DemoShape | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The state dicts of demo models A and B for ``seed`` (deterministic)."""
    shape = shape or DemoShape()
    layout = checkpoint_layout(demo_config())
    base = random_state_dict(layout, 3 * seed)
    if shape.smooth_vae:
        smooth_vae_decoder(base)
    models = []
    for offset in (1, 2):
        own = random_state_dict({k: s for k, s in layout.items() if k.startswith(UNET_PREFIX)}, 3 * seed + offset)
        state = dict(base)
        for key, tensor in own.items():
            state[key] = torch.lerp(base[key], tensor, shape.finetune)
        shape_unet(state, shape)
        models.append(state)
    return models[0], models[1]


# --- the folder ---


def _stamp(seed: int, shape: DemoShape) -> dict[str, object]:
    return {"format": "auto-mbw-demo", "version": DEMO_VERSION, "seed": seed, "family": FAMILY, "shape": asdict(shape)}


def _read_stamp(folder: Path) -> Mapping[str, object] | None:
    try:
        return json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _models(folder: Path, seed: int, shape: DemoShape) -> DemoModels:
    return DemoModels(folder, folder / "tiny-sd1-a.safetensors", folder / "tiny-sd1-b.safetensors", folder / "config", seed, shape)


def write_demo_models(folder: Path, seed: int = 0, shape: DemoShape | None = None) -> DemoModels:
    """Write the demo files into ``folder`` (which should be new and empty)."""
    shape = shape or DemoShape()
    models = _models(folder, seed, shape)
    folder.mkdir(parents=True, exist_ok=True)
    write_config_folder(demo_config(), FAMILY, models.config_dir)
    state_a, state_b = demo_state_dicts(seed, shape)
    for path, state, name in ((models.model_a, state_a, "A"), (models.model_b, state_b, "B")):
        # one metadata entry: safetensors writes several in random order, and the files should be byte-identical
        metadata = {"auto_mbw_demo": json.dumps({"model": name, "seed": seed, "version": DEMO_VERSION}, sort_keys=True)}
        save_file(state, str(path), metadata=metadata)
    (folder / STAMP).write_text(json.dumps(_stamp(seed, shape), indent=2) + "\n", encoding="utf-8")
    return models


def ensure_demo_models(folder: str | Path | None = None, seed: int = 0, shape: DemoShape | None = None) -> DemoModels:
    """The demo models in ``folder`` (default ``default_demo_folder()``), built once and reused.

    A folder made by an older version or with other settings is rebuilt; a
    folder with other content is never touched (OutputExistsError).
    """
    shape = shape or DemoShape()
    target = Path(folder) if folder is not None else default_demo_folder()
    stamp = _read_stamp(target)
    if stamp == _stamp(seed, shape):
        return _models(target, seed, shape)
    if target.exists() and (stamp is None or stamp.get("format") != "auto-mbw-demo"):
        if not target.is_dir() or any(target.iterdir()):
            raise OutputExistsError(
                f"{target}: exists and is not an auto-MBW demo folder; choose another folder for the demo models"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    try:
        write_demo_models(build, seed, shape)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=".demo-old-", dir=target.parent))
            target.replace(old / "demo")
            shutil.rmtree(old, ignore_errors=True)
        publish_folder(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return _models(target, seed, shape)
