"""Your own model (issue 14): a TOML models file whose entries join the built-in models.

Every checkpoint here is random-initialised and written by the test: a timm CNN with 5 classes,
a timm ViT with 3 classes, a torchvision segmentation model with 4 classes; and one entry for each
way an entry can be wrong. For each good model: heatmaps on every layer, the target by class name,
push and batch (real mongod), and the provenance on the labels.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import fiftyone as fo
import numpy as np
import pytest
import torch
from fo_helpers import field_name, unique_name

from camcore import batch, cli, model_file, models, store, weights
from camcore.engine import Explainer
from camcore.errors import ModelError
from camcore.images import load_image

ROOT = Path(__file__).resolve().parents[1]
CNN_CLASSES = ["apple", "banana", "cherry", "date", "elderberry"]
SEG_CLASSES = ["background", "road", "car", "tree"]
GOOD = {  # key -> (task, family, a class to explain, the class count)
    "my_cnn": ("classification", "cnn", "cherry", 5),
    "my_vit": ("classification", "vit", "beta", 3),
    "my_seg": ("segmentation", "cnn", "car", 4),
}
BAD = {  # key -> what its one line must say
    "bad_arch": "unknown architecture 'timm:no_such_net'",
    "bad_tv_arch": "unknown architecture 'torchvision:resnet1000'",
    "bad_shapes": ("does not fit torchvision:resnet18: first mismatched key 'bn1.weight': "
                   "checkpoint [32], model [64]"),
    "bad_classes": "checkpoint has 5 classes, the entry names 7",
    "bad_seg_classes": "checkpoint has 4 classes, the entry names 6",
    "bad_layer": "layer 'layer9' does not exist in timm:test_resnet",
    "bad_weights_file": "weights file not found:",
    "bad_classes_file": "classes file not found:",
    "deeplabv3": "is a built-in model's key",
    "bad_setting": "unknown setting 'wieghts'",
}


def _state(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def write_models_file(folder: Path) -> Path:
    """Checkpoints, a classes file and a models file with three good and many bad entries."""
    import timm
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ckpt").mkdir(exist_ok=True)
    torch.manual_seed(1)
    torch.save(_state(timm.create_model("test_resnet", num_classes=5)), folder / "ckpt" / "cnn.pth")
    # the wrappers people save: a nested state_dict and DataParallel's "module." prefix
    vit = {"module." + k: v for k, v in _state(timm.create_model("test_vit", num_classes=3)).items()}
    torch.save({"state_dict": vit, "epoch": 3}, folder / "ckpt" / "vit.pt")
    seg = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)
    torch.save(_state(seg), folder / "ckpt" / "seg.pth")
    (folder / "fruit.txt").write_text("\n".join(CNN_CLASSES) + "\n")
    (folder / "models.toml").write_text(f"""
[models.my_cnn]
arch = "timm:test_resnet"
weights = "ckpt/cnn.pth"
classes = "fruit.txt"
label = "My fruit CNN"

[models.my_vit]
arch = "timm:test_vit"
weights = "ckpt/vit.pt"
classes = ["alpha", "beta", "gamma"]

[models.my_seg]
arch = "torchvision:lraspp_mobilenet_v3_large"
weights = "{folder / 'ckpt' / 'seg.pth'}"
classes = {json.dumps(SEG_CLASSES)}
input_size = 96  # short side: small, fast on a CPU

[models.bad_arch]
arch = "timm:no_such_net"
weights = "ckpt/cnn.pth"
classes = "fruit.txt"

[models.bad_tv_arch]
arch = "torchvision:resnet1000"
weights = "ckpt/cnn.pth"
classes = "fruit.txt"

[models.bad_shapes]
arch = "torchvision:resnet18"
weights = "ckpt/cnn.pth"
classes = "fruit.txt"

[models.bad_classes]
arch = "timm:test_resnet"
weights = "ckpt/cnn.pth"
classes = ["a", "b", "c", "d", "e", "f", "g"]

[models.bad_seg_classes]
arch = "torchvision:lraspp_mobilenet_v3_large"
weights = "ckpt/seg.pth"
classes = ["a", "b", "c", "d", "e", "f"]

[models.bad_layer]
arch = "timm:test_resnet"
weights = "ckpt/cnn.pth"
classes = "fruit.txt"
layers = ["layer3", "layer9"]

[models.bad_weights_file]
arch = "timm:test_resnet"
weights = "ckpt/missing.pth"
classes = "fruit.txt"

[models.bad_classes_file]
arch = "timm:test_resnet"
weights = "ckpt/cnn.pth"
classes = "missing.txt"

[models.deeplabv3]
arch = "timm:test_resnet"
weights = "ckpt/cnn.pth"
classes = "fruit.txt"

[models.bad_setting]
arch = "timm:test_resnet"
wieghts = "ckpt/cnn.pth"
classes = "fruit.txt"
""")
    return folder / "models.toml"


@pytest.fixture(scope="module")
def models_file(tmp_path_factory):
    path = write_models_file(tmp_path_factory.mktemp("own-models"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(model_file.ENV, str(path))
        models.reload_model_file()
        yield path
    models.reload_model_file()  # the environment no longer names it: built-in models only


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("own-img") / "noise.png"
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), rgb)
    return str(path)


@pytest.fixture
def dataset(image_path, tmp_path):
    other = tmp_path / "second.png"
    assert cv2.imwrite(str(other), cv2.imread(image_path)[::-1].copy())
    ds = fo.Dataset(unique_name("own-model"))
    ds.add_samples([fo.Sample(filepath=image_path), fo.Sample(filepath=str(other))])
    yield ds
    ds.delete()


def test_entries_join_the_built_in_models_and_bad_ones_are_listed(models_file):
    keys = [spec.key for spec in models.list_models()]
    assert keys == [*models.BUILTIN_MODELS, "my_cnn", "my_vit", "my_seg"]  # the bad ones hide nothing
    skipped = {entry.key: entry for entry in models.skipped_models()}
    assert set(skipped) == set(BAD)
    for key, fragment in BAD.items():
        line = str(skipped[key])
        assert fragment in line and f"'{key}'" in line and "\n" not in line, line
        assert skipped[key].source == str(models_file)
    # asking for a skipped entry says why, not "unknown model"
    with pytest.raises(ModelError, match="checkpoint has 5 classes, the entry names 7"):
        models.get_spec("bad_classes")

    for key, (task, family, _cls, count) in GOOD.items():
        spec = models.get_spec(key)
        assert (spec.task, spec.family, len(spec.class_names())) == (task, family, count)
        assert spec.source == str(models_file) and spec.default_layer in [s.name for s in spec.layers]
    cnn, vit, seg = (models.get_spec(k) for k in GOOD)
    assert cnn.label == "My fruit CNN" and cnn.class_names() == tuple(CNN_CLASSES)
    assert cnn.classes_file == str(models_file.parent / "fruit.txt")
    # layers from the libraries: timm's feature_info, the ViT's blocks (norm1), the backbone's stages
    assert [s.name for s in cnn.layers] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert cnn.default_layer == "layer4"
    assert [s.name for s in vit.layers] == [f"blocks.{i}.norm1" for i in range(6)] and vit.patch_size == 16
    assert [s.path for s in seg.layers][-1] == "model.backbone.16" and seg.default_layer == "backbone.16"
    # preprocessing from timm's pretrained config / torchvision's documented transforms, or the entry
    assert (vit.preprocess.mode, vit.preprocess.size, vit.preprocess.mean) == ("square", 160, (0.5, 0.5, 0.5))
    assert (seg.preprocess.mode, seg.preprocess.size) == ("short_side", 96)
    assert seg.preprocess.mean == models.IMAGENET_MEAN


def test_cli_models_json_lists_entries_with_their_source(models_file, capsys):
    assert cli.main(["models", "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    listed = {m["key"]: m for m in data["models"]}
    assert data["models_file"] == str(models_file)
    assert listed["my_cnn"]["source"] == str(models_file) and listed["my_cnn"]["arch"] == "timm:test_resnet"
    assert listed["deeplabv3"]["source"] == "built-in" and listed["my_seg"]["num_classes"] == 4
    assert {s["key"] for s in data["skipped"]} == set(BAD)
    assert all(s["reason"] and "\n" not in s["message"] for s in data["skipped"])


@pytest.mark.parametrize("key", list(GOOD))
def test_own_model_explains_by_class_name_pushes_and_batches(models_file, key, image_path, dataset, tmp_path):
    task, _family, class_name, _count = GOOD[key]
    loaded = models.load_model(key, device="cpu")
    spec = loaded.spec
    # the checkpoint's own numbers were loaded, not random ones
    state = weights.read_state_dict(spec.weights.path)
    inner = loaded.module.model if task == "segmentation" else loaded.module
    ours = inner.state_dict()
    assert all(torch.equal(ours[k].cpu(), v) for k, v in state.items() if k in ours)
    assert loaded.weights_label == f"checkpoint {Path(spec.weights.path).name}" and loaded.pretrained

    image = load_image(image_path)
    with torch.enable_grad():
        ex = Explainer(loaded, image, target_request=class_name)
        maps = [ex.heatmap("gradcam", layer.name) for layer in spec.layers]
    assert ex.target.name == class_name and ex.target.index == list(spec.class_names()).index(class_name)
    assert all(h.map.shape == image.size and np.isfinite(h.map).all() for h in maps)
    assert any(not h.blank for h in maps)  # random weights: some layer still shows something
    assert ex.prediction.task == task

    sid = dataset.first().id
    [field] = store.push_heatmaps(dataset, sid, ex.result([maps[-1]]), heatmap_dir=tmp_path / "hm")
    assert field == field_name(key, "gradcam", spec.default_layer, class_name)
    label = dataset[sid][field]
    assert label.model == key and label.target == class_name and label.arch == spec.arch
    assert label.weights_sha256 == weights.file_sha256(spec.weights.path)
    assert label.classes_file == spec.classes_file and label.input_size == spec.input_size()

    options = batch.BatchOptions(key, methods=["gradcam"], layers=[spec.layers[0].name],
                                 target_rule=class_name, heatmap_dir=tmp_path / "hm", device="cpu")
    report = batch.run_batch(dataset, options)
    assert report.done == 2 and not report.failed
    [bfield] = report.fields
    labels = dataset.values(bfield)
    assert all(lb.target == class_name and lb.weights_sha256 == label.weights_sha256 for lb in labels)
    again = batch.run_batch(dataset, options)
    assert (again.done, again.skipped) == (0, 2)


def test_cam_and_batch_on_the_command_line_take_the_keys(models_file, image_path, tmp_path, capsys):
    assert cli.main(["cam", "--image", image_path, "--model", "my_cnn", "--target", "banana",
                     "--layer", "layer2", "--out", str(tmp_path / "out"), "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"]["name"] == "banana" and len(out["heatmaps"]) == 1
    assert list((tmp_path / "out").glob("*.npy"))
    # a bad entry: one line, exit 2, before anything is computed or written
    argv = ["cam", "--image", image_path, "--model", "bad_layer", "--out", str(tmp_path / "o2")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layer 'layer9' does not exist" in err[0] and "'bad_layer'" in err[0]
    assert not (tmp_path / "o2").exists()


def test_reload_picks_up_changes_and_rebuilds_the_model(tmp_path, monkeypatch, image_path):
    folder = tmp_path / "m"
    path = write_models_file(folder)
    monkeypatch.setenv(model_file.ENV, str(path))
    try:
        models.reload_model_file()
        first = models.load_model("my_cnn", device="cpu")
        assert models.load_model("my_cnn", device="cpu") is first  # cached
        # the file changes: same key, two classes renamed, a fresh checkpoint at the same path
        import timm

        torch.manual_seed(7)
        torch.save(timm.create_model("test_resnet", num_classes=5).state_dict(), folder / "ckpt" / "cnn.pth")
        text = path.read_text().replace('classes = "fruit.txt"\nlabel = "My fruit CNN"',
                                        'classes = ["a", "b", "c", "d", "e"]\nlabel = "Renamed"', 1)
        text += ('\n[models.late]\narch = "timm:test_resnet"\nweights = "ckpt/cnn.pth"\n'
                 'classes = "fruit.txt"\n')
        path.write_text(text)
        skipped = models.reload_model_file()
        assert {s.key for s in skipped} == set(BAD)
        assert models.get_spec("my_cnn").label == "Renamed" and "late" in models.MODELS
        second = models.load_model("my_cnn", device="cpu")
        assert second is not first and second.spec.class_names() == ("a", "b", "c", "d", "e")
        assert second.weights.sha256 != first.weights.sha256
        w = next(iter(second.module.state_dict().values()))
        assert not torch.equal(w, next(iter(first.module.state_dict().values())))
    finally:
        monkeypatch.delenv(model_file.ENV)
        models.reload_model_file()


def test_models_toml_in_the_home_is_used_and_a_broken_file_hides_no_built_in(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CAM_EXPLORER_HOME", str(home))
    monkeypatch.delenv(model_file.ENV, raising=False)
    try:
        assert model_file.models_file_path() is None and "my_cnn" not in models.MODELS
        src = write_models_file(tmp_path / "src")
        (home / "models.toml").write_text(src.read_text().replace('"ckpt/', f'"{src.parent}/ckpt/')
                                          .replace('"fruit.txt"', f'"{src.parent}/fruit.txt"'))
        # the environment now names a file: read on the next lookup, no reload needed
        assert "my_cnn" in models.MODELS and models.get_spec("my_cnn").source == str(home / "models.toml")
        (home / "models.toml").write_text("[models.x\narch = ")
        skipped = models.reload_model_file()
        assert [s.key for s in skipped] == ["(file)"] and "not a readable TOML file" in str(skipped[0])
        assert list(models.MODELS) == list(models.BUILTIN_MODELS)
        monkeypatch.setenv(model_file.ENV, str(tmp_path / "nowhere.toml"))
        [missing] = models.skipped_models()
        assert "file not found" in missing.reason and list(models.MODELS) == list(models.BUILTIN_MODELS)
    finally:
        monkeypatch.undo()
        models.reload_model_file()


def test_models_subcommand_in_a_subprocess(models_file):
    env = dict(os.environ, PYTHONPATH=str(ROOT), FIFTYONE_DO_NOT_TRACK="true")
    proc = subprocess.run([sys.executable, "-m", "camcore", "models"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "my_vit: my_vit (timm:test_vit)" in proc.stdout and f"from {models_file}" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(BAD)
    assert any("checkpoint has 5 classes, the entry names 7" in w for w in warnings)


@pytest.mark.parametrize("key", list(GOOD))
def test_every_fast_method_runs_on_own_models(models_file, key, image_path):
    from camcore.methods import METHODS

    loaded = models.load_model(key, device="cpu")
    spec = loaded.spec
    image = load_image(image_path)
    offered = [m for m, ms in METHODS.items()
               if not ms.slow and ms.unsupported_reason(spec.task, spec.family) is None]
    assert "gradcam" in offered and "eigencam" in offered
    with torch.enable_grad():
        ex = Explainer(loaded, image, layers=(spec.default_layer,))
        for method in offered:
            h = ex.heatmap(method, spec.default_layer)
            assert h.map.shape == image.size and np.isfinite(h.map).all(), method
