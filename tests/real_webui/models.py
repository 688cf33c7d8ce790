"""Small test checkpoints for the real hosts, so a 64x64 render costs a fraction of a second on CPU.

A1111: the tiny SD1 demo models (``lib_mbw.demo_models``: real SD1 key names, 32 channels, a smooth VAE
decoder) with a ``NAME.yaml`` beside each file (A1111 then uses it instead of ``configs/v1-inference.yaml``),
and an offline Hugging Face cache entry for ``openai/clip-vit-large-patch14`` (the text-encoder config of the
tiny model and CLIP's tokenizer files) which A1111's ``FrozenCLIPEmbedder`` reads at load time.

Forge recognises a checkpoint by its keys and shapes; its writer registers in ``MODEL_WRITERS`` under the
host's name. Every writer has the signature ``(webui_root, work) -> ModelSet``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from safetensors.torch import save_file

from lib_mbw.demo_models import demo_config, demo_state_dicts
from lib_mbw.demo_n import demo_state_dicts_n
from lib_mbw.generators.diffusers_files import write_config_folder

CLIP_REPO = "openai/clip-vit-large-patch14"
CLIP_REVISION = "0000000000000000000000000000000000000000"  # any name works offline; refs/main points at it
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class ModelSet:
    """The checkpoints a host test uses: A and B (file names in models/Stable-diffusion) and extra env for the host."""

    model_a: str
    model_b: str
    folder: Path
    env: dict[str, str] = field(default_factory=dict)
    lora: str = "mbw-test-lora"  #: name of a LoRA in models/Lora for ``<lora:NAME:1>`` (empty: none)
    model_c: str = ""  #: a third checkpoint for a 3-model mix (empty: none)

    @property
    def path_a(self) -> Path:
        return self.folder / self.model_a

    @property
    def path_b(self) -> Path:
        return self.folder / self.model_b


def a1111_yaml(webui_root: Path) -> str:
    """The tree's own ``configs/v1-inference.yaml`` with the tiny model's channel counts."""
    cfg = demo_config()
    data = yaml.safe_load((webui_root / "configs" / "v1-inference.yaml").read_text(encoding="utf-8"))
    params = data["model"]["params"]
    unet = params["unet_config"]["params"]
    unet.update(
        model_channels=cfg.unet.model_channels,
        channel_mult=list(cfg.unet.channel_mult),
        num_res_blocks=cfg.unet.num_res_blocks,
        context_dim=cfg.unet.context_dim,
        transformer_depth=1,
    )
    ddconfig = params["first_stage_config"]["params"]["ddconfig"]
    ddconfig.update(ch=cfg.vae.ch, ch_mult=list(cfg.vae.ch_mult), num_res_blocks=cfg.vae.num_res_blocks)
    return yaml.safe_dump(data, sort_keys=False)


def write_hf_clip_cache(hf_home: Path, work: Path) -> Path:
    """An offline HF cache entry for ``openai/clip-vit-large-patch14`` holding the tiny text encoder's config."""
    configs = write_config_folder(demo_config(), "sd1", work / "tiny-sd1-config")
    repo = hf_home / "hub" / f"models--{CLIP_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / CLIP_REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(configs / "text_encoder" / "config.json", snapshot / "config.json")
    for name in TOKENIZER_FILES:
        shutil.copyfile(configs / "tokenizer" / name, snapshot / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(CLIP_REVISION, encoding="utf-8")
    return snapshot


def write_a1111_models(webui_root: Path, work: Path, seed: int = 0) -> ModelSet:
    """Tiny SD1 A, B and C in ``webui_root/models/Stable-diffusion`` with their yaml, plus the HF cache under ``work``."""
    folder = webui_root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    config = a1111_yaml(webui_root)
    state_a, state_b = demo_state_dicts(seed)
    state_c = demo_state_dicts_n(seed, 3)[2]  # a third fine-tune of the same base, for a 3-model mix
    names = ("mbw-test-a.safetensors", "mbw-test-b.safetensors", "mbw-test-c.safetensors")
    for name, state, role in zip(names, (state_a, state_b, state_c), "ABC"):
        save_file(state, str(folder / name), metadata={"auto_mbw_test": json.dumps({"model": role, "seed": seed})})
        (folder / name).with_suffix(".yaml").write_text(config, encoding="utf-8")
    write_kohya_lora(webui_root / "models" / "Lora" / "mbw-test-lora.safetensors", state_a)
    hf_home = work / "hf-home"
    write_hf_clip_cache(hf_home, work)
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return ModelSet(names[0], names[1], folder, env, model_c=names[2])


ModelWriter = Callable[[Path, Path], ModelSet]

#: Host name -> the function that writes that host's test checkpoints.
MODEL_WRITERS: dict[str, ModelWriter] = {"a1111": write_a1111_models}


def _diffusers_attention_name(compvis: str) -> str | None:
    """kohya/diffusers module name (``down_blocks_0_attentions_1``) of an SD1 UNet attention block, or None."""
    parts = compvis.split(".")
    if parts[0] == "input_blocks" and parts[2] == "1":
        number = int(parts[1])
        return f"down_blocks_{(number - 1) // 3}_attentions_{(number - 1) % 3}"
    if parts[0] == "output_blocks" and parts[2] == "1":
        number = int(parts[1])
        return f"up_blocks_{number // 3}_attentions_{number % 3}"
    if parts[0] == "middle_block" and parts[1] == "1":
        return "mid_block_attentions_0"
    return None


#: The attention projections the test LoRA changes (diffusers names after ``transformer_blocks_0_``).
LORA_TARGETS: tuple[str, ...] = ("attn1.to_q", "attn1.to_v", "attn2.to_out.0")


def write_kohya_lora(path: Path, unet_state: dict, rank: int = 4, seed: int = 7, scale: float = 0.5) -> Path:
    """A small LoRA for an SD1-layout checkpoint, with kohya key names (``lora_unet_down_blocks_0_...``).

    ``unet_state`` is the checkpoint's state dict (``model.diffusion_model.*`` keys give the shapes).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    prefix = "model.diffusion_model."
    for key, weight in sorted(unet_state.items()):
        if not key.startswith(prefix) or not key.endswith(".weight") or weight.ndim != 2:
            continue
        module = key[len(prefix) : -len(".weight")]
        head, sep, tail = module.partition(".transformer_blocks.0.")
        block = _diffusers_attention_name(head) if sep else None
        if block is None or tail not in LORA_TARGETS:
            continue
        name = f"lora_unet_{block}_transformer_blocks_0_{tail.replace('.', '_')}"
        out_features, in_features = weight.shape
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * scale
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * scale
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    if not tensors:
        raise ValueError("no SD1 attention weights found for the test LoRA")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank)})
    return path
