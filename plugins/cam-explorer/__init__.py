"""CAM Explorer inside the FiftyOne App (plugin ``@cam-explorer/cam``), built on camcore.

Operators
  compute_cams          heatmaps for the selected samples, or the current view when nothing is
                        selected: camcore.batch.run_batch, so the fields, labels, provenance and
                        resume are exactly those of ``python -m camcore push`` / ``batch``.
                        Delegated (``fiftyone delegated launch``) by default for big targets.
  open_in_cam_explorer  the Streamlit explorer's URL for the current (or first selected) sample,
                        with the model, methods and layers of the view's heatmap fields.
  record_finding        tag samples ``cam:<finding>`` with a note: camcore.store.add_finding.
  sync_app              (unlisted) run by the page every 2 s: the saved groups (and, in an App the
                        explorer did not launch, colours and switched-on map) when they changed;
                        the colours of any scale the page holds without them (any App).
Panel
  cam_heatmaps          the current sample's heatmap fields: method/layer pickers, provenance,
                        a button that prompts compute_cams for that sample.

camcore is imported lazily (torch takes seconds; FiftyOne re-imports plugins when they change),
from the repository this file lives in (symlinks resolved), or $CAM_EXPLORER_ROOT, or wherever
it is installed.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import queue
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

PLUGIN = "@cam-explorer/cam"
COMPUTE_URI = f"{PLUGIN}/compute_cams"
OPEN_URL_URI = f"{PLUGIN}/open_url"  # the plugin's JS operator (dist/index.umd.js)
SIDEBAR_GROUPS_URI = f"{PLUGIN}/set_sidebar_groups"  # the plugin's JS operator too
SAMPLE_TAGS_URI = f"{PLUGIN}/set_sample_tags"  # and this one: the open sample's new tags and findings in the modal
SCALE_COLOURS_URI = f"{PLUGIN}/set_scale_colours"  # and this one: colours for the page's scales that lack them
RUNS_TOLD_URI = f"{PLUGIN}/set_runs_told"  # and this one: what the page has been told of queued runs
# and this one: the samples the page has opened, read again (FiftyOne 1.22's modal keeps its first copy)
SAMPLE_COPIES_URI = f"{PLUGIN}/refresh_sample_copies"
RELOAD_MODELS_URI = f"{PLUGIN}/reload_models"
SETTINGS_STORE = "cam_explorer_settings"  # FiftyOne's execution store: settings the user sets once
EXPLORER_KEY = "explorer_url"
DELEGATE_OVER_ENV = "CAM_EXPLORER_DELEGATE_OVER"
DEFAULT_DELEGATE_OVER = 50  # samples: more than this run delegated unless the form says otherwise
PROGRESS_SECONDS = 1.0  # at most one progress write per second (delegated progress is a DB write)
CHUNK = 8
ERROR_KEY = "problem"  # the invalid property that carries a request's error to the form
# The form is asked for again at every change of a field: what it read of a view (its count, a
# field rule's labels and most boxes: each an aggregation over the view) is kept this long per view
# and reused (in camcore: this module is imported anew at each request); the run reads afresh.
FORM_FACTS_SECONDS = 30.0


def _camcore(*parts: str) -> Any:
    """Make ``camcore`` importable, then import and return ``camcore.<part>`` for each part (one
    part: the module). Each operator imports only what it uses: the page check (sync_app, every
    few seconds from each open App page) needs camcore.store; the compute form reads the
    registries and checks a request (batch_options, methods, models, weights: no torch); only a
    run (camcore.batch) loads torch and grad-cam (~4 s of CPU, and their memory, in the App's server)."""
    try:
        import camcore  # noqa: F401
    except ImportError:
        roots = [os.environ.get("CAM_EXPLORER_ROOT", ""), str(Path(os.path.realpath(__file__)).parents[2])]
        for root in roots:
            if root and (Path(root) / "camcore" / "__init__.py").is_file():
                sys.path.insert(0, root)
                break
        else:
            raise ImportError(
                "the CAM Explorer plugin needs the camcore package: set CAM_EXPLORER_ROOT to the "
                "cam-explorer checkout, or symlink the plugin from it instead of copying it")
    modules = tuple(importlib.import_module(f"camcore.{part}") for part in parts)
    return modules[0] if len(modules) == 1 else modules


def _refuse(inputs: Any, label: str, message: str) -> None:
    """An error in the operator's form that keeps it from running, saying why."""
    inputs.view(ERROR_KEY, types.Error(label=label, description=message), invalid=True, error_message=message)


def _can_queue() -> bool:
    """Whether a delegated run can be queued here. Open-source FiftyOne queues one only with
    FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true (and runs it only in a `fiftyone delegated launch`
    worker); otherwise the App offers "Background compute is not yet configured" and nothing runs,
    so every run executes now, in the App's server, with progress."""
    import fiftyone as fo

    return bool(fo.config.allow_legacy_orchestrators)


def _delegate_over() -> int:
    try:
        return int(os.environ.get(DELEGATE_OVER_ENV, DEFAULT_DELEGATE_OVER))
    except ValueError:
        return DEFAULT_DELEGATE_OVER


# ---------------------------------------------------------------- which samples


def _target(ctx, count: Callable[[Any], int] = len) -> tuple[Any, str]:
    """(the samples to work on, a sentence saying which): explicit ``sample_ids`` (the panel's
    button), else the App's selection, else the current view (counted by `count`)."""
    view = ctx.view
    if view is None:
        raise ValueError("open a dataset first")
    ids = [str(i) for i in (ctx.params.get("sample_ids") or [])]
    if ids:
        return _camcore("store").chosen_samples(view, ids), f"{len(ids)} chosen sample(s)"
    if ctx.selected:
        return view.select(ctx.selected, ordered=True), f"the {len(ctx.selected)} selected sample(s)"
    return view, f"the current view ({count(view)} samples)"


def _view_facts(samples: Any) -> dict:
    """The form's memo for these samples (one per view, kept FORM_FACTS_SECONDS): what the form's
    refreshes read of the view once (its count, BoxFacts' labels and most boxes)."""
    options, store = _camcore("batch_options", "store")
    return options.shared_facts(store.views.view_key(samples), FORM_FACTS_SECONDS)


def _forget_view(samples: Any) -> None:
    options, store = _camcore("batch_options", "store")
    options.forget_shared_facts(store.views.view_key(samples))


def _form_count(samples: Any) -> int:
    """Samples in the view (O(1) for a whole dataset), counted once per form memo."""
    facts = _view_facts(samples)
    if "count" not in facts:
        facts["count"] = _camcore("store").views.count(samples)
    return int(facts["count"])


def _one_sample(ctx) -> str | None:
    """The sample an action on "this sample" means: the one open in the modal, else the first
    selected one."""
    if ctx.current_sample:
        return str(ctx.current_sample)
    return str(ctx.selected[0]) if ctx.selected else None


# ---------------------------------------------------------------- compute_cams


def _weights_choices() -> dict[str, str]:
    """value -> label, as the explorer offers them (camcore.weights.choices: a typed path is never
    read, so the App cannot make the server open any file)."""
    weights = _camcore("weights")
    return {c.value: c.label for c in weights.choices()}


def _resolve_weights(choice: str) -> str:
    """A weights choice as run_batch takes it; a bare file name means that file in the folder."""
    weights = _camcore("weights")
    offered = weights.choices()
    found = weights.find_choice(choice, offered)
    if found is None:
        raise ValueError(f"weights {str(choice).strip()!r} are not offered: choose one of "
                         f"{', '.join(c.name for c in offered)} (weights files go in {weights.weights_dir()})")
    return found.value


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _request(params: dict) -> dict:
    """The params, defaulted, as camcore.batch_options.BatchOptions' fields (names not yet checked)."""
    options, methods, models = _camcore("batch_options", "methods", "models")
    model = str(params.get("model") or models.DEFAULT_MODEL).strip()
    spec = models.MODELS.get(model)
    return {
        "model": model,
        "weights": params.get("weights") or "auto",
        "methods": _as_list(params.get("methods")) or [methods.DEFAULT_METHOD],
        "layers": _as_list(params.get("layers")) or ([spec.default_layer] if spec else []),
        # a detector's form has Boxes instead of Target (a value left from another model is not read)
        "target_rule": (options.PREDICTED if spec is not None and spec.task == "detection"
                        else str(params.get("target") or options.PREDICTED).strip()),
        "eigen_smooth": bool(params.get("eigen_smooth", False)),
        "measures": _measure_options(params),
    }


def _box(params: dict) -> str | None:
    """The form's box rule, for a detector only (a value left from another model is not read)."""
    models = _camcore("models")
    spec = models.MODELS.get(str(params.get("model") or models.DEFAULT_MODEL).strip())
    return (str(params.get("box") or "").strip() or None) if spec is not None and spec.task == "detection" else None


def _measure_options(params: dict) -> Any:
    """The measures switch of the form (camcore.measures.MeasureOptions), or None when off."""
    if not params.get("measures"):
        return None
    measures = _camcore("measures")

    threshold = float(params.get("threshold", 0.5) if params.get("threshold") is not None else 0.5)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the background threshold is a share of the heatmap's mass, 0..1, got {threshold}")
    return measures.MeasureOptions(object_field=str(params.get("object_field") or "").strip() or None,
                                   threshold=threshold, faithfulness=bool(params.get("faithfulness", False)),
                                   object_label="*" if params.get("any_object") else "")


def check(params: dict) -> dict:
    """BatchOptions' fields for these params, every name checked the way batch checks them and
    the weights available: raises a CamError / ValueError with a one-line reason otherwise."""
    options, models, weights = _camcore("batch_options", "models", "weights")
    args = _request(params)
    request = options.BatchOptions(**args).checked()
    args["weights"] = _resolve_weights(args["weights"])
    weights.check_available(request.spec.weights, args["weights"])
    args["methods"], args["layers"] = list(request.methods), list(request.layers)
    return args


def _check_object_field(params: dict, dataset: Any, store: Any) -> None:
    """The measures' object field, as the batch checks it (a Segmentation or Detections field of
    the dataset): refused in the form, not a traceback from the run."""
    field = str(params.get("object_field") or "").strip()
    if params.get("measures") and field:
        store.datasets.object_field_kind(dataset, field)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class ComputeCams(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="compute_cams",
            label="CAM Explorer: compute heatmaps",
            description="Grad-CAM style heatmaps on the selected samples (or the current view), "
                        "stored as the same fields `camcore batch` writes",
            dynamic=True,  # layers and methods depend on the chosen model
            execute_as_generator=True,  # progress while it runs in the App
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            icon="local_fire_department",
        )

    def resolve_execution_options(self, ctx):
        if not _can_queue():  # no orchestrator: never offer a queue nothing would run
            from fiftyone.operators.executor import ExecutionOptions

            return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=False)
        return super().resolve_execution_options(ctx)

    def resolve_run_name(self, ctx) -> str:
        """The run's label in `fiftyone delegated list`: what it computes."""
        methods = ", ".join(_as_list(ctx.params.get("methods"))) or "default method"
        layers = ", ".join(_as_list(ctx.params.get("layers"))) or "default layer"
        return f"CAM heatmaps: {ctx.params.get('model') or 'default model'}, {methods} on {layers}"

    def resolve_delegation(self, ctx) -> bool | None:
        # The form's "delegate" box, which defaults to on for targets over the threshold.
        if not _can_queue():
            return False
        if "delegate" in ctx.params:
            return bool(ctx.params["delegate"])
        try:
            samples, _what = _target(ctx, _form_count)
            return _form_count(samples) > _delegate_over()
        except Exception:  # no dataset: let execution report it
            return None

    def resolve_input(self, ctx) -> types.Property:
        inputs = types.Object()
        try:
            samples, what = _target(ctx, _form_count)
            count = _form_count(samples)
        except Exception as exc:
            inputs.view(ERROR_KEY, types.Error(label="Nothing to compute on", description=_first_line(exc)))
            return types.Property(inputs)
        options, methods, models, store = _camcore("batch_options", "methods", "models", "store")
        # The model alone (not _request: a bad threshold raised here, and the App showed a traceback
        # for the form); check() below says what is wrong with the rest.
        spec = models.MODELS.get(str(ctx.params.get("model") or "").strip()) or models.get_spec(models.DEFAULT_MODEL)

        inputs.view("about", types.Notice(label=f"Computes heatmaps on {what}. Samples already done "
                                                f"with the same settings are skipped."))
        inputs.list("sample_ids", types.String(), view=types.HiddenView())
        model_view = types.Dropdown(label="Model")
        for key, m in models.MODELS.items():
            model_view.add_choice(key, label=m.label, description=m.description)
        # Strings, not enums: a wrong name gets camcore's own message (which names the right ones).
        # Nothing is `required`: FiftyOne does not apply defaults to SDK calls; _request does.
        inputs.str("model", default=models.DEFAULT_MODEL, view=model_view)
        _models_file_views(inputs)

        weights_view = types.Dropdown(label="Weights")
        for value, label in _weights_choices().items():
            weights_view.add_choice(value, label=label)
        inputs.str("weights", default="auto", view=weights_view)

        method_view = types.Dropdown(label="Methods", multiple=True,
                                     description=f"The methods that work on {spec.label} in a batch")
        for m in methods.methods_for(spec.task, spec.family):
            if not m.layer_independent:  # batch's own restriction (BatchOptions.checked)
                method_view.add_choice(m.key, label=methods.method_label(m.key))
        inputs.list("methods", types.String(), default=[methods.DEFAULT_METHOD], view=method_view)

        layer_view = types.Dropdown(label="Layers", multiple=True, description=f"Layers of {spec.label}")
        for layer in spec.layers:
            layer_view.add_choice(layer.name, label=layer.name, description=layer.path)
        inputs.list("layers", types.String(), default=[spec.default_layer], view=layer_view)

        if spec.task == "detection":  # a detector explains boxes: the box rule instead of a class
            box_view = types.AutocompleteView(
                label="Boxes", allow_user_input=True,
                description="top, top:<k> (the k best detections, a field each), class:<name>, all (optionally "
                            "@<score threshold>), or field:<Detections field>[:<class>] (every box of a field, a "
                            "field per box index); samples without the box are skipped")
            for rule in ("top", "top:3", "all", *(f"field:{f}" for f in (store.detection_fields(samples)
                                                                           if count else []))):
                box_view.add_choice(rule, label=rule)
            inputs.str("box", default="top", view=box_view)
        else:
            target_view = types.AutocompleteView(label="Target", allow_user_input=True,
                                                 description="'predicted' explains each sample's top class")
            for name in (options.PREDICTED, *spec.class_names()):
                target_view.add_choice(name, label=name)
            inputs.str("target", default=options.PREDICTED, view=target_view)
        inputs.bool("eigen_smooth", default=False, label="eigen_smooth",
                    description="First principal component of the weighted activations")
        _measure_views(inputs, ctx.params, store.root_dataset(samples) if count else None, store)
        _delegation_views(inputs, count, ctx.params)

        # Checked here as batch checks them: the App shows the reason and refuses to run, and a
        # bad request through the SDK fails validation before anything is loaded or written.
        problem = None
        if count == 0:
            problem = "no samples to compute on"
        else:
            try:
                checked = check(ctx.params)
                store.require_image(store.root_dataset(samples))
                _check_object_field(ctx.params, store.root_dataset(samples), store)
                # a detector's box rule, checked as the run expands it (an unknown class, a field
                # without boxes or with labels the model does not know): refused here, not mid-run
                options.box_batches(samples, options.BatchOptions(chunk=CHUNK, **checked), _box(ctx.params),
                                    options.BoxFacts(samples, _view_facts(samples)))  # the run reads afresh
            except Exception as exc:
                problem = _first_line(exc)
                _forget_view(samples)  # a refusal is read afresh at the next refresh (the data may be fixed)
        if problem:
            _refuse(inputs, "Cannot compute", problem)
        return types.Property(inputs, view=types.View(label="Compute CAM heatmaps"))

    def execute(self, ctx):
        batch = _camcore("batch")
        args = check(ctx.params)  # again: a queued run may meet another weights folder
        samples, _what = _target(ctx)
        from camcore import progress as meter  # the batch's and the CLI's throttle

        cancel = threading.Event()
        updates: queue.Queue = queue.Queue()
        throttle = meter.Throttle(PROGRESS_SECONDS)

        def progress(done: int, total: int, rate: float, eta: float | None, message: str) -> None:
            if not throttle.due(force=message in meter.FINAL_MESSAGES):
                return
            label = f"{done:,}/{total:,} samples ({rate:.2f}/s, {meter.eta_text(eta)}): {message}"
            fraction = done / total if total else 1.0
            if ctx.delegated:
                ctx.set_progress(progress=fraction, label=label)  # written to the run's record
            else:
                updates.put((fraction, label))

        # a detector: one run per box rule (top:<k>, a field's boxes), each resuming on its own fields
        runs = batch.box_batches(samples, batch.BatchOptions(chunk=CHUNK, **args), _box(ctx.params))

        def run() -> Any:
            return batch.run_batches(samples, runs, progress=progress, cancel=cancel)

        if ctx.delegated:
            report = run()
        else:
            # The App streams what this generator yields; the batch runs beside it.
            outcome: dict[str, Any] = {}

            def work() -> None:
                try:
                    outcome["report"] = run()
                except BaseException as exc:  # re-raised below, in the operator's thread
                    outcome["error"] = exc

            worker = threading.Thread(target=work, name="cam-explorer-compute", daemon=True)
            worker.start()
            try:
                while worker.is_alive() or not updates.empty():
                    try:
                        fraction, label = updates.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    yield ctx.trigger("set_progress", {"progress": fraction, "label": label})
            finally:
                if worker.is_alive():  # the App went away (GeneratorExit): stop at the next heatmap
                    cancel.set()
                worker.join()
            if "error" in outcome:
                raise outcome["error"]
            report = outcome["report"]
        summary = f"CAM heatmaps: {report.done} computed, {report.skipped + report.done_before} already done"
        if report.failed:
            summary += f", {len(report.failed)} failed (first: {report.failed[0][1]})"
        yield ctx.trigger("reload_dataset")
        from camcore.store import appstyle

        # An App that is already open keeps the colours and switched-on fields it loaded: send
        # it the dataset's saved ones (a colour scale per map, the newest map on).
        root = _camcore("store").root_dataset(samples)
        for uri, params in appstyle.app_updates(root):
            yield ctx.trigger(uri, params)
        # ... and the CAM heatmaps group, which no built-in operator sets (dist/index.umd.js), with
        # the version of all that: the page's own check (sync_app) does not send it (and reload) again
        from camcore.store import appwatch

        version = appwatch.page_version(root.name, os.environ.get(appwatch.WATCHED_ENV) == "1")
        yield ctx.trigger(SIDEBAR_GROUPS_URI, {"groups": appstyle.sidebar_groups(root), "version": version})
        yield ctx.trigger(SAMPLE_COPIES_URI)  # a sample opened before this run shows its new maps
        yield ctx.ops.notify(summary, variant="warning" if report.failed else "success")


def _measure_views(inputs: Any, params: dict, dataset: Any, store: Any) -> None:
    """The measures switch: score, on-object share, faithfulness and the background flag stored as
    fields beside each heatmap (the CAM Explorer Audit page and the App's filters read them)."""
    inputs.bool("measures", default=False, label="Store measures",
                description="Also store per heatmap: target score, share on the object, faithfulness, "
                            "background-dominated flag (fields camm_<measure>_...)")
    if not params.get("measures"):
        return
    objects = types.Dropdown(label="Object from", description="a Segmentation or Detections field; "
                             "none: the model's own (a segmenter's mask, a detector's explained box)")
    for name in ([*store.segmentation_fields(dataset), *store.detection_fields(dataset)] if dataset else []):
        objects.add_choice(name, label=name)
    inputs.str("object_field", view=objects)
    inputs.bool("any_object", default=False, label="Any object of the field",
                description="Off: the label that names the explained class; on: every object")
    inputs.float("threshold", default=0.5, label="Background-dominated below this share (0..1)")
    inputs.bool("faithfulness", default=False, label="Faithfulness scores (3 forwards per heatmap)")


def _delegation_views(inputs: Any, count: int, params: dict) -> None:
    """The form's word on where the run happens: queued (with a worker) or now, with progress."""
    over = _delegate_over()
    if _can_queue():
        inputs.bool("delegate", default=count > over, label="Run delegated",
                    description=f"Queue it (default for more than {over} samples) for a "
                                "`fiftyone delegated launch` worker instead of running it now")
        if bool(params["delegate"]) if "delegate" in params else count > over:
            launch, listing = delegated_commands()
            # After Schedule the App (1.22) closes this form: a generator operator's scheduled result
            # has no output. The page's own check (sync_app) then tells of the run as it goes.
            inputs.view("queued", types.Notice(
                label="Schedule queues this run for a worker. This page then says when it is queued, "
                      "how far it is and when it ends; its fields appear in the sidebar when it has "
                      "completed (all its runs: `fiftyone delegated list`).",
                # commands as code: the App draws this as markdown (an underscore in a path is no italic)
                description=f"Start a worker once, in a terminal (`make worker` in the CAM Explorer checkout "
                            f"does the same):\n\n`{launch}`\n\nSee the run:\n\n`{listing}`"))
    elif count > over:
        inputs.view("runs_now", types.Notice(
            label=f"{count} samples: this runs now in the App's server, its progress shown here",
            description="Queued background runs need a worker: see the README's 'Big runs'"))


def delegated_commands() -> tuple[str, str]:
    """(the command that starts a worker for queued runs, the command that lists this operator's
    runs), for this App server's environment: its FiftyOne, its plugins folder."""
    import shlex

    import fiftyone as fo

    exe = Path(sys.executable).parent / "fiftyone"
    fiftyone = shlex.quote(str(exe)) if exe.is_file() else "fiftyone"
    plugins = shlex.quote(str(fo.config.plugins_dir or Path(os.path.realpath(__file__)).parents[1]))
    launch = f"FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true FIFTYONE_PLUGINS_DIR={plugins} {fiftyone} delegated launch"
    return launch, f"{fiftyone} delegated list --operator {COMPUTE_URI}"


def _models_file_views(inputs: Any) -> None:
    """Which models file the form offers (the explorer's, same default location), a button that
    reads it again, and its skipped entries in one warning, each with its one-line reason."""
    model_file, models = _camcore("model_file", "models")
    path = model_file.models_file_path()
    if path is None:
        return
    inputs.view("reload_models", types.Button(
        label="Reload models file", operator=RELOAD_MODELS_URI,
        description=f"Your own models come from {path}"))
    skipped = models.skipped_models()
    if skipped:
        inputs.view("skipped_models", types.Warning(
            label=f"{len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} of the models file skipped",
            description="; ".join(f"{e.key}: {e.reason}" for e in skipped)))


class SyncApp(foo.Operator):
    """Run by the page itself every few seconds (dist/index.umd.js): on its first call (with the
    fields its schema holds) and when the dataset's saved sidebar groups changed since the page
    last saw them (a push or batch from another process, a colleague), show them: FiftyOne 1.22
    keeps the groups a page loaded for as long as it shows that dataset, whatever the session or
    reload_dataset sends, so a new CAM field would sit under "labels" until the tab is reloaded.
    In an App the explorer did not launch, the saved colours and switched-on fields too
    (camcore.store.appwatch.page_updates). One small database read per call; sent only on a
    change (the page passes the version it last saw), then the samples the page opened read again
    (refresh_sample_copies: the modal keeps its first copy). And, in any App, the colours of the
    scales the page reports holding without them (appwatch.scale_colours), and the queued runs'
    news (_tell_runs)."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(name="sync_app", label="CAM Explorer: show the saved sidebar groups",
                                  unlisted=True)

    def execute(self, ctx) -> dict:
        name = ctx.request_params.get("dataset_name")
        if not name:
            return {}
        appwatch = _camcore("store.appwatch")

        watched = os.environ.get(appwatch.WATCHED_ENV) == "1"
        known = ctx.params.get("known")  # the page's fields, on its first call
        known = [str(k) for k in known] if isinstance(known, list) else None
        version, ops = appwatch.page_updates(name, ctx.params.get("seen") or None, watched, known)
        for uri, params in ops:
            ctx.trigger(uri, params)
        if ops and ctx.params.get("seen"):  # new maps from elsewhere: on samples the page opened too
            ctx.trigger(SAMPLE_COPIES_URI)
        # Scales the page holds without their colours (from a session's state: a notebook's
        # session.view, its reconnect, another tab): drawn viridis until filled in, whatever saved them
        scales = appwatch.scale_colours(ctx.params.get("bare_scales"))
        if scales:
            ctx.trigger(SCALE_COLOURS_URI, {"scales": scales})
        _tell_runs(ctx, name)
        return {"version": version}


def _tell_runs(ctx, dataset_name: str) -> None:
    """Tell the page of the dataset's queued compute_cams runs as their state changes (FiftyOne
    1.22 shows nothing after Schedule): `runs` is what the page was told (None on its first check)."""
    from camcore.store import runs as queued

    told = ctx.params.get("runs")
    told = {str(k): str(v) for k, v in told.items()} if isinstance(told, dict) else None
    notices, now = queued.run_notices(told, queued.cam_runs(dataset_name, COMPUTE_URI))
    if notices:  # one notification: the App shows one at a time
        ctx.ops.notify("\n".join(text for text, _ in notices), variant=notices[-1][1])
    if queued.newly_completed(told, now):  # its maps came after its fields: new copies of the samples
        ctx.trigger("reload_dataset")  # (reload_samples redraws cached ones: a replaced map's old file is gone)
        ctx.trigger(SAMPLE_COPIES_URI)  # ... and the samples the page opened
    if now != (told or {}):  # (a page told of no run yet keeps asking as on its first check)
        ctx.trigger(RUNS_TOLD_URI, {"runs": now})


class ReloadModels(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="reload_models",
            label="CAM Explorer: reload the models file",
            description="Reads your models file again (new, changed and removed entries) without a restart",
            icon="refresh",
        )

    def execute(self, ctx) -> dict:
        model_file, models = _camcore("model_file", "models")  # its first operator in a fresh App server
        path = model_file.models_file_path()
        skipped = models.reload_model_file()
        mine = [spec.key for spec in models.list_models() if spec.source != "built-in"]
        message = (f"Models file {path} read: {len(mine)} model(s) from it, {len(skipped)} skipped"
                   if path else "No models file (set $CAM_EXPLORER_MODELS or add models.toml to the home)")
        if skipped:
            message += " (" + "; ".join(f"{e.key}: {e.reason}" for e in skipped) + ")"
        ctx.ops.notify(message, variant="warning" if skipped or not path else "success")
        return {"path": str(path or ""), "models": mine, "skipped": [e.to_dict() for e in skipped]}


# ---------------------------------------------------------------- open_in_cam_explorer


def _fields_in_view(ctx, store) -> dict[str, dict]:
    """Our heatmap fields (name -> meaning) that the current view has."""
    fields = store.heatmap_fields(ctx.dataset)
    schema = ctx.view.get_field_schema() if ctx.view is not None else {}
    return {name: meaning for name, meaning in fields.items() if name in schema}


def link_state(ctx, sample_id: str):
    """The explorer's state for this sample: the model, methods and layers of the heatmap fields
    this sample has in the view (the App's active ones first), else those of the view."""
    links, store = _camcore("links", "store")
    fields = _fields_in_view(ctx, store)
    if fields:
        sample = ctx.dataset.select([sample_id]).select_fields(list(fields)).first()
        present = {n: m for n, m in fields.items() if sample[n] is not None}
        active = {n: m for n, m in present.items() if n in (ctx.active_fields or [])}
        fields = active or present or fields
    model = Counter(m.get("model", "") for m in fields.values()).most_common(1)[0][0] if fields else ""
    chosen = [m for m in fields.values() if m.get("model") == model]
    targets = {m.get("target") for m in chosen}
    target = targets.pop() if len(targets) == 1 else ""
    untrained = bool(chosen) and all("untrained" in str(m.get("variant", "")).split("_") for m in chosen)
    return links.LinkState(
        dataset=ctx.dataset.name,
        view=str(ctx.request_params.get("view_name") or ""),
        sample=sample_id,
        model=model,
        weights="untrained" if untrained else "",
        target="" if target in ("", "predicted") else str(target),
        methods=tuple(dict.fromkeys(m["method"] for m in chosen if m.get("method"))),
        layers=tuple(dict.fromkeys(m["layer"] for m in chosen if m.get("layer"))),
    )


def _settings():
    """Settings the user sets once, kept in FiftyOne's database (global, not per dataset)."""
    from fiftyone.operators.store import ExecutionStore

    return ExecutionStore.create(SETTINGS_STORE)


def explorer_address() -> tuple[str, str]:
    """(the explorer's address, where it comes from): the explorer that launched this App (it
    passes $CAM_EXPLORER_URL to the App's server; a value the user exported also lands there),
    else the address the user gave once in open_in_cam_explorer, else the default."""
    links = _camcore("links")
    env = os.environ.get(links.BASE_URL_ENV, "").strip()
    if env:
        return env.rstrip("/"), "from the explorer that launched this App"
    try:
        saved = str(_settings().get(EXPLORER_KEY) or "").strip()
    except Exception:  # no settings store reachable: the default still works
        saved = ""
    if saved:
        return saved, "saved the last time you set it here"
    return links.DEFAULT_BASE_URL, "the default: change it once here, it is remembered"


def _checked_address(address: str) -> str:
    address = address.strip().rstrip("/")
    if not address.startswith(("http://", "https://")) or any(c.isspace() for c in address):
        raise ValueError(f"the explorer address must be a URL starting with http:// or https://, not {address!r}")
    return address


class OpenInCamExplorer(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="open_in_cam_explorer",
            label="CAM Explorer: open this sample in the explorer",
            description="Opens the Streamlit explorer on the current (or first selected) sample",
            dynamic=True,
            icon="open_in_new",
        )

    def resolve_input(self, ctx) -> types.Property:
        inputs = types.Object()
        sample_id = _one_sample(ctx) if ctx.dataset is not None else None
        if sample_id is None:
            message = "open a sample (or select one) first"
            _refuse(inputs, "No sample", message)
            return types.Property(inputs)
        known, where = explorer_address()
        inputs.str("explorer", default=known, label="Explorer address",
                   description=f"Where CAM Explorer runs ({where})")
        try:
            base = _checked_address(str(ctx.params.get("explorer") or known))
        except ValueError as exc:
            _refuse(inputs, "Bad address", _first_line(exc))
            return types.Property(inputs)
        inputs.view("preview", types.Notice(label="Opens the sample in CAM Explorer at " + base))
        return types.Property(inputs, view=types.View(label="Open in CAM Explorer"))

    def execute(self, ctx) -> dict:
        links = _camcore("links")
        sample_id = _one_sample(ctx)
        if sample_id is None:
            raise ValueError("open a sample (or select one) first")
        known, _where = explorer_address()
        base = _checked_address(str(ctx.params.get("explorer") or known))
        if base != known:  # the user set it: remembered for the next time (and for findings)
            _settings().set(EXPLORER_KEY, base)
        url = links.explorer_url(link_state(ctx, sample_id), base=base)
        ctx.trigger(OPEN_URL_URI, {"url": url})  # the browser opens it in a new tab
        return {"url": url}

    def resolve_output(self, ctx) -> types.Property:
        outputs = types.Object()
        url = (ctx.results or {}).get("url", "")
        # Also a link: a popup blocker may stop the new tab.
        # Its label short (a long URL overflowed the dialog); the whole URL stays in the link.
        outputs.view("url", types.LinkView(label="Open the sample in CAM Explorer", href=url, new_window=True,
                                           description="Opened in a new tab; this link is for a blocked popup"))
        return types.Property(outputs, view=types.View(label="CAM Explorer"))


# ---------------------------------------------------------------- record_finding


def _finding_targets(ctx) -> tuple[list[str], str]:
    """(the samples a finding is recorded on, a sentence saying which): the sample open in the
    App's modal, else the selection."""
    if ctx.current_sample:
        return [str(ctx.current_sample)], "the open sample"
    ids = [str(s) for s in (ctx.selected or [])]
    return ids, f"the {len(ids)} selected sample(s)" if ids else ""


def _names(dataset: Any, ids: list[str], most: int = 5) -> str:
    """The file names of these samples (the first `most`), for a sentence."""
    paths = dataset.select(ids[:most], ordered=True).values("filepath")
    more = f" and {len(ids) - most} more" if len(ids) > most else ""
    return ", ".join(os.path.basename(p) for p in paths) + more


class RecordFinding(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="record_finding",
            label="CAM Explorer: record a finding",
            description="Tags the selected samples cam:<finding> and notes why, as the explorer does",
            dynamic=True,
            icon="flag",
        )

    def resolve_input(self, ctx) -> types.Property:
        inputs = types.Object()
        store = _camcore("store")
        ids, which = _finding_targets(ctx) if ctx.dataset is not None else ([], "")
        if not ids:
            message = "select samples (or open one) to record a finding on"
            _refuse(inputs, "No samples", message)
            return types.Property(inputs)
        inputs.view("about", types.Notice(label=f"Records the finding on {which}: {_names(ctx.dataset, ids)}"))
        tag_view = types.AutocompleteView(label="Finding", allow_user_input=True,
                                          description="One of these, or type your own")
        for tag in store.FINDING_TAGS:
            tag_view.add_choice(tag, label=tag)
        inputs.str("tag", required=True, view=tag_view)
        inputs.str("note", default="", allow_empty=True, label="Note",
                   view=types.TextFieldView(multiline=True))
        field_view = types.Dropdown(label="About the heatmap (optional)")
        for name, meaning in _fields_in_view(ctx, store).items():
            field_view.add_choice(name, label=name, description=f"{meaning.get('method')} on "
                                  f"{meaning.get('layer')} of {meaning.get('model')}")
        inputs.str("heatmap_field", required=False, view=field_view)
        tag = str(ctx.params.get("tag") or "").strip()
        if tag:
            try:
                store.finding_tag(tag)
            except Exception as exc:
                _refuse(inputs, "Bad finding", _first_line(exc))
        return types.Property(inputs, view=types.View(label="Record a finding"))

    def execute(self, ctx) -> dict:
        links, store = _camcore("links", "store")
        ids, which = _finding_targets(ctx)
        if not ids:
            raise ValueError("select samples (or open one) to record a finding on")
        base = _checked_address(explorer_address()[0])  # the explorer the findings link back to
        tag = str(ctx.params.get("tag") or "").strip()
        note = str(ctx.params.get("note") or "")
        field = ctx.params.get("heatmap_field") or None
        sample_tag = store.finding_tag(tag)  # a bad tag fails before any sample is touched
        takes_url = "url" in inspect.signature(store.add_finding).parameters
        meaning = store.heatmap_fields(ctx.dataset).get(field or "", {})
        for sid in ids:
            extra = {}
            if takes_url:  # the explorer's link to what the finding is about
                state = links.LinkState(dataset=ctx.dataset.name, sample=sid, model=meaning.get("model", ""),
                                        methods=tuple(filter(None, [meaning.get("method")])),
                                        layers=tuple(filter(None, [meaning.get("layer")])))
                extra["url"] = links.explorer_url(state, base=base)
            store.add_finding(ctx.dataset, sid, tag, note, field, **extra)
        ctx.trigger("reload_samples")  # the grid's tags
        ctx.trigger("reload_dataset")  # the tags' counts in the sidebar
        if ctx.current_sample:  # the modal keeps its copy of the sample through both: all we wrote
            fields = store.finding_fields_for_app(ctx.dataset, ids[0])
            ctx.trigger(SAMPLE_TAGS_URI, {"sample_id": ids[0], "fields": fields})
        ctx.ops.notify(f"Recorded '{tag}' (tag {sample_tag}) on {which}", variant="success")
        return {"tag": sample_tag, "samples": len(ids)}


# ---------------------------------------------------------------- the panel


# The label's own storage, not its provenance: never rows of the table.
NOT_PROVENANCE = frozenset({"_id", "_cls", "id", "map", "map_path", "range", "tags"})
THUMB_WIDTH = 192  # px: the panel's small map


def provenance_keys(labels: list[Any]) -> list[str]:
    """Every provenance attribute these labels carry: the declared ones (store.LABEL_ATTRIBUTES)
    in their order, then any other (a batch's own, say target_request), sorted."""
    store = _camcore("store")
    present: set[str] = set()
    for label in labels:
        if label is not None:
            present |= {k for k, v in label.to_dict().items() if v is not None} - NOT_PROVENANCE
    declared = [k for k in store.LABEL_ATTRIBUTES if k in present]
    return declared + sorted(present - set(declared))


def _text(value: Any) -> str:
    if isinstance(value, dict):  # versions: one line
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return "" if value is None else str(value)


def map_thumbnail(heatmap: Any, raw_min: Any = None, raw_max: Any = None) -> str:
    """A PNG data URI: the map small, in the colour scale the App and the explorer use, over a
    colour bar labelled with the map's raw range (low -> high)."""
    import base64

    import cv2
    import numpy as np

    overlay = _camcore("overlay")
    h, w = heatmap.shape
    height = max(1, round(h * THUMB_WIDTH / w))
    small = cv2.resize(heatmap.astype(np.float32), (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
    ramp = np.tile(np.linspace(0, 1, THUMB_WIDTH, dtype=np.float32), (12, 1))
    strip = np.full((20, THUMB_WIDTH, 3), 255, np.uint8)
    lo = f"{float(raw_min):.3g}" if raw_min is not None else "low"
    hi = f"{float(raw_max):.3g}" if raw_max is not None else "high"
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(strip, lo, (2, 14), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    (tw, _th), _base = cv2.getTextSize(hi, font, 0.4, 1)
    cv2.putText(strip, hi, (THUMB_WIDTH - tw - 2, 14), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    gap = np.full((4, THUMB_WIDTH, 3), 255, np.uint8)
    image = np.vstack([overlay.colorize(small), gap, overlay.colorize(ramp), strip])
    ok, png = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise ValueError("could not encode the heatmap thumbnail")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def _label_attr(label: Any, name: str) -> Any:
    try:
        return label[name]
    except (KeyError, AttributeError):  # labels made before an attribute existed
        return None


class CamHeatmapsPanel(foo.Panel):
    @property
    def config(self) -> foo.PanelConfig:
        return foo.PanelConfig(
            name="cam_heatmaps",
            label="CAM heatmaps",
            surfaces="grid modal",
            help_markdown="The current sample's CAM Explorer heatmap fields: pick a method and a "
                          "layer to see which fields hold them and how each was made.",
            icon="local_fire_department",
        )

    def on_load(self, ctx) -> None:
        self._refresh(ctx)

    def on_change_current_sample(self, ctx) -> None:
        self._refresh(ctx)

    def on_change_selected(self, ctx) -> None:
        self._refresh(ctx)

    def on_pick(self, ctx) -> None:
        self._refresh(ctx)

    def _fields(self, ctx) -> tuple[str | None, dict[str, dict]]:
        """(sample id, {field: meaning} of the heatmap fields that sample has set)."""
        store = _camcore("store")
        sample_id = _one_sample(ctx) if ctx.dataset is not None else None
        if sample_id is None:
            return None, {}
        fields = _fields_in_view(ctx, store)
        if not fields:
            return sample_id, {}
        sample = ctx.dataset.select([sample_id]).select_fields(list(fields)).first()
        return sample_id, {n: m for n, m in fields.items() if sample[n] is not None}

    def _refresh(self, ctx) -> None:
        """Pickers' choices and the provenance of the fields that match them, as panel data."""
        sample_id, fields = self._fields(ctx)
        methods = sorted({m.get("method", "") for m in fields.values()} - {""})
        picked = ctx.panel.state.method
        method = picked if picked in methods else (methods[0] if methods else None)
        layers = sorted({m.get("layer", "") for m in fields.values() if m.get("method") == method} - {""})
        layer = ctx.panel.state.layer if ctx.panel.state.layer in layers else (layers[0] if layers else None)
        chosen = sorted(n for n, m in fields.items() if m.get("method") == method and m.get("layer") == layer)
        # One row per provenance attribute, one column per field (a method on a layer may exist
        # for several targets, weights or smoothings). Values travel as text: the table shows
        # them as they are. The table's data is keyed by the fields shown and the old data is
        # cleared first: rows of the field chosen before can never stay under another's columns.
        rows: list[dict] = []
        image = ""
        if chosen:
            sample = ctx.dataset.select([sample_id]).select_fields(chosen).first()
            labels = [sample[name] for name in chosen]
            for key in provenance_keys(labels):
                values = [_label_attr(label, key) for label in labels]
                rows.append({"attribute": key, **{f"f{i}": _text(v) for i, v in enumerate(values)}})
            heatmap = _camcore("store").read_heatmap(ctx.dataset, sample_id, chosen[0])
            if heatmap is not None:
                image = map_thumbnail(heatmap, _label_attr(labels[0], "raw_min"), _label_attr(labels[0], "raw_max"))
        table = "provenance_" + hashlib.sha1("|".join(chosen).encode()).hexdigest()[:12]
        ctx.panel.state.set({"sample_id": sample_id, "methods": methods, "layers": layers,
                             "method": method, "layer": layer, "fields": chosen, "table": table})
        ctx.panel.data.clear()
        ctx.panel.data.set({table: rows, "map_image": image})

    def compute(self, ctx) -> None:
        state = ctx.panel.state
        if not state.sample_id:
            return
        params = {"sample_ids": [state.sample_id], "delegate": False}
        ctx.prompt(COMPUTE_URI, params=params, on_success=self.on_pick)

    def render(self, ctx) -> types.Property:
        panel = types.Object()
        state = ctx.panel.state
        if not state.sample_id:
            panel.md("Open a sample (or select one) to see its CAM heatmaps.", name="hint")
        elif not state.methods:
            panel.md("This sample has no CAM Explorer heatmaps in this view yet.", name="hint")
        else:
            method_view = types.Dropdown(label="Method")
            for m in state.methods:
                method_view.add_choice(m, label=m)
            panel.str("method", view=method_view, default=state.method, on_change=self.on_pick)
            layer_view = types.Dropdown(label="Layer")
            for layer in state.layers or []:
                layer_view.add_choice(layer, label=layer)
            panel.str("layer", view=layer_view, default=state.layer, on_change=self.on_pick)
            if state.fields:
                panel.str("map_image", view=types.ImageView(width=f"{THUMB_WIDTH}px", alt=f"{state.fields[0]}: "
                          "the map in the jet colour scale, over its colour bar (raw range low to high)"))
            table = types.TableView()
            table.add_column("attribute", label="Provenance")
            for i, name in enumerate(state.fields or []):
                table.add_column(f"f{i}", label=name)
            panel.list(state.table or "provenance", types.Object(), view=table)
        if state.sample_id:
            panel.btn("compute", label="Compute CAMs for this sample", icon="local_fire_department",
                      on_click=self.compute, variant="contained")
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2))


def register(p) -> None:
    p.register(ComputeCams)
    p.register(OpenInCamExplorer)
    p.register(RecordFinding)
    p.register(ReloadModels)
    p.register(SyncApp)
    p.register(CamHeatmapsPanel)
