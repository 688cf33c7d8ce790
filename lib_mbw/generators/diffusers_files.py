"""Local diffusers config folders, so single-file checkpoints load without the model hub.

``from_single_file(..., config=<folder>, local_files_only=True)`` needs a
folder in diffusers layout: ``model_index.json``, ``scheduler/``, ``unet/``,
``vae/``, ``text_encoder*/`` configs and complete ``tokenizer*/`` folders.
This module owns

* the configs of the real SD1.5, SD2.1 (768-v) and SDXL 1.0 base
  architectures, shipped as package data in ``lib_mbw/data/diffusers/<family>``
  (written from the published configs);
* the CLIP BPE tokenizer files (``vocab.json``, ``merges.txt``), derived offline
  from the merges that ``clip-anytorch`` ships (the tokenizer every SD1/SD2/SDXL
  text encoder uses), so prompts tokenize exactly as with the real models;
* materializing a complete config folder (package configs + tokenizer files)
  once in a data folder, atomically.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from ..errors import ModelFormatError
from ..keyspec import CheckpointConfig, TextConfig, UNetConfig, VAEConfig

PACKAGE_CONFIGS = Path(__file__).resolve().parent.parent / "data" / "diffusers"
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Environment variable that moves auto-MBW's data folder (demo models, config folders).
DATA_ENV = "AUTO_MBW_DATA"

FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sdxl")

#: The number of BPE merges CLIP uses (49152 tokens - 256 bytes - 2 specials), as clip.simple_tokenizer cuts them.
CLIP_MERGES = 49152 - 256 - 2
MERGES_HEADER = "#version: 0.2"


def data_root() -> Path:
    """Where auto-MBW keeps generated files: ``$AUTO_MBW_DATA`` or ``<repository>/data``."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else REPO_ROOT / "data"


def clip_bpe_path() -> Path:
    """The gzipped BPE merges file shipped by clip-anytorch."""
    try:
        from clip.simple_tokenizer import default_bpe
    except ImportError:
        raise ModelFormatError(
            "the CLIP tokenizer files come from the clip-anytorch package, which is not installed; "
            "install it with: pip install clip-anytorch==2.6.0"
        ) from None
    return Path(default_bpe())


def clip_vocabulary() -> tuple[list[tuple[str, str]], dict[str, int]]:
    """CLIP's BPE merges and its token -> id vocabulary, built as ``clip.simple_tokenizer.SimpleTokenizer`` builds them."""
    from clip.simple_tokenizer import bytes_to_unicode

    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return merges, {token: i for i, token in enumerate(tokens)}  # type: ignore[misc]


def write_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> Path:
    """Write a complete ``CLIPTokenizer`` folder (vocab, merges, configs) into ``folder``."""
    merges, vocab = clip_vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        MERGES_HEADER + "\n" + "\n".join(" ".join(pair) for pair in merges) + "\n", encoding="utf-8"
    )
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad_token, "unk_token": "<|endoftext|>"}
    tokenizer_config = {
        **specials,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer",
    }
    _write_json(folder / "tokenizer_config.json", tokenizer_config)
    _write_json(folder / "special_tokens_map.json", specials)
    return folder


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict; ModelFormatError names the file if it is missing or broken."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: file not found; the diffusers config folder is incomplete") from None
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path}: not valid JSON ({exc})") from None


def tokenizer_folders(config_dir: Path) -> list[str]:
    """Names of the tokenizer components a config folder's ``model_index.json`` lists."""
    index = read_json(config_dir / "model_index.json")
    return sorted(name for name, value in index.items() if name.startswith("tokenizer") and isinstance(value, list) and value[0])


def complete_tokenizers(config_dir: Path) -> None:
    """Add vocab.json/merges.txt to every tokenizer folder of ``config_dir`` that lacks them (in place)."""
    for name in tokenizer_folders(config_dir):
        folder = config_dir / name
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            continue
        pad = "<|endoftext|>"
        config_path = folder / "tokenizer_config.json"
        if config_path.is_file():
            pad = read_json(config_path).get("pad_token", pad)
            if isinstance(pad, dict):  # AddedToken serialization
                pad = pad.get("content", "<|endoftext|>")
        write_clip_tokenizer(folder, pad_token=pad)


def _package_digest(source: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*.json")):
        digest.update(str(path.relative_to(source)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def publish_folder(build: Path, target: Path) -> Path:
    """Move a fully written temporary folder to ``target`` atomically; keep an existing target."""
    try:
        os.replace(build, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(build, ignore_errors=True)  # another process published it first
    return target


def config_folder(family: str, root: str | Path | None = None) -> Path:
    """A complete local diffusers config folder for a real architecture (sd1, sd2, sdxl).

    Built once under ``<data root>/diffusers-configs/<family>-<digest>`` from
    the package configs plus derived tokenizer files, and reused afterwards.
    """
    if family not in FAMILIES:
        raise ModelFormatError(f"no diffusers config for architecture {family!r}; known: {', '.join(FAMILIES)}")
    source = PACKAGE_CONFIGS / family
    base = (Path(root) if root is not None else data_root()) / "diffusers-configs"
    target = base / f"{family}-{_package_digest(source)}"
    if (target / "model_index.json").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=base))
    try:
        shutil.copytree(source, build, dirs_exist_ok=True)
        complete_tokenizers(build)
        return publish_folder(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


# --- configs derived from lib_mbw.keyspec (tiny models) and back (diffusers folders) ---

#: Channels per attention head in configs derived from keyspec (the real models use 64 on SD2/SDXL).
DERIVED_HEAD_CHANNELS = 8

TEXT_ENCODER_NAMES: tuple[str, ...] = ("text_encoder", "text_encoder_2")


def diffusers_unet_config(
    unet: UNetConfig, base: Mapping[str, Any], sample_size: int, time_id_channels: int | None = None
) -> dict[str, Any]:
    """A diffusers ``UNet2DConditionModel`` config for a keyspec UNet, on top of the family's real config.

    ``time_id_channels`` is the embedding width of each SDXL time id (the
    ``label_emb`` input is the pooled text embedding plus six of them).
    """
    levels = range(len(unet.channel_mult))
    channels = [unet.model_channels * m for m in unet.channel_mult]
    # diffusers gives the middle block the depth of the last level
    depths = [max(unet.transformer_depth[lv], 1) for lv in levels]
    last = len(depths) - 1
    if last in unet.attention_levels and depths[last] != unet.transformer_depth_middle:
        raise ValueError("diffusers needs the middle block as deep as the last level's transformers")
    depths[last] = unet.transformer_depth_middle
    config = dict(base)
    config.update(
        block_out_channels=channels,
        layers_per_block=unet.num_res_blocks,
        down_block_types=["CrossAttnDownBlock2D" if lv in unet.attention_levels else "DownBlock2D" for lv in levels],
        up_block_types=["CrossAttnUpBlock2D" if lv in unet.attention_levels else "UpBlock2D" for lv in reversed(levels)],
        attention_head_dim=[max(1, c // DERIVED_HEAD_CHANNELS) for c in channels],
        cross_attention_dim=unet.context_dim,
        use_linear_projection=unet.use_linear_proj,
        in_channels=unet.in_channels,
        out_channels=unet.out_channels,
        sample_size=sample_size,
        transformer_layers_per_block=depths,
    )
    if unet.adm_in_channels:
        if not time_id_channels:
            raise ValueError("an SDXL UNet config needs time_id_channels")
        config.update(
            addition_embed_type="text_time",
            projection_class_embeddings_input_dim=unet.adm_in_channels,
            addition_time_embed_dim=time_id_channels,
        )
    return config


def diffusers_vae_config(vae: VAEConfig, base: Mapping[str, Any], sample_size: int) -> dict[str, Any]:
    """A diffusers ``AutoencoderKL`` config for a keyspec VAE (scaling factor from the family's config)."""
    config = dict(base)
    levels = len(vae.ch_mult)
    config.update(
        block_out_channels=[vae.ch * m for m in vae.ch_mult],
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        layers_per_block=vae.num_res_blocks,
        latent_channels=vae.z_channels,
        in_channels=vae.in_channels,
        out_channels=vae.in_channels,
        sample_size=sample_size * 2 ** (levels - 1),
    )
    return config


def diffusers_text_config(text: TextConfig, base: Mapping[str, Any]) -> dict[str, Any]:
    """A transformers ``CLIPTextConfig`` dict for a keyspec text encoder."""
    config = dict(base)
    config.update(
        hidden_size=text.width,
        intermediate_size=text.width * text.mlp_ratio,
        num_attention_heads=max(1, text.width // DERIVED_HEAD_CHANNELS),
        num_hidden_layers=text.layers,
        projection_dim=text.projection_dim or text.width,
        vocab_size=text.vocab,
        max_position_embeddings=text.context,
    )
    return config


def write_config_folder(cfg: CheckpointConfig, family: str, folder: Path, sample_size: int = 8) -> Path:
    """Write a complete diffusers config folder for a keyspec checkpoint config (e.g. a tiny model).

    Scheduler, pipeline class and tokenizers are those of the real ``family``;
    UNet, VAE and text encoder sizes follow ``cfg``. ``sample_size`` is the
    default latent size (images are ``sample_size * 8`` pixels).
    """
    source = PACKAGE_CONFIGS / family
    if not source.is_dir():
        raise ModelFormatError(f"no diffusers config for architecture {family!r}; known: {', '.join(FAMILIES)}")
    if len(cfg.text_encoders) > len(TEXT_ENCODER_NAMES):
        raise ValueError(f"{cfg.name}: at most {len(TEXT_ENCODER_NAMES)} text encoders are supported")
    shutil.copytree(source, folder, dirs_exist_ok=True)
    pooled = cfg.text_encoders[-1][1].projection_dim or 0
    time_ids = (cfg.unet.adm_in_channels - pooled) // 6 if cfg.unet.adm_in_channels else None
    unet = diffusers_unet_config(cfg.unet, read_json(source / "unet" / "config.json"), sample_size, time_ids)
    _write_json(folder / "unet" / "config.json", unet)
    _write_json(folder / "vae" / "config.json", diffusers_vae_config(cfg.vae, read_json(source / "vae" / "config.json"), sample_size))
    for name, (_, text) in zip(TEXT_ENCODER_NAMES, cfg.text_encoders):
        _write_json(folder / name / "config.json", diffusers_text_config(text, read_json(source / name / "config.json")))
    complete_tokenizers(folder)
    return folder


def unet_config_from_diffusers(config: Mapping[str, Any]) -> UNetConfig:
    """The keyspec ``UNetConfig`` of a diffusers ``UNet2DConditionModel`` config (for its ldm key names)."""
    channels = list(config["block_out_channels"])
    base = channels[0]
    levels = len(channels)
    depth = config.get("transformer_layers_per_block", 1)
    depths = [int(depth)] * levels if isinstance(depth, int) else [int(d) for d in depth]
    adm = None
    if config.get("addition_embed_type") == "text_time":
        adm = int(config["projection_class_embeddings_input_dim"])
    elif config.get("addition_embed_type") or config.get("class_embed_type"):
        raise ModelFormatError(
            f"UNet with addition_embed_type={config.get('addition_embed_type')!r} / "
            f"class_embed_type={config.get('class_embed_type')!r} is no SD1/SD2/SDXL UNet"
        )
    return UNetConfig(
        model_channels=base,
        channel_mult=tuple(c // base for c in channels),
        num_res_blocks=int(config.get("layers_per_block", 2)),
        attention_levels=tuple(i for i, t in enumerate(config["down_block_types"]) if "CrossAttn" in t),
        transformer_depth=tuple(depths),
        transformer_depth_middle=depths[-1],
        context_dim=int(config["cross_attention_dim"]),
        use_linear_proj=bool(config.get("use_linear_projection", False)),
        in_channels=int(config.get("in_channels", 4)),
        out_channels=int(config.get("out_channels", 4)),
        adm_in_channels=adm,
    )
