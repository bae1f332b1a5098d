"""HeatmapIdentity: one value gives a map's field name, description, meaning and provenance."""
from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace

import pytest

from camcore.identity import MAX_FIELD_LEN, HeatmapIdentity
from camcore.models import MODELS


def _identity(**kw) -> HeatmapIdentity:
    base = dict(model="deeplabv3", method="gradcam", layer="layer4", target="person")
    return HeatmapIdentity(**{**base, **kw})


def test_a_plain_map_has_a_short_readable_name_with_what_differs_first():
    name = _identity().field_name
    assert name == "cam_gradcam_layer4_person_deeplabv3"
    assert len(name) <= 40  # whole in the App's sidebar


def test_every_built_in_model_method_and_layer_gives_a_short_name():
    for spec in MODELS.values():
        for layer in spec.layers:
            name = HeatmapIdentity(spec.key, "gradcam++", layer.name, "American Staffordshire terrier").field_name
            assert name.startswith("cam_gradcampp_") and len(name) <= MAX_FIELD_LEN, name


def test_imagenet_synonyms_give_the_first_name_and_long_targets_are_cut():
    assert _identity(target="tabby, tabby cat").field_name == "cam_gradcam_layer4_tabby_deeplabv3"
    long = _identity(target="American Staffordshire terrier").field_name
    other = _identity(target="American Staffordshire bull").field_name
    assert "_american_staffo_" in long and len(long) <= 52
    assert long != other  # cut alike, kept apart by a hash of the whole target


def test_variants_never_share_a_field_with_the_plain_map():
    variants = [dict(), dict(aug_smooth=True), dict(eigen_smooth=True), dict(pretrained=False),
                dict(weights_tag="finetuned_v2"), dict(aug_smooth=True, eigen_smooth=True)]
    names = [_identity(**v).field_name for v in variants]
    assert len(set(names)) == len(names), names
    assert _identity(pretrained=False).field_name.endswith("_untrained")
    assert _identity(pretrained=False).variant == "untrained"
    assert _identity().variant == ""


def test_gradcam_and_gradcampp_stay_apart():
    assert _identity(method="gradcam").field_name != _identity(method="gradcam++").field_name


def test_long_model_keys_stay_apart_and_names_over_the_limit_end_in_a_hash():
    custom, other = _identity(model="efficientnet_lite0_custom"), _identity(model="efficientnet_lite0_other")
    assert custom.field_name != other.field_name
    a = _identity(model="m" * 40, layer="blocks_11_attention_output_norm_" * 2, target="snorkel",
                  weights_tag="my_finetuned_checkpoint", eigen_smooth=True, aug_smooth=True)
    b = dataclasses.replace(a, target="snorkels")
    assert len(a.field_name) <= MAX_FIELD_LEN and len(b.field_name) <= MAX_FIELD_LEN
    assert a.field_name != b.field_name


def test_non_latin_targets_get_a_stable_part():
    a, b = _identity(target="猫").field_name, _identity(target="犬").field_name
    assert a != b and a == _identity(target="猫").field_name
    assert a.isascii()


def test_distinct_identities_over_a_grid_get_distinct_names():
    grid = itertools.product(("deeplabv3", "deit_tiny"), ("gradcam", "gradcam++", "scorecam"),
                             ("layer3", "layer4", "block11"), ("person", "dog", "predicted"),
                             (False, True), (True, False))
    identities = [_identity(model=m, method=me, layer=la, target=t, eigen_smooth=e, pretrained=p)
                  for m, me, la, t, e, p in grid]
    assert len({i.field_name for i in identities}) == len(identities)


def test_the_description_and_meaning_say_everything_the_short_name_leaves_out():
    ident = _identity(weights="ImageNet (torchvision)", weights_tag="ft", eigen_smooth=True, target="tabby, tabby cat")
    assert "gradcam on layer4 of deeplabv3" in ident.description
    assert "'tabby, tabby cat'" in ident.description and "eigen smooth" in ident.description
    assert "weights file ft" in ident.description
    assert ident.meaning == {"kind": "heatmap", "model": "deeplabv3", "method": "gradcam", "layer": "layer4",
                             "target": "tabby, tabby cat", "variant": "eigen_ft"}
    assert "variant" not in _identity().meaning  # fields made before variants keep matching


def test_weights_tag_pretrained_and_provenance_come_from_the_loaded_model_alone():
    spec = SimpleNamespace(key="deit_tiny")
    model = SimpleNamespace(spec=spec, pretrained=False, weights_label="untrained (random)", weights_tag="",
                            provenance={"arch": "timm:deit", "weights_sha256": "ab" * 32, "classes_file": ""})
    ident = HeatmapIdentity.of(model, "gradcam", "block11", "tabby", input_size=224, eigen_smooth=True)
    assert ident.pretrained is False and ident.field_name.endswith("_eigen_untrained")
    assert ident.provenance == {"model": "deit_tiny", "weights": "untrained (random)", "pretrained": False,
                                "method": "gradcam", "layer": "block11", "aug_smooth": False,
                                "eigen_smooth": True, "arch": "timm:deit", "weights_sha256": "ab" * 32,
                                "classes_file": "", "input_size": 224}


def test_an_identity_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _identity().method = "scorecam"  # type: ignore[misc]
