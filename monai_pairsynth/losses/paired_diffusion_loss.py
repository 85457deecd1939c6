"""The shared training loss of the linked denoisers: summed noise-prediction MSE plus a perceptual term on x0.

For modalities ``m`` with noise ``eps_m``, shared timestep ``t`` and prediction ``eps_hat_m``::

    L = sum_m || eps_hat_m - eps_m ||^2                      (mean over elements, one term per modality)
        + lambda_p * sum_m P_m                                 (lambda_p = ``perceptual_weight``, 0 before warm-up)

where the perceptual term ``P_m`` compares features of the x0 estimate recovered from the prediction,
``x0_hat_m = (x_t,m - sqrt(1 - abar_t) eps_hat_m) / sqrt(abar_t)`` (DDPM, Ho et al. 2020, eq. 15; for v-prediction
``x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_hat``), clipped to [-1, 1]:

- ``cross_modal`` (the Paired Diffusion paper's choice): ``P_m = mean_{n != m} d(F(x0_hat_m), F(x0_n))``, the
  features of each modality's x0 estimate are pulled towards the features of the *other* modalities' x0,
  which rewards structural agreement between the modalities of a triplet;
- ``reconstruction``: ``P_m = d(F(x0_hat_m), F(x0_m))``, towards the modality's own ground truth.

With per-modality timesteps (``timesteps`` a dict ``{modality: (B,)}``, see
:class:`~monai_pairsynth.engines.PairedDiffusionPrepareBatch`) every modality's terms use its own ``t``, and a
modality given clean in a sample (``clean[m]`` true: it was an input, not something to predict) is left out
of that sample's terms: its MSE is the mean over the samples where it was noised, its perceptual term skips it.

**Field of view.** A structured target may carry ``fov``, a ``(B, 1, *spatial)`` {0, 1} mask (1 where the
sample was scanned, 0 where preprocessing padded a crop beyond the scan, see
:class:`~monai_pairsynth.data.FieldOfViewd`; the prepare-batch puts it there when the batch holds it). Then
each modality's MSE is the mean over the in-FOV pixels of each sample (a sample with none counts 0), and the
perceptual term compares the x0 estimates and references with every outside-FOV pixel set to -1 (the padding
value) on both sides, so nothing outside the scan reaches the loss or its gradient. Without ``fov`` nothing
changes.

``d`` is the LPIPS-style distance (Zhang et al. 2018) without learned weights: each feature vector is
normalised to unit length over channels, the squared difference is averaged over space and summed over
the feature maps. ``F`` is pluggable (any module mapping ``(B, 1, *spatial)`` to a list of feature maps);
the default is the fixed random network :class:`~monai_pairsynth.losses.RandomConvFeatures`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from enum import Enum

import torch
import torch.nn.functional as F
from monai.networks.schedulers import Scheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType
from torch import nn

from .random_conv_features import RandomConvFeatures, load_feature_weights

__all__ = [
    "FOV_TARGET_KEY",
    "PAIRED_TARGET_KEYS",
    "PairedDiffusionLoss",
    "PerceptualMode",
    "make_paired_target",
    "perceptual_distance",
    "predict_original_sample",
]

#: keys of the structured target built by :func:`make_paired_target` (and the engines' prepare-batch).
PAIRED_TARGET_KEYS = ("target", "original", "noise", "timesteps")
#: optional key of a structured target: the ``(B, 1, *spatial)`` {0, 1} field-of-view mask (see the module docs).
FOV_TARGET_KEY = "fov"


class PerceptualMode(str, Enum):
    """What the features of a modality's x0 estimate are compared with."""

    CROSS_MODAL = "cross_modal"
    RECONSTRUCTION = "reconstruction"


def make_paired_target(
    target: Mapping[str, torch.Tensor],
    original: Mapping[str, torch.Tensor],
    noise: Mapping[str, torch.Tensor],
    timesteps: torch.Tensor | Mapping[str, torch.Tensor],
    clean: Mapping[str, torch.Tensor] | None = None,
    fov: torch.Tensor | None = None,
) -> dict:
    """The structured target that lets :class:`PairedDiffusionLoss` recover x0 estimates.

    Args:
        target: ``{modality: (B, C, *spatial)}`` regression target (noise, velocity or the clean sample).
        original: ``{modality: (B, C, *spatial)}`` clean samples x0 in [-1, 1].
        noise: ``{modality: (B, C, *spatial)}`` the noise that was added.
        timesteps: ``(B,)`` long tensor, shared by all modalities, or ``{modality: (B,)}`` (per-modality
            timesteps).
        clean: ``{modality: (B,) bool}``: the samples where the modality was given clean (t = 0, not noised);
            they are left out of its loss terms. ``None``: none.
        fov: ``(B, 1, *spatial)`` {0, 1} field-of-view mask: pixels where it is 0 are left out of every loss
            term. ``None`` (default): every pixel counts.
    """
    out = {"target": dict(target), "original": dict(original), "noise": dict(noise), "timesteps": timesteps}
    if clean is not None:
        out["clean"] = dict(clean)
    if fov is not None:
        out[FOV_TARGET_KEY] = fov
    return out


def _field_of_view(target: Mapping, reference: torch.Tensor) -> torch.Tensor | None:
    """The structured target's field-of-view mask as a float ``(B, 1, *spatial)`` {0, 1} tensor on the device of
    ``reference`` (a modality's ``(B, C, *spatial)``), or ``None`` when it carries none."""
    fov = target.get(FOV_TARGET_KEY)
    if fov is None:
        return None
    if not isinstance(fov, torch.Tensor):
        raise ValueError(f"the target's {FOV_TARGET_KEY!r} must be a tensor, got {type(fov).__name__}.")
    expected = (reference.shape[0], 1, *reference.shape[2:])
    if fov.ndim == reference.ndim - 1:  # (B, *spatial): add the channel
        fov = fov.unsqueeze(1)
    if tuple(fov.shape) != expected:
        raise ValueError(
            f"the field-of-view mask has shape {tuple(fov.shape)}; the modalities need {expected} (B, 1, *spatial)."
        )
    return (fov.to(device=reference.device) > 0.5).float()


def _is_structured(target: Mapping) -> bool:
    return all(k in target for k in PAIRED_TARGET_KEYS) and isinstance(target["target"], Mapping)


def _modality_timesteps(target: Mapping, modality: str) -> torch.Tensor:
    """The timesteps of ``modality`` in a structured target (shared, or its own with per-modality timesteps)."""
    timesteps = target["timesteps"]
    if isinstance(timesteps, Mapping):
        if modality not in timesteps:
            raise KeyError(
                f"the target's per-modality timesteps lack {modality!r}; they have {sorted(timesteps)}."
            )
        return timesteps[modality]
    return timesteps


def _noised(target: Mapping, modality: str) -> torch.Tensor | None:
    """``(B,)`` bool: the samples where ``modality`` was noised (not given clean); ``None``: all of them."""
    clean = target.get("clean")
    if not clean or modality not in clean:
        return None
    return ~clean[modality].bool()


def _expand(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def predict_original_sample(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = DDPMPredictionType.EPSILON,
) -> torch.Tensor:
    """x0 estimate from a network prediction at noisy ``sample`` x_t (Ho et al. 2020, eq. 15; Salimans & Ho 2022).

    Args:
        model_output: ``(B, C, *spatial)`` prediction (noise, velocity or sample, per ``prediction_type``).
        sample: ``(B, C, *spatial)`` noisy input x_t.
        timesteps: ``(B,)`` timesteps t.
        alphas_cumprod: ``(T,)`` cumulative products abar of the noise schedule.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.

    Returns:
        ``(B, C, *spatial)`` x0 estimate (not clipped), in the dtype of ``sample`` promoted with float32.
    """
    abar = alphas_cumprod.to(device=sample.device, dtype=torch.float32)[timesteps.to(sample.device).long()]
    sqrt_abar = _expand(abar.sqrt(), sample.ndim)
    sqrt_one_minus = _expand((1.0 - abar).sqrt(), sample.ndim)
    if prediction_type == DDPMPredictionType.EPSILON:
        return (sample - sqrt_one_minus * model_output) / sqrt_abar
    if prediction_type == DDPMPredictionType.V_PREDICTION:
        return sqrt_abar * sample - sqrt_one_minus * model_output
    if prediction_type == DDPMPredictionType.SAMPLE:
        return model_output
    raise ValueError(
        f"prediction_type must be one of {[p.value for p in DDPMPredictionType]}, got {prediction_type!r}."
    )


def perceptual_distance(
    features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor], eps: float = 1e-8
) -> torch.Tensor:
    """LPIPS-style distance without learned weights, per sample.

    Each feature vector (over channels) is scaled to unit length, the squared difference is summed over
    channels, averaged over space and summed over the feature maps.

    Args:
        features_a: list of ``(B, C_l, *spatial_l)`` feature maps.
        features_b: list of the same shapes.

    Returns:
        ``(B,)`` distances, each in ``[0, 4 * len(features_a)]``.
    """
    if len(features_a) != len(features_b):
        raise ValueError(f"feature lists differ in length: {len(features_a)} vs {len(features_b)}.")
    total = None
    for fa, fb in zip(features_a, features_b):
        fa = fa.float() / (fa.float().pow(2).sum(1, keepdim=True) + eps).sqrt()
        fb = fb.float() / (fb.float().pow(2).sum(1, keepdim=True) + eps).sqrt()
        d = (fa - fb).pow(2).sum(1).flatten(1).mean(1)
        total = d if total is None else total + d
    if total is None:
        raise ValueError("the feature network returned no feature maps.")
    return total


class PairedDiffusionLoss(nn.Module):
    """Sum over modalities of the prediction MSE, plus an optional perceptual term on the x0 estimates.

    Called as ``loss(model_output, target)`` (the ``SupervisedTrainer`` convention), where ``model_output`` is
    ``{modality: (B, C, *spatial)}`` and ``target`` is either

    - ``{modality: (B, C, *spatial)}`` (plain regression targets; only the MSE part is available), or
    - the structured dict of :func:`make_paired_target` (as built by
      :class:`~monai_pairsynth.engines.PairedDiffusionPrepareBatch`), which also carries x0, the noise and the
      shared timesteps so the x0 estimates can be recovered.

    After every call, :attr:`last_components` holds detached scalars: ``mse_<modality>``, ``mse`` (their sum),
    ``perceptual_<modality>`` and ``perceptual`` (the unweighted perceptual sum, 0 while the term is off),
    ``perceptual_weight`` and ``loss`` (the returned total). A handler such as
    :class:`~monai_pairsynth.handlers.LossComponentsHandler` copies them to ``engine.state.metrics``.

    Args:
        scheduler: the MONAI noise scheduler of the training run (its ``alphas_cumprod`` recover x0 and
            ``add_noise`` rebuilds x_t). Required when the perceptual term is used.
        prediction_type: ``"epsilon"`` (default), ``"v_prediction"`` or ``"sample"``; ``None`` takes the
            scheduler's ``prediction_type`` (or ``"epsilon"`` without a scheduler).
        perceptual_weight: weight of the perceptual term; 0 switches it off (its features are not even
            computed). Settable at run time (``loss.perceptual_weight = 0.1``), as
            :class:`~monai_pairsynth.handlers.PerceptualWarmup` does.
        perceptual_mode: ``"cross_modal"`` (the paper's) or ``"reconstruction"``.
        feature_network: module mapping ``(B, 1, *spatial)`` to a list of feature maps; its parameters are
            frozen here. Default: ``RandomConvFeatures(spatial_dims, seed=feature_seed)``.
        feature_weights_path: optional local state-dict file loaded into the feature network (clear error
            if missing or mismatched). Nothing is downloaded.
        spatial_dims: 2 or 3, for the default feature network.
        feature_seed: seed of the default random feature network.
        clip_original: clip the x0 estimates to [-1, 1] before extracting features (the diffusion range).
        snr_gamma: Min-SNR-gamma loss weighting (Hang et al. 2023): each sample's prediction MSE is weighted by
            ``min(SNR_t, gamma) / SNR_t`` (epsilon), ``min(SNR_t, gamma) / (SNR_t + 1)`` (v-prediction) or
            ``min(SNR_t, gamma)`` (sample), with ``SNR_t = abar_t / (1 - abar_t)``; the paper's gamma is 5.
            ``None`` (default): unweighted MSE. Needs the scheduler and the structured target (timesteps).
        foreground_weight: ``{modality: w}``: pixels where that modality's clean image is > 0 (the tumour of a
            mask in [-1, 1]) count ``w`` times in its MSE (w >= 1), so a lesion of a few pixels is not drowned by
            the background. Needs the structured target (x0). Default: none.
        perceptual_max_timestep: apply the perceptual term only to samples with ``t`` below this (their
            distances summed and divided by the whole batch size): at high ``t`` the x0 estimate is the noise
            prediction amplified by up to ``sigma/alpha`` (157 at t = 999 of the linear schedule), and the term
            then pushes the prediction away from the MSE optimum. ``None`` (default): every timestep.

    Example:
        >>> import torch
        >>> loss = PairedDiffusionLoss()
        >>> pred = {"ct": torch.zeros(2, 1, 4, 4), "pet": torch.ones(2, 1, 4, 4)}
        >>> target = {"ct": torch.ones(2, 1, 4, 4), "pet": torch.ones(2, 1, 4, 4)}
        >>> float(loss(pred, target))
        1.0
        >>> {k: float(v) for k, v in loss.last_components.items() if k.startswith("mse")}
        {'mse_ct': 1.0, 'mse_pet': 0.0, 'mse': 1.0}
    """

    def __init__(
        self,
        scheduler: Scheduler | None = None,
        prediction_type: str | None = None,
        perceptual_weight: float = 0.0,
        perceptual_mode: PerceptualMode | str = PerceptualMode.CROSS_MODAL,
        feature_network: nn.Module | None = None,
        feature_weights_path: str | os.PathLike | None = None,
        spatial_dims: int = 2,
        feature_seed: int = 0,
        clip_original: bool = True,
        snr_gamma: float | None = None,
        foreground_weight: Mapping[str, float] | None = None,
        perceptual_max_timestep: int | None = None,
    ) -> None:
        super().__init__()
        if snr_gamma is not None:
            if isinstance(snr_gamma, bool) or not math.isfinite(float(snr_gamma)) or float(snr_gamma) <= 0:
                raise ValueError(f"snr_gamma must be a finite number > 0 or None, got {snr_gamma!r}.")
            if scheduler is None:
                raise ValueError(
                    "snr_gamma needs the noise scheduler (scheduler=...) for the SNR of each timestep."
                )
            snr_gamma = float(snr_gamma)
        fg: dict[str, float] = {}
        for name, w in dict(foreground_weight or {}).items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 1:
                raise ValueError(f"foreground_weight[{name!r}] must be a finite number >= 1, got {w!r}.")
            fg[str(name)] = float(w)
        self.snr_gamma = snr_gamma
        self.foreground_weight = fg
        if perceptual_max_timestep is not None and (
            isinstance(perceptual_max_timestep, bool)
            or int(perceptual_max_timestep) != perceptual_max_timestep
            or perceptual_max_timestep < 1
        ):
            raise ValueError(
                f"perceptual_max_timestep must be an int >= 1 or None, got {perceptual_max_timestep!r}."
            )
        self.perceptual_max_timestep = (
            None if perceptual_max_timestep is None else int(perceptual_max_timestep)
        )
        if prediction_type is None:
            prediction_type = getattr(scheduler, "prediction_type", DDPMPredictionType.EPSILON)
        allowed = [p.value for p in DDPMPredictionType]
        if prediction_type not in allowed:
            raise ValueError(f"prediction_type must be one of {allowed}, got {prediction_type!r}.")
        try:
            self.perceptual_mode = PerceptualMode(perceptual_mode)
        except ValueError:
            raise ValueError(
                f"perceptual_mode must be one of {[m.value for m in PerceptualMode]}, got {perceptual_mode!r}."
            ) from None
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be one of [2, 3], got {spatial_dims!r}.")
        self.scheduler = scheduler
        self.prediction_type = str(DDPMPredictionType(prediction_type).value)
        self.spatial_dims = spatial_dims
        self.clip_original = clip_original
        if feature_network is None:
            feature_network = RandomConvFeatures(spatial_dims=spatial_dims, in_channels=1, seed=feature_seed)
        if not isinstance(feature_network, nn.Module):
            raise ValueError(
                f"feature_network must be a torch.nn.Module, got {type(feature_network).__name__}."
            )
        if feature_weights_path is not None:
            load_feature_weights(feature_network, feature_weights_path)
        for p in feature_network.parameters():
            p.requires_grad_(False)
        feature_network.eval()
        self.feature_network = feature_network
        self._perceptual_weight = 0.0
        self.perceptual_weight = perceptual_weight
        self.last_components: dict[str, torch.Tensor] = {}

    @property
    def perceptual_weight(self) -> float:
        """Current weight of the perceptual term (0 = off)."""
        return self._perceptual_weight

    @perceptual_weight.setter
    def perceptual_weight(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"perceptual_weight must be a finite number >= 0, got {value!r}.")
        if value > 0 and self.scheduler is None:
            raise ValueError(
                "a perceptual_weight > 0 needs the noise scheduler (scheduler=...) to recover x0."
            )
        self._perceptual_weight = value

    def train(self, mode: bool = True) -> PairedDiffusionLoss:
        super().train(mode)
        self.feature_network.eval()  # frozen features: keep any norm/dropout layers in eval mode
        return self

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        # fold channels into the batch: the feature network takes single-channel images
        b, c = x.shape[:2]
        feats = self.feature_network(x.reshape(b * c, 1, *x.shape[2:]))
        return [f.reshape(b, c, *f.shape[1:]).flatten(1, 2) for f in feats]

    def forward(self, model_output: Mapping[str, torch.Tensor], target: Mapping) -> torch.Tensor:
        """Args:
            model_output: ``{modality: (B, C, *spatial)}`` network predictions.
            target: ``{modality: (B, C, *spatial)}`` or the structured dict of :func:`make_paired_target`.

        Returns:
            scalar total loss.
        """
        if not isinstance(model_output, Mapping):
            raise ValueError(
                f"model_output must be a dict {{modality: tensor}}, got {type(model_output).__name__}."
            )
        if not isinstance(target, Mapping):
            raise ValueError(f"target must be a dict, got {type(target).__name__}.")
        structured = _is_structured(target)
        regression = target["target"] if structured else target
        modalities = list(regression)
        if not modalities:
            raise ValueError("target holds no modality.")
        missing = [m for m in modalities if m not in model_output]
        if missing:
            raise KeyError(f"model_output lacks modalities {missing}; it has {sorted(model_output)}.")
        if (self.snr_gamma is not None or self.foreground_weight) and not structured:
            raise ValueError(
                "snr_gamma and foreground_weight need the structured target of make_paired_target "
                f"(x0, noise, timesteps); got a plain dict with keys {sorted(target)}."
            )
        unknown = sorted(set(self.foreground_weight) - set(modalities))
        if unknown:
            raise KeyError(
                f"foreground_weight names modalities {unknown} that the target lacks; it has {modalities}."
            )
        comps: dict[str, torch.Tensor] = {}
        mse_total = None
        for m in modalities:
            pred, tgt = model_output[m], regression[m]
            if pred.shape != tgt.shape:
                raise ValueError(
                    f"prediction and target of modality {m!r} differ in shape: {tuple(pred.shape)} vs {tuple(tgt.shape)}."
                )
            keep = _noised(target, m) if structured else None
            fov = _field_of_view(target, pred) if structured else None
            sample_weight = (
                self._snr_weight(_modality_timesteps(target, m)) if self.snr_gamma is not None else None
            )
            if sample_weight is None and keep is None and fov is None and m not in self.foreground_weight:
                mse = F.mse_loss(pred.float(), tgt.float())
            else:
                err = (pred.float() - tgt.float()).pow(2)
                if m in self.foreground_weight:
                    fg = target["original"][m].float() > 0
                    err = err * (1.0 + (self.foreground_weight[m] - 1.0) * fg)
                if fov is None:
                    per_sample = err.flatten(1).mean(1)
                else:  # the mean over each sample's in-FOV pixels (0 for a sample with none)
                    inside = fov.expand_as(err)
                    per_sample = (err * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp_min(1.0)
                if sample_weight is not None:
                    per_sample = per_sample * sample_weight.to(per_sample.device)
                if keep is None:
                    mse = per_sample.mean()
                else:  # the mean over the samples where m was noised (a given modality is not predicted)
                    keep = keep.to(device=per_sample.device, dtype=per_sample.dtype)
                    mse = (per_sample * keep).sum() / keep.sum().clamp_min(1.0)
            comps[f"mse_{m}"] = mse.detach()
            mse_total = mse if mse_total is None else mse_total + mse
        assert mse_total is not None
        comps["mse"] = mse_total.detach()
        total = mse_total
        perceptual = torch.zeros((), device=total.device)
        if self.perceptual_weight > 0:
            if not structured:
                raise ValueError(
                    "the perceptual term needs the structured target of make_paired_target (x0, noise, timesteps); "
                    f"got a plain dict with keys {sorted(target)}."
                )
            per_mod = self._perceptual(model_output, target, modalities)
            for m, v in per_mod.items():
                comps[f"perceptual_{m}"] = v.detach()
                perceptual = perceptual + v
            total = total + self.perceptual_weight * perceptual
        comps["perceptual"] = perceptual.detach()
        comps["perceptual_weight"] = torch.tensor(self.perceptual_weight)
        comps["loss"] = total.detach()
        self.last_components = comps
        return total

    def _snr_weight(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``(B,)`` Min-SNR-gamma weights of the prediction MSE at ``timesteps`` (see ``snr_gamma``)."""
        assert self.scheduler is not None and self.snr_gamma is not None
        abar = self.scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[
            timesteps.long()
        ]
        snr = abar / (1.0 - abar).clamp_min(1e-12)
        clipped = snr.clamp(max=self.snr_gamma)
        if self.prediction_type == DDPMPredictionType.V_PREDICTION:
            return clipped / (snr + 1.0)
        if self.prediction_type == DDPMPredictionType.SAMPLE:
            return clipped
        return clipped / snr.clamp_min(1e-12)

    def _masked_mean(
        self, per_sample: torch.Tensor, timesteps: torch.Tensor, noised: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sum over the samples with ``t < perceptual_max_timestep`` (all when it is ``None``) that were noised
        (``noised``; all when ``None``), divided by the batch size."""
        if self.perceptual_max_timestep is None and noised is None:
            return per_sample.mean()
        keep = torch.ones_like(per_sample, dtype=torch.bool)
        if self.perceptual_max_timestep is not None:
            keep = keep & (timesteps.to(per_sample.device) < self.perceptual_max_timestep)
        if noised is not None:
            keep = keep & noised.to(per_sample.device)
        return (per_sample * keep.to(per_sample.dtype)).sum() / per_sample.shape[0]

    def _perceptual(
        self, model_output: Mapping[str, torch.Tensor], target: Mapping, modalities: list[str]
    ) -> dict[str, torch.Tensor]:
        if self.perceptual_mode == PerceptualMode.CROSS_MODAL and len(modalities) < 2:
            raise ValueError("perceptual_mode 'cross_modal' needs at least two modalities.")
        assert self.scheduler is not None
        timesteps = {m: _modality_timesteps(target, m) for m in modalities}
        noised = {m: _noised(target, m) for m in modalities}
        fov = _field_of_view(target, model_output[modalities[0]])
        alphas_cumprod = self.scheduler.alphas_cumprod
        ref_feats = {}
        est_feats = {}
        for m in modalities:
            original = target["original"][m].float()
            noisy = self.scheduler.add_noise(original, target["noise"][m].float(), timesteps[m])
            x0_hat = predict_original_sample(
                model_output[m].float(), noisy, timesteps[m], alphas_cumprod, self.prediction_type
            )
            if self.clip_original:
                x0_hat = x0_hat.clamp(-1.0, 1.0)
            if fov is not None:  # outside the scan both sides are the padding value: no distance, no gradient
                outside = fov.expand_as(x0_hat) < 0.5
                x0_hat = x0_hat.masked_fill(outside, -1.0)
                original = original.masked_fill(outside, -1.0)
            est_feats[m] = self._features(x0_hat)
            with torch.no_grad():
                ref_feats[m] = self._features(original)
        out = {}
        for m in modalities:
            if self.perceptual_mode == PerceptualMode.RECONSTRUCTION:
                out[m] = self._masked_mean(
                    perceptual_distance(est_feats[m], ref_feats[m]), timesteps[m], noised[m]
                )
            else:
                others = [n for n in modalities if n != m]
                out[m] = torch.stack(
                    [
                        self._masked_mean(
                            perceptual_distance(est_feats[m], ref_feats[n]), timesteps[m], noised[m]
                        )
                        for n in others
                    ]
                ).mean()
        return out
