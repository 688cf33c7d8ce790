"""Block vocabulary, architecture detection and the key -> block map.

Owns the names of the merge blocks (IN00..IN11, M00, OUT00..OUT11, TIME_EMBED,
OUT), their canonical order, which blocks exist on each architecture, how a
checkpoint's keys are grouped (a UNet block, BASE = text encoder, VAE, OTHER),
and how SD1 / SD2 / SDXL checkpoints are told apart from their keys and shapes.

Conventions (see docs/formats.md): ``time_embed`` and SDXL's ``label_emb`` form
TIME_EMBED; ``out.`` (the final norm and conv) forms OUT. Other tools fold
these into IN00/BASE and OUT11 (OUT08 on SDXL); ``recipe`` converts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from .errors import ArchitectureMismatchError, ModelFormatError, UnknownKeyError

IN_BLOCKS: tuple[str, ...] = tuple(f"IN{i:02d}" for i in range(12))
MID_BLOCKS: tuple[str, ...] = ("M00",)
OUT_BLOCKS: tuple[str, ...] = tuple(f"OUT{i:02d}" for i in range(12))
TIME_EMBED = "TIME_EMBED"
OUT = "OUT"

#: The canonical printed order of the 27 UNet blocks.
BLOCKS: tuple[str, ...] = IN_BLOCKS + MID_BLOCKS + OUT_BLOCKS + (TIME_EMBED, OUT)

BASE = "BASE"  #: text encoder(s)
VAE = "VAE"
OTHER = "OTHER"  #: everything else (EMA copies, scheduler buffers, ...)

UNET_PREFIXES: tuple[str, ...] = ("model.diffusion_model.", "diffusion_model.")
TEXT_PREFIXES: tuple[str, ...] = ("cond_stage_model.", "conditioner.embedders.")
VAE_PREFIXES: tuple[str, ...] = ("first_stage_model.",)

_VARIANTS = {4: "base", 9: "inpainting", 8: "instruct-pix2pix"}


@dataclass(frozen=True)
class ModelArch:
    """What a checkpoint is: family (sd1, sd2, sdxl), variant, and where its UNet lives."""

    family: str
    variant: str = "base"
    unet_prefix: str = "model.diffusion_model."

    @property
    def blocks(self) -> tuple[str, ...]:
        """The blocks that exist on this architecture, in canonical order."""
        return present_blocks(self.family)

    @property
    def absent_blocks(self) -> tuple[str, ...]:
        """Canonical blocks this architecture does not have (never searched)."""
        present = set(self.blocks)
        return tuple(b for b in BLOCKS if b not in present)

    @property
    def label(self) -> str:
        names = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
        name = names.get(self.family, self.family)
        return name if self.variant == "base" else f"{name} ({self.variant})"


def present_blocks(family: str) -> tuple[str, ...]:
    """Blocks of ``family`` in canonical order (SDXL has IN00-08 and OUT00-08 only)."""
    if family in ("sd1", "sd2"):
        return BLOCKS
    if family == "sdxl":
        return IN_BLOCKS[:9] + MID_BLOCKS + OUT_BLOCKS[:9] + (TIME_EMBED, OUT)
    raise ValueError(f"unknown architecture family {family!r}")


def last_out_block(family: str) -> str:
    """The output block that ``out.`` folds into under other tools' conventions."""
    return [b for b in present_blocks(family) if b.startswith("OUT") and b != OUT][-1]


_UNET_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^input_blocks\.(\d+)\."), "IN{:02d}"),
    (re.compile(r"^middle_block\."), "M00"),
    (re.compile(r"^output_blocks\.(\d+)\."), "OUT{:02d}"),
    (re.compile(r"^(?:time_embed|label_emb)\."), TIME_EMBED),
    (re.compile(r"^out\."), OUT),
)


def block_of_unet_key(key: str, family: str = "sd1") -> str:
    """The block of a UNet key given without its prefix (``input_blocks.4.1.norm.weight`` -> IN04).

    Raises UnknownKeyError for a key outside every block or a block index the
    architecture does not have.
    """
    for pattern, name in _UNET_RULES:
        match = pattern.match(key)
        if not match:
            continue
        if match.groups():
            block = name.format(int(match.group(1)))
            if block not in present_blocks(family):
                raise UnknownKeyError(f"UNet key {key!r} names block {block}, which {family} does not have")
            return block
        return name
    raise UnknownKeyError(f"UNet key {key!r} belongs to no known block")


def unet_prefix_of(keys: Iterable[str]) -> str | None:
    """The prefix under which a state dict holds its UNet, or None if it has none."""
    for key in keys:
        for prefix in UNET_PREFIXES:
            if key.startswith(prefix):
                return prefix
    return None


def group_of_key(key: str, arch: ModelArch) -> str:
    """The merge group of a full checkpoint key: a UNet block, BASE, VAE or OTHER."""
    if key.startswith(arch.unet_prefix):
        return block_of_unet_key(key[len(arch.unet_prefix) :], arch.family)
    if key.startswith(TEXT_PREFIXES):
        return BASE
    if key.startswith(VAE_PREFIXES):
        return VAE
    return OTHER


def group_keys(keys: Iterable[str], arch: ModelArch) -> dict[str, list[str]]:
    """Keys by group, groups in canonical order, every present block listed.

    Raises UnknownKeyError naming every UNet key outside the known blocks.
    """
    groups: dict[str, list[str]] = {b: [] for b in arch.blocks}
    for extra in (BASE, VAE, OTHER):
        groups[extra] = []
    unknown: list[str] = []
    for key in keys:
        try:
            groups[group_of_key(key, arch)].append(key)
        except UnknownKeyError:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise UnknownKeyError(f"{len(unknown)} UNet key(s) belong to no block of {arch.label}: {shown}")
    return groups


def _describe_unsupported(keys: Sequence[str]) -> str | None:
    if any("lora_unet_" in k or "lora_te" in k or ".lora_up." in k or ".lora_A." in k for k in keys):
        return "a LoRA/LyCORIS file, not a checkpoint; merge it into a checkpoint first"
    if any(".joint_blocks." in k or k.startswith("joint_blocks.") for k in keys):
        return "a Stable Diffusion 3 model (MMDiT), which has no UNet blocks"
    if any("double_blocks." in k or "single_blocks." in k for k in keys):
        return "a Flux model (DiT), which has no UNet blocks"
    if any(k.startswith(("down_blocks.", "unet.down_blocks.")) for k in keys):
        return "a diffusers-format state dict; use a single-file (WebUI) checkpoint or the diffusers folder"
    return None


def detect_architecture(shapes: Mapping[str, Sequence[int]], source: str = "model") -> ModelArch:
    """Tell SD1 / SD2 / SDXL (and inpainting / instruct-pix2pix variants) from key shapes.

    ``shapes`` maps every key to its tensor shape (safetensors headers give
    this without reading data). Anything else raises ModelFormatError that
    names ``source`` and says what the file appears to be.
    """
    keys = list(shapes)
    unsupported = _describe_unsupported(keys)
    if unsupported:
        raise ModelFormatError(f"{source}: this is {unsupported}")
    prefix = unet_prefix_of(keys)
    if prefix is None:
        raise ModelFormatError(
            f"{source}: no UNet keys (model.diffusion_model.*) found; "
            "is it a VAE, text encoder or embedding file rather than a checkpoint?"
        )
    conv_in = shapes.get(prefix + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise ModelFormatError(f"{source}: UNet has no input convolution (input_blocks.0.0.weight); the file looks incomplete")
    in_channels = int(conv_in[1])
    variant = _VARIANTS.get(in_channels)
    if variant is None:
        raise ModelFormatError(f"{source}: UNet takes {in_channels} input channels, which is no known SD variant (4, 8 or 9)")
    has_label_emb = prefix + "label_emb.0.0.weight" in shapes
    if has_label_emb:
        is_refiner = not any(k.startswith("conditioner.embedders.1.") for k in keys) and any(
            k.startswith("conditioner.embedders.0.model.") for k in keys
        )
        if is_refiner or prefix + "input_blocks.9.0.in_layers.0.weight" in shapes:
            raise ModelFormatError(f"{source}: this is an SDXL refiner, which is not supported; use SDXL base models")
        return ModelArch("sdxl", variant, prefix)
    proj_in = shapes.get(prefix + "input_blocks.1.1.proj_in.weight")
    if proj_in is None:
        raise ModelFormatError(f"{source}: UNet has no attention in input block 1; it is no SD1/SD2/SDXL UNet")
    family = "sd1" if len(proj_in) == 4 else "sd2"
    return ModelArch(family, variant, prefix)


def check_same_architecture(a: ModelArch, b: ModelArch, name_a: str = "model A", name_b: str = "model B") -> None:
    """Refuse to merge models of different families or variants."""
    if (a.family, a.variant) != (b.family, b.variant):
        raise ArchitectureMismatchError(
            f"cannot merge {name_a} ({a.label}) with {name_b} ({b.label}): architectures differ; "
            "pick two models of the same kind"
        )
