"""Planning a merge: which source tensors, which method and weight, which dtype for every output key.

A merge is described by a ``MergeSpec`` (method, source files by role, recipe,
output dtype, where BASE/VAE come from). ``plan_merge`` checks the sources
against each other (architecture, key sets, shapes) and turns the spec into
one ``TensorOp`` per output key. The merge and ``verify`` both run the plan,
so a file is checked against exactly what produced it.

Roles: ``a``, ``b`` (and ``c`` for add-difference) for two-model merges,
``m1``..``mN`` for the uniform mean (sorted by sha256 by the caller, so the
result does not depend on the order the models were given), plus ``base`` and
``vae`` for files that donate the text encoder or the VAE.

Groups (``lib_mbw.blocks``): every UNet block is merged with its recipe
weight; BASE (text encoder) comes from A, B, the merge (recipe ``base``
weight) or a donor file; VAE from A unless a VAE file is given; OTHER keys from
A. The uniform mean averages UNet, BASE and VAE (the WebUI merger, which
AstolfoMix used, merges every key containing ``model``) and copies OTHER from
m1. Integer tensors and ``position_ids`` are always copied, never averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..blocks import BASE, OTHER, VAE, ModelArch, check_same_architecture
from ..checkpoint import Checkpoint
from ..errors import ArchitectureMismatchError, ModelFormatError, RecipeError
from ..recipe import Recipe
from .metadata import SourceInfo
from .methods import METHODS
from .writer import TensorEntry

DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
DONOR_ROLES = ("base", "vae")
VAE_PREFIX = "first_stage_model."
def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """``fp16``/``bf16``/``fp32`` (or the torch dtype itself) -> torch dtype."""
    if isinstance(value, torch.dtype):
        if value not in DTYPE_NAMES:
            raise RecipeError(f"output dtype {value} is not supported; use one of {', '.join(DTYPES)}")
        return value
    try:
        return DTYPES[str(value).lower()]
    except KeyError:
        raise RecipeError(f"output dtype {value!r} is not supported; use one of {', '.join(DTYPES)}") from None


@dataclass(frozen=True)
class MergeSpec:
    """What to merge: method, source files by role, recipe, output dtype, BASE/VAE sources.

    ``base_from``: ``a``, ``b``, ``merge`` or ``base`` (the donor file in
    ``sources["base"]``). ``vae_from``: ``a`` (two-model merges), ``merge``
    (uniform mean) or ``vae`` (the file in ``sources["vae"]``).
    """

    method: str
    sources: Mapping[str, Path]
    recipe: Recipe | None = None
    dtype: torch.dtype = torch.float16
    base_from: str = "a"
    vae_from: str = "a"

    @property
    def merged_roles(self) -> tuple[str, ...]:
        """The roles whose tensors the method combines, in order (a, b[, c] or m1..mN)."""
        return tuple(r for r in self.sources if r not in DONOR_ROLES)

    @property
    def first_role(self) -> str:
        return self.merged_roles[0]

    def record(self, infos: Mapping[str, SourceInfo]) -> dict[str, Any]:
        """This spec as the JSON-able record stored in the output's metadata."""
        return {
            "method": self.method,
            "recipe": self.recipe.to_dict() if self.recipe is not None else None,
            "dtype": DTYPE_NAMES[self.dtype],
            "base_from": self.base_from,
            "vae_from": self.vae_from,
            "other_from": self.first_role,
            "sources": {role: infos[role].record() for role in self.sources},
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], source: str, paths: Mapping[str, Path] | None = None) -> "MergeSpec":
        """The spec a metadata record describes; ``paths`` replaces recorded source paths by role."""
        try:
            sources = {role: Path((paths or {}).get(role) or entry["path"]) for role, entry in record["sources"].items()}
            recipe = Recipe.from_dict(record["recipe"], source) if record.get("recipe") is not None else None
            return cls(
                method=record["method"],
                sources=sources,
                recipe=recipe,
                dtype=parse_dtype(record["dtype"]),
                base_from=record["base_from"],
                vae_from=record["vae_from"],
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise RecipeError(f"{source}: the auto-MBW merge record is incomplete ({exc!r} missing or malformed)") from None


@dataclass(frozen=True)
class TensorOp:
    """How one output tensor is made: ``kind`` is ``copy`` or a method name; inputs are (role, key)."""

    key: str
    group: str
    kind: str
    inputs: tuple[tuple[str, str], ...]
    weight: float | None
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def entry(self) -> TensorEntry:
        return TensorEntry(self.key, self.dtype, self.shape)


@dataclass(frozen=True)
class MergePlan:
    """Every output tensor's op, in the first model's key order, with the notes made while planning."""

    spec: MergeSpec
    arch: ModelArch
    ops: tuple[TensorOp, ...]
    warnings: tuple[str, ...] = ()

    def by_key(self) -> dict[str, TensorOp]:
        return {op.key: op for op in self.ops}




def _role_label(role: str, ckpt: Checkpoint) -> str:
    label = {"a": "model A", "b": "model B", "c": "model C", "base": "BASE donor", "vae": "VAE file"}.get(role, f"model {role}")
    return f"{label} ({ckpt.path})"


def _describe_keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _require_same_tensors(
    keys: Sequence[str], first: Checkpoint, first_role: str, other: Checkpoint, role: str, key_map: Callable[[str], str] = str
) -> None:
    """``other`` holds every key of ``keys`` (mapped by ``key_map``) with the shape ``first`` has."""
    missing = [k for k in keys if key_map(k) not in other.shapes]
    if missing:
        raise ArchitectureMismatchError(
            f"{_role_label(role, other)} lacks {len(missing)} tensor(s) that {_role_label(first_role, first)} has: "
            f"{_describe_keys(missing)}; the models must have the same keys"
        )
    wrong = [f"{k} {list(first.shapes[k])} vs {list(other.shapes[key_map(k)])}" for k in keys if first.shapes[k] != other.shapes[key_map(k)]]
    if wrong:
        raise ArchitectureMismatchError(
            f"{_role_label(role, other)} has {len(wrong)} tensor(s) shaped differently from {_role_label(first_role, first)}: "
            f"{_describe_keys(wrong)}"
        )


def _never_averaged(key: str, ckpt: Checkpoint) -> bool:
    return not ckpt.dtypes[key].is_floating_point or key.endswith("position_ids")


def _output_dtype(spec: MergeSpec, source_dtype: torch.dtype) -> torch.dtype:
    return spec.dtype if source_dtype.is_floating_point else source_dtype


def _vae_key_map(vae: Checkpoint) -> Callable[[str], str]:
    """Checkpoint VAE key -> key in the VAE file (full checkpoints keep the prefix; VAE files drop it)."""
    if any(k.startswith(VAE_PREFIX) for k in vae.shapes):
        return str
    return lambda key: key[len(VAE_PREFIX) :]


def plan_merge(spec: MergeSpec, models: Mapping[str, Checkpoint]) -> MergePlan:
    """Check the sources against each other and decide every output tensor's op."""
    if spec.method not in METHODS:
        raise RecipeError(f"unknown merge method {spec.method!r}; use one of {', '.join(METHODS)}")
    method = METHODS[spec.method]
    roles = spec.merged_roles
    if method.models and len(roles) != method.models:
        raise RecipeError(f"{spec.method} merges {method.models} models, got {len(roles)}")
    if not method.models and len(roles) < 2:
        raise RecipeError(f"{spec.method} needs at least 2 models, got {len(roles)}")
    first_role = spec.first_role
    first = models[first_role]
    arch = first.arch
    for role in roles[1:]:
        check_same_architecture(arch, models[role].arch, _role_label(first_role, first), _role_label(role, models[role]))
    groups = first.groups
    warnings: list[str] = []
    recipe = None
    if method.models:
        if spec.recipe is None:
            raise RecipeError(f"{spec.method} needs a recipe (block weights) or an alpha")
        dropped = [b for b in spec.recipe.weights if b not in arch.blocks]
        recipe = spec.recipe.for_family(arch.family)
        if dropped and len(set(spec.recipe.weights.values())) > 1:  # a uniform recipe loses nothing
            warnings.append(f"{arch.label} has no block(s) {', '.join(dropped)}: their recipe weights are ignored")
        if spec.base_from == "merge" and recipe.base is None:
            raise RecipeError(
                f"{spec.recipe.source}: --base-from merge needs a BASE weight, and the recipe has none; "
                "add BASE to the recipe, use --alpha, or pick --base-from a|b|MODEL"
            )
        if spec.base_from != "merge" and recipe.base is not None:
            warnings.append(
                f"the recipe's BASE weight {recipe.base:g} is not used: the text encoder is copied from "
                f"{spec.base_from.upper() if spec.base_from in ('a', 'b') else 'the BASE donor'} (use --base-from merge to merge it)"
            )

    if spec.vae_from not in ("a", "vae", "merge") or (spec.vae_from == "merge" and method.models):
        raise RecipeError(f"the VAE can come from A or a VAE file{' or the mean' if not method.models else ''}, not {spec.vae_from!r}")
    unet_keys = [k for b in arch.blocks for k in groups[b]]
    for role in roles[1:]:
        _require_same_tensors(unet_keys, first, first_role, models[role], role)
        extra = sorted(set(models[role].unet_keys()) - set(unet_keys))
        if extra:
            raise ArchitectureMismatchError(
                f"{_role_label(role, models[role])} has {len(extra)} UNet tensor(s) that {_role_label(first_role, first)} "
                f"lacks: {_describe_keys(extra)}; the models must have the same keys"
            )

    ops: list[TensorOp] = []

    def merged(key: str, group: str, weight: float | None) -> TensorOp:
        if _never_averaged(key, first):
            return TensorOp(key, group, "copy", ((first_role, key),), None, first.dtypes[key], first.shapes[key])
        inputs = tuple((r, key) for r in roles)
        return TensorOp(key, group, spec.method, inputs, weight, _output_dtype(spec, first.dtypes[key]), first.shapes[key])

    def copied(key: str, group: str, role: str, source_key: str) -> TensorOp:
        return TensorOp(key, group, "copy", ((role, source_key),), None, _output_dtype(spec, models[role].dtypes[source_key]), first.shapes[key])

    for block in arch.blocks:
        weight = recipe.weight(block) if recipe is not None else None
        ops += [merged(k, block, weight) for k in groups[block]]

    base_keys = groups[BASE]
    if spec.base_from == "merge":
        for role in roles[1:]:
            _require_same_tensors(base_keys, first, first_role, models[role], role)
        ops += [merged(k, BASE, recipe.base if recipe is not None else None) for k in base_keys]
    elif spec.base_from in ("a", "b", "base"):
        role = spec.base_from if spec.base_from != "a" else first_role
        if role not in models:
            raise RecipeError(f"--base-from {spec.base_from}: no such model in this merge")
        if not base_keys and role != first_role:
            warnings.append(f"{_role_label(first_role, first)} has no text encoder keys: --base-from {spec.base_from} changes nothing")
        _require_same_tensors(base_keys, first, first_role, models[role], role)
        ops += [copied(k, BASE, role, k) for k in base_keys]
    else:
        raise RecipeError(f"--base-from must be a, b, merge or a model file, got {spec.base_from!r}")

    vae_keys = groups[VAE]
    if spec.vae_from == "vae":
        vae = models["vae"]
        key_map = _vae_key_map(vae)
        present = [k for k in vae_keys if key_map(k) in vae.shapes]
        if not present:
            raise ModelFormatError(f"{vae.path}: holds none of the VAE tensors of {first.path}; is it a VAE for this architecture?")
        _require_same_tensors(present, first, first_role, vae, "vae", key_map)
        if len(present) < len(vae_keys):
            warnings.append(f"{vae.path.name} lacks {len(vae_keys) - len(present)} VAE tensor(s); those come from {first.path.name}")
        present_set = set(present)
        ops += [copied(k, VAE, "vae", key_map(k)) if k in present_set else copied(k, VAE, first_role, k) for k in vae_keys]
    elif spec.vae_from == "merge":
        for role in roles[1:]:
            _require_same_tensors(vae_keys, first, first_role, models[role], role)
        ops += [merged(k, VAE, None) for k in vae_keys]
    else:
        ops += [copied(k, VAE, first_role, k) for k in vae_keys]

    ops += [copied(k, OTHER, first_role, k) for k in groups[OTHER]]
    order = {k: i for i, k in enumerate(first.shapes)}
    ops.sort(key=lambda op: order[op.key])
    return MergePlan(spec, arch, tuple(ops), tuple(warnings))
