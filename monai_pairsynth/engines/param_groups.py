"""Per-modality optimiser settings for a paired diffusion model.

The paper trains each modality's network with its own optimiser. MONAI's ``SupervisedTrainer`` steps ONE
optimiser after one backward pass of the shared loss; giving that optimiser one *parameter group per
modality* is equivalent: Adam/AdamW state is per parameter, so every denoiser keeps its own moments and
its own learning rate / weight decay, while the shared loss, AMP scaler, clipping and checkpointing stay
single. Param groups also keep their name (``group["modality"]``) in ``optimizer.state_dict()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .flat_parameters import FlatParameterAdamW

__all__ = ["create_paired_optimizer", "paired_param_groups"]

_SHARED = "shared"


def _per_modality(
    value: float | Mapping[str, float], modalities: list[str], name: str, needs_shared: bool
) -> dict:
    if isinstance(value, Mapping):
        allowed = set(modalities) | {_SHARED}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"{name} has unknown modality {unknown}; allowed keys are {sorted(allowed)}.")
        missing = [m for m in modalities if m not in value]
        if needs_shared and _SHARED not in value:
            missing.append(_SHARED)
        if missing:
            raise ValueError(f"{name} gives no value for {missing}; got keys {sorted(value)}.")
        out = {k: float(v) for k, v in value.items()}
    else:
        out = {m: float(value) for m in [*modalities, _SHARED]}
    for k, v in out.items():
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}[{k!r}] must be a finite number >= 0, got {v!r}.")
    return out


def paired_param_groups(
    model: nn.Module,
    lr: float | Mapping[str, float],
    weight_decay: float | Mapping[str, float] = 0.0,
) -> list[dict[str, Any]]:
    """One optimiser parameter group per modality's denoiser (``model.denoisers[name]``).

    Parameters outside every denoiser (none in :class:`~monai_pairsynth.networks.PairedDiffusionModel`)
    go to a last group named ``"shared"``; with per-modality dicts it then needs a ``"shared"`` entry.

    Args:
        model: a model with a ``denoisers`` ``ModuleDict`` keyed by modality.
        lr: one learning rate, or ``{modality: lr}`` covering every modality.
        weight_decay: one value or ``{modality: weight_decay}``.

    Returns:
        ``[{"params": [...], "lr": ..., "weight_decay": ..., "modality": name}, ...]`` in modality order, only
        trainable parameters.

    Example:
        >>> from torch import nn
        >>> model = nn.Module()
        >>> model.denoisers = nn.ModuleDict({"ct": nn.Linear(2, 2), "pet": nn.Linear(2, 3)})
        >>> groups = paired_param_groups(model, lr={"ct": 1e-4, "pet": 2e-4})
        >>> [(g["modality"], g["lr"], len(g["params"])) for g in groups]
        [('ct', 0.0001, 2), ('pet', 0.0002, 2)]
    """
    denoisers = getattr(model, "denoisers", None)
    if not isinstance(denoisers, nn.ModuleDict) or len(denoisers) == 0:
        raise ValueError(
            f"model must have a non-empty 'denoisers' nn.ModuleDict keyed by modality, got {type(model).__name__}."
        )
    modalities = list(denoisers.keys())
    owned = {id(p) for d in denoisers.values() for p in d.parameters()}
    shared = [p for p in model.parameters() if id(p) not in owned and p.requires_grad]
    lrs = _per_modality(lr, modalities, "lr", needs_shared=bool(shared))
    wds = _per_modality(weight_decay, modalities, "weight_decay", needs_shared=bool(shared))
    groups = []
    for m in modalities:
        params = [p for p in denoisers[m].parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lrs[m], "weight_decay": wds[m], "modality": m})
    if shared:
        groups.append(
            {"params": shared, "lr": lrs[_SHARED], "weight_decay": wds[_SHARED], "modality": _SHARED}
        )
    return groups


class ListCachingAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` that gathers each group's state lists once instead of at every step.

    ``AdamW.step`` rebuilds, per group and per step, the lists of parameters, gradients and moment tensors
    in a Python loop over every parameter (about 9 µs each: ~8 ms per step for the ~930 tensors of the
    linked model, as much as the fused update itself). Here the state lists are kept after the first step;
    each step only re-reads the gradients (which ``zero_grad(set_to_none=True)`` replaces). Whenever a
    parameter has no gradient, or after ``load_state_dict``, the group goes through torch's own loop again.
    The update, the state and the state dict are torch's: this class only skips re-gathering.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = ListCachingAdamW([w], lr=0.1)
        >>> for _ in range(2):
        ...     w.grad = torch.ones(2); opt.step()
        >>> [round(v, 4) for v in w.tolist()]
        [0.7981, 0.7981]
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lists: dict[int, tuple] = {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._lists = {}
        super().load_state_dict(state_dict)

    def _init_group(
        self, group, params_with_grad, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps
    ):  # type: ignore[no-untyped-def]
        params = group["params"]
        current = [p.grad for p in params]
        complete = not any(g is None for g in current)  # (not `None in current`: that calls Tensor.__eq__)
        cached = self._lists.get(id(group))
        if cached is not None and cached[0] is params and len(cached[1]) == len(params) and complete:
            _, ps, avgs, sqs, maxs, steps, has_complex = cached
            params_with_grad.extend(ps)
            grads.extend(current)
            exp_avgs.extend(avgs)
            exp_avg_sqs.extend(sqs)
            max_exp_avg_sqs.extend(maxs)
            state_steps.extend(steps)
            return has_complex
        has_complex = super()._init_group(
            group, params_with_grad, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps
        )
        if complete:
            self._lists[id(group)] = (
                params,
                list(params_with_grad),
                list(exp_avgs),
                list(exp_avg_sqs),
                list(max_exp_avg_sqs),
                list(state_steps),
                has_complex,
            )
        else:
            self._lists.pop(id(group), None)
        return has_complex


def create_paired_optimizer(
    model: nn.Module,
    lr: float | Mapping[str, float] = 1e-4,
    weight_decay: float | Mapping[str, float] = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | None = None,
    flat_buffers: bool = False,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over :func:`paired_param_groups` (per-modality lr and weight decay).

    ``fused=None`` picks torch's fused kernel (one kernel for all parameters of a device, instead of about a
    dozen per tensor) when every parameter is on a CPU or CUDA device and floating point, else the
    multi-tensor (``foreach``) implementation; ``True`` / ``False`` force it on / off (off: ``foreach``).

    ``flat_buffers=True`` returns a :class:`~monai_pairsynth.engines.FlatParameterAdamW`: each denoiser's
    parameters move into one contiguous buffer (and their gradients into another), so the update, clipping
    and EMA run on one tensor per denoiser (what :func:`~monai_pairsynth.engines.create_paired_trainer` uses
    outside ``torch.distributed``). It needs every group on one device and dtype and the model already on its
    device; its state dict has the per-parameter layout of the plain optimiser.

    Example:
        >>> from torch import nn
        >>> model = nn.Module()
        >>> model.denoisers = nn.ModuleDict({"ct": nn.Linear(2, 2), "pet": nn.Linear(2, 2)})
        >>> opt = create_paired_optimizer(model, lr={"ct": 1e-3, "pet": 5e-4})
        >>> [g["lr"] for g in opt.param_groups]
        [0.001, 0.0005]
    """
    groups = paired_param_groups(model, lr, weight_decay)
    if fused is None:
        params = [p for g in groups for p in g["params"]]
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    kind = {"fused": True} if fused else {"foreach": True}
    if flat_buffers:
        return FlatParameterAdamW(groups, betas=betas, eps=eps, **kind)
    return ListCachingAdamW(groups, betas=betas, eps=eps, **kind)
