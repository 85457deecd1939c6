"""Layer activations of any network under Monte-Carlo dropout.

:class:`MCDropoutFeatureExtractor` runs a wrapped ``nn.Module`` ``K`` times on the same input and records the
outputs of chosen sub-modules (by their ``named_modules`` name, through forward hooks). During the passes the
whole network stays in ``eval`` mode (BatchNorm uses its running statistics, InstanceNorm is unaffected,
nothing updates), and only the dropout layers are switched on. They are switched on by a forward hook on each
``nn.Dropout`` / ``nn.Dropout1d/2d/3d`` that applies a dropout mask drawn from an explicit
``torch.Generator``, so a seeded call is reproducible and ``K = 1`` is the plain deterministic forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["FeaturePass", "MCDropoutFeatureExtractor", "find_dropout_modules"]

# element-wise dropout and channel-wise ("spatial") dropout; AlphaDropout variants are not supported because
# their eval-mode identity cannot be turned into their train-mode behaviour by a multiplicative mask.
_ELEMENTWISE_DROPOUT = (nn.Dropout,)
_CHANNELWISE_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_UNSUPPORTED_DROPOUT = (nn.AlphaDropout, nn.FeatureAlphaDropout)


def find_dropout_modules(network: nn.Module) -> dict[str, nn.Module]:
    """Return ``{name: module}`` of the dropout layers the extractor can drive (``nn.Dropout``, ``nn.DropoutNd``).

    Raises:
        ValueError: when the network contains ``nn.AlphaDropout`` / ``nn.FeatureAlphaDropout``, which cannot be
            emulated by a mask in eval mode.
    """
    found: dict[str, nn.Module] = {}
    for name, module in network.named_modules():
        if isinstance(module, _UNSUPPORTED_DROPOUT):
            raise ValueError(
                f"dropout layer {name!r} is a {type(module).__name__}, which MC dropout here does not support; "
                "use nn.Dropout or nn.Dropout1d/2d/3d."
            )
        if isinstance(module, _ELEMENTWISE_DROPOUT + _CHANNELWISE_DROPOUT) and module.p > 0:
            found[name] = module
    return found


@dataclass
class FeaturePass:
    """One forward pass: ``features[name]`` is the output of layer ``name``, ``output`` the network output."""

    features: dict[str, torch.Tensor]
    output: torch.Tensor


class MCDropoutFeatureExtractor(nn.Module):
    """Activations of chosen layers of ``network`` over ``mc_passes`` Monte-Carlo-dropout passes.

    Args:
        network: any module; it is called as ``network(inputs)``. Its train/eval flags are restored after
            each call of the extractor.
        layers: names (as in ``network.named_modules()``) of the layers whose outputs are returned. Each must
            output a single tensor ``(B, C, *spatial)``.
        mc_passes: ``K``, the number of passes. ``K = 1`` is one deterministic pass with dropout off; ``K > 1``
            draws a fresh dropout mask in every pass and needs at least one dropout layer with ``p > 0``.

    Example:
        >>> import torch
        >>> from monai.networks.nets import UNet
        >>> net = UNet(2, 2, 2, channels=(4, 8), strides=(2,), num_res_units=0, dropout=0.2)
        >>> extractor = MCDropoutFeatureExtractor(net, layers=["model.0"], mc_passes=3)
        >>> g = torch.Generator().manual_seed(0)
        >>> feats, outputs = extractor(torch.randn(2, 2, 16, 16), generator=g)
        >>> feats["model.0"].shape, outputs.shape
        (torch.Size([3, 2, 4, 8, 8]), torch.Size([3, 2, 2, 16, 16]))
        >>> bool((feats["model.0"][0] != feats["model.0"][1]).any())
        True
    """

    def __init__(self, network: nn.Module, layers: Sequence[str], mc_passes: int = 1) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise ValueError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        if isinstance(layers, str):
            raise ValueError(f"layers must be a sequence of layer names, got the string {layers!r}.")
        layers = [str(name) for name in layers]
        if len(layers) == 0:
            raise ValueError("layers must name at least one layer of the network.")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers contains duplicates: {layers}.")
        if not isinstance(mc_passes, int) or isinstance(mc_passes, bool) or mc_passes < 1:
            raise ValueError(f"mc_passes (K) must be an integer >= 1, got {mc_passes!r}.")
        modules = dict(network.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            available = [n for n in modules if n]
            shown = ", ".join(available[:40]) + (" ..." if len(available) > 40 else "")
            raise ValueError(
                f"layers {missing} are not sub-modules of the network; available names: {shown}."
            )
        self.network = network
        self.layers = layers
        self.mc_passes = mc_passes
        self._dropout_modules = find_dropout_modules(network)
        if mc_passes > 1 and not self._dropout_modules:
            raise ValueError(
                f"mc_passes={mc_passes} > 1 needs dropout layers with p > 0 in the network, but it has none; "
                "build it with dropout (e.g. UNet(..., dropout=0.2)) or use mc_passes=1."
            )
        self._generator: torch.Generator | None = None
        self._sample_seeds: list[int] | None = None
        self._pass_index = 0
        self._call_index = 0
        self._dropout_on = False

    @property
    def device(self) -> torch.device:
        """Device of the network's first parameter (CPU for a parameter-free network)."""
        for p in self.network.parameters():
            return p.device
        return torch.device("cpu")

    def _dropout_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self._dropout_on:
            return None
        p = float(module.p)
        if isinstance(module, _CHANNELWISE_DROPOUT):
            shape = tuple(output.shape[:2]) + (1,) * (output.ndim - 2)
        else:
            shape = tuple(output.shape)
        call = self._call_index
        self._call_index += 1
        if self._sample_seeds is not None:
            # one generator per (sample, pass, dropout call): a sample's masks do not depend on its batch
            if len(self._sample_seeds) != shape[0]:
                raise ValueError(
                    f"sample_seeds has {len(self._sample_seeds)} seeds for a batch of {shape[0]}."
                )
            keep = torch.stack(
                [
                    torch.rand(
                        shape[1:],
                        generator=_seeded(output.device, seed, self._pass_index, call),
                        device=output.device,
                        dtype=torch.float32,
                    )
                    for seed in self._sample_seeds
                ]
            )
        elif self._generator is not None:
            g = self._generator
            keep = torch.rand(shape, generator=g, device=g.device, dtype=torch.float32).to(output.device)
        else:
            keep = torch.rand(shape, device=output.device, dtype=torch.float32)
        mask = (keep >= p).to(output.dtype) / (1.0 - p)
        return output * mask

    @contextmanager
    def _hooked(self, store: dict[str, torch.Tensor]) -> Iterator[None]:
        modules = dict(self.network.named_modules())
        handles = []

        def make_hook(name: str):
            def hook(module: nn.Module, args: tuple, output) -> None:
                if not isinstance(output, torch.Tensor):
                    raise ValueError(
                        f"layer {name!r} returned a {type(output).__name__}, not a tensor; pick a layer whose "
                        "output is one tensor (B, C, *spatial)."
                    )
                store[name] = output

            return hook

        # dropout hooks first so that a hooked layer that is itself a dropout layer records the masked output
        for module in self._dropout_modules.values():
            handles.append(module.register_forward_hook(self._dropout_hook))
        for name in self.layers:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        was_training = {m: m.training for m in self.network.modules()}
        self.network.eval()
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for m, flag in was_training.items():
                m.training = flag
            self._dropout_on = False
            self._generator = None
            self._sample_seeds = None

    @torch.no_grad()
    def iter_passes(
        self,
        inputs: torch.Tensor,
        generator: torch.Generator | None = None,
        sample_seeds: Sequence[int] | torch.Tensor | None = None,
    ) -> Iterator[FeaturePass]:
        """Yield the ``K`` passes one by one (memory for one pass at a time).

        Args:
            inputs: network input ``(B, C_in, H, W[, D])``, already on the network's device.
            generator: source of the dropout masks (any device; masks are moved to the activations' device).
                ``None`` uses torch's global generator.
            sample_seeds: ``B`` integers; when given, the masks of sample ``b`` come from its own seed (and the
                pass and layer), so a sample's features do not depend on the rest of its batch (chunking or
                batch size). Overrides ``generator``.
        """
        store: dict[str, torch.Tensor] = {}
        if sample_seeds is not None:
            sample_seeds = [int(s) for s in torch.as_tensor(sample_seeds).flatten().tolist()]
            if len(sample_seeds) != inputs.shape[0]:
                raise ValueError(
                    f"sample_seeds has {len(sample_seeds)} entries for a batch of {inputs.shape[0]}."
                )
        with self._hooked(store):
            self._dropout_on = self.mc_passes > 1
            self._generator = generator
            self._sample_seeds = sample_seeds
            for index in range(self.mc_passes):
                self._pass_index, self._call_index = index, 0
                store.clear()
                output = self.network(inputs)
                if not isinstance(output, torch.Tensor):
                    raise ValueError(
                        f"the network returned a {type(output).__name__}; the extractor needs a single tensor output."
                    )
                yield FeaturePass(features={name: store[name] for name in self.layers}, output=output)

    @torch.no_grad()
    def forward(
        self,
        inputs: torch.Tensor,
        generator: torch.Generator | None = None,
        sample_seeds: Sequence[int] | torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Run all ``K`` passes (arguments as in :meth:`iter_passes`).

        Returns:
            ``(features, outputs)``: ``features[name]`` has shape ``(K, B, C_l, *spatial_l)``, ``outputs`` has
            shape ``(K, *network_output_shape)``.
        """
        passes = list(self.iter_passes(inputs, generator=generator, sample_seeds=sample_seeds))
        features = {name: torch.stack([p.features[name] for p in passes]) for name in self.layers}
        return features, torch.stack([p.output for p in passes])


_MASK64 = (1 << 64) - 1


def _mix_seed(*values: int) -> int:
    """Combine integers into one 63-bit seed (splitmix64 finaliser per value)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def _seeded(device: torch.device, seed: int, pass_index: int, call_index: int) -> torch.Generator:
    g = torch.Generator(device=device) if device.type != "cpu" else torch.Generator()
    return g.manual_seed(_mix_seed(seed, pass_index, call_index))
