"""Random-weight copies of the image-reward package's models, built without any download.

For tests, benchmarks and the offline demo only; users' scorers load the real
weights through the package (``ImageReward.load`` / ``ImageReward.load_score``).

The models are the package's own classes (``ImageReward.ImageReward``, its
BLIP, CLIP and aesthetic modules, its preprocessing and tokenization). Two
things the package fetches from the hub are replaced by local files while a
model is built:

* the ``bert-base-uncased`` tokenizer its BLIP code loads
  (``ImageReward.models.BLIP.blip.BertTokenizer.from_pretrained``) becomes a
  ``BertTokenizer`` over a generated WordPiece vocabulary (``write_vocab``);
* ``med_config.json`` (the BLIP text encoder's BERT config) is written locally.

``size="full"`` keeps every dimension of the real model (447M parameters, the
same compute per image). ``size="tiny"`` shrinks the BERT text encoder
(config) and the ViT image encoder (``create_vit`` builds the package's
``VisionTransformer`` with fewer, narrower layers) for fast tests; the code
path is the same. Scores from random weights mean nothing, but they differ
per image, so batching and ordering mistakes show.
"""

from __future__ import annotations

import contextlib
import json
import string
from pathlib import Path
from typing import Any, Iterator, Literal

import torch

Size = Literal["tiny", "full"]

#: The real BLIP med_config.json of ImageReward-v1.0 (a BERT-base encoder with cross-attention).
FULL_MED_CONFIG: dict[str, Any] = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 1024,
    "add_cross_attention": True,
}

#: The tiny ViT: the package's VisionTransformer at 224 px, 16 px patches, one narrow layer.
TINY_VIT = {"embed_dim": 64, "depth": 1, "num_heads": 2}

_WORDS = "a an the of and with in on at photo picture portrait painting cat dog girl boy man woman city street " \
    "forest sky sea mountain house tree flower red blue green white black night day detailed masterpiece"


def vocab_tokens() -> list[str]:
    """A small uncased WordPiece vocabulary that can spell any ASCII text (letters and digits as pieces)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = [f"##{c}" for c in string.ascii_lowercase + string.digits]
    words = [w for w in dict.fromkeys(_WORDS.split()) if w not in chars]
    return specials + chars + pieces + words


def write_vocab(path: str | Path) -> Path:
    """Write ``vocab_tokens()`` as a ``vocab.txt`` for ``BertTokenizer``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(vocab_tokens()) + "\n", encoding="utf-8")
    return path


def med_config(size: Size) -> dict[str, Any]:
    """The BLIP text encoder config: the real one, or one layer with the same hidden size (768, the MLP's input)."""
    config = dict(FULL_MED_CONFIG)
    if size == "tiny":
        # [DEC] and [ENC] are added by the package's init_tokenizer.
        config.update(num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                      max_position_embeddings=64, vocab_size=len(vocab_tokens()) + 2)
    elif size != "full":
        raise ValueError(f"size must be 'tiny' or 'full', not {size!r}")
    return config


def write_med_config(path: str | Path, size: Size) -> Path:
    """Write ``med_config(size)`` as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(med_config(size), indent=2), encoding="utf-8")
    return path


def _tiny_create_vit(vit: str, image_size: int, use_grad_checkpointing: bool = False, ckpt_layer: int = 0,
                     drop_path_rate: float = 0) -> tuple[torch.nn.Module, int]:
    from ImageReward.models.BLIP.vit import VisionTransformer

    encoder = VisionTransformer(img_size=image_size, patch_size=16, use_grad_checkpointing=use_grad_checkpointing,
                                ckpt_layer=ckpt_layer, drop_path_rate=drop_path_rate, **TINY_VIT)
    return encoder, TINY_VIT["embed_dim"]


@contextlib.contextmanager
def offline_blip(vocab_file: str | Path, size: Size = "tiny") -> Iterator[None]:
    """While active, the package's BLIP takes its tokenizer from ``vocab_file`` (and a tiny ViT for size 'tiny')."""
    from unittest import mock

    from transformers import BertTokenizer
    from ImageReward.models.BLIP import blip, blip_pretrain

    vocab = str(vocab_file)

    class LocalBertTokenizer:
        """Stands in for ``transformers.BertTokenizer`` inside the package's ``init_tokenizer`` only."""

        @staticmethod
        def from_pretrained(*_args: Any, **_kwargs: Any) -> BertTokenizer:
            return BertTokenizer(vocab_file=vocab, do_lower_case=True)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(blip, "BertTokenizer", LocalBertTokenizer))
        if size == "tiny":
            stack.enter_context(mock.patch.object(blip_pretrain, "create_vit", _tiny_create_vit))
        yield


def _spread_mlp(mlp: torch.nn.Module) -> None:
    """Re-draw the reward head with unit-variance layers: the package's init makes every reward nearly equal."""
    for layer in mlp.modules():
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=layer.in_features ** -0.5)
            torch.nn.init.normal_(layer.bias, std=0.1)


def build_imagereward(folder: str | Path, size: Size = "tiny", seed: int = 0) -> torch.nn.Module:
    """An ``ImageReward.ImageReward`` with random weights (eval mode, CPU, float32).

    ``folder`` receives ``vocab.txt`` and ``med_config.json``; the model keeps
    using the tokenizer built from them after this returns.
    """
    from ImageReward.ImageReward import ImageReward

    folder = Path(folder)
    vocab = write_vocab(folder / "vocab.txt")
    config = write_med_config(folder / "med_config.json", size)
    with offline_blip(vocab, size), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageReward(med_config=str(config), device="cpu")
        _spread_mlp(model.mlp)
    return model.eval()


def save_imagereward_files(folder: str | Path, size: Size = "tiny", seed: int = 0) -> dict[str, Path]:
    """The files ``ImageReward.load("ImageReward-v1.0", download_root=folder)`` downloads, from a random model.

    Returns ``{"ImageReward.pt": path, "med_config.json": path, "vocab.txt": path}``. Serve them
    by patching the package's downloader (tests do) and load inside ``offline_blip``.
    """
    folder = Path(folder)
    model = build_imagereward(folder, size, seed)
    weights = folder / "ImageReward.pt"
    torch.save(model.state_dict(), weights)
    return {"ImageReward.pt": weights, "med_config.json": folder / "med_config.json", "vocab.txt": folder / "vocab.txt"}


def tiny_clip_state_dict(seed: int = 0, embed_dim: int = 768) -> dict[str, torch.Tensor]:
    """The state dict of a small ``clip.model.CLIP`` ViT (224 px, 32 px patches, width 64, one layer each side).

    ``clip.load`` rebuilds the model from these shapes (``clip.model.build_model``).
    ``embed_dim`` is 768 like ViT-L/14, which the aesthetic head expects.
    """
    from clip.model import CLIP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(embed_dim=embed_dim, image_resolution=224, vision_layers=1, vision_width=64, vision_patch_size=32,
                     context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                     transformer_layers=1)
        model.initialize_parameters()
    return model.state_dict()


def aesthetic_head_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict for the aesthetic predictor's MLP head (the LAION ``.pth`` file's layout)."""
    from ImageReward.models.AestheticScore import MLP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = MLP(768)
        _spread_mlp(head)
    return head.state_dict()


def blip_state_dict(folder: str | Path, seed: int = 0) -> dict[str, Any]:
    """A random tiny BLIP in the layout of BLIP's ``model_large.pth`` (``{"model": state_dict}``)."""
    from ImageReward.models.BLIP.blip_pretrain import BLIP_Pretrain

    folder = Path(folder)
    vocab = write_vocab(folder / "vocab.txt")
    config = write_med_config(folder / "med_config.json", "tiny")
    with offline_blip(vocab, "tiny"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BLIP_Pretrain(image_size=224, vit="large", med_config=str(config))
    return {"model": model.state_dict()}
