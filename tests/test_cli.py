"""`python -m camcore`: real subprocesses for what a user types, in-process main() for the rest."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cam_support import CHELSEA
from fresh_process import run_python
from PIL import Image
from warm_processes import CLI, ForkServer

from camcore import cli
from camcore.methods import METHODS
from camcore.models import DEFAULT_MODEL, MODELS

ROOT = Path(__file__).resolve().parents[1]
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 240, forks: ForkServer | None = None
            ) -> subprocess.CompletedProcess:
    """`python -m camcore *args`: a cold start, or with `forks` a process forked from one that has
    imported torch and FiftyOne (the same entry point; a cold start costs 3-7 s of CPU)."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_DATABASE_VALIDATION="false",
    )
    if forks is not None:
        return forks.run(CLI, list(args), env, cwd=cwd or ROOT)
    return subprocess.run(
        [sys.executable, "-m", "camcore", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}; stderr: {proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert proc.stdout == ""
    return lines[0]


# ---------------------------------------------------------------- subprocesses


def _main_json(capsys, *argv: str) -> dict:
    """`cam <argv> --json` in-process (the listings; what a user types runs in subprocesses below)."""
    code = cli.main([*argv, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_models_json(capsys):
    data = _main_json(capsys, "models")
    assert data["default"] == DEFAULT_MODEL
    assert [m["key"] for m in data["models"]] == list(MODELS)
    for m in data["models"]:
        spec = MODELS[m["key"]]
        assert m["layers"] == [s.name for s in spec.layers] and m["default_layer"] in m["layers"]
        assert m["task"] == spec.task and m["num_classes"] == len(spec.class_names())


def test_methods_json(capsys):
    data = _main_json(capsys, "methods")
    assert data["default"] == "gradcam"
    assert {m["key"]: m["kind"] for m in data["methods"]} == {k: s.kind for k, s in METHODS.items()}
    assert all(set(m) >= {"label", "class", "tasks", "families", "slow"} for m in data["methods"])


def test_cam_writes_maps_and_overlays(tmp_path, fork_server):
    out = tmp_path / "out"
    proc = run_cli(
        "cam",
        "--image",
        str(CHELSEA),
        "--method",
        "gradcam",
        "--method",
        "eigencam",
        "--layer",
        "head",
        "--out",
        str(out),
        "--json",
        cwd=tmp_path,
        forks=fork_server,  # the cold start: test_cam_errors_are_one_line[unknown-model]
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) >= {"heatmaps", "prediction", "target", "weights", "pretrained", "timings", "errors"}
    assert data["pretrained"] is True and "ImageNet" in data["weights"]
    assert data["prediction"]["classes"][0]["name"] in CAT_CLASSES
    assert data["target"]["name"] == data["prediction"]["classes"][0]["name"]
    assert data["image_size"] == [300, 451] and data["timings"]["pass"] > 0
    assert [(h["method"], h["layer"]) for h in data["heatmaps"]] == [
        ("gradcam", "head"),
        ("eigencam", "head"),
    ]
    with Image.open(CHELSEA) as im:
        original = np.asarray(im.convert("RGB"))
    stems = set()
    for h in data["heatmaps"]:
        npy, png = Path(h["npy"]), Path(h["png"])
        assert npy.parent == out.resolve() and npy.is_file() and png.is_file()
        m = np.load(npy)
        assert m.shape == (300, 451) and m.dtype == np.float32 and np.isfinite(m).all()
        assert m.min() >= 0 and m.max() <= 1 and m.max() > 0.99
        with Image.open(png) as im:
            assert im.mode == "RGB" and im.size == (451, 300)
            overlay = np.asarray(im)
        assert np.abs(overlay.astype(int) - original).mean() > 10, "the PNG must show the heatmap"
        lo, hi = h["range"]
        assert 0 <= lo <= hi and h["seconds"] >= 0 and h["target"] == data["target"]["name"]
        stems.add(npy.stem)
        assert npy.stem == png.stem and h["method"] in npy.stem and "head" in npy.stem
    assert len(stems) == 2


@pytest.mark.parametrize(
    "args, fragments, in_process",
    [
        (["--model", "resnet9000"], ["Unknown model 'resnet9000'", "efficientnet_lite0"], False),
        (["--layer", "layer99"], ["no layer 'layer99'", "head"], True),
        (["--image", "/no/such/picture.png"], ["not found", "/no/such/picture.png"], True),
    ],
    ids=["unknown-model", "unknown-layer", "missing-image"],
)
def test_cam_errors_are_one_line(tmp_path, capsys, args, fragments, in_process):
    base = ["cam", "--out", str(tmp_path / "out")]
    if "--image" not in args:
        base += ["--image", str(CHELSEA)]
    if in_process:  # the same main(): one real cold start (unknown-model) proves the process adds nothing
        capsys.readouterr()  # to stderr; each start costs ~7 s of CPU (torch and FiftyOne imported)
        code = cli.main([*base, *args])
        out = capsys.readouterr()
        proc = subprocess.CompletedProcess(base, code, out.out, out.err)
    else:
        proc = run_cli(*base, *args, cwd=tmp_path)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "out").exists(), "nothing is written when the request is wrong"


def _fiftyone_ready() -> str | None:
    """None when the push test can run; else why not."""
    for module in ("camcore.store", "camcore.demo_data"):
        if importlib.util.find_spec(module) is None:
            return f"{module} does not exist yet"
    if not os.environ.get("FIFTYONE_DATABASE_URI"):
        return "no FIFTYONE_DATABASE_URI: the mongod fixture of tests/conftest.py did not start"
    try:
        import pymongo

        client = pymongo.MongoClient(os.environ["FIFTYONE_DATABASE_URI"], serverSelectionTimeoutMS=3000)
        try:
            client.admin.command("ping")
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means: no database to test against
        return f"the test MongoDB does not answer: {exc}"
    return None


@pytest.mark.slow
def test_push_to_the_demo_dataset(tmp_path, capsys, monkeypatch, fork_server):
    reason = _fiftyone_ready()
    if reason:
        pytest.skip(reason)
    # demo-data in this process (a process start cost ~3.5 s of CPU); the push below is the real one
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    name = _main_json(capsys, "demo-data")["dataset"]
    hm_dir = tmp_path / "heatmaps"
    # gradcam and gradcam++ must land in two fields (a "+" must survive sanitising)
    proc = run_cli(
        "push",
        "--dataset",
        name,
        "--sample",
        "chelsea.png",
        "--method",
        "gradcam",
        "--method",
        "gradcam++",
        "--layer",
        "head",
        "--heatmap-dir",
        str(hm_dir),
        "--json",
        cwd=tmp_path,
        forks=fork_server,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    fields = data["fields"]
    assert len(fields) == 2 and len(set(fields)) == 2 and all(f.startswith("cam_") for f in fields)

    import fiftyone as fo

    from camcore import store
    from fo_helpers import coded_identity

    dataset = store.load_dataset(name)
    dataset.reload()
    sample = store.get_sample(dataset, "chelsea.png")
    assert sample.id == data["sample_id"]
    for field, method in zip(fields, ("gradcam", "gradcam++"), strict=True):
        label = sample[field]
        assert isinstance(label, fo.Heatmap) and label.method == method and label.layer == "head"
        # the field of this model's map of this method and layer for the target left on auto:
        # the batch's "predicted" field (one computation, one field); the class is on the label
        assert field == coded_identity(model="efficientnet_lite0", method=method, layer="head",
                                        target="predicted").field_name
        assert "cat" in label.target and label.target_rule.startswith("default")
        assert Path(label.map_path).is_file() and Path(label.map_path).is_relative_to(hm_dir)
        with Image.open(label.map_path) as im:
            assert im.size == (sample.metadata.width, sample.metadata.height)
    # An unknown sample or dataset is one line, exit 2 (in-process: the CLI's path is the same).
    for argv, fragment in (
        (["--dataset", name, "--sample", "no-such.png"], "no sample 'no-such.png'"),
        (["--dataset", "no-such-dataset", "--sample", "chelsea.png"], "no-such-dataset"),
    ):
        code = cli.main(["push", *argv, "--layer", "head", "--heatmap-dir", str(hm_dir)])
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]  # FiftyOne may log
        assert code == 2 and captured.out == "" and "Traceback" not in captured.err
        assert len(errors) == 1 and fragment in errors[0], captured.err


# ---------------------------------------------------------------- in-process main()


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["cam", "--image", str(CHELSEA), "--method", "gradcamm"], "Unknown method 'gradcamm'"),
        (["cam", "--image", str(CHELSEA), "--target", "tabbby"], "Did you mean: tabby"),
        (
            [
                "cam",
                "--image",
                str(CHELSEA),
                "--model",
                "deit_tiny",
                "--method",
                "fullgrad",
                "--weights",
                "untrained",
            ],
            "FullGrad does not work on ViTs",
        ),
        (["cam", "--image", str(CHELSEA), "--model", "deit_tiny"], "--weights untrained"),
        (["cam", "--image", str(CHELSEA), "--weights", "/no/weights.pth"], "Weights file not found"),
        (["cam", "--image", str(CHELSEA), "--colormap", "rainbowz"], "invalid choice: 'rainbowz'"),
        (["cam", "--dataset", "x"], "--dataset needs --sample"),
        (["cam", "--image", str(CHELSEA), "--sample", "a.png"], "--sample needs --dataset"),
        (["cam"], "one of the arguments --image --dataset is required"),
        (["cam", "--image", str(CHELSEA), "--alpha", "3"], "--alpha must be in 0..1"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
    ids=[
        "method",
        "class",
        "unsupported",
        "weights-unavailable",
        "weights-file",
        "colormap",
        "no-sample",
        "no-dataset",
        "no-source",
        "alpha",
        "command",
        "nothing",
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, argv, fragment):
    code, out, err = _main(capsys, *argv, *(["--out", str(tmp_path / "o")] if argv[:1] == ["cam"] else []))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def test_untrained_overlays_are_watermarked_and_segmentation_mask_written(capsys, tmp_path):
    out = tmp_path / "seg"
    code, stdout, err = _main(
        capsys,
        "cam",
        "--image",
        str(CHELSEA),
        "--model",
        "deeplabv3",
        "--weights",
        "untrained",
        "--input-size",
        "32",
        "--method",
        "gradcam",
        "--out",
        str(out),
        "--json",
    )
    assert code == 0, err
    assert "UNTRAINED" in err
    data = json.loads(stdout)
    assert data["pretrained"] is False and data["input_size"] == [32, 48]
    h = data["heatmaps"][0]
    assert np.load(h["npy"]).shape == (300, 451)
    with Image.open(h["png"]) as im:
        banner = np.asarray(im)[:20, :, :].reshape(-1, 3)
    red = (banner[:, 0] > 150) & (banner[:, 1] < 60) & (banner[:, 2] < 60)
    assert red.mean() > 0.5, "the untrained overlay must carry the red banner"
    assert (out / "deeplabv3__segmentation.png").is_file()


def test_human_output_and_progress(capsys, tmp_path):
    code, out, err = _main(
        capsys,
        "cam",
        "--image",
        str(CHELSEA),
        "--method",
        "scorecam",
        "--layer",
        "stage0",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, err
    assert "prediction:" in out and "scorecam on stage0" in out
    assert "scorecam on stage0" in err and "slow" in err and "done in" in err, err


def test_file_stems_are_safe_and_distinct():
    a = cli.file_stem("efficientnet_lite0", "gradcam++", "head", "tiger cat")
    b = cli.file_stem("efficientnet_lite0", "gradcam", "head", "tiger cat")
    assert a != b and a == "efficientnet_lite0__gradcamplusplus__head__tiger_cat"
    weird = cli.file_stem("m", "x", "blocks.3/../..", "crème brûlée: 🍮")
    assert "/" not in weird and ".." not in weird and " " not in weird
    assert all(c.isalnum() or c in "_-" for c in weird) and weird.isascii()


def test_a_huge_image_gives_maps_at_its_own_size(capsys, tmp_path):
    """Over MAX_WORKING_SIDE the image is computed downscaled; the files still come out at the
    image's own size, and the downscale is a note, not an error."""
    from camcore.images import MAX_WORKING_SIDE

    full = (40, MAX_WORKING_SIDE + 500)
    path = tmp_path / "wide.png"
    Image.new("RGB", (full[1], full[0]), (120, 80, 40)).save(path)
    code, out, err = _main(capsys, "cam", "--image", str(path), "--out", str(tmp_path / "o"), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["image_size"] == list(full) and data["working_size"][1] == MAX_WORKING_SIDE
    assert data["errors"] == [] and any("downscaled" in n for n in data["notes"])
    [h] = data["heatmaps"]
    m = np.load(h["npy"])
    assert m.shape == full and m.dtype == np.float32 and 0.0 <= m.min() and m.max() <= 1.0
    with Image.open(h["png"]) as im:
        assert (im.height, im.width) == full


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--device", "bogus"], "Unknown device 'bogus'"),
        (["--device", "cuda:7" if __import__("torch").cuda.is_available() else "cuda"], "GPU"),
        (["--target", "5:tabby"], "Class 5 is 'electric ray', not 'tabby'"),
        (["--target", "CARDIGAN"], "ambiguous: 'Cardigan' (264) or 'cardigan' (474)"),
    ],
    ids=["device-name", "device-absent", "index-name-mismatch", "ambiguous-case"],
)
def test_bad_device_and_class_spellings_are_user_errors(capsys, tmp_path, argv, fragment):
    code, out, err = _main(capsys, "cam", "--image", str(CHELSEA), *argv, "--out", str(tmp_path / "o"))
    assert code == 2 and out == "", err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err


def test_names_as_people_write_them(capsys, tmp_path):
    """Exact class names win over case-folding (Cardigan is a dog, cardigan a sweater); methods and
    layers are found however they are spelled."""
    from camcore import targets
    from camcore.methods import get_method
    from camcore.models import get_spec

    names = get_spec(DEFAULT_MODEL).class_names()
    assert targets.class_index(names, "cardigan") == 474 and targets.class_index(names, "Cardigan") == 264
    assert targets.class_index(names, "  tabby ") == targets.class_index(names, "Tabby") == 281
    assert targets.class_index(names, "281:tabby") == 281
    assert get_method("Grad-CAM").key == "gradcam" and get_method("GradCAM++").key == "gradcam++"
    assert get_method("score_cam").key == "scorecam" and get_method("Grad-CAM element-wise").key == "gradcamelementwise"
    assert get_spec(DEFAULT_MODEL).layer("HEAD").name == "head"
    code, out, err = _main(capsys, "cam", "--image", str(CHELSEA), "--method", "Grad-CAM", "--layer", "Head",
                           "--out", str(tmp_path / "o"), "--json")
    assert code == 0, err
    [h] = json.loads(out)["heatmaps"]
    assert (h["method"], h["layer"]) == ("gradcam", "head")


def test_a_blank_map_is_flagged_not_silent(capsys, tmp_path):
    """Untrained DeiT-tiny gives Grad-CAM zero everywhere: the user must be told, not handed a
    silent empty overlay."""
    code, out, err = _main(capsys, "cam", "--image", str(CHELSEA), "--model", "deit_tiny", "--weights",
                           "untrained", "--method", "gradcam", "--method", "eigencam",
                           "--out", str(tmp_path / "o"), "--json")
    assert code == 0, err
    blank = {h["method"]: h["blank"] for h in json.loads(out)["heatmaps"]}
    assert blank == {"gradcam": np.load(json.loads(out)["heatmaps"][0]["npy"]).max() == 0, "eigencam": False}
    assert blank["gradcam"] is True and "gradcam on block11: blank map" in err


def test_batch_defaults_to_the_offline_model_like_cam_and_push():
    """The README's `batch --dataset ... --method gradcam` once failed: --model was required."""
    for command in ("cam", "push", "batch"):
        extra = ["--image", "x.png"] if command == "cam" else ["--dataset", "d"] + (["--sample", "s"] if command == "push" else [])
        assert cli.build_parser().parse_args([command, *extra]).model == DEFAULT_MODEL


def test_a_wrong_name_in_a_batch_says_so_before_fiftyone_or_torch_loads():
    """A wrong method, layer, model or class is checked from the registries (plain data) before the
    dataset is read: one line and exit 2 in a fraction of a second (it loaded FiftyOne, the dataset
    and torch first: 4 s without a dataset, more with one)."""
    code = (
        "import contextlib, io, sys\n"
        "from camcore import cli\n"
        "said = []\n"
        "for extra in (['--method', 'nosuch'], ['--model', 'deeplabv3', '--layer', 'layer9'],\n"
        "              ['--model', 'nosuch'], ['--target', 'no such class'],\n"
        "              ['--model', 'fasterrcnn_resnet50_fpn_v2', '--method', 'fullgrad']):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
        "        assert cli.main(['batch', '--dataset', 'not-read', *extra]) == 2, extra\n"
        "    said.append(err.getvalue().strip().splitlines()[-1])\n"
        "print(sorted(m for m in ('torch', 'fiftyone', 'pytorch_grad_cam') if m in sys.modules))\n"
        "print('\\n'.join(said))\n"
    )
    loaded, *said = run_python(code).strip().splitlines()
    assert loaded == "[]", loaded
    assert "Unknown method 'nosuch'" in said[0] and "has no layer 'layer9'" in said[1]
    assert "nosuch" in said[2] and "Unknown class 'no such class'" in said[3]
    assert "FullGrad" in said[4] and "fasterrcnn_resnet50_fpn_v2" in said[4]
    assert not any("not-read" in line for line in said)  # the dataset was never looked up


def test_help_and_usage_errors_import_neither_torch_nor_fiftyone():
    """The parser is built from light modules: `--help`, a usage error and a bad batch option answer
    in a fraction of a second (they imported torch first: ~7 s of CPU per `python -m camcore`)."""
    code = (
        "import contextlib, io, sys\n"
        "from camcore import cli\n"
        "for argv in (['--help'], [], ['cam'], ['frobnicate'], ['cam', '--dataset', 'x'],\n"
        "             ['batch', '--dataset', 'x', '--workers', '2', '--device', 'cpu']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            assert cli.main(argv) == 2, argv\n"
        "        except SystemExit as exc:\n"
        "            assert argv == ['--help'] and exc.code == 0\n"
        "print(sorted(m for m in ('torch', 'fiftyone', 'pytorch_grad_cam', 'camcore.models') if m in sys.modules))\n"
    )
    loaded = run_python(code)
    assert loaded.strip() == "[]", loaded


def test_cam_help_lists_every_method_of_the_registry():
    """The method keys are filled into --method's help when help is shown (not when it is built)."""
    formatter = cli.build_parser()._subparsers._group_actions[0].choices["cam"].format_help()
    assert ", ".join(METHODS) in " ".join(formatter.split()), formatter
