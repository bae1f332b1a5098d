"""`python -m camcore`: the registries, the demo dataset, and CAMs from the command line.

  python -m camcore models [--json]
  python -m camcore methods [--json]
  python -m camcore demo-data [--json]
  python -m camcore cam  (--image PATH | --dataset NAME --sample ID_OR_FILENAME) [options] [--out DIR]
  python -m camcore push --dataset NAME --sample ID_OR_FILENAME [options] [--out DIR]
  python -m camcore batch --dataset NAME [--tag T ...] [--filename-contains S] --model M [options]
                          [--workers N [--ray-address auto|ray://HOST:10001]]

Every user error (unknown model, layer, method or class, a bad image, a missing dataset...)
ends with exit status 2 and one line on stderr, never a traceback (--debug shows it).
Progress goes to stderr, results to stdout (JSON with --json).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from camcore.batch_options import BatchOptions

EXIT_USAGE = 2  # user errors: bad arguments and every CamError
EXIT_INTERNAL = 1  # a bug: anything else
PROG = "python -m camcore"


class UsageError(Exception):
    """An argparse error, turned into one line by main()."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # argparse prints usage + message and exits; we want one line
        raise UsageError(f"{self.prog}: {message}")


_METHOD_KEYS = "{method keys}"  # in a help text: the method registry's keys, filled in when help is shown


class _HelpFormatter(argparse.HelpFormatter):
    """Reads the method registry only when help is printed: it imports torch and pytorch-grad-cam
    (seconds of CPU), which parsing, usage errors and the commands without a model never need."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and _METHOD_KEYS in text:
            from camcore.methods import METHODS

            text = text.replace(_METHOD_KEYS, ", ".join(METHODS))
        return text


# ---------------------------------------------------------------- helpers


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _status(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"camcore: {message}", file=sys.stderr, flush=True)


# Results go to the real stdout. While a command runs, sys.stdout points to stderr, so that what
# libraries print (FiftyOne's progress bars, pytorch-grad-cam's warnings) never corrupts --json.
_results = sys.stdout


class _StdoutToStderr(io.TextIOBase):
    """Stands in for sys.stdout while a command runs: forwards to the current sys.stderr.
    A distinct object (not sys.stderr itself), so libraries that look for handlers writing to
    sys.stdout (eta's stdout capture, used by FiftyOne) never grab logging's stderr handler."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()

    def fileno(self) -> int:
        return sys.stderr.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only here: it is sys.stderr's
        return getattr(sys.stderr, "encoding", "utf-8")


def _say(*parts, **kwargs) -> None:
    print(*parts, file=_results, **kwargs)


def _print_json(data) -> None:
    json.dump(data, _results, indent=2, default=_json_default)
    _results.write("\n")


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def file_stem(*parts: str) -> str:
    """A safe, readable file name stem from model/method/layer/target: [A-Za-z0-9_-] only."""
    cleaned = []
    for part in parts:
        text = str(part).replace("+", "plus")  # gradcam++ must not collide with gradcam
        text = re.sub(r"[^A-Za-z0-9-]+", "_", text).strip("_")
        cleaned.append(text or "x")
    return "__".join(cleaned)[:180]


# ---------------------------------------------------------------- registries


def cmd_models(args: argparse.Namespace) -> int:
    from camcore.model_file import models_file_path
    from camcore.models import DEFAULT_MODEL, list_models, skipped_models

    specs, skipped = list_models(), skipped_models()
    if args.json:
        path = models_file_path()
        _print_json({"default": DEFAULT_MODEL, "models_file": str(path) if path else None,
                     "models": [spec.to_dict() for spec in specs],
                     "skipped": [entry.to_dict() for entry in skipped]})
        return 0
    for spec in specs:
        mark = " (default)" if spec.key == DEFAULT_MODEL else ""
        _say(f"{spec.key}{mark}: {spec.label}")
        _say(f"  task: {spec.task}; weights: {spec.weights.describe()}")
        if spec.source != "built-in":
            _say(f"  arch: {spec.arch}; classes: {len(spec.class_names())} ({spec.classes_file}); "
                 f"from {spec.source}")
        _say(f"  layers: {', '.join(s.name for s in spec.layers)} (default {spec.default_layer})")
    for entry in skipped:  # bad entries of the models file: said, never fatal
        print(f"warning: {entry}", file=sys.stderr)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from camcore.methods import DEFAULT_METHOD, METHODS

    if args.json:
        _print_json({"default": DEFAULT_METHOD, "methods": [spec.to_dict() for spec in METHODS.values()]})
        return 0
    for spec in METHODS.values():
        flags = [spec.kind.value] + (["slow"] if spec.slow else []) + (["in article"] if spec.in_article else [])
        limits = []
        if spec.tasks != ("classification", "segmentation"):
            limits.append("/".join(spec.tasks) + " only")
        if spec.families != ("cnn", "vit"):
            limits.append("/".join(spec.families) + " only")
        _say(
            f"{spec.key}: {spec.label} [{', '.join(flags + limits)}]"
            + (f" - {spec.note}" if spec.note else "")
        )
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from camcore import demo_data

    dataset = demo_data.ensure_demo_dataset()
    if args.json:
        _print_json({"dataset": dataset.name, "samples": len(dataset)})
    else:
        _say(dataset.name)
    return 0


# ---------------------------------------------------------------- cam and push


def _validate_request(args: argparse.Namespace):
    """Check every name before anything slow happens; return (spec, layers, methods)."""
    from camcore import targets as targets_mod
    from camcore.errors import MethodError
    from camcore.methods import DEFAULT_METHOD, get_method
    from camcore.models import DEFAULT_MODEL, get_spec

    spec = get_spec(args.model or DEFAULT_MODEL)
    layers = list(dict.fromkeys(spec.layer(name).name for name in (args.layer or [spec.default_layer])))
    methods = list(dict.fromkeys(get_method(m).key for m in (args.method or [DEFAULT_METHOD])))
    unsupported = [m for m in methods if get_method(m).unsupported_reason(spec.task, spec.family)]
    if unsupported and len(unsupported) == len(methods):
        reason = get_method(unsupported[0]).unsupported_reason(spec.task, spec.family) or ""
        raise MethodError(f"{reason} (model '{spec.key}')")
    box = getattr(args, "box", None)
    if spec.task == "detection":
        if args.target is not None and str(args.target).strip():
            raise _usage(args, f"{spec.key} is a detection model: it explains a box (--box top, det:<i>, "
                               "class:<name>, all, field:<field>[:<i>], id:<detection id>), not --target")
    elif box:
        raise _usage(args, f"--box is for detection models; {spec.key} is a {spec.task} model: use --target")
    elif args.target is not None and str(args.target).strip():
        targets_mod.class_index(spec.class_names(), args.target)  # unknown class: fail now, with a hint
    if args.input_size is not None and args.input_size < 8:
        raise _usage(args, f"--input-size must be at least 8, got {args.input_size}")
    if args.input_size is not None and spec.task != "segmentation":
        _status(args, f"note: --input-size is for segmentation models; {spec.key} always sees its own "
                      "input size")
    if not 0.0 <= args.alpha <= 1.0:
        raise _usage(args, f"--alpha must be in 0..1, got {args.alpha}")
    return spec, layers, methods


def _usage(args: argparse.Namespace, message: str) -> UsageError:
    return UsageError(f"{PROG} {args.command}: {message}")


def _resolve_image(args: argparse.Namespace):
    """(LoadedImage, dataset or None, sample or None)."""
    from camcore.images import load_image

    if getattr(args, "image", None):
        return load_image(args.image), None, None
    from camcore import store

    dataset = store.load_dataset(args.dataset)
    sample = store.get_sample(dataset, args.sample)
    return load_image(store.sample_image_path(sample)), dataset, sample


def _compute(args: argparse.Namespace):
    """Validate, load, explain: (CamResult, LoadedImage, dataset, sample, spec)."""
    import torch

    from camcore.engine import Explainer, Progress, grid_pairs, iter_heatmaps
    from camcore.errors import CamError
    from camcore.methods import METHODS
    from camcore.models import load_model
    from camcore.results import Heatmap

    spec, layers, methods = _validate_request(args)
    image, dataset, sample = _resolve_image(args)
    started = time.perf_counter()
    model = load_model(spec.key, args.weights, args.device)
    _status(
        args,
        f"model {spec.key}: {model.weights_label} on {model.device} ({time.perf_counter() - started:.1f} s)",
    )
    if not model.pretrained:
        _status(args, "warning: UNTRAINED weights: these heatmaps say nothing about a trained model")

    def announce(i: int, method: str, layer: str) -> Progress | None:
        """Slow pairs are said before they start and report their progress, throttled."""
        what = f"[{i + 1}/{len(pairs)}] {method} on {layer}"
        reasons = [METHODS[method].note or "a slow method"] if METHODS[method].slow else []
        reasons += ["6 augmented passes (aug smooth)"] if args.aug_smooth else []
        if not reasons:
            return None
        note = "; ".join(reasons)
        _status(args, f"{what}: slow, {note[0].lower() + note[1:]}")
        return _throttled(args, what)

    heatmaps: list[Heatmap] = []
    errors: list[str] = []
    request = args.target
    if spec.task == "detection":
        from camcore import store

        request = store.box_rule(sample, getattr(args, "box", None))
    with torch.enable_grad():
        explainer = Explainer(model, image, request, tuple(layers), args.aug_smooth, args.input_size)
        pairs = grid_pairs(methods, layers)
        for step in iter_heatmaps(explainer, pairs, args.eigen_smooth, announce):
            method, layer, h = step.method, step.layer, step.heatmap
            if h is None:
                errors.append(f"{method} on {layer}: {step.exception}")
                _status(args, f"warning: {method} on {layer}: {_one_line(step.exception)}")
                continue
            if METHODS[method].slow or args.aug_smooth:
                _status(args, f"[{step.index + 1}/{len(pairs)}] {method} on {layer}: done in {step.seconds:.1f} s")
            if h.blank:
                _status(args, f"warning: {method} on {layer}: {h.BLANK_NOTE}")
            if not step.repeat:  # layer-independent methods appear once
                heatmaps.append(h)
    if not heatmaps:
        raise CamError(errors[0] if errors else "No heatmap was computed.")
    result = explainer.result(heatmaps, errors)
    for note in image.notes:
        _status(args, f"note: image {note}")
    return result, image, dataset, sample, spec


def _throttled(args: argparse.Namespace, what: str, every: float = 2.0):
    """A progress callback that prints at most every `every` seconds (the first after `every`)."""
    from camcore.progress import Throttle

    throttle = Throttle(every)
    throttle.due(force=True)  # the clock starts now

    def progress(fraction: float, message: str) -> None:
        if throttle.due():
            _status(args, f"{what}: {message} ({fraction:.0%})")

    return progress


def write_outputs(result, image, out_dir: Path, alpha: float, colormap: str) -> list[dict]:
    """Each heatmap as float32 .npy (image H x W, 0..1) and an overlay PNG; a segmentation model
    also gets its predicted mask. Returns one record per heatmap."""

    import cv2
    import numpy as np

    from camcore import overlay

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from camcore.errors import CamError

        raise CamError(f"Cannot create the output folder {out_dir}: {exc.strerror or exc}") from exc

    def write_atomic(path: Path, data: bytes) -> None:
        from camcore import files
        from camcore.errors import CamError

        try:
            files.write_bytes(path, data)
        except OSError as exc:
            raise CamError(f"Cannot write {path}: {exc.strerror or exc}") from exc

    def write_png(path: Path, rgb: np.ndarray) -> None:
        from camcore.errors import CamError

        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise CamError(f"Cannot write {path}: PNG encoding failed")
        write_atomic(path, png.tobytes())

    def write_npy(path: Path, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, array)
        write_atomic(path, buffer.getvalue())

    def stamp(rgb: np.ndarray) -> np.ndarray:
        return rgb if result.pretrained else overlay.watermark_untrained(rgb)

    def full_size(rgb: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        # A huge image was computed downscaled: its files come out at the image's own size.
        height, width = result.full_size
        return rgb if rgb.shape[:2] == (height, width) else cv2.resize(rgb, (width, height),
                                                                       interpolation=interpolation)

    records, used = [], set()
    for h in result.heatmaps:
        suffix = ("_aug" if h.aug_smooth else "") + ("_eigen" if h.eigen_smooth else "")
        stem = file_stem(result.model, h.method, h.layer, h.target.identity_name) + suffix
        base, n = stem, 2
        while stem in used:
            stem, n = f"{base}_{n}", n + 1
        used.add(stem)
        npy, png = out_dir / f"{stem}.npy", out_dir / f"{stem}.png"
        write_npy(npy, np.asarray(result.full_map(h), dtype=np.float32))
        write_png(png, full_size(stamp(overlay.overlay(image.rgb, h.map, alpha, colormap))))
        records.append(
            {
                "method": h.method,
                "layer": h.layer,
                "target": h.target.name,
                "npy": str(npy.resolve()),
                "png": str(png.resolve()),
                "range": [h.raw_range[0], h.raw_range[1]],
                "seconds": round(h.seconds, 4),
                "aug_smooth": h.aug_smooth,
                "eigen_smooth": h.eigen_smooth,
                "blank": h.blank,
            }
        )
    mask = result.prediction.mask
    if mask is not None:
        path = out_dir / f"{file_stem(result.model, 'segmentation')}.png"
        write_png(path, full_size(stamp(overlay.segmentation_overlay(image.rgb, mask, alpha)), cv2.INTER_NEAREST))
    return records


def _result_json(result, records: list[dict], image) -> dict:
    return {
        "model": result.model,
        "image": image.path,
        "image_size": list(result.full_size),
        "working_size": list(result.image_size),  # smaller than image_size when it was downscaled
        "input_size": list(result.input_size),
        "heatmaps": records,
        "prediction": result.prediction.to_dict(),
        "target": result.target.to_dict(),
        "weights": result.weights,
        "pretrained": result.pretrained,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "errors": list(result.errors),
        "notes": list(result.notes),
    }


def _box_line(t) -> str:
    """Which box a detector's heatmaps explain (cam and push print it)."""
    shown = "; ".join(f"[{b[0]:.0f}, {b[1]:.0f}, {b[2]:.0f}, {b[3]:.0f}]" for b in t.boxes[:5])
    score = "" if t.score is None else f", score {t.score:.2f}"
    iou = "" if t.iou is None else f", IoU {t.iou:.2f}"
    return f"box explained: {t.box_ref} {t.name}{score}{iou} at (x1, y1, x2, y2) {shown}"


def _print_summary(result, records: list[dict]) -> None:
    pred = result.prediction
    noun = {"segmentation": "pixels", "detection": "score"}.get(pred.task, "probability")
    _say(
        f"model: {result.model} · weights: {result.weights}"
        + ("" if result.pretrained else "  << UNTRAINED >>")
    )
    _say("prediction: " + ", ".join(f"{c.name} ({c.score:.1%})" for c in pred.classes[:5]) + f" [{noun}]")
    t = result.target
    _say(f"target: {t.name} ({t.rule})" + (f" - {t.note}" if t.note else ""))
    if t.box_ref:
        _say(_box_line(t))
    for r in records:
        _say(
            f"{r['method']} on {r['layer']}: {r['png']}  "
            f"(raw range {r['range'][0]:.3g}..{r['range'][1]:.3g}, {r['seconds']:.2f} s)"
        )


def cmd_cam(args: argparse.Namespace) -> int:
    result, image, _dataset, _sample, _spec = _compute(args)
    records = write_outputs(result, image, Path(args.out), args.alpha, args.colormap)
    if args.json:
        _print_json(_result_json(result, records, image))
    else:
        _print_summary(result, records)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from camcore import store

    result, image, dataset, sample, _spec = _compute(args)
    records = write_outputs(result, image, Path(args.out), args.alpha, args.colormap) if args.out else []
    fields = store.push_heatmaps(dataset, sample.id, result, heatmap_dir=args.heatmap_dir)
    if args.json:
        _print_json(
            {
                "dataset": dataset.name,
                "sample_id": sample.id,
                "fields": fields,
                "target": result.target.to_dict(),  # a detector's: which box (box_ref, boxes, score, IoU)
                "heatmaps": records,
                "errors": list(result.errors),
                "notes": list(result.notes),
            }
        )
    else:
        if result.target.box_ref:
            _say(_box_line(result.target))
        for field in fields:
            _say(field)
    return 0


def cmd_finding(args: argparse.Namespace) -> int:
    """Record a finding on a sample, as the explorer and the App's record_finding do: the sample's
    cam:<tag> tag and a cam_findings entry with a link back to the explorer (/?...)."""
    from camcore import links, store

    tag = str(args.tag or "").strip()
    if not tag:
        raise _usage(args, "--tag must name the finding, e.g. --tag 'background bias'")
    dataset = store.load_dataset(args.dataset)
    sample = store.get_sample(dataset, args.sample)
    meaning = store.heatmap_fields(dataset).get(args.field, {}) if args.field else {}
    state = links.LinkState(dataset=dataset.name, sample=sample.id, model=str(meaning.get("model") or ""),
                            layers=(str(meaning["layer"]),) if meaning.get("layer") else (),
                            methods=(str(meaning["method"]),) if meaning.get("method") else ())
    url = links.explorer_url(state)
    store.add_finding(dataset, sample.id, tag, note=args.note or "", heatmap_field=args.field or None, url=url)
    if args.json:
        _print_json({"dataset": dataset.name, "sample_id": sample.id, "tag": tag, "url": url})
    else:
        _say(f"{tag}: {url}")
    return 0


def _batch_options(args: argparse.Namespace) -> BatchOptions:
    """The batch's options from its arguments (names checked by the batch itself)."""
    if args.chunk < 1:
        raise _usage(args, f"--chunk must be at least 1, got {args.chunk}")
    if args.input_size is not None and args.input_size < 8:
        raise _usage(args, f"--input-size must be at least 8, got {args.input_size}")
    if args.workers < 0:
        raise _usage(args, f"--workers must be 0 (this process) or more, got {args.workers}")
    if args.workers and args.device:
        raise _usage(args, "--device is chosen per worker with --workers (a GPU each when the cluster has GPUs)")
    if not 0.0 <= args.threshold <= 1.0:
        raise _usage(args, f"--threshold is a share of the heatmap's mass, 0..1, got {args.threshold}")
    if not args.measures and (args.object_field or args.faithfulness or args.no_faithfulness or args.object_label):
        raise _usage(args, "--object-field, --object-label and --faithfulness go with --measures")
    if args.faithfulness and args.no_faithfulness:
        raise _usage(args, "--faithfulness and --no-faithfulness contradict each other: give one")
    if args.object_label and not args.object_field:
        raise _usage(args, "--object-label names a label of --object-field: give --object-field too")
    from camcore.batch_options import BatchOptions
    from camcore.measures import MeasureOptions

    measures = (MeasureOptions(object_field=args.object_field, threshold=args.threshold,
                               faithfulness=bool(args.faithfulness), object_label=(args.object_label or "").strip())
                if args.measures else None)
    return BatchOptions(model=args.model, weights=args.weights, methods=tuple(args.method or ["gradcam"]),
                        layers=tuple(args.layer or ()), target_rule=args.target, eigen_smooth=args.eigen_smooth,
                        input_size=args.input_size, chunk=args.chunk, device=args.device,
                        heatmap_dir=args.heatmap_dir, measures=measures)


def _check_names(options: BatchOptions) -> None:
    """The model, methods and layers (and a classifier's or segmenter's target class), checked
    before FiftyOne and torch load: checking needs neither, so a wrong name says so at once. A
    detector's box rules are checked when the run expands them from the view."""
    from camcore.batch_options import PREDICTED

    if options.spec.task == "detection":
        options = dataclasses.replace(options, target_rule=PREDICTED)
    options.checked()


def cmd_batch(args: argparse.Namespace) -> int:
    options = _batch_options(args)
    _check_names(options)
    from camcore import batch, progress, store

    dataset = store.load_dataset(args.dataset)
    view = store.make_view(dataset, tags=args.tag, filename_contains=args.filename_contains)
    if options.measures is not None and not options.measures.object_field and \
            options.checked().spec.task == "classification":  # the Audit page would have nothing to chart
        _status(args, "note: a classifier has no mask or box of its own: with no --object-field no share on the "
                      "object (nor background flag) is stored, only the score and confidence")
    if len(dataset) and not len(view):
        _status(args, f"warning: no sample of {dataset.name!r} matches --tag/--filename-contains: "
                      "nothing to do")
    told = progress.printer(lambda line: _status(args, f"batch {line}"), interval=1.0)
    report: batch.BatchReport
    runs = batch.box_batches(view, options, args.box)  # a detector: one run per box rule
    if len(runs) > 1 or args.box:
        if args.workers:
            raise _usage(args, "--workers does not take --box yet: run the box rules one at a time")
        _status(args, "box rules: " + ", ".join(str(r.target_rule) for r in runs))
        report = batch.run_batches(view, runs, progress=told)
    elif args.workers:
        from camcore import distributed

        report = distributed.run_batch_distributed(view, options, args.workers, args.ray_address, progress=told)
    else:
        report = batch.run_batch(view, options, progress=told)
    for sid, message in report.failed:
        _status(args, f"warning: sample {sid}: {_one_line(message)}")
    if args.json:
        _print_json({"dataset": dataset.name, **report.to_dict()})
    else:
        no_box = f" ({report.no_box} without the box)" if report.no_box else ""
        before = f", {report.done_before} done by an earlier run" if report.done_before else ""
        _say(f"{report.done} done, {report.skipped} skipped{no_box}{before}, {len(report.failed)} failed "
             f"in {report.seconds:.1f} s" + (" (cancelled)" if report.cancelled else ""))
        for name in sorted(report.fields):
            _say(name)
    return 0


# ---------------------------------------------------------------- the parser


# The parser imports light modules only (no torch, no FiftyOne): each command imports what it needs.
def _cam_options(p: argparse.ArgumentParser, push: bool) -> None:
    from camcore.defaults import DEFAULT_METHOD, DEFAULT_MODEL
    from camcore.overlay import COLORMAPS, DEFAULT_COLORMAP

    if push:
        p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
        p.add_argument("--sample", required=True, help="sample id, file path or unique file name")
    else:
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--image", help="an image file")
        source.add_argument("--dataset", help="a FiftyOne dataset name (with --sample)")
        p.add_argument("--sample", help="sample id, file path or unique file name (with --dataset)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=_MODEL_HELP)
    p.add_argument(
        "--layer", action="append", help="layer name, repeatable (default: the model's default layer)"
    )
    p.add_argument(
        "--method",
        action="append",
        help=f"CAM method, repeatable (default {DEFAULT_METHOD}); one of {_METHOD_KEYS}",
    )
    p.add_argument("--target", help="class to explain, by name or index (default: the prediction)")
    p.add_argument("--box", help="detection models: the box to explain: top (default), det:<i>, class:<name>, "
                                 "all, field:<field>[:<i>] or id:<detection id>; a model rule may end in "
                                 "@<score threshold> (default 0.5)")
    p.add_argument("--aug-smooth", action="store_true", help="test-time augmentation smoothing (6 passes)")
    p.add_argument("--eigen-smooth", action="store_true", help="first principal component smoothing")
    p.add_argument(
        "--weights", default="auto", help="auto | untrained | PATH to a weights file (default auto)"
    )
    p.add_argument("--input-size", type=int, help="short side of the model input (segmentation models)")
    p.add_argument(
        "--device", help="torch device, e.g. cpu or cuda (default: CAM_EXPLORER_DEVICE or the GPU)"
    )
    p.add_argument(
        "--out",
        default=None if push else "cam-output",
        help="folder for the .npy maps and overlay PNGs" + ("" if push else " (default ./cam-output)"),
    )
    if push:
        p.add_argument("--heatmap-dir", help="where the pushed 16-bit PNGs go (default: the camcore home)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1 (default 0.5)")
    p.add_argument("--colormap", default=DEFAULT_COLORMAP, choices=COLORMAPS, help="overlay colormap")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


# Built-in keys only: listing the models file's entries here would read (and check) it for every
# command, even `methods`. `models` lists them all.
_MODEL_HELP = ("a key that `models` lists: the built-in efficientnet_lite0 (default), deeplabv3, deit_tiny, "
               "the detectors (fasterrcnn_resnet50_fpn_v2, fasterrcnn_mobilenet_v3_large_fpn, "
               "retinanet_resnet50_fpn_v2, fcos_resnet50_fpn, ssdlite320_mobilenet_v3_large: with --box), "
               "or an entry of your models file")


def build_parser() -> argparse.ArgumentParser:
    from camcore.defaults import DEFAULT_MODEL

    parser = _Parser(prog=PROG, description="CAM Explorer from the command line.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("models", help="the model registry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("methods", help="the CAM method registry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("demo-data", help="build (if needed) the embedded demo dataset; print its name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("cam", help="compute heatmaps for an image; write .npy maps and overlay PNGs")
    _cam_options(p, push=False)
    p.set_defaults(func=cmd_cam)

    p = sub.add_parser("push", help="compute heatmaps for a dataset sample and save them to FiftyOne")
    _cam_options(p, push=True)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("finding", help="record a finding on a dataset sample (a tag, a note, a link back)")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--sample", required=True, help="a sample id or file name")
    p.add_argument("--tag", required=True, help="the finding, e.g. 'background bias'")
    p.add_argument("--note", default="", help="what you saw")
    p.add_argument("--field", help="the heatmap field the finding is about")
    p.add_argument("--json", action="store_true", help="print the finding as JSON")
    p.set_defaults(func=cmd_finding)

    p = sub.add_parser("batch", help="heatmaps for every sample of a view, resumable, saved to FiftyOne")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--tag", action="append", help="only samples with this tag, repeatable (any of them)")
    p.add_argument("--filename-contains", help="only samples whose file name contains this")
    p.add_argument("--model", default=DEFAULT_MODEL, help=_MODEL_HELP)
    p.add_argument("--method", action="append", help="CAM method, repeatable (default gradcam)")
    p.add_argument("--layer", action="append", help="layer name, repeatable (default: the model's default)")
    p.add_argument("--target", default="predicted",
                   help="predicted (default: each sample's top class, one field) or a class name")
    p.add_argument("--box", help="detection models: top (default), top:<k> (the k best detections, a field each), "
                   "det:<i>, class:<name>, all, optionally @<score threshold>; field:<name>[:<class>] (every box "
                   "of a Detections field, a field per box index); samples without the box are skipped")
    p.add_argument("--weights", default="auto", help="auto | untrained | PATH (default auto)")
    p.add_argument("--eigen-smooth", action="store_true", help="first principal component smoothing")
    p.add_argument("--input-size", type=int, help="short side of the model input (segmentation models)")
    p.add_argument("--chunk", type=int, default=8, help="samples per batched pass and bulk write (default 8)")
    p.add_argument("--device", help="torch device (default: CAM_EXPLORER_DEVICE or the GPU)")
    p.add_argument("--heatmap-dir", help="where the 16-bit PNGs go (default: the camcore home)")
    p.add_argument("--measures", action="store_true",
                   help="also store each heatmap's measures as fields (score, conf, share on the object, "
                        "keep/remove faithfulness, bg flag): the Audit page reads them")
    p.add_argument("--object-field", help="with --measures: a Segmentation or Detections field holding the objects "
                   "(default: the model's own: a segmentation model's predicted mask, a detector's explained box; "
                   "none for classifiers)")
    p.add_argument("--object-label", help="with --object-field: the objects' label (default: the label that names "
                   "the explained class); '*' every object of the field (an untrained model, another taxonomy)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="with --measures: background-dominated below this share on the object (default 0.5)")
    p.add_argument("--faithfulness", action="store_true",
                   help="with --measures: also store the keep/remove faithfulness scores (off by default: "
                        "3 forwards per heatmap, about 2.8x a batch; the other measures about 1.1x)")
    p.add_argument("--no-faithfulness", action="store_true", help="with --measures: the default (kept for scripts)")
    p.add_argument("--workers", type=int, default=0,
                   help="Ray workers sharing the work (default 0: this process alone)")
    p.add_argument("--ray-address", help="with --workers: a running Ray cluster ('auto' or ray://HOST:10001); "
                   "default: start a local Ray on this machine")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_batch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere, not only before the command
    from camcore.errors import CamError, WeightsUnavailable

    try:
        args = build_parser().parse_args(argv)
        if args.command == "cam" and args.dataset and not args.sample:
            raise _usage(args, "--dataset needs --sample (a sample id or file name)")
        if args.command == "cam" and args.sample and not args.dataset:
            raise _usage(args, "--sample needs --dataset")
        global _results
        _results = sys.stdout
        with contextlib.redirect_stdout(_StdoutToStderr()):
            code = args.func(args)
        _results.flush()
        return code
    except UsageError as exc:
        print(f"error: {_one_line(exc)} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    except CamError as exc:
        if debug:
            raise
        hint = " Here: --weights untrained, or --weights PATH." if isinstance(exc, WeightsUnavailable) else ""
        print(f"error: {_one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: not an error of ours
        return 0
    except Exception as exc:  # a bug: say so in one line, the traceback with --debug
        if debug:
            raise
        print(
            f"error: internal error: {type(exc).__name__}: {_one_line(exc)} "
            f"(run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
