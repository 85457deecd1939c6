"""The plausibility rules of the quality filter: their settings, measurements and thresholds.

Three rules reject impossible triplets before any feature score is looked at, each with its own reason:
``mask_outside_body`` (the mask lies outside the body outline of the CT), ``empty_mask`` (no tumour where the
real data always has one) and ``no_pet_uptake`` (a mask without PET uptake). :class:`PlausibilitySettings`
holds their settings in one validated, frozen object; :func:`measure_plausibility` computes the measurements
of a batch (with the functions of :mod:`~monai_pairsynth.quality.plausibility`) and :func:`plausibility_rules`
turns the settings and the real training measurements into thresholds, with a note on each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from monai.utils import look_up_option

from monai_pairsynth.modalities import ModalitySpec

from .filter_options import EmptyMaskRule, check_quantile, is_int, is_real_number
from .plausibility import body_mask, mask_in_body_fraction, pet_uptake_ratio

__all__ = [
    "PLAUSIBILITY_RULES",
    "PlausibilitySettings",
    "measure_plausibility",
    "plausibility_rules",
]

# (reason, score key, threshold key) of the plausibility rules, in the order they are checked
PLAUSIBILITY_RULES = (
    ("mask_outside_body", "mask_in_body", "min_mask_in_body"),
    ("empty_mask", "mask_voxels", "min_mask_voxels"),
    ("no_pet_uptake", "pet_uptake", "min_pet_uptake"),
)


@dataclass(frozen=True)
class PlausibilitySettings:
    """Settings of the plausibility rules of :class:`~monai_pairsynth.quality.FeatureCentroidFilter`.

    Validated on construction (``ValueError`` naming the setting); ``empty_mask`` is normalised to an
    :class:`EmptyMaskRule`, ``pet_ring`` to a tuple, numbers to floats. Change one with
    ``dataclasses.replace(settings, min_pet_uptake=None)``.

    Args:
        ct_key: the CT modality of the ``mask_outside_body`` rule (``None``: no CT rule).
        pet_key: the PET modality of the ``no_pet_uptake`` rule (``None``: no PET rule).
        body_threshold: the body is CT above this value in the CT spec's physical unit (default -500 HU:
            between fat, about -100, and air, -1000), holes of each axial slice filled (airway, sinuses,
            lungs are inside the patient). Must lie inside the CT spec's range.
        body_dilation: voxels the body is dilated by (default 1: a lesion at the skin, partial volume).
        min_mask_in_body: ``mask_outside_body`` rejects a sample whose fraction of mask voxels inside the body
            is below this (default 0.9); ``None`` turns the rule off. An empty mask passes this rule.
        empty_mask: ``"auto"`` (default), ``"on"`` / ``True`` or ``"off"`` / ``False``: when the
            ``empty_mask`` rule applies (:class:`EmptyMaskRule`).
        min_mask_voxels: ``empty_mask`` rejects a mask with fewer voxels than this (default 1: an empty mask).
        empty_mask_real_fraction: ``"auto"`` turns the rule on when at least this fraction of the real
            training samples has ``min_mask_voxels`` or more (default 0.95).
        min_pet_uptake: ``no_pet_uptake`` rejects a sample whose PET uptake ratio (mean SUV in the mask over
            the median SUV in a ring around it, :func:`~monai_pairsynth.quality.plausibility.pet_uptake_ratio`)
            is below this: a number (fixed), ``"auto"`` (default: learned at ``fit`` as
            ``pet_uptake_margin`` × the ``pet_uptake_quantile`` of the real training samples' ratios) or
            ``None`` (off). An empty mask passes this rule.
        pet_uptake_quantile: the quantile of the real ratios of ``"auto"`` (default 0.01).
        pet_uptake_margin: the factor of ``"auto"`` (default 0.75; below 1, so that a real tumour fainter than
            the fitted ones still passes).
        pet_ring: ``(inner, outer)`` voxels: the ring is the mask dilated by ``outer`` minus the mask dilated by
            ``inner`` (default ``(1, 3)``).

    Example:
        >>> settings = PlausibilitySettings(min_pet_uptake=1.2, empty_mask=False)
        >>> settings.empty_mask, settings.min_pet_uptake, settings.pet_ring
        (<EmptyMaskRule.OFF: 'off'>, 1.2, (1, 3))
        >>> PlausibilitySettings(pet_ring=(3, 1))
        Traceback (most recent call last):
        ...
        ValueError: pet_ring must be two integers (inner, outer) with 0 <= inner < outer (voxels), got (3, 1).
    """

    ct_key: str | None = "ct"
    pet_key: str | None = "pet"
    body_threshold: float = -500.0
    body_dilation: int = 1
    min_mask_in_body: float | None = 0.9
    empty_mask: EmptyMaskRule | str | bool = EmptyMaskRule.AUTO
    min_mask_voxels: int = 1
    empty_mask_real_fraction: float = 0.95
    min_pet_uptake: float | str | None = "auto"
    pet_uptake_quantile: float = 0.01
    pet_uptake_margin: float = 0.75
    pet_ring: Sequence[int] = (1, 3)

    def __post_init__(self) -> None:
        for name in ("ct_key", "pet_key"):
            key = getattr(self, name)
            if key is not None and (not isinstance(key, str) or not key):
                raise ValueError(f"{name} must be a modality key (a non-empty string) or None, got {key!r}.")
        if self.ct_key is not None and self.ct_key == self.pet_key:
            raise ValueError(f"ct_key and pet_key must differ, both are {self.ct_key!r}.")
        if not is_real_number(self.body_threshold):
            raise ValueError(f"body_threshold must be a finite number (HU), got {self.body_threshold!r}.")
        if not is_int(self.body_dilation) or self.body_dilation < 0:
            raise ValueError(f"body_dilation must be an integer >= 0 (voxels), got {self.body_dilation!r}.")
        inside = self.min_mask_in_body
        if inside is not None and (not is_real_number(inside) or not 0.0 <= float(inside) <= 1.0):
            raise ValueError(
                f"min_mask_in_body must be a fraction in [0, 1] or None (rule off), got {inside!r}."
            )
        empty_mask = self.empty_mask
        if isinstance(empty_mask, bool):
            empty_mask = EmptyMaskRule.ON if empty_mask else EmptyMaskRule.OFF
        empty_mask = look_up_option(empty_mask, EmptyMaskRule)
        if not is_int(self.min_mask_voxels) or self.min_mask_voxels < 1:
            raise ValueError(f"min_mask_voxels must be an integer >= 1, got {self.min_mask_voxels!r}.")
        fraction = self.empty_mask_real_fraction
        if not is_real_number(fraction) or not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"empty_mask_real_fraction must be a fraction in [0, 1], got {fraction!r}.")
        uptake = self.min_pet_uptake
        if not (uptake is None or uptake == "auto" or (is_real_number(uptake) and float(uptake) >= 0.0)):
            raise ValueError(
                f"min_pet_uptake must be a number >= 0, 'auto' or None (rule off), got {uptake!r}."
            )
        quantile = check_quantile("pet_uptake_quantile", self.pet_uptake_quantile)
        if not is_real_number(self.pet_uptake_margin) or not float(self.pet_uptake_margin) > 0.0:
            raise ValueError(f"pet_uptake_margin must be a positive number, got {self.pet_uptake_margin!r}.")
        ring = self.pet_ring
        if (
            isinstance(ring, (str, bytes))
            or not isinstance(ring, Sequence)
            or len(ring) != 2
            or not all(is_int(r) for r in ring)
            or not 0 <= ring[0] < ring[1]
        ):
            raise ValueError(
                f"pet_ring must be two integers (inner, outer) with 0 <= inner < outer (voxels), got {ring!r}."
            )
        normalised = {
            "body_threshold": float(self.body_threshold),
            "body_dilation": int(self.body_dilation),
            "min_mask_in_body": None if inside is None else float(inside),
            "empty_mask": empty_mask,
            "min_mask_voxels": int(self.min_mask_voxels),
            "empty_mask_real_fraction": float(fraction),
            "min_pet_uptake": uptake if uptake in (None, "auto") else float(uptake),
            "pet_uptake_quantile": quantile,
            "pet_uptake_margin": float(self.pet_uptake_margin),
            "pet_ring": (int(ring[0]), int(ring[1])),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The settings' names, in order (also the filter's keyword arguments and config keys)."""
        return tuple(f.name for f in fields(cls))

    def to_config(self) -> dict[str, Any]:
        """Plain values (``empty_mask`` as its string, ``pet_ring`` as a list), as a filter state stores them."""
        config = {name: getattr(self, name) for name in self.field_names()}
        config["empty_mask"] = self.empty_mask.value  # type: ignore[union-attr]
        config["pet_ring"] = list(self.pet_ring)
        return config

    def uses_ct(self, image_keys: Sequence[str]) -> bool:
        """The ``mask_outside_body`` rule is configured and its CT is one of ``image_keys``."""
        return self.min_mask_in_body is not None and self.ct_key is not None and self.ct_key in image_keys

    def uses_pet(self, image_keys: Sequence[str]) -> bool:
        """The ``no_pet_uptake`` rule is configured and its PET is one of ``image_keys``."""
        return self.min_pet_uptake is not None and self.pet_key is not None and self.pet_key in image_keys

    def uses_any(self, image_keys: Sequence[str]) -> bool:
        """Any rule applies (all of them need the mask)."""
        return self.uses_ct(image_keys) or self.uses_pet(image_keys) or self.empty_mask != EmptyMaskRule.OFF

    def check_for(self, image_keys: Sequence[str], label_key: str, specs: Mapping[str, ModalitySpec]) -> None:
        """Check the settings against a filter's modalities: keys are image modalities with image specs, and the
        body threshold lies inside the CT spec's range. ``ValueError`` otherwise."""
        for name, key in (("ct_key", self.ct_key), ("pet_key", self.pet_key)):
            if key is not None and key == label_key:
                raise ValueError(f"{name} {key!r} is the label_key; it must name an image modality.")
        if self.uses_ct(image_keys):
            spec = specs.get(self.ct_key)  # type: ignore[arg-type]
            if spec is None or spec.is_mask:
                raise ValueError(
                    f"the mask_outside_body rule needs an image spec for ct_key {self.ct_key!r} (to convert to "
                    "HU); pass specs={...}, or min_mask_in_body=None."
                )
            if not float(spec.low) < self.body_threshold < float(spec.high):
                side = "body" if self.body_threshold < spec.low else "air"
                raise ValueError(
                    f"body_threshold {self.body_threshold:g} {spec.unit} lies outside the CT spec's range "
                    f"({spec.low:g}, {spec.high:g}): every voxel would be {side}."
                )
        if self.uses_pet(image_keys):
            spec = specs.get(self.pet_key)  # type: ignore[arg-type]
            if spec is None or spec.is_mask:
                raise ValueError(
                    f"the no_pet_uptake rule needs an image spec for pet_key {self.pet_key!r} (to convert to "
                    "SUV); pass specs={...}, or min_pet_uptake=None."
                )


def measure_plausibility(
    settings: PlausibilitySettings,
    inputs: torch.Tensor,
    mask: torch.Tensor | None,
    image_keys: Sequence[str],
    specs: Mapping[str, ModalitySpec],
) -> dict[str, torch.Tensor]:
    """The plausibility measurements of a prepared batch, ``(B,)`` each, for the rules that apply.

    Args:
        settings: the rules' settings.
        inputs: ``(B, len(image_keys), *spatial)`` in [-1, 1].
        mask: ``(B, 1, *spatial)`` in {0, 1}, or ``None`` (no measurement then).
        image_keys: the modalities of the channels of ``inputs``.
        specs: modality specs, to convert CT and PET back to HU and SUV.

    Returns:
        ``mask_in_body`` (CT rule on), ``mask_voxels`` (``empty_mask`` not off), ``pet_uptake`` (PET rule on).
    """
    out: dict[str, torch.Tensor] = {}
    if mask is None:
        return out
    tumour = mask > 0.5
    keys = list(image_keys)
    if settings.uses_ct(keys):
        i = keys.index(settings.ct_key)  # type: ignore[arg-type]
        ct = specs[settings.ct_key].denormalize(inputs[:, i : i + 1])  # type: ignore[index]
        body = body_mask(ct, settings.body_threshold, settings.body_dilation)
        out["mask_in_body"] = mask_in_body_fraction(tumour, body)
    if settings.empty_mask != EmptyMaskRule.OFF:
        out["mask_voxels"] = tumour.flatten(1).sum(1).float()
    if settings.uses_pet(keys):
        i = keys.index(settings.pet_key)  # type: ignore[arg-type]
        pet = specs[settings.pet_key].denormalize(inputs[:, i : i + 1])  # type: ignore[index]
        out["pet_uptake"] = pet_uptake_ratio(pet, tumour, settings.pet_ring)  # type: ignore[arg-type]
    return out


_LEGACY = "the saved filter state predates the plausibility rules (nothing learned at fit)"


def plausibility_rules(
    settings: PlausibilitySettings, image_keys: Sequence[str], real: Mapping[str, torch.Tensor] | None
) -> dict[str, dict[str, Any]]:
    """Per rule: ``active``, ``threshold`` (``None`` when off) and a ``note`` saying why.

    Args:
        settings: the rules' settings.
        image_keys: the filter's modalities (a rule whose modality is missing is off).
        real: the real training measurements of :func:`measure_plausibility` (``None``: a state saved before
            the rules existed, nothing learned).
    """
    rules: dict[str, dict[str, Any]] = {}

    def rule(reason: str, threshold: float | None, note: str) -> None:
        if threshold is not None and real is not None:
            key = next(k for r, k, _ in PLAUSIBILITY_RULES if r == reason)
            if key in real:
                failing = int((real[key] < threshold).sum())
                note += f"; {failing} of {real[key].numel()} real training samples fail it"
        rules[reason] = {"active": threshold is not None, "threshold": threshold, "note": note}

    rule(*_body_rule(settings, list(image_keys)))
    rule(*_empty_mask_rule(settings, real))
    rule(*_pet_uptake_rule(settings, list(image_keys), real))
    return rules


def _body_rule(settings: PlausibilitySettings, image_keys: list[str]) -> tuple[str, float | None, str]:
    """``mask_outside_body``: nothing to learn."""
    if settings.min_mask_in_body is None:
        return "mask_outside_body", None, "off (min_mask_in_body=None)"
    if not settings.uses_ct(image_keys):
        return (
            "mask_outside_body",
            None,
            f"off: ct_key {settings.ct_key!r} is not among image_keys {image_keys}",
        )
    return (
        "mask_outside_body",
        settings.min_mask_in_body,
        f"on: >= {settings.min_mask_in_body:g} of the mask inside CT > {settings.body_threshold:g} "
        f"(holes filled, dilated by {settings.body_dilation})",
    )


def _empty_mask_rule(
    settings: PlausibilitySettings, real: Mapping[str, torch.Tensor] | None
) -> tuple[str, float | None, str]:
    """``empty_mask``: on, off, or learned from how many real training samples have tumour."""
    k = settings.min_mask_voxels
    if settings.empty_mask == EmptyMaskRule.OFF:
        return "empty_mask", None, "off (empty_mask='off')"
    if settings.empty_mask == EmptyMaskRule.ON:
        return "empty_mask", float(k), f"on (empty_mask='on'): at least {k} mask voxel(s)"
    if real is None or "mask_voxels" not in real:
        return "empty_mask", None, f"off (auto): {_LEGACY}"
    with_tumour, total = int((real["mask_voxels"] >= k).sum()), int(real["mask_voxels"].numel())
    share = with_tumour / max(total, 1)
    limit = settings.empty_mask_real_fraction
    if share >= limit:
        return (
            "empty_mask",
            float(k),
            f"on (auto): {with_tumour}/{total} real training samples have >= {k} mask voxel(s) "
            f"({share:.3g} >= empty_mask_real_fraction {limit:g})",
        )
    return (
        "empty_mask",
        None,
        f"off (auto): only {with_tumour}/{total} real training samples have >= {k} mask voxel(s) "
        f"({share:.3g} < empty_mask_real_fraction {limit:g}), so an empty mask is plausible",
    )


def _pet_uptake_rule(
    settings: PlausibilitySettings, image_keys: list[str], real: Mapping[str, torch.Tensor] | None
) -> tuple[str, float | None, str]:
    """``no_pet_uptake``: fixed, or learned from the real training samples' ratios."""
    if settings.min_pet_uptake is None:
        return "no_pet_uptake", None, "off (min_pet_uptake=None)"
    if not settings.uses_pet(image_keys):
        return (
            "no_pet_uptake",
            None,
            f"off: pet_key {settings.pet_key!r} is not among image_keys {image_keys}",
        )
    if settings.min_pet_uptake != "auto":
        fixed = float(settings.min_pet_uptake)
        return "no_pet_uptake", fixed, f"on (fixed): ratio >= {fixed:g}"
    if real is None or "pet_uptake" not in real:
        return "no_pet_uptake", None, f"off (auto): {_LEGACY}"
    ratios = real["pet_uptake"].double()
    ratios = ratios[torch.isfinite(ratios)]
    if ratios.numel() == 0:
        return "no_pet_uptake", None, "off (auto): no real training sample has a mask to learn from"
    q = float(torch.quantile(ratios, settings.pet_uptake_quantile))
    threshold = settings.pet_uptake_margin * q
    return (
        "no_pet_uptake",
        threshold,
        f"on (auto): ratio >= {settings.pet_uptake_margin:g} x {q:.4g} (the {settings.pet_uptake_quantile:g} "
        f"quantile of {ratios.numel()} real training ratios) = {threshold:.4g}",
    )
