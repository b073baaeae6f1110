"""The convolutional policy/value network of the reference set-up, as an RLlib RLModule.

Spec: 3x3 stride-1 unpadded convolutions, (R - 1) / 2 of them so the R x R window
shrinks to 1 x 1, with channels 16, 32, 64, 64, ...; dense layers [256, 256]
([384, 256] above 20 actions); ReLU. Policy and value heads share the encoder.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch import TorchRLModule


def default_conv_channels(window: int) -> list[int]:
    """16, 32, 64, 64, ... with one layer per ring of the window."""
    return [min(16 * 2**i, 64) for i in range((window - 1) // 2)]


def default_hidden_sizes(n_actions: int) -> list[int]:
    return [384, 256] if n_actions > 20 else [256, 256]


VALUE_CHUNK = 4096
"""Most observations `compute_values` encodes in one call (chunks of a larger batch are near-equal)."""


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` intra-op torch threads: forward passes of small batches lose to thread
    hand-offs (on a loaded 2-core machine 5 quick.yaml evaluation episodes took 41 s with torch's default
    2 threads, 2 s with one), and a sampler inside a trial's process must give the learner its threads back."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class GridPPOModule(TorchRLModule, ValueFunctionAPI):
    """Conv encoder over the (4, R, R) observation window, then policy logits and a value.

    `model_config` keys: `conv_channels` and `hidden_sizes` (None: the spec's defaults).
    """

    def setup(self) -> None:
        channels, window, _ = self.observation_space.shape
        n_actions = int(self.action_space.n)
        conv_channels = self.model_config.get("conv_channels") or default_conv_channels(window)
        hidden_sizes = self.model_config.get("hidden_sizes") or default_hidden_sizes(n_actions)
        layers: list[nn.Module] = []
        for out in conv_channels:
            layers += [nn.Conv2d(channels, out, kernel_size=3), nn.ReLU()]
            channels, window = out, window - 2
            if window < 1:
                raise ValueError(f"conv_channels has {len(conv_channels)} layers, too many for the window")
        layers.append(nn.Flatten())
        width = channels * window * window
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self._encoder = nn.Sequential(*layers)
        self._policy = nn.Linear(width, n_actions)
        self._value = nn.Linear(width, 1)

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.action_logits(batch[Columns.OBS])}

    def action_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """The policy's logits for a batch of observations: what `forward_exploration` and
        `forward_inference` return, without their dict and train/eval switching (the fast
        env runner calls this once per policy and step)."""
        return self._policy(self._encoder(obs))

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        embeddings = self._encoder(batch[Columns.OBS])
        return {Columns.ACTION_DIST_INPUTS: self._policy(embeddings), Columns.EMBEDDINGS: embeddings}

    def compute_values(self, batch: dict[str, Any], embeddings: torch.Tensor | None = None) -> torch.Tensor:
        if embeddings is None:
            obs = batch[Columns.OBS]
            # GAE's pass over a whole train batch (~20,000 windows per policy): one conv call that
            # large overflows the CPU caches and took twice as long as chunks of ~4,000.
            pieces = -(-len(obs) // VALUE_CHUNK)
            embeddings = self._encoder(obs) if pieces <= 1 else torch.cat([self._encoder(chunk) for chunk in obs.tensor_split(pieces)])
        return self._value(embeddings).squeeze(-1)


class PrepackedLogits:
    """`GridPPOModule.action_logits` from a snapshot of its weights laid out for oneDNN once, for CPU inference.

    On CPU, `conv2d` reorders its plain weight into oneDNN's blocked layout on every call and
    converts the activations back after every layer; on the fast env runner's batches (a
    few hundred windows per policy and step) this layout work made the forward pass 1.2-1.4x
    slower in isolation (~12% inside the runner, where caches are colder). This keeps the
    convolutions' weights reordered and their activations in oneDNN's layout up to the dense
    layers; the logits equal `action_logits`'s up to float rounding. A snapshot (copies): build
    a new one after the weights change (the fast env runner builds one per `sample()`, ~5 ms).
    The reorder is torch's private `torch._C._nn.mkldnn_reorder_conv2d_weight`, the call
    `torch.utils.mkldnn` makes; `tests/test_training_units.py` holds the logits to the module's.
    """

    def __init__(self, module: GridPPOModule):
        self._convs, self._dense = [], []
        for layer in module._encoder:
            if isinstance(layer, nn.Conv2d):
                weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    layer.weight.detach().to_mkldnn(), layer.padding, layer.stride, layer.dilation, layer.groups
                )
                self._convs.append((weight, layer.bias.detach().to_mkldnn(), layer.padding, layer.stride, layer.dilation, layer.groups))
            elif isinstance(layer, nn.Linear):
                self._dense.append(_transposed_copy(layer))
        self._policy = _transposed_copy(module._policy)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        hidden = obs.to_mkldnn()
        for weight, bias, padding, stride, dilation, groups in self._convs:
            hidden = torch.mkldnn_convolution(hidden, weight, bias, padding, stride, dilation, groups).relu_()
        hidden = hidden.to_dense().flatten(1)
        for weight, bias in self._dense:
            hidden = torch.addmm(bias, hidden, weight).relu_()
        weight, bias = self._policy
        return torch.addmm(bias, hidden, weight)


def _transposed_copy(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of the layer's weight, transposed for `addmm(bias, x, weight)`, and of its bias."""
    return layer.weight.detach().t().clone(memory_format=torch.contiguous_format), layer.bias.detach().clone()


def inference_logits(module: GridPPOModule, device: torch.device | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fastest exact `action_logits` for the module's current weights on `device`: `PrepackedLogits` on a
    CPU with oneDNN, else the module's own."""
    if torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available():
        return PrepackedLogits(module)
    return module.action_logits


def module_spec(conv_channels: list[int] | None, hidden_sizes: list[int] | None) -> RLModuleSpec:
    """One spec, copied by RLlib for every policy; spaces come from the env per policy."""
    return RLModuleSpec(
        module_class=GridPPOModule,
        model_config={"conv_channels": conv_channels, "hidden_sizes": hidden_sizes},
    )
