"""Search sessions: settings -> components -> a recorded ``SearchRun``, resume from a run folder, outputs.

``start_search(settings)`` prepares everything a search needs and writes the
run's manifest: payloads (seeds fixed, wildcards expanded), the architecture,
generator(s), scorer, tally, warm start, optimizer, a new run folder with its
history. ``resume_search(run_dir)`` rebuilds the same from the manifest
(payloads are taken from it, not expanded again) and reopens the history.
``SearchSession.execute()`` runs the search and writes the outputs: best
recipe (JSON + text), plots, the best images, and the merged model through
the merge engine.

Generators, scorers and strategies are named in settings. A name is looked up
lazily in the registries (``lib_mbw.generators.registry.make_generator``,
``lib_mbw.scorers.registry.make_scorer``, ``lib_mbw.search.optimizer``); a
``package.module:factory`` spec is a plugin, loaded only when it is in the
``plugins`` the caller enabled (command line, server settings: see
``search.plugins``); a manifest or settings file never enables one.
Plugin factories are called as:

* generator: ``factory(model_a=..., model_b=..., **options)`` (one call per worker);
* scorer: ``factory(**options)``;
* strategy: ``factory(space_settings, family, seed, init=InitPointSettings, warm_start=[(Recipe, score)], **options)``.

With a ``Host`` (WebUI, standalone app), generators come from
``host.make_generator`` and the search holds ``host.exclusive()``.

Resume trusts nothing in the run folder that could run code: the strategy,
scorer and generator must be built-in or enabled plugins, the optimizer is
rebuilt by replaying the history, and the models must still be the files the
run recorded (size, then sha256 when the size and time stamp do not settle it).

With ``models.c`` (.. ``models.e``) set, the search is a block mix of 3-5
models: ``session_n`` supplies its space, warm start, generators, stop limits
and outputs; everything else here is shared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

from .. import __version__
from ..blocks import present_blocks
from ..errors import MBWError
from ..fileio import png_bytes, safe_name, write_atomic
from ..generators.base import GeneratedImage, Generator
from ..payloads import Payload, load_payloads, payload_from_record, prepare_payloads
from ..recipe import Recipe
from ..scorers.base import Scorer
from ..scorers.tally import Tally
from .events import Listener, OutputsWritten
from .history import RunHistory, WarmStart, create_run_folder, load_warm_start, read_manifest, summarize_rows, write_best_recipe
from .history_n import record_of
from .loop import LoopSettings, SearchResult, SearchRun
from .plugins import is_plugin, load_plugin, require_all_enabled
from .settings import GeneratorSettings, SearchSettings, SettingsError, from_mapping, merge_mappings

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "auto-mbw-run"

#: Settings that define what a run measures; changing them on resume would mix incomparable scores.
FIXED_ON_RESUME: tuple[str, ...] = (
    "name", "seed", "models", "payloads", "strategy", "strategy_options", "init", "warm_start",
    "initial_recipes", "recipe_order", "recipe_fold", "space", "tally", "scorer", "history_dir", "fidelity",
)

_PACKAGES = (
    "torch", "numpy", "diffusers", "transformers", "image-reward", "optuna", "gradient-free-optimizers",
    "hyperactive", "scikit-learn", "dynamicprompts", "safetensors", "pillow",
)


class SessionError(MBWError):
    """A search cannot be set up: unknown component, missing model, run folder that cannot be resumed."""


# --------------------------------------------------------------------------- components


def load_factory(spec: str, kind: str, plugins: Collection[str] = ()) -> Callable[..., Any]:
    """The callable named by ``package.module:attribute``, which must be one of the enabled ``plugins``."""
    return load_plugin(spec, kind, plugins)


def check_plugins(settings: SearchSettings, plugins: Collection[str], where: str, *, generator: bool = True, scorer: bool = True) -> None:
    """One-line error when the settings name a plugin that is not enabled (before anything is loaded)."""
    checks = [("strategy", settings.strategy)]
    if generator:
        checks.append(("generator", settings.generator.name))
    if scorer:
        checks.append(("scorer", settings.scorer.name))
    require_all_enabled(checks, plugins, where)


def make_generators(settings: GeneratorSettings, model_a: str | None, model_b: str | None, host: Any = None,
                    plugins: Collection[str] = (), more_models: Sequence[str] = ()) -> list[Generator]:
    """One generator per worker option set (``settings.workers``), or one from ``settings.options``.

    ``more_models``: models 3-5 of a block mix (``session_n.make_mix_generators`` checks who can mix).
    """
    option_sets = [{**settings.options, **worker} for worker in settings.workers] or [dict(settings.options)]
    more = {"more_models": list(more_models)} if more_models else {}
    if host is not None:
        if not model_a or not model_b:
            raise SessionError("set models.a and models.b (the two checkpoints to merge)")
        if more_models:
            return [host.make_mix_generator([model_a, model_b, *more_models], options) for options in option_sets]
        return [host.make_generator(model_a, model_b, options) for options in option_sets]
    if is_plugin(settings.name):
        factory = load_plugin(settings.name, "generator", plugins)
        return [factory(model_a=model_a, model_b=model_b, **more, **options) for options in option_sets]
    from ..generators.registry import make_generator

    return [make_generator(settings.name, model_a=model_a, model_b=model_b, **more, **options) for options in option_sets]


def make_scorer_from_settings(name: str, options: Mapping[str, Any], plugins: Collection[str] = ()) -> Scorer:
    if is_plugin(name):
        return load_plugin(name, "scorer", plugins)(**options)
    from ..scorers.registry import make_scorer

    return make_scorer(name, **options)


def make_search_optimizer(settings: SearchSettings, family: str, warm_start: Sequence[tuple[Recipe, float]],
                          plugins: Collection[str] = ()) -> Any:
    """The optimizer of ``settings.strategy`` over the settings' space for ``family``."""
    if is_plugin(settings.strategy):
        factory = load_plugin(settings.strategy, "strategy", plugins)
        return factory(settings.space, family, settings.seed, init=settings.init, warm_start=list(warm_start), **settings.strategy_options)
    from .optimizer import InitSettings, make_optimizer
    from .space import SearchSpace

    if settings.models.count > 2:
        from .session_n import make_mix_optimizer

        return make_mix_optimizer(settings, family, warm_start, plugins)  # type: ignore[arg-type]
    s = settings.space
    space = SearchSpace(
        family=family,
        levels=s.levels,
        ranges={k: (v[0], v[1]) for k, v in s.ranges.items()},
        frozen=dict(s.frozen),
        groups=[list(g) for g in s.groups],
        search_base=s.search_base,
    )
    init = InitSettings(random=settings.init.random, grid=settings.init.grid, vertex=settings.init.vertex)
    return make_optimizer(settings.strategy, space, settings.seed, init=init, warm_start=list(warm_start), **settings.strategy_options)


def detect_family(settings: SearchSettings, generators: Sequence[Generator]) -> str:
    """The architecture: the setting, else what the generator reports, else model A's file."""
    if settings.models.family:
        return settings.models.family
    for generator in generators:
        family = getattr(generator, "family", None)
        if isinstance(family, str) and family:
            return family
    if settings.models.a and Path(settings.models.a).is_file():
        from ..checkpoint import open_checkpoint

        with open_checkpoint(settings.models.a) as checkpoint:
            return checkpoint.arch.family
    raise SessionError("cannot tell the architecture: set models.family (sd1, sd2, sdxl) or give model A as a file")


# --------------------------------------------------------------------------- manifest facts


def model_facts(spec: str | None) -> dict[str, Any] | None:
    if not spec:
        return None
    path = Path(spec)
    if not path.is_file():
        return {"name": spec}
    from ..merge.hashes import default_hash_cache, model_hashes

    hashes = model_hashes(path, default_hash_cache())
    stat = path.stat()
    return {
        "name": path.name, "path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        "sha256": hashes.sha256, "legacy_hash": hashes.legacy,
    }


#: Hashing a model takes about this long per GiB on a typical disk (said before a long check).
_HASH_S_PER_GIB = 2.5


def check_models_unchanged(manifest: Mapping[str, Any], settings: SearchSettings, where: str) -> None:
    """SessionError naming the model file that is not the one the run recorded (size first, then sha256).

    The hash is computed only when the size matches but the time stamp does
    not (or was not recorded); the user's hash cache makes a second check free.
    """
    recorded = manifest.get("models") or {}
    for role, spec in ((r, getattr(settings.models, r)) for r in _ROLES):
        facts = recorded.get(role)
        if not isinstance(facts, Mapping) or not facts.get("sha256") or not spec:
            continue  # a name the generator resolves (no file was recorded)
        path = Path(spec)
        if not path.is_file():
            raise SessionError(f"{where}: model {role.upper()} {path} is gone; put the file the run used back there to resume")
        stat = path.stat()
        if stat.st_size != facts.get("size"):
            raise SessionError(
                f"{where}: model {role.upper()} {path} changed since the run started (size {stat.st_size} bytes, "
                f"recorded {facts.get('size')}); resume needs the same file (start a new search to use this one)"
            )
        if facts.get("mtime_ns") == stat.st_mtime_ns:
            continue
        from ..merge.hashes import default_hash_cache, model_hashes

        if stat.st_size > 2**30:
            log.info("checking model %s against the run's record: hashing %.1f GiB takes about %.0f s",
                     path, stat.st_size / 2**30, stat.st_size / 2**30 * _HASH_S_PER_GIB)
        started = time.monotonic()
        sha256 = model_hashes(path, default_hash_cache()).sha256
        log.debug("hashed %s in %.1f s", path, time.monotonic() - started)
        if sha256 != facts["sha256"]:
            raise SessionError(
                f"{where}: model {role.upper()} {path} changed since the run started (sha256 {sha256[:10]}, "
                f"recorded {str(facts['sha256'])[:10]}); resume needs the same file (start a new search to use this one)"
            )


def package_versions() -> dict[str, str]:
    versions = {"auto-mbw": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _describe_optimizer(optimizer: Any) -> Any:
    describe = getattr(optimizer, "describe", None)
    try:
        return describe() if callable(describe) else str(getattr(optimizer, "name", type(optimizer).__name__))
    except Exception:  # a description must never stop a search
        return type(optimizer).__name__


# --------------------------------------------------------------------------- the session


@dataclass
class SearchOutcome:
    result: SearchResult
    outputs: dict[str, Path] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass
class SearchSession:
    """A prepared search, ready to ``execute()``."""

    settings: SearchSettings
    run_id: str
    run_dir: Path
    family: str
    payloads: list[Payload]
    run: SearchRun
    generators: list[Generator]
    scorer: Scorer
    manifest: dict[str, Any]
    host: Any = None
    resumed: bool = False

    def execute(self) -> SearchOutcome:
        """Run the search to its end, then write the outputs; releases generators and the scorer."""
        guard = self.host.exclusive() if self.host is not None else contextlib.nullcontext()
        try:
            with guard:
                result = self.run.run()
                outcome = SearchOutcome(result)
                write_outputs(self, outcome)
        finally:
            self.close()
        return outcome

    def close(self) -> None:
        for generator in self.generators:
            try:
                generator.close()
            except Exception:
                log.exception("could not close generator %s", getattr(generator, "name", generator))
        try:
            self.scorer.unload()
        except Exception:
            log.exception("could not unload scorer %s", getattr(self.scorer, "name", self.scorer))


_ROLES = ("a", "b", "c", "d", "e")


def _warm_start(settings: SearchSettings) -> WarmStart:
    collected = WarmStart()
    for spec in settings.warm_start:
        collected.extend(load_warm_start(spec, settings.recipe_order, settings.recipe_fold))
    for spec in settings.initial_recipes:
        collected.extend(load_warm_start(spec, settings.recipe_order, settings.recipe_fold))
    return collected


def _for_family(recipes: Sequence[Recipe], family: str) -> list[Recipe]:
    blocks = set(present_blocks(family))
    return [r.replace(weights={b: w for b, w in r.weights.items() if b in blocks}) for r in recipes]


def start_search(
    settings: SearchSettings,
    *,
    host: Any = None,
    listeners: Sequence[Listener] = (),
    generators: Sequence[Generator] | None = None,
    scorer: Scorer | None = None,
    plugins: Collection[str] = (),
) -> SearchSession:
    """Prepare a new search (payloads, components, run folder, manifest); nothing is rendered yet.

    ``generators``/``scorer`` may be passed ready-made (UI, tests); otherwise
    they are made from the settings. ``plugins``: the ``package.module:factory``
    names the user enabled (command line, server settings). ``preflight``
    checks everything it can first: a search that cannot work stops here,
    before its run folder exists.
    """
    from .preflight import preflight

    settings.validate()
    check_plugins(settings, plugins, "settings", generator=not generators and host is None, scorer=scorer is None)
    preflight(settings, host=host, generators=generators)
    payload_files = load_payloads(settings.payloads.folder, settings.payloads.names or None)
    payloads = prepare_payloads(payload_files, settings.payloads.wildcards, settings.seed)
    mix = settings.models.count > 2
    warm = _warm_start(settings) if not mix else None
    made_generators = list(generators) if generators else _make_generators(settings, host, plugins)
    try:
        family = detect_family(settings, made_generators)
        made_scorer = scorer or make_scorer_from_settings(settings.scorer.name, settings.scorer.options, plugins)
        if warm is None:
            from .session_n import load_warm_start_n, runtime_memory

            warm = load_warm_start_n(settings, family)
            scored, initial = list(warm.scored), list(warm.unscored)
            memory = runtime_memory(made_generators)
        else:
            scored = list(zip(_for_family([r for r, _ in warm.scored], family), [s for _, s in warm.scored]))
            initial = _for_family(warm.unscored, family)
            memory = []
        optimizer = make_search_optimizer(settings, family, scored, plugins)
        run_dir = create_run_folder(settings.history_dir, settings.name)
    except BaseException:
        for generator in made_generators:
            generator.close()
        raise
    run_id = run_dir.name
    history = RunHistory.create(run_dir, present_blocks(family), list(dict.fromkeys(p.name for p in payloads)),
                                with_base=settings.space.search_base, n_models=settings.models.count)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "run_id": run_id,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": settings.to_dict(),
        "family": family,
        "models": {r: model_facts(getattr(settings.models, r)) for r in _ROLES if r in "ab" or getattr(settings.models, r)},
        "payload_files": {p.name: p.digest() for p in payload_files},
        "payloads": [{**p.to_record(), "sha256": p.digest()} for p in payloads],
        "seeds": {
            "search": settings.seed,
            "payloads": {p.key: p.seed for p in payloads},
            "rescore_offset": LoopSettings().rescore_seed_offset,
        },
        "warm_start": {
            "scored": [[record_of(r), s] for r, s in scored],
            "initial": [record_of(r) for r in initial],
        },
        "optimizer": _describe_optimizer(optimizer),
        "generators": [getattr(g, "name", type(g).__name__) for g in made_generators],
        **({"runtime_memory": memory} if memory else {}),
        "scorer": {"name": getattr(made_scorer, "name", settings.scorer.name), "higher_is_better": getattr(made_scorer, "higher_is_better", True)},
        "tally": dataclasses.asdict(settings.tally),
        "packages": package_versions(),
        "history_columns": history.columns,
    }
    history.write_manifest(manifest)
    run = _make_run(settings, payloads, optimizer, made_generators, made_scorer, history, initial, run_id, listeners,
                    lambda: make_search_optimizer(settings, family, scored, plugins))
    return SearchSession(settings, run_id, run_dir, family, payloads, run, made_generators, made_scorer, manifest, host)


def _make_generators(settings: SearchSettings, host: Any, plugins: Collection[str]) -> list[Generator]:
    if settings.models.count > 2:
        from .session_n import make_mix_generators

        return make_mix_generators(settings, host, plugins)
    return make_generators(settings.generator, settings.models.a, settings.models.b, host, plugins)


def _make_run(settings, payloads, optimizer, generators, scorer, history, initial, run_id, listeners, optimizer_factory) -> SearchRun:
    from .settings_n import stop_for

    return SearchRun(
        payloads,
        optimizer,
        generators,
        scorer,
        tally=Tally(settings.tally.method, settings.tally.trim, settings.tally.positive),
        stop=stop_for(settings),
        settings=LoopSettings(rescore_top=settings.rescore_top, max_failures=settings.max_failures, abandon=settings.abandon,
                              fidelity=settings.fidelity),
        history=history,
        initial_recipes=initial,
        run_id=run_id,
        strategy=settings.strategy,
        listeners=listeners,
        optimizer_factory=optimizer_factory,
    )


def find_run(spec: str | os.PathLike[str], history_dir: str | os.PathLike[str] = "csv/history") -> Path:
    """A run folder from its path or its run-id (looked up under ``history_dir``)."""
    path = Path(spec)
    for candidate in (path, Path(history_dir) / path):
        if (candidate / "manifest.json").is_file():
            return candidate
    matches = sorted(Path(history_dir).glob(f"*{safe_name(str(spec))}*")) if Path(history_dir).is_dir() else []
    matches = [m for m in matches if (m / "manifest.json").is_file()]
    if len(matches) == 1:
        return matches[0]
    hint = f"; matching runs: {', '.join(m.name for m in matches)}" if matches else ""
    raise SessionError(f"{spec}: no run folder with a manifest.json (looked in . and {history_dir}){hint}")


def resume_search(
    run_dir: str | os.PathLike[str],
    *,
    overrides: Mapping[str, Any] | None = None,
    host: Any = None,
    listeners: Sequence[Listener] = (),
    generators: Sequence[Generator] | None = None,
    scorer: Scorer | None = None,
    plugins: Collection[str] = (),
) -> SearchSession:
    """Continue the run in ``run_dir``: same payloads, seeds, optimizer and warm start as recorded.

    ``overrides`` may change stopping, failures, abandon, re-scoring,
    generator (e.g. other workers) and output settings; settings that define
    what is measured (``FIXED_ON_RESUME``) cannot change. A plugin the run
    used must be in ``plugins`` again; the models must be the recorded files.
    """
    folder = Path(run_dir)
    manifest = read_manifest(folder)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise SessionError(f"{folder}/manifest.json: not an auto-MBW run manifest")
    overrides = dict(overrides or {})
    fixed = [k for k in overrides if k in FIXED_ON_RESUME and overrides[k] != manifest["settings"].get(k)]
    if fixed:
        raise SettingsError(
            f"cannot change {', '.join(fixed)} when resuming (scores would not compare); "
            f"start a new search with --warm-start {folder} instead"
        )
    where = f"{folder}/manifest.json"
    settings = from_mapping(SearchSettings, merge_mappings(manifest["settings"], overrides), where).validate()
    check_plugins(settings, plugins, where, generator=not generators and host is None, scorer=scorer is None)
    check_models_unchanged(manifest, settings, where)
    family = str(manifest["family"])
    payloads = [payload_from_record(r, f"{folder}/manifest.json") for r in manifest["payloads"]]
    from .history_n import recipe_from_record

    scored = [(recipe_from_record(r, f"{where} warm start"), float(s)) for r, s in manifest["warm_start"]["scored"]]
    initial = [recipe_from_record(r, f"{where} initial recipe") for r in manifest["warm_start"]["initial"]]
    made_generators = list(generators) if generators else _make_generators(settings, host, plugins)
    try:
        made_scorer = scorer or make_scorer_from_settings(settings.scorer.name, settings.scorer.options, plugins)
        if settings.models.count > 2:
            from .session_n import runtime_memory

            runtime_memory(made_generators)  # the mix's memory is checked before the search goes on
        optimizer = make_search_optimizer(settings, family, scored, plugins)  # type: ignore[arg-type]
        history = RunHistory.open(folder)
        if history.n_models != settings.models.count:
            raise SessionError(
                f"{folder}/history.csv: records a {history.n_models}-model search but {where} names {settings.models.count} models; "
                "the history was edited or damaged: restore it, or start a new search"
            )
    except BaseException:
        for generator in made_generators:
            generator.close()
        raise
    manifest.setdefault("resumed", []).append(
        {"at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "rows": len(history), "overrides": overrides}
    )
    history.write_manifest(manifest)
    run = _make_run(settings, payloads, optimizer, made_generators, made_scorer, history, initial, folder.name, listeners,
                    lambda: make_search_optimizer(settings, family, scored, plugins))
    return SearchSession(settings, folder.name, folder, family, payloads, run, made_generators, made_scorer, manifest, host, resumed=True)


# --------------------------------------------------------------------------- outputs


def _merged_model_path(settings: SearchSettings, run_id: str) -> Path | None:
    target = settings.output.model
    if not target:
        return None
    path = Path(target)
    if path.suffix.lower() == ".safetensors":
        return path
    stems = [Path(m).stem for m in settings.models.listed()]
    name = safe_name("-x-".join(stems) or "merged") + f"-{run_id.rsplit('-', 1)[-1]}.safetensors"
    return path / name


def _render_images(session: SearchSession, recipe: Recipe) -> list[GeneratedImage]:
    generator = session.generators[0]
    images: list[GeneratedImage] = []
    try:
        generator.apply(recipe)
        for payload in session.payloads:
            images.extend(generator.generate(payload))
    finally:
        generator.restore()
    return images


def _save_images(folder: Path, images: Sequence[GeneratedImage]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_atomic(folder / (safe_name(f"{image.payload.key}-{image.index}-seed{image.seed}") + ".png"), png_bytes(image.image))
        for image in images
    ]


def _merge_model(session: SearchSession, recipe: Recipe, out: Path) -> Path:
    settings = session.settings
    if settings.models.count > 2:
        from .session_n import mix_model

        return mix_model(session, recipe, out)  # type: ignore[arg-type]
    try:
        from ..merge import merge_to_file  # type: ignore[attr-defined]
    except ImportError as exc:
        raise SessionError(f"the merge engine is not available here ({exc})") from None
    import torch

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    metadata = {"auto_mbw_search": _search_metadata(session)}
    merge_to_file(
        settings.models.a,
        settings.models.b,
        recipe,
        out,
        dtype=dtypes[settings.output.dtype],
        base_from=settings.output.base_from,
        vae_from=settings.output.vae_from,
        overwrite=settings.output.overwrite,
        extra_metadata=metadata,
    )
    if session.host is not None:
        session.host.model_saved(out)
    return out


def _search_metadata(session: SearchSession) -> str:
    return json.dumps({"run_id": session.run_id, "strategy": session.settings.strategy, "scorer": session.settings.scorer.name})


def merge_command(settings: SearchSettings, recipe: Path, out: Path | None) -> str:
    """The ``merge`` command line that builds the merged model from the written recipe (real paths, quoted)."""
    import shlex

    parts = ["python", "-m", "lib_mbw", "merge", str(settings.models.a), str(settings.models.b), "--recipe", str(recipe)]
    if out is not None:
        parts += ["-o", str(out)]
    parts += ["--dtype", settings.output.dtype]
    if settings.models.count > 2:
        from .session_n import merge_command_n

        parts = merge_command_n(settings, recipe, out)
    return " ".join(shlex.quote(p) for p in parts)


def write_outputs(session: SearchSession, outcome: SearchOutcome) -> None:
    """Recipe files, plots, best images, merged model, final manifest; errors are collected, not raised."""
    from ..plots import plot_run

    result = outcome.result
    folder = session.run_dir
    outputs = outcome.outputs
    higher = getattr(session.scorer, "higher_is_better", True)
    steps: list[tuple[str, Callable[[], None]]] = []
    mix = session.settings.models.count > 2
    if result.recipe is not None:
        recipe = result.recipe
        if mix:
            from .session_n import write_best_recipe_mix

            steps.append(("recipe", lambda: outputs.update(write_best_recipe_mix(session, recipe, result.score, result.reason))))  # type: ignore[arg-type]
        else:
            steps.append(("recipe", lambda: outputs.update(write_best_recipe(folder, recipe, family=session.family, score=result.score, reason=result.reason, run_id=session.run_id, overwrite=True))))
    if mix:
        from .session_n import plot_mix

        steps.append(("plots", lambda: outputs.update(plot_mix(result.rows, result.recipe, folder, family=session.family,  # type: ignore[arg-type]
                                                               models=session.settings.models.listed(), higher_is_better=higher))))
    else:
        steps.append(("plots", lambda: outputs.update(plot_run(result.rows, result.recipe, folder, family=session.family, higher_is_better=higher))))
    if result.recipe is not None and session.settings.output.save_images:
        def images() -> None:
            rendered = result.images or _render_images(session, result.recipe)  # type: ignore[arg-type]
            saved = _save_images(folder / "best_images", rendered)
            if saved:
                outputs["images"] = folder / "best_images"

        steps.append(("images", images))
    model_path = _merged_model_path(session.settings, session.run_id)
    if result.recipe is not None and model_path is not None and session.settings.output.merge:
        steps.append(("model", lambda: outputs.update(model=_merge_model(session, result.recipe, model_path))))  # type: ignore[arg-type]
    for name, step in steps:
        try:
            step()
        except Exception as exc:
            message = f"could not write the {name} output: {exc}"
            if name == "model" and "recipe_json" in outputs:
                message += "; merge it later with: " + merge_command(session.settings, outputs["recipe_json"], model_path)
            if not isinstance(exc, (MBWError, OSError)):  # a bug: keep its traceback; a full disk is one line
                log.error(message, exc_info=True)
            outcome.errors.append(message)
    manifest = dict(session.manifest)
    manifest["result"] = {
        "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "recipe": result.recipe.to_dict() if result.recipe else None,
        "score": result.score,
        "reason": result.reason,
        "stop_reason": result.stop_reason.value if result.stop_reason else None,
        "stop_message": result.stop_message,
        "evaluations": result.evaluations,
        "rows": summarize_rows(result.rows),
        "outputs": {k: str(v) for k, v in outputs.items()},
        "errors": outcome.errors,
    }
    try:
        write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n")
    except OSError as exc:  # a full disk: the history is intact and the manifest keeps its earlier version
        outcome.errors.append(f"could not record the result in {folder / 'manifest.json'}: {exc.strerror or exc}")
    session.manifest = manifest
    session.run.emit(OutputsWritten({k: str(v) for k, v in outputs.items()}))
