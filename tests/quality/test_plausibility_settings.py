"""PlausibilitySettings: one settings object for the plausibility rules, the old keyword arguments still work."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from monai_pairsynth.quality import (
    EmptyMaskRule,
    FeatureCentroidFilter,
    PlausibilitySettings,
    build_feature_segmenter,
)
from monai_pairsynth.quality.feature_centroid_filter import (
    _PLAUSIBILITY_CONFIG,
    FilterNotFittedError,
    StrataMethod,
)
from monai_pairsynth.quality.feature_centroid_filter import PlausibilitySettings as OldPathSettings


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_feature_segmenter(2, channels=(4, 8), dropout=0.2)


def _case(i):
    g = torch.Generator().manual_seed(i)
    img = torch.rand(1, 16, 16, generator=g) * 2 - 1
    return {"ct": 0.4 * img, "pet": -img, "label": (img > 0.5).float()}


def test_old_module_path_keeps_every_public_name():
    assert OldPathSettings is PlausibilitySettings
    assert StrataMethod("kmeans") is StrataMethod.KMEANS and issubclass(FilterNotFittedError, RuntimeError)
    assert _PLAUSIBILITY_CONFIG == PlausibilitySettings.field_names() and len(_PLAUSIBILITY_CONFIG) == 12


@pytest.mark.parametrize(
    ("changes", "attribute", "expected"),
    [
        ({"min_pet_uptake": 1.5}, "min_pet_uptake", 1.5),
        ({"empty_mask": False}, "empty_mask", EmptyMaskRule.OFF),
        ({"pet_ring": [2, 5]}, "pet_ring", (2, 5)),
        ({"min_mask_in_body": None}, "min_mask_in_body", None),
    ],
)
def test_settings_object_and_keyword_arguments_configure_the_same_filter(net, changes, attribute, expected):
    by_object = FeatureCentroidFilter(net, plausibility=PlausibilitySettings(**changes))
    by_keywords = FeatureCentroidFilter(net, **changes)
    assert by_object.config() == by_keywords.config()
    assert getattr(by_object, attribute) == getattr(by_keywords, attribute) == expected
    assert by_object.plausibility == by_keywords.plausibility


def test_keywords_replace_fields_of_the_settings_object(net):
    settings = PlausibilitySettings(min_pet_uptake=2.0, body_dilation=3)
    filt = FeatureCentroidFilter(net, plausibility=settings, min_pet_uptake=None)
    assert filt.min_pet_uptake is None and filt.body_dilation == 3
    assert settings.min_pet_uptake == 2.0  # frozen: the caller's object is unchanged


def test_settings_are_frozen_and_validated():
    settings = PlausibilitySettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.min_pet_uptake = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="min_mask_in_body must be a fraction"):
        PlausibilitySettings(min_mask_in_body=1.5)
    with pytest.raises(ValueError, match=r"'sometimes'(?s:.*)Available options are"):
        PlausibilitySettings(empty_mask="sometimes")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"min_pet_upake": 1.0}, TypeError, "unexpected keyword arguments \\['min_pet_upake'\\]"),
        ({"plausibility": {"min_pet_uptake": 1.0}}, TypeError, "plausibility must be a PlausibilitySettings"),
        ({"ct_key": "label"}, ValueError, "ct_key 'label' is the label_key"),
        ({"body_threshold": -2000.0}, ValueError, "body_threshold -2000 HU lies outside the CT spec's range"),
    ],
)
def test_bad_plausibility_arguments_are_refused_naming_them(net, kwargs, error, message):
    with pytest.raises(error, match=message):
        FeatureCentroidFilter(net, **kwargs)


def test_saved_state_round_trip_keeps_the_settings(net, tmp_path):
    real = [_case(i) for i in range(10)]
    filt = FeatureCentroidFilter(net, mc_passes=1, plausibility=PlausibilitySettings(min_pet_uptake=0.5)).fit(
        real
    )
    path = filt.save(tmp_path / "filter.pt")
    state = torch.load(path, weights_only=True)
    # stored flat, as before the settings object: older readers of the file still find every key
    assert state["version"] == 2 and state["config"]["min_pet_uptake"] == 0.5
    assert state["config"]["empty_mask"] == "auto" and state["config"]["pet_ring"] == [1, 3]
    restored = FeatureCentroidFilter.load(path, net)
    assert restored.plausibility == filt.plausibility
    assert restored.thresholds == filt.thresholds
    batch = {k: torch.stack([_case(50 + i)[k] for i in range(4)]) for k in ("ct", "pet", "label")}
    assert restored.select(batch).reasons == filt.select(batch).reasons
