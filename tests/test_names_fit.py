"""Issue #21 item 1: every heatmap field name the project writes shows whole in the FiftyOne App's
sidebar at 1280 px (camcore.identity's font metrics, which tests/test_app21_app.py checks against
the real App), names from before keep their maps (one computation, one field), and names cut
alike stay apart in a dataset."""
from __future__ import annotations

import dataclasses

import fiftyone as fo
import numpy as np
import pytest
from fo_helpers import make_result, unique_name, with_identity, write_images

from camcore import model_file, store
from camcore.identity import (
    AUTO_TARGET,
    MEASURE_SIDEBAR_PX,
    SIDEBAR_PX,
    HeatmapIdentity,
    codes,
    measure_sidebar_px,
    sidebar_px,
)
from camcore.methods import METHODS, get_method
from camcore.model_spec import LayerSpec
from camcore.models import BUILTIN_MODELS

SIZE = (24, 32)
LONG_CLASSES = ("German shepherd, German shepherd dog, German police dog, alsatian",
                "American Staffordshire terrier, Staffordshire terrier, American pit bull terrier",
                "Egyptian cat", "tiger cat", "tabby, tabby cat", "potter's wheel", "猫")
VARIANTS = (dict(), dict(aug_smooth=True), dict(eigen_smooth=True), dict(pretrained=False),
            dict(weights_tag="my_finetuned_checkpoint_v2"),
            dict(aug_smooth=True, eigen_smooth=True, pretrained=False, weights_tag="ft_v2"))


def _targets(spec) -> list[str]:
    if spec.task == "detection":  # a batch's rules, and the box a push explains
        return ["top", "class:traffic light@0.3", "all", "traffic light ground_truth/65f1c0ffee0123456789abcd",
                "field:ground_truth:12", "field:my_very_long_detections_field:3:traffic light"]
    longest = sorted(spec.class_names(), key=len)[-2:]
    return [AUTO_TARGET, *longest, *LONG_CLASSES]


def _own_model():
    """An own model with a long key and long module paths, coded as the models file codes them."""
    paths = ("blocks.11.attention.output.norm", "features.denseblock4.denselayer16.conv2", "model.head.fc")
    layers = tuple(LayerSpec(p, p, short=model_file._layer_code(p)) for p in paths)
    return dataclasses.make_dataclass("Spec", ["key", "short", "layers", "task"])(
        "my_wide_resnet_finetuned_on_wildlife", model_file._model_code("my_wide_resnet_finetuned_on_wildlife", None),
        layers, "classification")


def test_every_name_the_project_writes_shows_whole_in_the_app_sidebar():
    specs = [*BUILTIN_MODELS.values(), _own_model()]
    too_wide, count = [], 0
    for spec in specs:
        targets = _targets(spec) if hasattr(spec, "class_names") else [AUTO_TARGET, *LONG_CLASSES]
        for layer in spec.layers:
            for method in METHODS.values():
                if hasattr(spec, "family") and method.unsupported_reason(spec.task, spec.family) is not None:
                    continue  # a method this model refuses writes no field
                for target in targets:
                    for variant in VARIANTS:
                        ident = HeatmapIdentity(spec.key, method.key, layer.name, target, **variant,
                                                **codes(spec, method, layer.name))
                        count += 1
                        for name in (ident.field_name, ident.spare_field_name):
                            if sidebar_px(name) > SIDEBAR_PX or not name.startswith("cam_"):
                                too_wide.append((name, round(sidebar_px(name), 1)))
                        # its measure fields (a float, bool or string field has its own limit):
                        # the widest measure word, as each name of a map names its measures alike
                        # and the indexed one, beside the App's index icon
                        for measure, spare in (("remove", False), ("remove", True), ("share", False),
                                               ("share", True)):
                            name = ident.measure_field(measure, spare)
                            if sidebar_px(name) > measure_sidebar_px(measure) or not name.startswith(
                                    f"camm_{measure}_"):
                                too_wide.append((name, round(sidebar_px(name), 1)))
    assert count > 10_000
    assert not too_wide, f"{len(too_wide)} names cut in the App's sidebar, e.g. {too_wide[:5]}"


def test_every_measure_name_fits_and_keeps_its_measure_whole():
    for method, layer, target in (("gradcam", "head", AUTO_TARGET), ("eigencam", "head", "Egyptian cat"),
                                  ("gradcamelementwise", "stage6", "tabby, tabby cat")):
        ident = _coded(target, method, layer)
        for spare in (False, True):
            for measure, name in ident.measure_fields(spare).items():
                assert sidebar_px(name) <= measure_sidebar_px(measure) and name.startswith(f"camm_{measure}_"), name
    # a name that fits keeps the form it always had (existing datasets' fields): only cut ones change
    assert _coded(AUTO_TARGET).measure_field("score") == "camm_score_grad_head_effl0"
    assert measure_sidebar_px("share") == MEASURE_SIDEBAR_PX - 18 == measure_sidebar_px("remove") - 18
    assert _coded(AUTO_TARGET).measure_field("remove") == "camm_remove_grad_head_effl"  # was 213 px
    assert _coded(AUTO_TARGET).measure_field("remove", spare=True).startswith("camm_remove_grad_")


def _coded(target: str, method: str = "gradcam", layer: str = "head", **kw) -> HeatmapIdentity:
    spec = BUILTIN_MODELS["efficientnet_lite0"]
    return HeatmapIdentity(spec.key, get_method(method).key, layer, target, **kw,
                           **codes(spec, get_method(method), layer))


def test_names_that_fit_keep_their_form_and_cut_ones_keep_the_start_of_the_class():
    assert _coded(AUTO_TARGET).field_name == "cam_grad_head_effl0"
    assert _coded("tabby, tabby cat").field_name == "cam_grad_head_effl0_tabby"  # as before: it fitted
    cat = _coded("Egyptian cat").field_name
    # cut to the sample modal's limit (about 190 px): the class's first word, no hash
    assert cat == "cam_grad_head_effl0_egypt" and sidebar_px(cat) <= SIDEBAR_PX, cat
    eigen = _coded("Egyptian cat", "eigencam").field_name
    assert eigen == "cam_eigen_head_effl0_egy" and sidebar_px(eigen) <= SIDEBAR_PX, eigen
    assert _coded("Egyptian cat").description.count("'Egyptian cat'") == 1  # the whole class in the field's info


def test_every_imagenet_class_can_have_its_own_field_on_the_widest_heads():
    # The short hash of a cut name may meet another class's: the store then gives the map its
    # spare name (6 hex). Spare names never meet, nor meet a field name.
    for method, layer in (("gradcam", "head"), ("shapleycam", "head"), ("gradcamelementwise", "stage6")):
        names = BUILTIN_MODELS["efficientnet_lite0"].class_names()
        idents = [_coded(n, method, layer) for n in names]
        spare = {i.spare_field_name for i in idents}
        assert len(spare) == len(idents), method
        assert not spare & {i.field_name for i in idents}


@pytest.fixture
def dataset(tmp_path):
    files = write_images(tmp_path / "img", ["a.png", "b.png"], size=SIZE)
    ds = fo.Dataset(unique_name("names fit"))
    ds.add_samples([fo.Sample(filepath=p) for p in files])
    ds.compute_metadata()
    yield ds
    ds.delete()


def _heatmap(identity: HeatmapIdentity, seed: int = 0):
    from fo_helpers import make_heatmap

    return with_identity(make_heatmap(SIZE, seed=seed), **{f.name: getattr(identity, f.name)
                                                           for f in dataclasses.fields(identity)})


def test_a_field_of_an_older_name_keeps_its_maps_and_cut_names_that_meet_stay_apart(dataset, tmp_path):
    from camcore import batch

    sample = dataset.first()
    new = _coded("Egyptian cat")
    old = "cam_grad_head_effl0_egyptian_cat"  # what CAM Explorer named it before names were cut to fit
    assert new.field_name != old
    store.declare_heatmap_field(dataset, dataclasses.replace(new, stored_as=old))  # an older version's field
    fields = store.push_heatmaps(dataset, sample.id, make_result(SIZE, [_heatmap(new)]), heatmap_dir=tmp_path / "hm")
    assert fields == [old] and new.field_name not in dataset.get_field_schema()  # one computation, one field
    assert dataset[sample.id][old].map_path
    options = batch.BatchOptions(model="efficientnet_lite0", methods=("gradcam",), layers=("head",),
                                 target_rule="Egyptian cat")
    assert options.field_names(dataset) == [old]  # a batch (and its resume) finds it too
    assert store.stored_identity(dataset, new).field_name == old

    # another class whose cut name and short hash are this one's: its own field, the spare name
    taken = store.declare_heatmap_field(dataset, _coded("Egyptian mau"))
    clash = _coded("Egyptian cat, a different class")
    object.__setattr__(clash, "field_name", taken)  # its short hash meets the one of "Egyptian mau"
    assert store.stored_identity(dataset, clash).field_name == clash.spare_field_name
    h = _heatmap(clash, seed=3)
    object.__setattr__(h.identity, "field_name", taken)
    [written] = store.push_heatmaps(dataset, sample.id, make_result(SIZE, [h]), heatmap_dir=tmp_path / "hm")
    assert written == clash.spare_field_name and written != taken
    assert dataset[sample.id][written].target == "tabby cat" and np.isfinite(dataset[sample.id][written].raw_max)


def test_a_detectors_box_rules_keep_their_index_in_the_name():
    """Issue #21 item 3: a batch's top:3 fills det:0..2; each field says which box (det<i>), the
    names differ on their own (no class-like cut that makes det:0 and det:1 meet) and fit."""
    spec = BUILTIN_MODELS["fasterrcnn_resnet50_fpn_v2"]
    for method, layer in (("gradcam", "fpn_pool"), ("eigencam", "layer4")):
        coded = codes(spec, get_method(method), layer)
        names = [HeatmapIdentity(spec.key, method, layer, f"det:{k}", **coded).field_name for k in range(3)]
        assert [n.rsplit("_", 1)[1] for n in names] == ["det0", "det1", "det2"], names
        assert all(sidebar_px(n) <= SIDEBAR_PX for n in names), names


def test_a_field_rules_names_say_the_field_and_box_and_older_names_keep_their_maps(dataset, tmp_path):
    """Issue 24 (det32): a batch's `field:ground_truth` fields were `..._fi_<hash>` /
    `..._fie_<hash>`, one per box index, told apart by the hash alone. Now the field's code and the
    box's index (and the class, cut) where they fit: `gt0`, `gt1`, `gt0_kit`; where nothing readable
    fits (long model or layer codes, variants) a hash as before. A dataset's field under the older
    name keeps its maps (one computation, one field)."""
    from camcore import batch

    spec = BUILTIN_MODELS["ssdlite320_mobilenet_v3_large"]

    def name(target: str, method: str = "gradcam", **kw) -> str:
        coded = codes(spec, get_method(method), "fpn")
        return HeatmapIdentity(spec.key, method, "fpn", target, **kw, **coded).field_name

    assert [name(f"field:ground_truth:{i}") for i in range(3)] == [f"cam_grad_fpn_ssdl_gt{i}" for i in range(3)]
    assert name("field:ground_truth:1:kite") == "cam_grad_fpn_ssdl_gt1_kit"
    assert name("field:predictions:0") == "cam_grad_fpn_ssdl_pr0"
    # classes cut alike meet, as classes do: a dataset that holds both gives the second its spare name
    assert name("field:ground_truth:1:kite") == name("field:ground_truth:1:kitchen table")
    assert len({name(f"field:ground_truth:{i}", pretrained=False) for i in range(3)}) == 3  # no room: hashes
    identity = HeatmapIdentity(spec.key, "gradcam", "fpn", "field:ground_truth:0",
                               **codes(spec, get_method("gradcam"), "fpn"))
    old = "cam_grad_fpn_ssdl_fie_97c"  # what CAM Explorer named this field before det32
    store.declare_heatmap_field(dataset, dataclasses.replace(identity, stored_as=old))
    options = batch.BatchOptions(model=spec.key, methods=("gradcam",), layers=("fpn",),
                                 target_rule="field:ground_truth:0")
    assert options.field_names(dataset) == [old]  # a batch (and its resume) finds the older field
    assert store.stored_identity(dataset, identity).field_name == old
