"""A small transformer encoder whose feed-forward sub-layer is a physical reservoir.

The PGT paper (Abbott, Elo, Bozhko 2025, arXiv 2506.04523) trains "a transformer model with a
reservoir layer" with perturbations alone. Its full text is not available to us; this is our
concrete reading. A pre-LayerNorm encoder (Vaswani et al. 2017; Xiong et al. 2020 for pre-LN)::

    h₀ = W_emb x_t + p_t                                   (token embedding + learned position)
    h  = h + Attention(LN(h))                              (every block)
    h  = h + FFN(LN(h))                                    (digital blocks: Linear-GELU-Linear)
    h  = h + W_out · device(W_in · LN(h))                  (the reservoir block)
    logits = W_cls · LN(mean_t h)

Why the feed-forward sub-layer (and not a layer between blocks): the position-wise FFN is where a
transformer applies a fixed-width nonlinear map to each token, which is exactly what a static
reservoir is (a fixed nonlinear random feature map); attention already mixes tokens, so the
device needs no memory across tokens and every token is an independent device sample (the
physical layer folds ``[B, T]`` into its batch), which is what the local-scope estimators need.
The digital ``W_in`` before and ``W_out`` after the black box are trained with everything else, so
backpropagation would need the device's Jacobian — impossible on hardware, the PGT setting. The
residual connection around the block keeps an exact gradient path to earlier layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError, ShapeError
from ..systems.base import PhysicalSystem
from .physical_layer import PhysicalLayer


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (written out so ``torch.func.vmap`` can batch probes)."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ConfigError(f"d_model={d_model} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = self.qkv(h).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, d))


class ReservoirFeedForward(nn.Module):
    """``W_out · device(W_in · h)`` applied to every token: digital, physical, digital."""

    def __init__(self, d_model: int, reservoir: PhysicalSystem) -> None:
        super().__init__()
        if len(reservoir.input_shape) != 1 or len(reservoir.output_shape) != 1:
            raise ShapeError(
                f"the reservoir feed-forward layer needs a flat-vector device ([d] in, [m] out), got "
                f"{reservoir.input_shape} -> {reservoir.output_shape}; use a static-mode device"
            )
        self.inp = nn.Linear(d_model, reservoir.input_shape[0])
        self.reservoir = PhysicalLayer(reservoir)
        self.out = nn.Linear(reservoir.output_shape[0], d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.reservoir(self.inp(h)))


class Block(nn.Module):
    """Pre-LN encoder block: attention then the given feed-forward sub-layer, both residual."""

    def __init__(self, d_model: int, heads: int, ffn: nn.Module) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = ffn

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.ffn(self.norm2(h))


class ReservoirTransformer(nn.Module):
    """Encoder classifier over ``[B, T, token_dim]`` sequences with one reservoir block.

    Parameters
    ----------
    token_dim, seq_len, num_classes:
        Shape of one sequence and the number of classes. Inputs may also be flat
        ``[B, T·token_dim]`` (e.g. images from :func:`~physgrad.data.load_dataset`).
    reservoir:
        A flat-vector device (e.g. ``AutoOscillationRing(..., mode="static")``).
    d_model, heads, blocks, ffn_hidden:
        Width, attention heads, number of blocks, hidden width of the digital FFNs.
    reservoir_block:
        Index of the block whose FFN is the device (default: the last).
    seed:
        Seeds the digital initialisation.
    """

    def __init__(
        self,
        token_dim: int,
        seq_len: int,
        num_classes: int,
        reservoir: PhysicalSystem,
        *,
        d_model: int = 32,
        heads: int = 4,
        blocks: int = 1,
        ffn_hidden: int = 64,
        reservoir_block: int = -1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise ConfigError(f"blocks must be >= 1, got {blocks}")
        if not -blocks <= reservoir_block < blocks:
            raise ConfigError(f"reservoir_block {reservoir_block} is not a block index for {blocks} blocks")
        self.token_dim, self.seq_len = int(token_dim), int(seq_len)
        physical = reservoir_block % blocks
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.embed = nn.Linear(token_dim, d_model)
            self.position = nn.Parameter(0.02 * torch.randn(seq_len, d_model))
            layers = []
            for i in range(blocks):
                ffn = (
                    ReservoirFeedForward(d_model, reservoir)
                    if i == physical
                    else nn.Sequential(nn.Linear(d_model, ffn_hidden), nn.GELU(), nn.Linear(ffn_hidden, d_model))
                )
                layers.append(Block(d_model, heads, ffn))
            self.blocks = nn.ModuleList(layers)
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.shape[1] == self.seq_len * self.token_dim:
            x = x.reshape(x.shape[0], self.seq_len, self.token_dim)
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.seq_len, self.token_dim):
            raise ShapeError(
                f"ReservoirTransformer expects [B, {self.seq_len}, {self.token_dim}] or "
                f"[B, {self.seq_len * self.token_dim}], got {tuple(x.shape)}"
            )
        h = self.embed(x) + self.position
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h.mean(dim=1)))


__all__ = ["Block", "ReservoirFeedForward", "ReservoirTransformer", "SelfAttention"]
