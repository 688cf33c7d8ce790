"""State-dict layouts (key -> shape) of Stable Diffusion checkpoints.

Owns the knowledge of which tensors an SD1, SD2 or SDXL single-file checkpoint
holds, derived from the hyper-parameters of the published model definitions
(ldm/sgm ``openaimodel.UNetModel``, ``AutoencoderKL``, CLIP and OpenCLIP text
encoders). Used to build tiny test/demo checkpoints with the real key names,
full-size random checkpoints for benchmarks, and the reference key lists that
tests compare ``blocks`` against. No tensors are allocated here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

Shape = tuple[int, ...]
Layout = dict[str, Shape]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of ldm/sgm ``UNetModel`` that determine its state dict."""

    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)
    transformer_depth: tuple[int, ...] = (1, 1, 1, 1)
    transformer_depth_middle: int = 1
    context_dim: int = 768
    use_linear_proj: bool = False
    in_channels: int = 4
    out_channels: int = 4
    adm_in_channels: int | None = None


@dataclass(frozen=True)
class VAEConfig:
    """Hyper-parameters of ldm ``AutoencoderKL`` (encoder/decoder)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    in_channels: int = 3


@dataclass(frozen=True)
class TextConfig:
    """Hyper-parameters of a CLIP (HF naming) or OpenCLIP text transformer."""

    kind: str = "clip"  # "clip" (transformers CLIPTextModel) or "openclip"
    width: int = 768
    layers: int = 12
    vocab: int = 49408
    context: int = 77
    mlp_ratio: int = 4
    projection_dim: int | None = None  # openclip text_projection / HF text_projection
    position_ids: bool = False


@dataclass(frozen=True)
class CheckpointConfig:
    """A whole single-file checkpoint: UNet, VAE and text encoder(s)."""

    name: str
    unet: UNetConfig
    vae: VAEConfig = field(default_factory=VAEConfig)
    text_encoders: tuple[tuple[str, TextConfig], ...] = ()
    extra_keys: tuple[tuple[str, Shape], ...] = ()


#: The noise-schedule buffers that ldm's LatentDiffusion stores at the top level.
SCHEDULE_BUFFERS: tuple[tuple[str, Shape], ...] = tuple(
    (name, (1000,))
    for name in (
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    )
)


def _conv(out_c: int, in_c: int, k: int) -> Shape:
    return (out_c, in_c, k, k)


def _norm(prefix: str, c: int) -> Iterator[tuple[str, Shape]]:
    yield f"{prefix}.weight", (c,)
    yield f"{prefix}.bias", (c,)


def _linear(prefix: str, out_f: int, in_f: int, bias: bool = True) -> Iterator[tuple[str, Shape]]:
    yield f"{prefix}.weight", (out_f, in_f)
    if bias:
        yield f"{prefix}.bias", (out_f,)


def _conv_layer(prefix: str, out_c: int, in_c: int, k: int) -> Iterator[tuple[str, Shape]]:
    yield f"{prefix}.weight", _conv(out_c, in_c, k)
    yield f"{prefix}.bias", (out_c,)


def _resblock(prefix: str, ch_in: int, ch_out: int, emb: int) -> Iterator[tuple[str, Shape]]:
    yield from _norm(f"{prefix}.in_layers.0", ch_in)
    yield from _conv_layer(f"{prefix}.in_layers.2", ch_out, ch_in, 3)
    yield from _linear(f"{prefix}.emb_layers.1", ch_out, emb)
    yield from _norm(f"{prefix}.out_layers.0", ch_out)
    yield from _conv_layer(f"{prefix}.out_layers.3", ch_out, ch_out, 3)
    if ch_in != ch_out:
        yield from _conv_layer(f"{prefix}.skip_connection", ch_out, ch_in, 1)


def _transformer(prefix: str, ch: int, depth: int, cfg: UNetConfig) -> Iterator[tuple[str, Shape]]:
    yield from _norm(f"{prefix}.norm", ch)
    if cfg.use_linear_proj:
        yield from _linear(f"{prefix}.proj_in", ch, ch)
    else:
        yield from _conv_layer(f"{prefix}.proj_in", ch, ch, 1)
    for d in range(depth):
        tb = f"{prefix}.transformer_blocks.{d}"
        for attn, ctx in (("attn1", ch), ("attn2", cfg.context_dim)):
            yield from _linear(f"{tb}.{attn}.to_q", ch, ch, bias=False)
            yield from _linear(f"{tb}.{attn}.to_k", ch, ctx, bias=False)
            yield from _linear(f"{tb}.{attn}.to_v", ch, ctx, bias=False)
            yield from _linear(f"{tb}.{attn}.to_out.0", ch, ch)
        yield from _linear(f"{tb}.ff.net.0.proj", ch * 8, ch)
        yield from _linear(f"{tb}.ff.net.2", ch, ch * 4)
        for n in ("norm1", "norm2", "norm3"):
            yield from _norm(f"{tb}.{n}", ch)
    if cfg.use_linear_proj:
        yield from _linear(f"{prefix}.proj_out", ch, ch)
    else:
        yield from _conv_layer(f"{prefix}.proj_out", ch, ch, 1)


def unet_layout(cfg: UNetConfig, prefix: str = UNET_PREFIX) -> Layout:
    """Key -> shape of a UNet, in the order ldm's ``state_dict()`` lists it."""
    items: list[tuple[str, Shape]] = []
    mc = cfg.model_channels
    emb = mc * 4
    items += _linear("time_embed.0", emb, mc)
    items += _linear("time_embed.2", emb, emb)
    if cfg.adm_in_channels is not None:
        items += _linear("label_emb.0.0", emb, cfg.adm_in_channels)
        items += _linear("label_emb.0.2", emb, emb)
    items += _conv_layer("input_blocks.0.0", mc, cfg.in_channels, 3)
    skip_channels = [mc]
    ch = mc
    block = 1
    levels = len(cfg.channel_mult)
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            out = mult * mc
            items += _resblock(f"input_blocks.{block}.0", ch, out, emb)
            ch = out
            if level in cfg.attention_levels:
                items += _transformer(f"input_blocks.{block}.1", ch, cfg.transformer_depth[level], cfg)
            skip_channels.append(ch)
            block += 1
        if level != levels - 1:
            items += _conv_layer(f"input_blocks.{block}.0.op", ch, ch, 3)
            skip_channels.append(ch)
            block += 1
    items += _resblock("middle_block.0", ch, ch, emb)
    items += _transformer("middle_block.1", ch, cfg.transformer_depth_middle, cfg)
    items += _resblock("middle_block.2", ch, ch, emb)
    block = 0
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks + 1):
            out = mult * mc
            items += _resblock(f"output_blocks.{block}.0", ch + skip_channels.pop(), out, emb)
            ch = out
            layer = 1
            if level in cfg.attention_levels:
                items += _transformer(f"output_blocks.{block}.1", ch, cfg.transformer_depth[level], cfg)
                layer = 2
            if level and i == cfg.num_res_blocks:
                items += _conv_layer(f"output_blocks.{block}.{layer}.conv", ch, ch, 3)
            block += 1
    items += _norm("out.0", ch)
    items += _conv_layer("out.2", cfg.out_channels, mc, 3)
    return {prefix + k: s for k, s in items}


def _vae_resnet(prefix: str, c_in: int, c_out: int) -> Iterator[tuple[str, Shape]]:
    yield from _norm(f"{prefix}.norm1", c_in)
    yield from _conv_layer(f"{prefix}.conv1", c_out, c_in, 3)
    yield from _norm(f"{prefix}.norm2", c_out)
    yield from _conv_layer(f"{prefix}.conv2", c_out, c_out, 3)
    if c_in != c_out:
        yield from _conv_layer(f"{prefix}.nin_shortcut", c_out, c_in, 1)


def _vae_attn(prefix: str, c: int) -> Iterator[tuple[str, Shape]]:
    yield from _norm(f"{prefix}.norm", c)
    for n in ("q", "k", "v", "proj_out"):
        yield from _conv_layer(f"{prefix}.{n}", c, c, 1)


def _vae_mid(prefix: str, c: int) -> Iterator[tuple[str, Shape]]:
    yield from _vae_resnet(f"{prefix}.block_1", c, c)
    yield from _vae_attn(f"{prefix}.attn_1", c)
    yield from _vae_resnet(f"{prefix}.block_2", c, c)


def vae_layout(cfg: VAEConfig, prefix: str = VAE_PREFIX) -> Layout:
    """Key -> shape of ldm's ``AutoencoderKL`` (encoder, decoder, quant convs)."""
    items: list[tuple[str, Shape]] = []
    chs = [cfg.ch * m for m in cfg.ch_mult]
    items += _conv_layer("encoder.conv_in", cfg.ch, cfg.in_channels, 3)
    c = cfg.ch
    for level, c_out in enumerate(chs):
        for i in range(cfg.num_res_blocks):
            items += _vae_resnet(f"encoder.down.{level}.block.{i}", c, c_out)
            c = c_out
        if level != len(chs) - 1:
            items += _conv_layer(f"encoder.down.{level}.downsample.conv", c, c, 3)
    items += _vae_mid("encoder.mid", c)
    items += _norm("encoder.norm_out", c)
    items += _conv_layer("encoder.conv_out", 2 * cfg.z_channels, c, 3)
    items += _conv_layer("decoder.conv_in", chs[-1], cfg.z_channels, 3)
    c = chs[-1]
    items += _vae_mid("decoder.mid", c)
    for level in reversed(range(len(chs))):
        for i in range(cfg.num_res_blocks + 1):
            items += _vae_resnet(f"decoder.up.{level}.block.{i}", c, chs[level])
            c = chs[level]
        if level != 0:
            items += _conv_layer(f"decoder.up.{level}.upsample.conv", c, c, 3)
    items += _norm("decoder.norm_out", c)
    items += _conv_layer("decoder.conv_out", cfg.in_channels, cfg.ch, 3)
    items += _conv_layer("quant_conv", 2 * cfg.z_channels, 2 * cfg.z_channels, 1)
    items += _conv_layer("post_quant_conv", cfg.z_channels, cfg.z_channels, 1)
    return {prefix + k: s for k, s in items}


def text_layout(cfg: TextConfig, prefix: str) -> Layout:
    """Key -> shape of a CLIP text model (HF naming) or an OpenCLIP text tower."""
    w, hidden = cfg.width, cfg.width * cfg.mlp_ratio
    items: list[tuple[str, Shape]] = []
    if cfg.kind == "clip":
        tm = "transformer.text_model"
        items.append((f"{tm}.embeddings.token_embedding.weight", (cfg.vocab, w)))
        items.append((f"{tm}.embeddings.position_embedding.weight", (cfg.context, w)))
        if cfg.position_ids:
            items.append((f"{tm}.embeddings.position_ids", (1, cfg.context)))
        for i in range(cfg.layers):
            layer = f"{tm}.encoder.layers.{i}"
            for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
                items += _linear(f"{layer}.self_attn.{proj}", w, w)
            items += _norm(f"{layer}.layer_norm1", w)
            items += _linear(f"{layer}.mlp.fc1", hidden, w)
            items += _linear(f"{layer}.mlp.fc2", w, hidden)
            items += _norm(f"{layer}.layer_norm2", w)
        items += _norm(f"{tm}.final_layer_norm", w)
        if cfg.projection_dim is not None:
            items.append(("transformer.text_projection.weight", (cfg.projection_dim, w)))
    elif cfg.kind == "openclip":
        items.append(("model.positional_embedding", (cfg.context, w)))
        items.append(("model.text_projection", (w, cfg.projection_dim or w)))
        items.append(("model.token_embedding.weight", (cfg.vocab, w)))
        items.append(("model.logit_scale", ()))
        for i in range(cfg.layers):
            rb = f"model.transformer.resblocks.{i}"
            items.append((f"{rb}.attn.in_proj_weight", (3 * w, w)))
            items.append((f"{rb}.attn.in_proj_bias", (3 * w,)))
            items += _linear(f"{rb}.attn.out_proj", w, w)
            items += _norm(f"{rb}.ln_1", w)
            items += _linear(f"{rb}.mlp.c_fc", hidden, w)
            items += _linear(f"{rb}.mlp.c_proj", w, hidden)
            items += _norm(f"{rb}.ln_2", w)
        items += _norm("model.ln_final", w)
    else:
        raise ValueError(f"unknown text encoder kind {cfg.kind!r}")
    return {prefix + k: s for k, s in items}


def checkpoint_layout(cfg: CheckpointConfig) -> Layout:
    """Key -> shape of a whole single-file checkpoint (UNet, VAE, text encoders)."""
    layout = unet_layout(cfg.unet)
    layout.update(vae_layout(cfg.vae))
    for prefix, text in cfg.text_encoders:
        layout.update(text_layout(text, prefix))
    layout.update(cfg.extra_keys)
    return layout


def param_count(layout: Layout) -> int:
    """Number of scalar parameters of a layout."""
    total = 0
    for shape in layout.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


SD1_UNET = UNetConfig()
SD2_UNET = UNetConfig(context_dim=1024, use_linear_proj=True)
SDXL_UNET = UNetConfig(
    channel_mult=(1, 2, 4),
    attention_levels=(1, 2),
    transformer_depth=(0, 2, 10),
    transformer_depth_middle=10,
    context_dim=2048,
    use_linear_proj=True,
    adm_in_channels=2816,
)

SD1 = CheckpointConfig(
    "sd1",
    SD1_UNET,
    text_encoders=(("cond_stage_model.", TextConfig(position_ids=True)),),
    extra_keys=SCHEDULE_BUFFERS,
)
SD2 = CheckpointConfig(
    "sd2",
    SD2_UNET,
    text_encoders=(("cond_stage_model.", TextConfig(kind="openclip", width=1024, layers=24, projection_dim=1024)),),
    extra_keys=SCHEDULE_BUFFERS,
)
SDXL = CheckpointConfig(
    "sdxl",
    SDXL_UNET,
    text_encoders=(
        ("conditioner.embedders.0.", TextConfig(position_ids=True)),
        ("conditioner.embedders.1.", TextConfig(kind="openclip", width=1280, layers=32, projection_dim=1280)),
    ),
)

SDXL_REFINER = CheckpointConfig(
    "sdxl-refiner",
    UNetConfig(
        model_channels=384,
        attention_levels=(1, 2),
        transformer_depth=(0, 4, 4, 0),
        transformer_depth_middle=4,
        context_dim=1280,
        use_linear_proj=True,
        adm_in_channels=2560,
    ),
    text_encoders=(("conditioner.embedders.0.", TextConfig(kind="openclip", width=1280, layers=32, projection_dim=1280)),),
)

REAL_CONFIGS: dict[str, CheckpointConfig] = {"sd1": SD1, "sd2": SD2, "sdxl": SDXL}

#: Channels per SDXL time id (size, crop, target size) in tiny models; the real models use 256.
TINY_TIME_ID_CHANNELS = 8


def tiny_config(arch: str, *, in_channels: int = 4) -> CheckpointConfig:
    """A small checkpoint with the real key names and block structure of ``arch``.

    Channel counts are multiples of 32 because ldm's GroupNorm uses 32 groups.
    The sizes also fit together as in the real models, so the tiny checkpoints
    run as diffusers pipelines: CLIP-L towers are 32 wide and OpenCLIP towers 64
    (different widths, as in SDXL, where diffusers tells the two towers apart
    by width), the UNet's context is the concatenated text width, and SDXL's
    ``label_emb`` input is the pooled text projection (64) plus six time ids
    embedded in 8 channels each (112, as 1280 + 6 * 256 = 2816 in the real one).
    """
    real = REAL_CONFIGS[arch]
    texts = tuple(
        (prefix, replace(text, width=width, layers=2, projection_dim=width if text.projection_dim else None))
        for prefix, text in real.text_encoders
        for width in [32 if text.kind == "clip" else 64]
    )
    context_dim = sum(text.width for _, text in texts)
    pooled_dim = texts[-1][1].projection_dim or 0
    unet = replace(
        real.unet,
        model_channels=32,
        transformer_depth=tuple(min(d, 1) for d in real.unet.transformer_depth),
        transformer_depth_middle=1,
        context_dim=context_dim,
        in_channels=in_channels,
        adm_in_channels=pooled_dim + 6 * TINY_TIME_ID_CHANNELS if real.unet.adm_in_channels else None,
    )
    vae = VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)
    return CheckpointConfig(f"tiny-{arch}", unet, vae, texts, real.extra_keys)
