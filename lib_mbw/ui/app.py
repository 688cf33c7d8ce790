"""``build_ui(host)``: the auto-MBW interface, the same for the WebUI tab and the standalone app.

Layout: a **Search** tab (settings on the left, in sections with a message
slot each; live view on the right: buttons, status line, UNet-shaped weights
of the current candidate and the best recipe, human-rating panel, galleries of
the latest and the best images, convergence plot, history table, export and
merge), a **Payloads** tab (the payload manager) and a **Past runs** tab
(pick a run, see its plots and images, resume it or warm-start a new search
from it).

Streaming: the live components are outputs of ``watch``, a generator
callback. It subscribes to the ``SearchController`` (a queue that the search
thread's listener fills), renders what changed and yields it; it returns when
the search ends. Search and Resume chain into it; a page load starts it too,
so a reloaded page reattaches to a running search. No ``every=`` timers.

Components are built only through ``compat`` where gradio 3.41 and 4.x differ.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Collection, Iterator, Sequence

import gradio as gr

from ..blocks import BLOCKS
from ..errors import MBWError
from ..payloads import EXPANSIONS, list_payloads
from ..recipe import FOLDS, ORDERS
from ..scorers.tally import POSITIVE_MAPS, TALLIES
from ..search.settings import DTYPES
from . import actions, compat, payload_editor
from .controller import SearchController
from .form import FORM_FIELDS, GRID_HEADERS, MODEL_FIELDS, SECTIONS, FormValues, default_block_grid
from .outputs import EXPORT_FORMATS, export_recipe, merge_recipe, merged_model_path, recipe_as
from .runs import RUN_HEADERS, list_runs, load_run, run_folder, run_overview, run_table
from .views import HISTORY_HEADERS, LiveView, convergence_svg, unet_html

log = logging.getLogger(__name__)

CSS = """
#mbw-status {min-height: 3em}
.mbw-errors p, .mbw-errors li {color: var(--error-text-color, #b91c1c)}
.mbw-unet svg {color: var(--body-text-color, #222)}
"""

_CONTROLLERS: dict[tuple[str, str], SearchController] = {}


def controller_for(host: Any, plugins: Collection[str] | None = None) -> SearchController:
    """The one controller of a host (kept across UI rebuilds, e.g. the WebUI's "Reload UI").

    ``plugins``: what the server's starter enabled (default: ``AUTO_MBW_PLUGINS``), plus the host's own generator spec.
    """
    from ..search.plugins import is_plugin, plugins_from_env

    enabled = set(plugins_from_env() if plugins is None else plugins)
    own = str(getattr(host, "generator", "") or "")
    if is_plugin(own):
        enabled.add(own)
    key = (str(getattr(host, "name", "host")), str(host.paths.history))
    controller = _CONTROLLERS.get(key)
    if controller is None:
        controller = _CONTROLLERS[key] = SearchController(host, enabled)
    elif not controller.active:
        controller.host = host
        if plugins is not None:
            controller.plugins = frozenset(enabled)
    return controller


def _safe(action: Callable[[], str]) -> str:
    """Run a button action; an MBWError becomes its message (shown next to the button)."""
    try:
        return action()
    except MBWError as exc:
        return f"⚠ {exc}"


class _Live:
    """The live components, in the order ``watch`` yields them."""

    def __init__(self) -> None:
        self.components: list[Any] = []

    def add(self, component: Any) -> Any:
        self.components.append(component)
        return component


def build_ui(host: Any, defaults: FormValues | None = None, plugins: Collection[str] | None = None) -> gr.Blocks:
    """The auto-MBW interface for ``host`` (``hosts.base.Host``); enable the queue before launching it.

    ``defaults`` fills the search form (e.g. from a settings file); otherwise
    it starts with the defaults of ``SearchSettings``. ``plugins``: the
    ``package.module:factory`` names the server's starter enabled (default:
    ``AUTO_MBW_PLUGINS``); UI clients choose only among those and registered names.
    """
    controller = controller_for(host, plugins)
    d = defaults or FormValues()
    paths = host.paths
    form: dict[str, Any] = {}
    errors: dict[str, Any] = {}

    def error_slot(section: str) -> Any:
        errors[section] = gr.Markdown("", elem_classes=["mbw-errors"], elem_id=f"mbw-errors-{section}")
        return errors[section]

    with gr.Blocks(analytics_enabled=False, title="auto-MBW", css=CSS) as blocks:
        with gr.Tabs():
            # ============================================================ search
            with gr.Tab("Search", id="mbw-search-tab"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=380):
                        with gr.Accordion("Models", open=True):
                            with gr.Row():
                                models = host.list_models()
                                form["model_a"] = compat.dropdown("Model A (weight 0)", models, d.model_a, elem_id="mbw-model-a")
                                form["model_b"] = compat.dropdown("Model B (weight 1)", models, d.model_b, elem_id="mbw-model-b")
                            mix_note = actions.mix_unavailable(host)
                            with gr.Row():
                                for name in MODEL_FIELDS[2:]:
                                    letter = name[-1].upper()
                                    form[name] = compat.optional_dropdown(
                                        f"Model {letter} (optional: a mix of 3-5)" if letter == "C" else f"Model {letter} (optional)",
                                        models, getattr(d, name), enabled=not mix_note, elem_id=f"mbw-model-{letter.lower()}",
                                    )
                            if mix_note:
                                gr.Markdown(mix_note, elem_id="mbw-mix-note")
                            refresh_models = gr.Button("↻ Refresh model list", size="sm")
                            models_info = gr.Markdown(actions.describe_models(host, d.model_a, d.model_b).text, elem_id="mbw-models-info")
                            error_slot("models")
                        with gr.Accordion("Payloads", open=True):
                            form["payload_names"] = gr.CheckboxGroup(
                                choices=list_payloads(paths.payloads), value=[n for n in d.payload_names if n in list_payloads(paths.payloads)], label="Payloads to render (none ticked = all)",
                                elem_id="mbw-payloads",
                            )
                            refresh_payloads = gr.Button("↻ Refresh payloads", size="sm")
                            error_slot("payloads")
                        with gr.Accordion("Optimizer", open=False):
                            with gr.Row():
                                form["strategy"] = compat.dropdown("Strategy", actions.strategy_choices(), d.strategy, custom=True, elem_id="mbw-strategy")
                                form["max_evaluations"] = gr.Number(value=d.max_evaluations, precision=0, label="Evaluations (most; a mix of N models: x (N-1))", elem_id="mbw-max-evals")
                                form["patience"] = gr.Number(value=d.patience, precision=0, label="Early stop: evaluations without improvement (0 = off; a mix: x (N-1))", elem_id="mbw-patience")
                            with gr.Row():
                                form["tol_abs"] = gr.Number(value=d.tol_abs, label="Improvement must exceed (score units)")
                                form["tol_rel"] = gr.Number(value=d.tol_rel, label="… or this fraction of |best|")
                                form["max_minutes"] = gr.Number(value=d.max_minutes, label="Time budget, minutes (0 = none)", elem_id="mbw-max-minutes")
                                form["target_score"] = gr.Textbox(value=d.target_score, label="Stop at score (blank = none)")
                            with gr.Row():
                                form["levels"] = gr.Number(value=d.levels, precision=0, label="Levels per block (21 = steps of 0.05)", elem_id="mbw-levels")
                                form["init_random"] = gr.Number(value=d.init_random, precision=0, label="Random initial points", elem_id="mbw-init-random")
                                form["init_grid"] = gr.Number(value=d.init_grid, precision=0, label="Grid initial points")
                                form["init_vertex"] = gr.Number(value=d.init_vertex, precision=0, label="Vertex initial points")
                            with gr.Row():
                                form["seed"] = gr.Number(value=d.seed, precision=0, label="Seed")
                                form["run_name"] = gr.Textbox(value=d.run_name, label="Run name", elem_id="mbw-run-name")
                                form["search_base"] = gr.Checkbox(value=d.search_base, label="Also search the text encoder (BASE)")
                            form["strategy_options"] = gr.Textbox(value=d.strategy_options, label="Strategy options (JSON)", placeholder='{"n_startup_trials": 10}')
                            error_slot("search")
                        with gr.Accordion("Blocks: ranges, frozen weights, groups", open=False):
                            gr.Markdown(
                                "One row per block. **freeze**: fix the weight (0 = A, 1 = B). **min/max**: search only "
                                "within that range. **group**: blocks with the same label share one weight."
                            )
                            form["block_grid"] = compat.dataframe(
                                headers=GRID_HEADERS, datatype=["str", "number", "number", "str", "str"], interactive=True,
                                fixed_rows=len(BLOCKS), value=d.block_grid, elem_id="mbw-block-grid",
                            )
                            reset_grid = gr.Button("Reset grid", size="sm")
                            error_slot("blocks")
                        with gr.Accordion("Warm start", open=False):
                            form["warm_start_paths"] = gr.Textbox(
                                value=d.warm_start_paths, lines=2, label="Learn from: run folders, history CSVs (ours or the seed tool's), recipe files — one per line",
                                elem_id="mbw-warm-start",
                            )
                            form["warm_start_files"] = compat.upload_files("… or upload history CSVs / recipe files", file_types=[".csv", ".json", ".txt"])
                            form["initial_recipe"] = gr.Textbox(
                                value=d.initial_recipe, lines=2, label="Evaluate this recipe first (any format: JSON, named weights, 27 values, MBW preset)",
                            )
                            with gr.Row():
                                form["recipe_order"] = compat.dropdown("Order of 27-value input", list(ORDERS), d.recipe_order)
                                form["recipe_fold"] = compat.dropdown("Convention of 25/26-value presets", list(FOLDS), d.recipe_fold)
                            error_slot("warm_start")
                        with gr.Accordion("Scoring", open=False):
                            with gr.Row():
                                form["scorer"] = compat.dropdown("Scorer", actions.scorer_choices(), d.scorer, custom=True, elem_id="mbw-scorer")
                                form["tally"] = compat.dropdown("Tally of payload scores", list(TALLIES), d.tally)
                                form["tally_trim"] = gr.Number(value=d.tally_trim, label="Trim (trimmed tally)")
                                form["tally_positive"] = compat.dropdown("Negative scores in power means", list(POSITIVE_MAPS), d.tally_positive)
                            form["scorer_options"] = gr.Textbox(value=d.scorer_options, label="Scorer options (JSON)", elem_id="mbw-scorer-options")
                            with gr.Row():
                                form["abandon_margin"] = gr.Textbox(value=d.abandon_margin, label="Abandon a candidate this far below the best (blank = never)")
                                form["abandon_after"] = gr.Textbox(value=d.abandon_after, label="… after this many payloads (blank = half)")
                                form["rescore_top"] = gr.Number(value=d.rescore_top, precision=0, label="Re-score the top N on new seeds (0 = off)", elem_id="mbw-rescore-top")
                                form["max_failures"] = gr.Number(value=d.max_failures, precision=0, label="Pause after failures in a row")
                            with gr.Row():
                                form["fidelity_mode"] = compat.dropdown("Multi-fidelity screening (render cheaply first)", ["off", "screen"], d.fidelity_mode)
                                form["fidelity_steps"] = gr.Number(value=d.fidelity_steps, label="Screening: fraction of the steps")
                                form["fidelity_payloads"] = gr.Textbox(value=d.fidelity_payloads, label="Screening: first N payloads (blank = all)")
                                form["fidelity_quantile"] = gr.Number(value=d.fidelity_quantile, label="Screening: promote at or above this quantile")
                            gr.Markdown("**Payload weights** (how much each payload counts in the tally; saved into the payload files)")
                            weights_table = compat.dataframe(headers=payload_editor.WEIGHT_HEADERS, datatype=["str", "number"], interactive=True,
                                                             value=payload_editor.weight_table(paths.payloads), elem_id="mbw-weights")
                            save_weights = gr.Button("Save payload weights", size="sm")
                            weights_message = gr.Markdown("")
                            with gr.Accordion("Human rating (scorer 'human')", open=False):
                                with gr.Row():
                                    form["human_low"] = gr.Number(value=d.human_low, precision=0, label="Lowest rating")
                                    form["human_high"] = gr.Number(value=d.human_high, precision=0, label="Highest rating")
                                    form["human_timeout"] = gr.Textbox(value=d.human_timeout, label="Seconds to rate (blank = no limit)")
                                with gr.Row():
                                    form["human_on_missing"] = compat.dropdown("Image without a rating", ["fail", "auto"], d.human_on_missing)
                                    form["human_auto_weight"] = gr.Slider(0, 1, value=d.human_auto_weight, step=0.05, label="Weight of the automatic score")
                                    form["human_auto_scorer"] = gr.Textbox(value=d.human_auto_scorer, label="Automatic scorer to mix in (e.g. imagereward)")
                            form["generator_options"] = gr.Textbox(value=d.generator_options, label="Generator options (JSON)", elem_id="mbw-generator-options")
                            error_slot("scoring")
                        with gr.Accordion("Output", open=False):
                            with gr.Row():
                                form["merge_when_done"] = gr.Checkbox(value=d.merge_when_done, label="Merge the best recipe into a model when done")
                                form["save_images"] = gr.Checkbox(value=d.save_images, label="Save the best recipe's images")
                                form["overwrite"] = gr.Checkbox(value=d.overwrite, label="Overwrite an existing model file")
                            with gr.Row():
                                form["output_name"] = gr.Textbox(value=d.output_name, label=f"Model file name in {paths.models} (blank = automatic)")
                                form["dtype"] = compat.dropdown("dtype", list(DTYPES), d.dtype)
                                form["base_from"] = compat.dropdown("Text encoder from", ["a", "b", "merge"], d.base_from, custom=True)
                                form["vae_from"] = gr.Textbox(value=d.vae_from, label="VAE from file (blank = model A's)")
                            error_slot("output")

                    with gr.Column(scale=3, min_width=480):
                        with gr.Row():
                            search_button = gr.Button("Search", variant="primary", elem_id="mbw-search")
                            pause_button = gr.Button("Pause", elem_id="mbw-pause")
                            resume_button = gr.Button("Resume", elem_id="mbw-resume")
                            stop_button = gr.Button("Stop (restore model)", variant="stop", elem_id="mbw-stop")
                            watch_button = gr.Button("↻ Reconnect live view", size="sm", elem_id="mbw-watch")
                        action_message = gr.Markdown("", elem_id="mbw-action-message")
                        live = _Live()
                        live.add(gr.Markdown("**Idle**", elem_id="mbw-status"))
                        live.add(gr.HTML(unet_html(None, None), elem_id="mbw-unet"))
                        with gr.Column(visible=False, elem_id="mbw-rating") as rating_panel:
                            rating_info = gr.Markdown("")
                            rating_gallery = compat.gallery("Images to rate", columns=4, elem_id="mbw-rating-gallery")
                            rating_id = gr.Number(value=0, precision=0, visible=False, elem_id="mbw-rating-id")
                            sliders = []
                            for row_start in range(0, actions.MAX_RATING_SLIDERS, 4):
                                with gr.Row():
                                    for number in range(row_start, row_start + 4):
                                        sliders.append(gr.Slider(1, 10, value=5, step=1, label=f"image {number + 1}", visible=False, elem_id=f"mbw-rate-{number + 1}"))
                            rating_text = gr.Textbox(value="", label="… or type all ratings, e.g. 7, 5, s, 9 (s = skip)", elem_id="mbw-rating-text")
                            with gr.Row():
                                submit_rating = gr.Button("Submit ratings", variant="primary", elem_id="mbw-rating-submit")
                                skip_rating = gr.Button("Skip these images")
                            rating_message = gr.Markdown("")
                        live.add(rating_panel)
                        live.add(rating_info)
                        live.add(rating_gallery)
                        live.add(rating_id)
                        for slider in sliders:
                            live.add(slider)
                        with gr.Row():
                            live.add(compat.gallery("Latest evaluation", columns=5, height=200, elem_id="mbw-latest"))
                            live.add(compat.gallery("Best so far", columns=5, height=200, elem_id="mbw-best"))
                        live.add(gr.HTML(convergence_svg([]), elem_id="mbw-convergence"))
                        live.add(compat.dataframe(headers=HISTORY_HEADERS, datatype=["number", "str", "str", "number", "str", "number", "str"],
                                                  label="Evaluations (newest first)", elem_id="mbw-history", height=320))
                        with gr.Accordion("Best recipe: export or merge", open=False):
                            with gr.Row():
                                export_format = compat.dropdown("Format", list(EXPORT_FORMATS), "text", elem_id="mbw-export-format")
                                export_button = gr.Button("Export recipe", elem_id="mbw-export")
                            export_text = gr.Textbox(label="Recipe", lines=4, show_copy_button=True, elem_id="mbw-export-text")
                            export_file = compat.download_file("Recipe file")
                            export_message = gr.Markdown("")
                            with gr.Row():
                                merge_name = gr.Textbox(value="", label=f"Model file name in {paths.models} (blank = automatic)")
                                merge_overwrite = gr.Checkbox(value=False, label="Overwrite")
                                merge_button = gr.Button("Merge & save best", variant="primary", elem_id="mbw-merge")
                            merge_message = gr.Markdown("", elem_id="mbw-merge-message")

            # ============================================================ payloads
            with gr.Tab("Payloads", id="mbw-payloads-tab"):
                gr.Markdown(f"Payload files in `{paths.payloads}`; wildcards `__name__` read `{paths.wildcards}/name.txt`.")
                payload_list = compat.dataframe(headers=payload_editor.PAYLOAD_HEADERS, datatype=["str", "str", "number", "str"],
                                                value=payload_editor.payload_table(paths.payloads), elem_id="mbw-payload-table")
                with gr.Row():
                    validate_button = gr.Button("↻ Refresh / validate all", size="sm")
                    edit_choice = compat.dropdown("Payload", list_payloads(paths.payloads), None, elem_id="mbw-payload-choice")
                    load_button = gr.Button("Load into editor", size="sm")
                    new_button = gr.Button("New payload", size="sm")
                editor: dict[str, Any] = {}
                with gr.Row():
                    editor["name"] = gr.Textbox(label="Name (file name)", elem_id="mbw-payload-name")
                    editor["weight"] = gr.Number(value=1.0, label="Tally weight")
                    editor["expansion"] = compat.dropdown("Wildcard expansion", list(EXPANSIONS), "random")
                    editor["variants"] = gr.Number(value=None, precision=0, label="Prompts to expand into (blank = 1 / all)")
                editor["prompt"] = gr.Textbox(lines=3, label="Prompt", elem_id="mbw-payload-prompt")
                editor["negative_prompt"] = gr.Textbox(lines=2, label="Negative prompt")
                with gr.Row():
                    editor["steps"] = gr.Number(value=20, precision=0, label="Steps")
                    editor["cfg_scale"] = gr.Number(value=7.0, label="CFG scale")
                    editor["sampler"] = gr.Textbox(value="Euler a", label="Sampler")
                    editor["scheduler"] = gr.Textbox(value="Automatic", label="Scheduler")
                with gr.Row():
                    editor["width"] = gr.Number(value=512, precision=0, label="Width")
                    editor["height"] = gr.Number(value=512, precision=0, label="Height")
                    editor["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1 = fixed when a search starts)")
                    editor["batch_size"] = gr.Number(value=1, precision=0, label="Batch size")
                    editor["clip_skip"] = gr.Number(value=1, precision=0, label="Clip skip")
                editor["extra"] = gr.Textbox(lines=2, label="Other fields passed to the generator (JSON)")
                with gr.Row():
                    replace_existing = gr.Checkbox(value=False, label="replace existing")
                    save_payload = gr.Button("Save", variant="primary", elem_id="mbw-payload-save")
                    new_name = gr.Textbox(label="Duplicate as")
                    duplicate_button = gr.Button("Duplicate")
                    confirm_delete = gr.Checkbox(value=False, label="yes, delete")
                    delete_button = gr.Button("Delete", variant="stop")
                    preview_button = gr.Button("Preview wildcard expansions")
                payload_message = gr.Markdown("", elem_id="mbw-payload-message")
                preview_text = gr.Markdown("")

            # ============================================================ past runs
            with gr.Tab("Past runs", id="mbw-runs-tab"):
                gr.Markdown(f"Run folders in `{paths.history}`.")
                runs_table = compat.dataframe(headers=RUN_HEADERS, datatype=["str", "str", "str", "str", "number", "number", "str"],
                                              value=run_table(list_runs(paths.history)), elem_id="mbw-runs")
                with gr.Row():
                    refresh_runs = gr.Button("↻ Refresh", size="sm")
                    run_choice = compat.dropdown("Run", [r.run_id for r in list_runs(paths.history)], None, elem_id="mbw-run-choice")
                run_info = gr.Markdown("")
                with gr.Row():
                    run_more = gr.Number(value=None, precision=0, label="Evaluations (most) when resuming (blank = as recorded)")
                    resume_run = gr.Button("Resume this run", variant="primary", elem_id="mbw-resume-run")
                    warm_run = gr.Button("New search warm-started from it", elem_id="mbw-warm-run")
                run_message = gr.Markdown("", elem_id="mbw-run-message")
                with gr.Row():
                    run_convergence = gr.HTML("", elem_id="mbw-run-convergence")
                    run_images = compat.gallery("Best images", columns=3, elem_id="mbw-run-images")
                run_unet = gr.HTML("")
                with gr.Row():
                    run_format = compat.dropdown("Format", list(EXPORT_FORMATS), "text")
                    run_export = gr.Button("Export recipe")
                    run_merge_name = gr.Textbox(value="", label="Model file name (blank = automatic)")
                    run_merge = gr.Button("Merge & save")
                run_recipe_text = gr.Textbox(label="Recipe", lines=4, show_copy_button=True)
                run_file = compat.download_file("Recipe file")
                run_output_message = gr.Markdown("")

        missing = set(FORM_FIELDS) - set(form)
        if missing:
            raise RuntimeError(f"form fields without a component: {sorted(missing)}")
        form_inputs = [form[name] for name in FORM_FIELDS]
        error_outputs = [errors[section] for section in SECTIONS]
        editor_inputs = [editor[name] for name in payload_editor.EDITOR_FIELDS]

        # ------------------------------------------------------------ live view

        def watch() -> Iterator[list[Any]]:
            encoder = compat.StreamEncoder()
            for view in controller.watch(max_sliders=actions.MAX_RATING_SLIDERS):
                yield encoder.encode(_live_values(view, len(sliders)))

        watch_options = dict(concurrency_limit=None, show_progress="hidden")
        compat.listen(watch_button.click, watch, [], live.components, api_name="auto_mbw_watch", **watch_options)
        compat.listen(blocks.load, watch, [], live.components, **watch_options)

        # ------------------------------------------------------------ search and control

        def on_search(*values: Any) -> list[Any]:
            result = actions.start_from_form(host, controller, FormValues.from_values(values))
            messages = result.section_messages()
            summary = "starting the search" if result.ok else "⚠ fix the settings marked in red, then press Search again"
            return [messages[s] for s in SECTIONS] + [summary]

        search_event = compat.listen(search_button.click, on_search, form_inputs, error_outputs + [action_message], api_name="auto_mbw_search")
        compat.listen(search_event.then, watch, [], live.components, **watch_options)
        compat.listen(pause_button.click, lambda: _safe(controller.pause), [], [action_message], api_name="auto_mbw_pause")
        compat.listen(resume_button.click, lambda: _safe(controller.resume_run), [], [action_message], api_name="auto_mbw_resume")
        compat.listen(stop_button.click, lambda: _safe(controller.stop), [], [action_message], api_name="auto_mbw_stop")

        def on_rate(request_id: Any, text: str, *values: Any) -> list[Any]:
            return [_safe(lambda: _submit(controller, request_id, values, text)), ""]

        def on_skip(request_id: Any) -> list[Any]:
            count = len(controller.snapshot().rating.images) if controller.snapshot().rating else 0
            return [_safe(lambda: _submit(controller, request_id, [], " ".join(["s"] * count) if count else "")), ""]

        compat.listen(submit_rating.click, on_rate, [rating_id, rating_text, *sliders], [rating_message, rating_text], api_name="auto_mbw_rate")
        compat.listen(skip_rating.click, on_skip, [rating_id], [rating_message, rating_text])

        # ------------------------------------------------------------ models, payloads, grid

        def on_models(a: str | None, b: str | None) -> str:
            return actions.describe_models(host, a, b).text

        for dropdown in (form["model_a"], form["model_b"]):
            compat.listen(dropdown.change, on_models, [form["model_a"], form["model_b"]], [models_info])

        model_pickers = [form[name] for name in MODEL_FIELDS]

        def on_refresh_models(*chosen: str | None) -> list[Any]:
            titles = host.list_models()
            return [compat.update(choices=titles, value=a if a in titles else None) for a in chosen[:2]] + [
                compat.update(choices=["", *titles], value=c if c in titles else "") for c in chosen[2:]]

        compat.listen(refresh_models.click, on_refresh_models, model_pickers, model_pickers)

        def payload_choices(chosen: Sequence[str] | None = None) -> list[Any]:
            names = list_payloads(paths.payloads)
            kept = [n for n in (chosen or []) if n in names]
            return [
                compat.update(choices=names, value=kept),
                payload_editor.weight_table(paths.payloads, kept),
                payload_editor.payload_table(paths.payloads),
                compat.update(choices=names, value=None),
            ]

        payload_outputs = [form["payload_names"], weights_table, payload_list, edit_choice]
        compat.listen(refresh_payloads.click, payload_choices, [form["payload_names"]], payload_outputs)
        compat.listen(validate_button.click, payload_choices, [form["payload_names"]], payload_outputs)
        compat.listen(form["payload_names"].change, lambda chosen: payload_editor.weight_table(paths.payloads, chosen),
                      [form["payload_names"]], [weights_table])
        compat.listen(save_weights.click, lambda rows: _safe(lambda: payload_editor.save_weights(paths.payloads, rows)),
                      [weights_table], [weights_message])
        compat.listen(reset_grid.click, default_block_grid, [], [form["block_grid"]])

        # ------------------------------------------------------------ payload manager

        def on_load(name: str | None) -> list[Any]:
            if not name:
                return [compat.no_change()] * len(editor_inputs) + [""]
            try:
                fields = payload_editor.load_for_edit(paths.payloads, name or "")
            except MBWError as exc:
                return [compat.no_change()] * len(editor_inputs) + [f"⚠ {exc}"]
            return fields.values() + [f"loaded {name}"]

        def on_new() -> list[Any]:
            return payload_editor.EditorFields().values() + ["new payload: fill in a name and a prompt, then Save"]

        def with_lists(message: str, chosen: Sequence[str] | None) -> list[Any]:
            return [message] + payload_choices(chosen)

        compat.listen(load_button.click, on_load, [edit_choice], editor_inputs + [payload_message])
        compat.listen(edit_choice.change, on_load, [edit_choice], editor_inputs + [payload_message])
        compat.listen(new_button.click, on_new, [], editor_inputs + [payload_message])
        compat.listen(
            save_payload.click,
            lambda replace, chosen, *values: with_lists(_safe(lambda: payload_editor.save_from_fields(paths.payloads, payload_editor.EditorFields.from_values(values), overwrite=replace)), chosen),
            [replace_existing, form["payload_names"], *editor_inputs], [payload_message, *payload_outputs],
        )
        compat.listen(
            duplicate_button.click,
            lambda name, target, chosen: with_lists(_safe(lambda: payload_editor.duplicate(paths.payloads, name, target)), chosen),
            [edit_choice, new_name, form["payload_names"]], [payload_message, *payload_outputs],
        )
        compat.listen(
            delete_button.click,
            lambda name, sure, chosen: with_lists(_safe(lambda: payload_editor.delete(paths.payloads, name, sure)), chosen),
            [edit_choice, confirm_delete, form["payload_names"]], [payload_message, *payload_outputs],
        )
        compat.listen(
            preview_button.click,
            lambda *values: _safe(lambda: payload_editor.preview(payload_editor.EditorFields.from_values(values), paths.payloads, paths.wildcards)),
            editor_inputs, [preview_text],
        )

        # ------------------------------------------------------------ export and merge (live run)

        def on_export(fmt: str) -> list[Any]:
            try:
                source = actions.live_recipe(controller)
                result = _export(source, fmt)
            except MBWError as exc:
                return [compat.no_change(), None, f"⚠ {exc}"]
            return [result.text, compat.served_file(result.files[0]), result.message()]

        def on_merge(name: str, overwrite: bool) -> str:
            return _safe(lambda: _merge(host, actions.live_recipe(controller), name, overwrite))

        compat.listen(export_button.click, on_export, [export_format], [export_text, export_file, export_message], api_name="auto_mbw_export")
        compat.listen(merge_button.click, on_merge, [merge_name, merge_overwrite], [merge_message], api_name="auto_mbw_merge")

        # ------------------------------------------------------------ past runs

        def on_refresh_runs() -> list[Any]:
            runs = list_runs(paths.history)
            return [run_table(runs), compat.update(choices=[r.run_id for r in runs])]

        def on_pick_run(run_id: str | None) -> list[Any]:
            if not run_id:
                return ["", "", [], "", ""]
            try:
                details = load_run(run_folder(paths.history, run_id))
            except MBWError as exc:
                return [f"⚠ {exc}", "", [], "", ""]
            plot = convergence_svg(details.rows, higher_is_better=details.higher_is_better)
            weights = unet_html(None, details.recipe, details.family, title="returned recipe (orange)") if details.recipe else ""
            text = recipe_as(details.recipe, "text", details.family)[0] if details.recipe else ""
            return [run_overview(details), plot, details.best_images, weights, text]

        def on_resume_run(run_id: str | None, more: Any) -> str:
            def resume() -> str:
                if not run_id:
                    raise MBWError("pick a run first")
                controller.resume(run_folder(paths.history, run_id), actions.resume_overrides(more))
                return f"resuming {run_id}: watch it in the Search tab"

            return _safe(resume)

        def on_warm(run_id: str | None) -> list[Any]:
            try:
                if not run_id:
                    raise MBWError("pick a run first")
                values = actions.warm_start_form(host, run_folder(paths.history, run_id))
            except MBWError as exc:
                return [compat.no_change()] * len(form_inputs) + [f"⚠ {exc}"]
            values.payload_names = [n for n in values.payload_names if n in list_payloads(paths.payloads)]
            note = f"The Search tab now holds the settings of {run_id}, warm-started from it; change what you like and press Search."
            if not values.model_a or not values.model_b:
                note += " Its models are not in the model list: choose models A and B."
            return values.values() + [note]

        def on_run_export(run_id: str | None, fmt: str) -> list[Any]:
            try:
                if not run_id:
                    raise MBWError("pick a run first")
                result = _export(actions.run_recipe(run_folder(paths.history, run_id)), fmt)
            except MBWError as exc:
                return [compat.no_change(), None, f"⚠ {exc}"]
            return [result.text, compat.served_file(result.files[0]), result.message()]

        def on_run_merge(run_id: str | None, name: str) -> str:
            def merge() -> str:
                if not run_id:
                    raise MBWError("pick a run first")
                return _merge(host, actions.run_recipe(run_folder(paths.history, run_id)), name, False)

            return _safe(merge)

        compat.listen(refresh_runs.click, on_refresh_runs, [], [runs_table, run_choice])
        compat.listen(run_choice.change, on_pick_run, [run_choice], [run_info, run_convergence, run_images, run_unet, run_recipe_text])
        resume_event = compat.listen(resume_run.click, on_resume_run, [run_choice, run_more], [run_message], api_name="auto_mbw_resume_run")
        compat.listen(resume_event.then, watch, [], live.components, **watch_options)
        compat.listen(warm_run.click, on_warm, [run_choice], form_inputs + [run_message])
        compat.listen(run_export.click, on_run_export, [run_choice, run_format], [run_recipe_text, run_file, run_output_message])
        compat.listen(run_merge.click, on_run_merge, [run_choice, run_merge_name], [run_output_message])
    return blocks


# --------------------------------------------------------------------------- helpers of the callbacks


def _live_values(view: LiveView, slider_count: int) -> list[Any]:
    """The values of ``_Live.components`` for one frame (``no_change`` where the view has nothing new)."""
    keep = compat.no_change
    values: list[Any] = [
        view.status if view.status is not None else keep(),
        view.unet if view.unet is not None else keep(),
    ]
    rating = view.rating
    if rating is None:
        values += [keep(), keep(), keep(), keep()] + [keep() for _ in range(slider_count)]
    else:
        middle = round((rating.low + rating.high) / 2)
        values += [
            compat.update(visible=rating.visible),
            rating.message,
            rating.images,
            rating.request_id,
        ]
        values += [
            compat.update(visible=rating.visible and n < rating.count, minimum=rating.low, maximum=rating.high, value=middle)
            for n in range(slider_count)
        ]
    values += [
        view.latest if view.latest is not None else keep(),
        view.best if view.best is not None else keep(),
        view.convergence if view.convergence is not None else keep(),
        view.history if view.history is not None else keep(),
    ]
    return values


def _submit(controller: SearchController, request_id: Any, slider_values: Sequence[Any], text: str) -> str:
    pending = controller.snapshot().rating
    if pending is None:
        raise MBWError("no images are waiting for ratings")
    ratings = actions.parse_ratings(slider_values, text, len(pending.images))
    controller.submit_ratings(int(request_id or 0), ratings)
    return f"ratings sent: {', '.join('skip' if r is None else f'{r:g}' for r in ratings)}"


def _export(source: actions.RecipeSource, fmt: str) -> Any:
    if source.run_dir is None:
        raise MBWError("this recipe has no run folder to export into")
    return export_recipe(source.recipe, fmt, family=source.family, folder=source.run_dir / "exports", stem=source.run_id or "recipe",
                         score=source.score, reason=source.reason)


def _merge(host: Any, source: actions.RecipeSource, name: str, overwrite: bool) -> str:
    out = merged_model_path(source.settings, source.run_id, host.paths.models, name or "")
    path = merge_recipe(source.recipe, source.settings, out, run_id=source.run_id, host=host, overwrite=overwrite)
    return f"merged model written: `{path}`"


__all__ = ["build_ui", "controller_for"]
