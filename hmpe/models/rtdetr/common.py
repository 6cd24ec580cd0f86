"""Small building blocks shared by the encoder, the decoder and the query selectors."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["MLP", "bias_init_with_prob", "gather_tokens", "get_activation", "run_fp32"]

_ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}


def get_activation(name: str | None) -> nn.Module:
    """Activation module by name (case-insensitive); None / "none" / "identity" gives Identity."""
    if name is None or name.lower() in ("none", "identity"):
        return nn.Identity()
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)} or 'none'") from None


def bias_init_with_prob(prior_prob: float = 0.01) -> float:
    """Bias so that sigmoid(bias) = prior_prob (focal-loss init: few positives at the start)."""
    return float(-math.log((1 - prior_prob) / prior_prob))


def run_fp32(module: nn.Module, x: Tensor) -> Tensor:
    """Run a prediction head in fp32 even under autocast: box deltas are added in inverse-sigmoid
    space, where fp16/bf16 rounding moves small boxes by whole pixels (the engine's AMP relies on it)."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return module(x.float())
    return module(x)


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """The tokens ``index`` [B,K] of ``x`` [B,N,E] -> [B,K,E]."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class MLP(nn.Module):
    """``num_layers`` Linear layers with an activation between them (none after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, activation: str = "relu"):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = get_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x
