"""The registries are plain data: what they copy from torchvision, torch.hub and pytorch-grad-cam
is checked here against the libraries, and they (with a batch's options) import without torch or
FiftyOne, so the FiftyOne App's compute form and the CLI's checks answer without loading them."""
from __future__ import annotations

import json

from fresh_process import HEAVY, run_python

from camcore import methods, models, weights
from camcore.class_names import builtin_categories



def test_the_built_in_class_names_are_torchvisions():
    from torchvision.models import ResNet50_Weights
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_V2_Weights
    from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights

    assert builtin_categories("imagenet") == tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    assert builtin_categories("voc") == tuple(DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"])
    assert builtin_categories("coco") == tuple(FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1.meta["categories"])
    # every built-in model's names are one of these lists (a detector's too)
    assert {len(spec.class_names()) for spec in models.BUILTIN_MODELS.values()} == {21, 1000, 91}


def test_each_torchvision_checkpoint_url_is_its_weights_enums():
    import torchvision.models.detection as det
    import torchvision.models.segmentation as seg

    sources = [s.weights for s in models.BUILTIN_MODELS.values()
               if isinstance(s.weights, weights.TorchvisionWeights)]
    assert len(sources) == 6  # DeepLabV3 and the five detectors
    for source in sources:
        module = seg if hasattr(seg, source.enum_name) else det
        assert source.url == getattr(getattr(module, source.enum_name), source.member).url, source.describe()


def test_the_hash_in_a_checkpoint_name_is_read_as_torch_hub_reads_it():
    import torch.hub

    assert weights.HASH_IN_NAME.pattern == torch.hub.HASH_REGEX.pattern


# hub_dir() in a process without torch, under each environment, then torch.hub.get_dir() there.
_HUB_DIRS = """
import json, os, sys
from camcore import weights
cases = [{}, {"XDG_CACHE_HOME": sys.argv[1] + "/xdg"}, {"TORCH_HOME": sys.argv[1] + "/th"},
         {"TORCH_HOME": "~/th", "XDG_CACHE_HOME": sys.argv[1] + "/xdg"}]
ours = []
for case in cases:
    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        os.environ.pop(name, None)
    os.environ.update(case)
    ours.append(str(weights.hub_dir()))
assert "torch" not in sys.modules
import torch.hub
theirs = []
for case in cases:
    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        os.environ.pop(name, None)
    os.environ.update(case)
    theirs.append(torch.hub.get_dir())
torch.hub.set_dir(sys.argv[1] + "/moved")
print(json.dumps({"ours": ours, "theirs": theirs, "moved": str(weights.hub_dir())}))
"""


def test_the_hub_folder_is_torch_hubs_with_or_without_torch(tmp_path):
    said = json.loads(run_python(_HUB_DIRS, str(tmp_path), cwd=tmp_path).splitlines()[-1])
    assert said["ours"] == said["theirs"]
    assert said["moved"] == str(tmp_path / "moved")  # torch.hub.set_dir, once torch is there


def test_every_method_names_a_pytorch_grad_cam_class():
    import pytorch_grad_cam

    for key, spec in methods.METHODS.items():
        assert spec.cls is getattr(pytorch_grad_cam, spec.library_class), key
        assert isinstance(spec.cls, type) and spec.to_dict()["class"] == spec.cls.__name__, key


# What the App's compute form and the CLI read before a run: every model's spec, classes, layers
# and methods; a request checked (a classifier's class, a detector's box rule); the weights found.
_READ_THE_REGISTRIES = """
import sys
from camcore import batch_options, measures, methods, models, weights
for spec in models.list_models():
    spec.class_names(), spec.to_dict(), methods.not_offered(spec.task, spec.family)
    [methods.method_label(m.key) for m in methods.methods_for(spec.task, spec.family)]
    for choice in weights.choices():
        try:
            weights.check_available(spec.weights, choice.value)
        except Exception:
            pass
for model, target in (("efficientnet_lite0", "tabby"), ("deeplabv3", "person"),
                      ("fasterrcnn_resnet50_fpn_v2", "class:dog")):
    options = batch_options.BatchOptions(model=model, methods=["scorecam", "Grad-CAM++"], target_rule=target,
                                         measures=measures.MeasureOptions(threshold=0.4)).checked()
    assert options.field_names(), options
print(" ".join(m for m in sys.argv[1:] if m in sys.modules) or "none")
"""


def test_the_registries_and_a_batchs_options_import_no_torch(tmp_path):
    loaded = run_python(_READ_THE_REGISTRIES, *HEAVY, cwd=tmp_path)
    assert loaded.split()[-1:] == ["none"], f"loaded: {loaded.strip()}"


# `python -m camcore models` and `methods`: the lists a user reads before choosing (they took 3.0
# and 4.6 s when they loaded torch to print a table).
_LIST = """
import contextlib, io, sys
from camcore.cli import main
for command in ("models", "methods"):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main([command]) == 0
    assert "efficientnet_lite0" in out.getvalue() or "gradcam" in out.getvalue(), out.getvalue()
print(" ".join(m for m in sys.argv[1:] if m in sys.modules) or "none")
"""


def test_the_clis_model_and_method_lists_import_no_torch(tmp_path):
    loaded = run_python(_LIST, *HEAVY, cwd=tmp_path)
    assert loaded.split()[-1:] == ["none"], f"loaded: {loaded.strip()}"



