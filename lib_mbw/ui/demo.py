"""``python -m lib_mbw ui --demo``: the standalone app on the demo's tiny offline models, ready to search.

``prepare_demo(folder)`` builds (once; later calls reuse the files) what the
embedded demo (``lib_mbw.demo``) uses: two tiny SD1 checkpoints
(``demo_models``), its three payloads, and reference images rendered with its
hidden recipe. It returns a standalone host on those models (the diffusers
generator with the demo's config folder) and a search form filled to find
the hidden recipe again with the reference scorer (SSIM), so pressing Search
runs a real search of a few seconds per evaluation on a CPU, with nothing
downloaded.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..hosts.base import HostPaths
from ..hosts.standalone import StandaloneHost
from .form import FormValues

REFERENCE_STAMP = "references.json"


@dataclass
class DemoSetup:
    """The demo's files, a host on its models, and the form that searches them."""

    folder: Path
    host: StandaloneHost
    defaults: FormValues
    references: Path


def default_folder() -> Path:
    """``<data root>/demo-ui`` (``$AUTO_MBW_DATA`` or the repository's ``data`` folder)."""
    from ..generators.diffusers_files import data_root

    return data_root() / "demo-ui"


def _render_references(models: object, payload_dir: Path, target: Path, seed: int) -> None:
    from ..demo import hidden_recipe
    from ..generators.diffusers import DiffusersGenerator, DiffusersOptions
    from ..payloads import load_payloads, prepare_payloads
    from ..scorers.reference import save_references

    payloads = prepare_payloads(load_payloads(payload_dir), None, seed)
    generator = DiffusersGenerator(models.model_a, models.model_b, options=DiffusersOptions(config_dir=models.config_dir, cpu_threads=1))  # type: ignore[attr-defined]
    try:
        generator.apply(hidden_recipe(seed))
        images = [image for payload in payloads for image in generator.generate(payload)]
    finally:
        generator.close()
    save_references(target, images, overwrite=True)
    (target / REFERENCE_STAMP).write_text(json.dumps({"seed": seed, "payloads": sorted(p.name for p in payloads)}) + "\n")


def prepare_demo(folder: str | Path | None = None, seed: int = 0) -> DemoSetup:
    """The demo's models, payloads and references in ``folder`` (built on first use), a host and a filled form."""
    from ..demo import DemoSettings, write_demo_payloads
    from ..demo_models import ensure_demo_models

    root = Path(folder) if folder is not None else default_folder()
    models = ensure_demo_models(root / "models", seed=seed)
    payload_dir = root / "payloads"
    if not any(payload_dir.glob("*.json")):
        write_demo_payloads(payload_dir, DemoSettings(seed=seed))
    references = root / f"references-{seed}"
    if not (references / REFERENCE_STAMP).is_file():
        _render_references(models, payload_dir, references, seed)
    paths = HostPaths(payloads=payload_dir, wildcards=payload_dir / "wildcards", history=root / "history", models=root / "models",
                      data=(references,))
    host = StandaloneHost(
        root / "models",
        generator="diffusers",
        generator_options={"config_dir": str(models.config_dir), "cpu_threads": 1},
        paths=paths,
    )
    defaults = dataclasses.replace(
        FormValues(),
        model_a=models.model_a.name,
        model_b=models.model_b.name,
        run_name="demo",
        seed=seed,
        max_evaluations=60,
        patience=0,
        rescore_top=0,  # the references were rendered with these seeds; new seeds would not match them
        scorer="reference",
        scorer_options=json.dumps({"folder": str(references), "metric": "ssim"}),
        dtype="fp32",
    )
    return DemoSetup(root, host, defaults, references)


__all__ = ["DemoSetup", "default_folder", "prepare_demo"]
