"""Contiguous parameter buffers: the optimiser, clipping and EMA on one tensor per denoiser instead of ~300.

The linked model has about 930 parameter tensors. With one tensor per parameter, every per-iteration
bookkeeping step (AdamW's update and step counters, the gradient norms of clipping, the EMA ``lerp``, zeroing
gradients) is a multi-tensor kernel over ~930 small tensors plus Python lists of the same length; at a small
image size that bookkeeping costs more than the networks. Here each optimiser group's parameters become views
into one contiguous buffer, and their gradients views into a second one (the layout of apex's and DeepSpeed's
contiguous buffers). The modules are unchanged: every ``nn.Parameter`` object stays the same, only its storage
moves, so the forward pass, ``state_dict`` and ``load_state_dict`` behave as before. After a backward the
per-parameter gradients are copied into the gradient buffer with one multi-tensor copy
(:meth:`FlatParameterGroup.gather_grads`, called by the trainer right after the backward and by ``step``).

:class:`FlatParameterAdamW` is a ``torch.optim.AdamW`` whose groups hold the flat buffers; its
``state_dict`` is written, and read, in the ordinary per-parameter layout, so checkpoints are interchangeable
with a plain AdamW over the same groups (old checkpoints resume into it, and its checkpoints resume into a
plain AdamW).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "FlatParameterAdamW",
    "FlatParameterGroup",
    "GatherGradsHandler",
    "flat_group_of",
    "flatten_into_buffer",
]


@dataclass
class FlatParameterGroup:
    """The parameters ``members`` living as consecutive views of ``flat``; ``flat.grad`` holds their gradients.

    Gradients: after ``zero_grad(set_to_none=True)`` autograd hands each parameter a fresh gradient tensor (no
    copy, no add); :meth:`gather_grads` then copies them into ``flat.grad`` with one multi-tensor copy and makes
    every ``.grad`` a view of it, so later in-place changes (clipping, unscaling, a second backward under
    gradient accumulation) act on the buffer. Making the gradients views *before* the backward instead would
    let autograd add into them in place: one extra ``add_`` per parameter and backward.
    """

    flat: nn.Parameter
    members: list[nn.Parameter]
    offsets: list[int]
    grad_buffer: torch.Tensor | None  # allocated once; ``flat.grad`` while gradients are gathered, else None
    grad_views: list[torch.Tensor]  # each member's slot of ``grad_buffer``
    _warned_missing: bool = False

    def _member_at_offset(self, i: int, tensor: torch.Tensor | None, base: torch.Tensor) -> bool:
        return (
            tensor is not None
            and tensor.data_ptr() == base.data_ptr() + self.offsets[i] * base.element_size()
        )

    def check_data(self) -> None:
        """Raise if the members no longer live in ``flat`` (e.g. after ``module.to(...)``). O(1): a move
        replaces every member, the first and the last too."""
        for i in (0, len(self.members) - 1):
            if not self._member_at_offset(i, self.members[i], self.flat):
                raise RuntimeError(
                    f"parameter {i} of a flat parameter group (shape {tuple(self.members[i].shape)}) no longer lives "
                    "in the group's contiguous buffer: the model's parameters were moved or replaced (e.g. by "
                    "`model.to(...)`) after the optimiser was built; move the model first, then build the trainer."
                )

    def grads_gathered(self) -> bool:
        """Are the first and last member's gradients views of ``flat.grad`` (then all are, see gather_grads)?"""
        grad = self.flat.grad
        return grad is not None and all(
            self._member_at_offset(i, self.members[i].grad, grad) for i in (0, len(self.members) - 1)
        )

    @torch.no_grad()
    def gather_grads(self) -> None:
        """Copy the members' gradients into ``flat.grad`` and make them views of it.

        No member has a gradient (no backward since ``zero_grad``): ``flat.grad`` stays ``None`` and AdamW skips
        the group, as it skips such parameters. Some members without one: their slots are zero (AdamW would skip
        them; here momentum and weight decay still move them), with a warning the first time.
        """
        if self.grads_gathered():
            return
        grads = [p.grad for p in self.members]
        missing = sum(g is None for g in grads)
        if missing == len(grads):
            self.flat.grad = None
            return
        if self.grad_buffer is None:
            raise RuntimeError(
                "this flat parameter group was built without a gradient buffer (with_grad=False)."
            )
        self.flat.grad = self.grad_buffer
        if missing and not self._warned_missing:
            self._warned_missing = True
            logger.warning(
                "%d of %d parameters of a flat parameter group have no gradient; they get a zero gradient (AdamW "
                "would skip them, here momentum and weight decay still apply). Freeze parameters before building "
                "the optimiser.",
                missing,
                len(grads),
            )
        dst, src = [], []
        for view, g in zip(self.grad_views, grads):
            if g is None:
                view.zero_()
            elif g.data_ptr() != view.data_ptr():
                dst.append(view)
                src.append(g)
        if dst:
            torch._foreach_copy_(dst, src)
        for p, view in zip(self.members, self.grad_views):
            p.grad = view


def _views(
    buffer: torch.Tensor, params: Sequence[torch.Tensor], offsets: Sequence[int]
) -> list[torch.Tensor]:
    return [buffer[start : start + p.numel()].view_as(p) for p, start in zip(params, offsets)]


# id(parameter) -> (weak ref to the parameter, weak ref to its group). Not a WeakKeyDictionary: tensors compare
# element-wise, so they cannot be dictionary keys. The group is kept alive by its optimiser, not by this table.
_GROUP_OF: dict[int, tuple[weakref.ref, weakref.ref]] = {}


def _register(param: torch.Tensor, group: FlatParameterGroup) -> None:
    key = id(param)
    _GROUP_OF[key] = (weakref.ref(param, lambda _ref, key=key: _GROUP_OF.pop(key, None)), weakref.ref(group))


def flat_group_of(param: torch.Tensor) -> FlatParameterGroup | None:
    """The live :class:`FlatParameterGroup` that ``param`` lives in, if any."""
    entry = _GROUP_OF.get(id(param))
    if entry is None or entry[0]() is not param:
        return None
    return entry[1]()


def _layout(params: Sequence[torch.Tensor]) -> tuple[list[int], int]:
    offsets, total = [], 0
    for p in params:
        offsets.append(total)
        total += p.numel()
    return offsets, total


def flatten_into_buffer(params: Sequence[nn.Parameter], with_grad: bool = True) -> FlatParameterGroup:
    """Move ``params`` (one device, one floating dtype, dense) into one contiguous buffer, as views of it.

    With ``with_grad`` a second buffer ``flat.grad`` receives the gradients (existing values are copied over,
    missing ones are zero) and every parameter's ``.grad`` becomes a view of it; after a ``zero_grad`` to ``None``
    and a backward, :meth:`FlatParameterGroup.gather_grads` copies them in again.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2)
        >>> group = flatten_into_buffer(list(net.parameters()))
        >>> group.flat.shape, net.weight.data_ptr() == group.flat.data_ptr()
        (torch.Size([8]), True)
        >>> net.zero_grad(set_to_none=True)
        >>> net(torch.ones(1, 3)).sum().backward()
        >>> group.gather_grads()
        >>> group.flat.grad[:3].tolist()  # d/dW of sum(W x + b) = x, now in the flat buffer
        [1.0, 1.0, 1.0]
    """
    params = list(params)
    if not params:
        raise ValueError("flatten_into_buffer needs at least one parameter.")
    first = params[0]
    for i, p in enumerate(params):
        if p.device != first.device or p.dtype != first.dtype or p.is_sparse or not p.is_floating_point():
            raise ValueError(
                f"parameter {i} ({p.dtype}, {p.device}, sparse={p.is_sparse}) differs from parameter 0 "
                f"({first.dtype}, {first.device}): a flat buffer needs dense floating parameters of one "
                "device and dtype."
            )
    if len({id(p) for p in params}) != len(params):
        raise ValueError("flatten_into_buffer got the same parameter twice.")
    offsets, total = _layout(params)
    with torch.no_grad():
        data = torch.empty(total, dtype=first.dtype, device=first.device)
        for p, start in zip(params, offsets):
            data[start : start + p.numel()].copy_(p.reshape(-1))
        flat = nn.Parameter(data, requires_grad=any(p.requires_grad for p in params))
        for p, start in zip(params, offsets):
            p.data = data[start : start + p.numel()].view_as(p)
        grad_buffer = torch.zeros_like(data) if with_grad else None
        grad_views = _views(grad_buffer, params, offsets) if grad_buffer is not None else []
    group = FlatParameterGroup(flat, params, offsets, grad_buffer, grad_views)
    if with_grad:
        group.gather_grads()  # existing gradient values are kept
    for p in params:
        _register(p, group)
    return group


class FlatParameterAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` over groups of parameters stored as one contiguous buffer per group.

    Takes the same parameter groups as ``AdamW`` (e.g. :func:`~monai_pairsynth.engines.paired_param_groups`,
    one per modality); each group's parameters move into one buffer (see :func:`flatten_into_buffer`), and the
    update, the step counter and the moments are kept for that buffer: a handful of tensors per step
    instead of one per parameter. Numerically it is AdamW (element-wise), so it gives the same weights.

    - After a backward the parameters' gradients are copied into the buffers by :meth:`gather_grads` (one
      multi-tensor copy; ``step`` does it if nobody did), so ``module.zero_grad()`` and user code that replaces
      ``.grad`` keep working.
    - ``state_dict`` / ``load_state_dict`` use the per-parameter layout of a plain ``AdamW`` over the same
      groups, so checkpoints move freely between the two.
    - Build it after the model is on its device: moving the parameters afterwards raises at the next step.
    - Under a ``GradScaler`` call :meth:`gather_grads` between ``backward`` and ``scaler.step`` (the trainer
      does); a step without it is refused rather than run on stale gradients.
    - The update writes the buffer, not the parameters, so autograd's "modified by an inplace operation" check
      does not see a step taken between a forward and its backward.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> _ = torch.nn.init.zeros_(net.bias)
        >>> opt = FlatParameterAdamW([{"params": list(net.parameters()), "lr": 0.1}], weight_decay=0.0)
        >>> len(opt.param_groups[0]["params"]), len(opt.state_dict()["param_groups"][0]["params"])
        (1, 2)
        >>> net(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> [round(v, 4) for v in net.bias.tolist()]  # Adam's first step is -lr * sign(grad), on the module itself
        [-0.1]
    """

    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.flat_groups: list[FlatParameterGroup] = []
        flat_param_groups = []
        seen: dict[int, int] = {}
        for i, g in enumerate(groups):
            for p in g["params"]:
                if id(p) in seen:
                    raise ValueError(
                        f"a parameter of shape {tuple(p.shape)} appears in parameter groups {seen[id(p)]} and {i}; "
                        "each parameter can live in one buffer only."
                    )
                seen[id(p)] = i
        for i, g in enumerate(groups):
            members = [p for p in g["params"]]
            if not members:
                raise ValueError(f"parameter group {i} is empty.")
            group = flatten_into_buffer(members, with_grad=True)
            self.flat_groups.append(group)
            flat_param_groups.append(
                {**{k: v for k, v in g.items() if k != "params"}, "params": [group.flat]}
            )
        super().__init__(flat_param_groups, **kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``set_to_none=True`` (the trainer's choice): gradients become ``None``, so the next backward hands
        each parameter a fresh tensor (gathered afterwards); ``False``: the buffer is zeroed and the gradients
        stay its views (the next backward then adds into them in place)."""
        for group in self.flat_groups:
            if set_to_none:  # the buffer is detached too: nothing stale for a GradScaler to read
                for p in group.members:
                    p.grad = None
                group.flat.grad = None
            else:
                group.gather_grads()
                if group.flat.grad is not None:
                    group.flat.grad.zero_()

    def gather_grads(self) -> None:
        """Copy every parameter's gradient into its group's buffer (see :meth:`FlatParameterGroup.gather_grads`).

        Cheap when already done. Must run before anything reads or changes the buffers' gradients (clipping, AMP
        unscaling): :func:`~monai_pairsynth.engines.create_paired_trainer` calls it right after the backward;
        ``step`` calls it too."""
        for group in self.flat_groups:
            group.gather_grads()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        scaled = getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None
        for group in self.flat_groups:
            group.check_data()
            if scaled and any(p.grad is not None for p in group.members) and not group.grads_gathered():
                # a GradScaler checked (and unscaled) the buffers before their gradients were copied in
                raise RuntimeError(
                    "FlatParameterAdamW under a GradScaler: call optimizer.gather_grads() after backward() and before "
                    "scaler.step(optimizer) (create_paired_trainer does it with GatherGradsHandler)."
                )
            group.gather_grads()
        return super().step(closure)

    # ---------------------------------------------------------------- checkpoints in the per-parameter layout
    def state_dict(self) -> dict[str, Any]:
        flat_sd = super().state_dict()
        state: dict[int, dict[str, Any]] = {}
        param_groups = []
        index = 0
        for saved, group in zip(flat_sd["param_groups"], self.flat_groups):
            flat_state = flat_sd["state"].get(saved["params"][0])
            ids = []
            for p, start in zip(group.members, group.offsets):
                if flat_state is not None:
                    entry = {}
                    for key, value in flat_state.items():
                        if key != "step" and torch.is_tensor(value) and value.numel() == group.flat.numel():
                            entry[key] = value[start : start + p.numel()].view_as(p).clone()
                        else:  # the step counter (one per group here, one per parameter in AdamW)
                            entry[key] = value.clone() if torch.is_tensor(value) else value
                    state[index] = entry
                ids.append(index)
                index += 1
            param_groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": param_groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_groups = state_dict["param_groups"]
        sizes = [len(g["params"]) for g in saved_groups]
        own = [len(g.members) for g in self.flat_groups]
        if sizes != own:
            raise ValueError(
                f"the optimiser state has param groups of sizes {sizes}, this optimiser's groups have {own} parameters."
            )
        state: dict[int, dict[str, Any]] = {}
        param_groups = []
        for g_idx, (saved, group) in enumerate(zip(saved_groups, self.flat_groups)):
            entries = [state_dict["state"].get(i) for i in saved["params"]]
            if all(e is not None for e in entries) and entries:
                steps = {float(e["step"]) for e in entries if "step" in e}
                if len(steps) > 1:
                    raise ValueError(
                        f"the optimiser state of group {g_idx} has different step counts {sorted(steps)} for its "
                        "parameters; one buffer keeps one step count."
                    )
                merged: dict[str, Any] = {}
                for key, value in entries[0].items():
                    if key != "step" and torch.is_tensor(value):
                        parts = []
                        for e, p in zip(entries, group.members):
                            v = e[key]
                            if v.numel() != p.numel():
                                raise ValueError(
                                    f"optimiser state {key!r} of group {g_idx} has shape {tuple(v.shape)} for a "
                                    f"parameter of shape {tuple(p.shape)}."
                                )
                            parts.append(v.reshape(-1).to(group.flat.dtype))
                        merged[key] = torch.cat(parts)
                    else:  # the step counter: a copy (a state dict holds the source optimiser's live tensors)
                        merged[key] = value.clone() if torch.is_tensor(value) else value
                state[g_idx] = merged
            elif any(e is not None for e in entries):
                raise ValueError(
                    f"the optimiser state of group {g_idx} covers only some of its parameters; it cannot be "
                    "merged into one buffer."
                )
            param_groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": [g_idx]})
        super().load_state_dict({"state": state, "param_groups": param_groups})


class GatherGradsHandler:
    """Call ``optimizer.gather_grads()`` on MONAI's ``IterationEvents.BACKWARD_COMPLETED``, before clipping,
    AMP unscaling and the step read the flat gradient buffers. Attach it before those handlers."""

    def __init__(self, optimizer: FlatParameterAdamW) -> None:
        self.optimizer = optimizer

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        self.optimizer.gather_grads()
