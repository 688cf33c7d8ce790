"""The ``__metadata__`` auto-MBW writes into merged ``.safetensors`` files.

Three parts, all JSON strings as safetensors requires:

* ``sd_merge_recipe`` and ``sd_merge_models``, with exactly the keys, key order
  and value types of AUTOMATIC1111 1.10's checkpoint merger
  (``modules/extras.py::run_modelmerger``), so the WebUI, Civitai and the
  metadata readers that know those keys show our merges like the WebUI's own.
  ``sd_merge_models`` maps each source's sha256 to its name, legacy hash and
  own ``sd_merge_recipe``, and the sources' own ``sd_merge_models`` are merged
  in, so the whole merge chain stays visible. ``type`` is ``"auto-mbw"``
  (the WebUI writes ``"webui"``); ``multiplier`` is the alpha of a uniform
  recipe, and the mean UNet block weight of a block-weighted one (the exact
  weights are in our own key).
* ``format``: ``"pt"``, as the WebUI writes.
* ``auto_mbw_recipe``: everything needed to rebuild the file bit for bit
  (``verify``): method, block weights (our JSON recipe), output dtype, where
  BASE/VAE/other keys came from, and each source's path, name and hashes.

The WebUI reads metadata values that start with ``{`` as JSON
(``sd_models.read_metadata_from_safetensors``); ``webui_value`` does the same
when it reads the sources' metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from .hashes import ModelHashes

OUR_KEY = "auto_mbw_recipe"
MERGE_FORMAT = "auto-mbw-merge"
MERGE_FORMAT_VERSION = 1
WEBUI_KEYS = ("sd_merge_recipe", "sd_merge_models", "format")


@dataclass(frozen=True)
class SourceInfo:
    """One source model as it is recorded: role (a, b, c, base, vae, m1..mN), file, hashes, own metadata."""

    role: str
    path: Path
    hashes: ModelHashes
    metadata: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    def record(self) -> dict[str, str]:
        return {
            "path": str(self.path.resolve()),
            "name": self.name,
            "sha256": self.hashes.sha256,
            "legacy_hash": self.hashes.legacy,
        }


def webui_value(value: Any) -> Any:
    """A metadata value as the WebUI reads it: strings starting with ``{`` parsed as JSON when they parse."""
    if isinstance(value, str) and value[:1] == "{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def webui_merge_models(sources: Sequence[SourceInfo]) -> dict[str, Any]:
    """``sd_merge_models`` as the WebUI builds it: each source, then the sources' own chains merged in."""
    models: dict[str, Any] = {}
    for source in sources:
        models[source.hashes.sha256] = {
            "name": source.name,
            "legacy_hash": source.hashes.legacy,
            "sd_merge_recipe": webui_value(source.metadata.get("sd_merge_recipe")),
        }
        chain = webui_value(source.metadata.get("sd_merge_models", {}))
        if isinstance(chain, dict):
            models.update(chain)
    return models


def webui_merge_recipe(
    *,
    sources: Sequence[SourceInfo],
    interp_method: str,
    multiplier: float,
    save_as_half: bool,
    custom_name: str,
    bake_in_vae: str,
    is_inpainting: bool,
    is_instruct_pix2pix: bool,
) -> dict[str, Any]:
    """``sd_merge_recipe`` with the WebUI's keys in the WebUI's order; sources are primary, secondary, tertiary."""
    hashes = [s.hashes.sha256 for s in sources] + [None, None, None]
    return {
        "type": "auto-mbw",
        "primary_model_hash": hashes[0],
        "secondary_model_hash": hashes[1],
        "tertiary_model_hash": hashes[2],
        "interp_method": interp_method,
        "multiplier": multiplier,
        "save_as_half": save_as_half,
        "custom_name": custom_name,
        "config_source": 0,
        "bake_in_vae": bake_in_vae,
        "discard_weights": "",
        "is_inpainting": is_inpainting,
        "is_instruct_pix2pix": is_instruct_pix2pix,
    }


def build_metadata(
    *,
    webui_recipe: Mapping[str, Any],
    merged_sources: Sequence[SourceInfo],
    ours: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The full ``__metadata__``: caller's extra keys, then ``format``, the WebUI keys and ours.

    ``extra`` values that are not strings are stored as JSON; extra keys may
    not replace the keys this module owns.
    """
    metadata: dict[str, str] = {}
    for key, value in (extra or {}).items():
        if key in WEBUI_KEYS or key == OUR_KEY:
            raise ValueError(f"extra metadata may not set {key!r}: auto-MBW writes it")
        metadata[str(key)] = value if isinstance(value, str) else json.dumps(value)
    metadata["format"] = "pt"
    metadata["sd_merge_recipe"] = json.dumps(dict(webui_recipe))
    metadata["sd_merge_models"] = json.dumps(webui_merge_models(merged_sources))
    metadata[OUR_KEY] = json.dumps({"format": MERGE_FORMAT, "version": MERGE_FORMAT_VERSION, "tool": f"auto-MBW {__version__}", **ours})
    return metadata


def read_our_record(metadata: Mapping[str, Any], source: str) -> dict[str, Any] | None:
    """The ``auto_mbw_recipe`` record of a file's metadata, or None if it has none."""
    raw = metadata.get(OUR_KEY)
    if raw is None:
        return None
    record = webui_value(raw) if isinstance(raw, str) else raw
    if not isinstance(record, dict) or record.get("format") != MERGE_FORMAT:
        from ..errors import RecipeError

        raise RecipeError(f"{source}: metadata key {OUR_KEY!r} is not an auto-MBW merge record")
    return record
