"""Contiguous parameter buffers: the optimiser, clipping and EMA on one tensor per denoiser instead of ~300.

The linked model has about 930 parameter tensors. With one tensor per parameter, every per-iteration
bookkeeping step (AdamW's update and step counters, the gradient norms of clipping, the EMA ``lerp``, zeroing
gradients) is a multi-tensor kernel over ~930 small tensors plus Python lists of the same length; at a small
image size that bookkeeping costs more than the networks. Here each optimiser group's parameters become views
into one contiguous buffer, and their gradients views into a second one (the layout of apex's and DeepSpeed's
contiguous buffers). The modules are unchanged: every ``nn.Parameter`` object stays the same, only its storage
moves, so the forward pass, ``state_dict`` and ``load_state_dict`` behave as before. Autograd accumulates
gradients in place into the existing ``.grad`` views.

:class:`FlatParameterAdamW` is a ``torch.optim.AdamW`` whose groups hold the flat buffers; its
``state_dict`` is written, and read, in the ordinary per-parameter layout, so checkpoints are interchangeable
with a plain AdamW over the same groups (old checkpoints resume into it, and its checkpoints resume into a
plain AdamW).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["FlatParameterAdamW", "FlatParameterGroup", "flat_group_of", "flatten_into_buffer"]


@dataclass
class FlatParameterGroup:
    """The parameters ``members`` living as consecutive views of ``flat`` (and their gradients of ``flat.grad``)."""

    flat: nn.Parameter
    members: list[nn.Parameter]
    offsets: list[int]

    def check_linked(self) -> None:
        """Raise if a member no longer lives in ``flat`` (e.g. after ``module.to(...)``); re-link gradients that
        were set to ``None`` (``module.zero_grad()``), keeping their values (none: zero)."""
        data_ptr = self.flat.data_ptr()
        element = self.flat.element_size()
        for i in (
            0,
            len(self.members) - 1,
        ):  # O(1) per step: a move replaces every member, the first and last too
            p = self.members[i]
            if p.data_ptr() != data_ptr + self.offsets[i] * element:
                raise RuntimeError(
                    f"parameter {i} of a flat parameter group (shape {tuple(p.shape)}) no longer lives in the "
                    "group's contiguous buffer: the model's parameters were moved or replaced (e.g. by "
                    "`model.to(...)`) after the optimiser was built; move the model first, then build the trainer."
                )
        grad = self.flat.grad
        if grad is None:
            raise RuntimeError("the flat parameter buffer lost its gradient buffer (set to None).")
        for p, start in zip(self.members, self.offsets):
            view = grad[start : start + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = view.zero_()
            elif p.grad.data_ptr() != view.data_ptr():
                view.copy_(p.grad)
                p.grad = view

    def grads_linked(self) -> bool:
        """Cheap test: are the first and last member's gradients still views of the gradient buffer?"""
        grad = self.flat.grad
        if grad is None:
            return False
        element = grad.element_size()
        for i in (0, len(self.members) - 1):
            g = self.members[i].grad
            if g is None or g.data_ptr() != grad.data_ptr() + self.offsets[i] * element:
                return False
        return True


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

    With ``with_grad`` every parameter's ``.grad`` becomes a view of a second buffer (existing gradient values
    are copied over, missing ones are zero), which autograd then accumulates into in place.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2)
        >>> group = flatten_into_buffer(list(net.parameters()))
        >>> group.flat.shape, net.weight.data_ptr() == group.flat.data_ptr()
        (torch.Size([8]), True)
        >>> net(torch.ones(1, 3)).sum().backward()
        >>> group.flat.grad[:3].tolist()  # d/dW of sum(W x + b) = x, accumulated in the flat buffer
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
        if with_grad:
            grad = torch.zeros_like(data)
            for p, start in zip(params, offsets):
                view = grad[start : start + p.numel()].view_as(p)
                if p.grad is not None:
                    view.copy_(p.grad)
                p.grad = view
            flat.grad = grad
    group = FlatParameterGroup(flat=flat, members=params, offsets=offsets)
    for p in params:
        _register(p, group)
    return group


class FlatParameterAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` over groups of parameters stored as one contiguous buffer per group.

    Takes the same parameter groups as ``AdamW`` (e.g. :func:`~monai_pairsynth.engines.paired_param_groups`,
    one per modality); each group's parameters move into one buffer (see :func:`flatten_into_buffer`), and the
    update, the step counter and the moments are kept for that buffer: a handful of tensors per step
    instead of one per parameter. Numerically it is AdamW (element-wise), so it gives the same weights.

    - ``zero_grad`` zeroes the gradient buffers in place (``set_to_none`` is ignored: the gradients must stay
      views of the buffer); gradients set to ``None`` elsewhere (``module.zero_grad()``) are re-linked at the
      next step, keeping their values.
    - ``state_dict`` / ``load_state_dict`` use the per-parameter layout of a plain ``AdamW`` over the same
      groups, so checkpoints move freely between the two.
    - Build it after the model is on its device: moving the parameters afterwards raises at the next step.

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
        for group in self.flat_groups:
            if group.flat.grad is not None:
                group.flat.grad.zero_()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        for group in self.flat_groups:
            if not group.grads_linked():
                group.check_linked()
            else:  # parameters moved? (first/last data pointers: O(1))
                element = group.flat.element_size()
                base = group.flat.data_ptr()
                if any(
                    group.members[i].data_ptr() != base + group.offsets[i] * element
                    for i in (0, len(group.members) - 1)
                ):
                    group.check_linked()
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
