"""Reference similarity: how close each generated image is to a reference image of the same payload and index.

Useful when the target look is known (images from a model or merge you want
to match, or the demo's images rendered from a hidden recipe). Metrics:

* ``ssim``: structural similarity (torchmetrics; Gaussian window 11, sigma 1.5,
  RGB in 0..1), 1 for identical images, about 0 for unrelated ones;
* ``neg_mse``: minus the mean squared pixel difference (RGB in 0..1), 0 for
  identical images;
* ``clip``: cosine similarity of CLIP ViT-L/14 image embeddings (needs the
  CLIP model: ``CLIPScorer``), robust to small shifts and colour changes.

Every metric is higher-is-better.

Where references come from, in this order, for the image ``index`` of payload ``name``:

1. the ``references`` mapping given to the scorer: key ``(name, index)``, then
   ``(name, None)`` (one reference for every image of the payload);
2. the payload's ``extra["reference"]``: an image file (every index), a folder
   holding ``<index>.png`` (or .jpg/.jpeg/.webp), or a list of files by index;
   relative paths are taken from ``root`` (default: the working directory).

``load_references(folder)`` reads a reference folder laid out as
``<folder>/<payload name>/<index>.png`` (one per image) or
``<folder>/<payload name>.png`` (one for all images of the payload), and
``save_references`` writes generated images in that layout.

Multi-fidelity screening (``lib_mbw.search.fidelity``) renders cheap images
with fewer steps; they are compared with references rendered the same cheap
way, never with the full ones: ``for_fidelity(label)`` gives a scorer over the
``fidelities[label]`` mapping, else over ``<folder>/@<label>/`` (the same
layout, e.g. ``@steps0.5/<payload>/<index>.png``), else refuses.
``load_references`` skips those ``@`` folders.

A reference of another size is resized to the generated image when the aspect
ratios agree (within 1 %); otherwise the scorer refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence, Union

from PIL import Image

from ..errors import OutputExistsError, ScorerError
from ..fileio import png_bytes, write_atomic
from ..generators.base import GeneratedImage
from .checks import check_images, check_scores, image_label

if TYPE_CHECKING:
    from .package_scores import CLIPScorer

Metric = Literal["ssim", "neg_mse", "clip"]
ReferenceKey = tuple[str, Union[int, None]]
ReferenceSource = Union[Image.Image, str, Path]

METRICS: dict[str, tuple[float, float]] = {"ssim": (0.0, 1.0), "neg_mse": (-0.1, 0.0), "clip": (0.5, 1.0)}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: Sub-folder prefix of the references of a cheap screening fidelity: ``<folder>/@<label>/``.
FIDELITY_PREFIX = "@"
ASPECT_TOLERANCE = 0.01


@dataclass
class ReferenceSettings:
    """Reference scorer settings: the metric, a reference folder and the base of relative payload paths."""

    metric: Metric = "ssim"
    folder: str | None = None
    root: str | None = None


def load_references(folder: str | Path) -> dict[ReferenceKey, Path]:
    """The reference images of ``folder``: ``<payload>/<index>.<ext>`` and ``<payload>.<ext>`` files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ScorerError(f"reference folder {folder} does not exist; create it or pass the folder of your references")
    found: dict[ReferenceKey, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
            found[(entry.stem, None)] = entry
        elif entry.is_dir() and not entry.name.startswith(FIDELITY_PREFIX):
            for image in sorted(entry.iterdir()):
                if not (image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES):
                    continue
                if not image.stem.isdigit():
                    raise ScorerError(
                        f"reference {image}: name images in a payload folder by index (0.png, 1.png, ...)"
                    )
                found[(entry.name, int(image.stem))] = image
    if not found:
        raise ScorerError(f"reference folder {folder} has no images; expected <payload>/<index>.png or <payload>.png")
    return found


def save_references(folder: str | Path, images: Sequence[GeneratedImage], overwrite: bool = False) -> list[Path]:
    """Write ``images`` as ``<folder>/<payload>/<index>.png`` atomically; replaces files only with ``overwrite``."""
    folder = Path(folder)
    paths = []
    for item in images:
        if Path(item.payload.name).name != item.payload.name or item.payload.name in ("", ".", ".."):
            raise ScorerError(f"payload name {item.payload.name!r} cannot be a folder name; rename the payload")
        target = folder / item.payload.name / f"{item.index}.png"
        if target.exists() and not overwrite:
            raise OutputExistsError(f"reference {target} exists; delete it or pass overwrite=True")
        paths.append(write_atomic(target, png_bytes(item.image), overwrite=overwrite))
    return paths


def fidelity_folder(folder: str | Path, label: str) -> Path:
    """Where the references of screening fidelity ``label`` live inside reference folder ``folder``."""
    return Path(folder) / f"{FIDELITY_PREFIX}{label}"


def references_from_images(images: Sequence[GeneratedImage]) -> dict[ReferenceKey, Image.Image]:
    """An in-memory reference mapping from rendered images (e.g. the demo's hidden-recipe renders)."""
    return {(item.payload.name, item.index): item.image for item in images}


class ReferenceScorer:
    """Similarity of each generated image to its reference image; higher is better."""

    name = "reference"
    higher_is_better = True

    def __init__(
        self,
        references: Mapping[ReferenceKey, ReferenceSource] | None = None,
        metric: Metric = "ssim",
        root: str | Path | None = None,
        clip: "CLIPScorer | None" = None,
        *,
        folder: str | Path | None = None,
        fidelities: Mapping[str, Mapping[ReferenceKey, ReferenceSource]] | None = None,
    ) -> None:
        if metric not in METRICS:
            raise ScorerError(f"reference: metric must be one of {', '.join(METRICS)}, not {metric!r}")
        if metric == "clip" and clip is None:
            raise ScorerError("reference: metric 'clip' needs a CLIP model; pass clip=CLIPScorer(...)")
        self.metric = metric
        self.name = f"reference-{metric}"
        self.typical_range = METRICS[metric]
        self.root = Path(root) if root is not None else None
        self.clip = clip
        self._references: dict[ReferenceKey, ReferenceSource] = dict(references or {})
        self.folder = Path(folder) if folder is not None else None
        self._fidelities = {label: dict(refs) for label, refs in (fidelities or {}).items()}
        self._images: dict[str, Image.Image] = {}
        self._embeddings: dict[tuple[str, tuple[int, int]], Any] = {}

    @classmethod
    def from_folder(cls, folder: str | Path, metric: Metric = "ssim", **kwargs: Any) -> "ReferenceScorer":
        """A scorer over ``load_references(folder)``."""
        return cls(load_references(folder), metric=metric, folder=folder, **kwargs)

    def for_fidelity(self, label: str) -> "ReferenceScorer":
        """A scorer over the references rendered at screening fidelity ``label`` (like with like); ScorerError if none."""
        if label in self._fidelities:
            references: Mapping[ReferenceKey, ReferenceSource] = self._fidelities[label]
        elif self.folder is not None and fidelity_folder(self.folder, label).is_dir():
            references = load_references(fidelity_folder(self.folder, label))
        else:
            where = fidelity_folder(self.folder, label) if self.folder is not None else f"<reference folder>/{FIDELITY_PREFIX}{label}"
            raise ScorerError(
                f"reference: multi-fidelity screening renders cheap images ({label}) but there are no references rendered "
                f"the same way; render them into {where}/<payload>/<index>.png, or screen with fidelity.steps_fraction 1 "
                "(fewer payloads or images at full steps compare with the full references)"
            )
        return ReferenceScorer(references, metric=self.metric, root=self.root, clip=self.clip)

    def unload(self) -> None:
        """Forget decoded references and embeddings (and unload CLIP)."""
        self._images.clear()
        self._embeddings.clear()
        if self.clip is not None:
            self.clip.unload()

    def score(self, images: Sequence[GeneratedImage]) -> list[float]:
        """Similarity of each image to its reference, in order."""
        check_images(self.name, images)
        if not images:
            return []
        pairs = [(item, *self.reference(item)) for item in images]
        if self.metric == "clip":
            scores = self._clip_scores(pairs)
        else:
            scores = self._pixel_scores(pairs)
        return check_scores(self.name, images, scores)

    def reference(self, item: GeneratedImage) -> tuple[str, Image.Image]:
        """(where it came from, the RGB reference at the generated image's size) for ``item``."""
        origin, source = self._source(item)
        image = self._decode(origin, source)
        return origin, _fit(origin, image, item.image.size)

    def _source(self, item: GeneratedImage) -> tuple[str, ReferenceSource]:
        name, index = item.payload.name, item.index
        for key in ((name, index), (name, None)):
            if key in self._references:
                source = self._references[key]
                if isinstance(source, Image.Image):
                    return f"reference {name}/{'*' if key[1] is None else index}", source
                return str(source), source
        given = item.payload.extra.get("reference")
        if given is None:
            raise ScorerError(
                f"reference: no reference image for {image_label(item)}; add <folder>/{name}/{index}.png to the "
                f"reference folder or set \"reference\" in payload '{name}'"
            )
        if isinstance(given, (list, tuple)):
            if index >= len(given):
                raise ScorerError(f"reference: payload '{name}' lists {len(given)} references, none for image {index}")
            given = given[index]
        path = Path(str(given))
        if not path.is_absolute():
            path = (self.root or Path.cwd()) / path
        if path.is_dir():
            matches = [path / f"{index}{suffix}" for suffix in IMAGE_SUFFIXES if (path / f"{index}{suffix}").is_file()]
            if not matches:
                raise ScorerError(f"reference: folder {path} (payload '{name}') has no {index}.png for image {index}")
            path = matches[0]
        return str(path), path

    def _decode(self, origin: str, source: ReferenceSource) -> Image.Image:
        if origin in self._images:
            return self._images[origin]
        if isinstance(source, Image.Image):
            self._images[origin] = source.convert("RGB")
        else:
            try:
                with Image.open(source) as opened:
                    self._images[origin] = opened.convert("RGB")
            except FileNotFoundError:
                raise ScorerError(f"reference image {source} does not exist") from None
            except OSError as error:
                raise ScorerError(f"reference image {source} cannot be read as an image: {error}") from error
        return self._images[origin]

    def _pixel_scores(self, pairs: list[tuple[GeneratedImage, str, Image.Image]]) -> list[float]:
        import torch

        scores: list[float] = [0.0] * len(pairs)
        by_size: dict[tuple[int, int], list[int]] = {}
        for position, (item, _, _) in enumerate(pairs):
            by_size.setdefault(item.image.size, []).append(position)
        for positions in by_size.values():
            generated = torch.stack([_to_tensor(pairs[p][0].image) for p in positions])
            reference = torch.stack([_to_tensor(pairs[p][2]) for p in positions])
            values = _ssim(generated, reference) if self.metric == "ssim" else _neg_mse(generated, reference)
            for position, value in zip(positions, values.tolist()):
                scores[position] = value
        return scores

    def _clip_scores(self, pairs: list[tuple[GeneratedImage, str, Image.Image]]) -> list[float]:
        import torch

        assert self.clip is not None
        missing = [(origin, ref) for _, origin, ref in pairs if (origin, ref.size) not in self._embeddings]
        unique = list({(origin, ref.size): ref for origin, ref in missing}.items())
        if unique:
            references = self.clip.embed_images([ref for _, ref in unique], [origin for (origin, _), _ in unique])
            for (key, _), row in zip(unique, references):
                self._embeddings[key] = row
        generated = self.clip.embed_images([item.image for item, _, _ in pairs], [image_label(i) for i, _, _ in pairs])
        reference = torch.stack([self._embeddings[(origin, ref.size)] for _, origin, ref in pairs])
        return (generated * reference).sum(dim=1).tolist()


def _fit(origin: str, image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` at ``size``: resized (Lanczos) when the aspect ratio agrees, else a ScorerError."""
    if image.size == size:
        return image
    aspect, want = image.size[0] / image.size[1], size[0] / size[1]
    if abs(aspect / want - 1.0) > ASPECT_TOLERANCE:
        raise ScorerError(
            f"reference {origin} is {image.size[0]}x{image.size[1]} but the generated image is {size[0]}x{size[1]}; "
            "use a reference with the payload's aspect ratio"
        )
    return image.resize(size, Image.LANCZOS)


def _to_tensor(image: Image.Image) -> Any:
    """RGB pixels as a float32 CxHxW tensor in 0..1."""
    import numpy as np
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def _ssim(generated: Any, reference: Any) -> Any:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(generated, reference, data_range=1.0, reduction="none")


def _neg_mse(generated: Any, reference: Any) -> Any:
    return -((generated - reference) ** 2).mean(dim=(1, 2, 3))
