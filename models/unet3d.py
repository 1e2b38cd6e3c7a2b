"""UNet3DConditionModel (ModelScope text-to-video-ms-1.7b, zeroscope_v2_576w / XL), ported from
diffusers with the checkpoint's own submodule names.

Every level interleaves spatial layers (ResnetBlock2D, Transformer2DModel over each frame's pixels:
the SD UNet's levels, models/unet2d.py UNet2DBody) with temporal ones (TemporalConvLayer: Conv3d with kernel (3, 1, 1); TransformerTemporalModel:
self-attention over the frames of each pixel). Frames travel folded into the batch, [B*F, C, H, W],
as in diffusers; the frame count is a construction-time constant (static graphs).

Naming quirk kept from diffusers: the config's ``attention_head_dim`` is really the number of
heads per block (diffusers issue #2011). ModelScope's value 64 therefore gives 5/10/20 heads of
64 channels for the 320/640/1280 levels, and ``transformer_in`` has 8 heads of 64.
"""
from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
from mindspore import nn

from .layers import BasicTransformerBlock, Conv3d, GroupNorm, Identity, Linear, silu
from .loading import register
from .unet2d import (
    UNet2DBody, UNetLayout, batch_to_frames, check_block_types, check_frame_count, frames_to_batch, repeat_per_frame,
)


# ============================================================================= config
@dataclass(frozen=True)
class UNet3DConditionConfig:
    """diffusers ``UNet3DConditionModel.__init__`` (same names and defaults)."""

    sample_size: int | tuple | None = None
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple = ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D")
    up_block_types: tuple = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int | None = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1024
    attention_head_dim: int | tuple = 64  # the number of heads per block (diffusers' naming, see above)
    num_attention_heads: int | tuple | None = None  # refused by diffusers as well
    time_cond_proj_dim: int | None = None

    DOWN = ("CrossAttnDownBlock3D", "DownBlock3D")
    UP = ("CrossAttnUpBlock3D", "UpBlock3D")

    def __post_init__(self):
        check_block_types(self)
        if self.num_attention_heads is not None:
            raise ValueError("num_attention_heads must be null: UNet3DConditionModel reads the head count from "
                             "attention_head_dim (diffusers raises NotImplementedError for it too)")
        if not isinstance(self.attention_head_dim, int):
            raise ValueError(f"attention_head_dim {self.attention_head_dim!r}: only one int is supported "
                             "(diffusers' transformer_in multiplies it by 8, which fails for per-block tuples)")
        if self.time_cond_proj_dim is not None:
            raise ValueError("time_cond_proj_dim (timestep_cond, an LCM-style input) is not supported; use null")
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"act_fn {self.act_fn!r} is not supported (only 'silu')")
        if self.norm_num_groups is None:
            raise ValueError("norm_num_groups=null is not supported (the 3-D blocks need group norms)")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups:
                raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of "
                                 f"norm_num_groups {self.norm_num_groups}")
            if ch % self.attention_head_dim:
                raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of "
                                 f"attention_head_dim (the head count) {self.attention_head_dim}")

    def layout(self) -> UNetLayout:
        """What the shared UNet levels (models/unet2d.py) build from: UNet3D's spatial transformers
        are linear-projection Transformer2DModels of block_out_channels / attention_head_dim heads."""
        n = len(self.down_block_types)
        return UNetLayout(
            in_channels=self.in_channels, out_channels=self.out_channels, block_out_channels=self.block_out_channels,
            down_cross=tuple(k == "CrossAttnDownBlock3D" for k in self.down_block_types),
            up_cross=tuple(k == "CrossAttnUpBlock3D" for k in self.up_block_types),
            layers_per_block=(self.layers_per_block,) * n, transformer_layers=(1,) * n,
            heads=tuple(ch // self.attention_head_dim for ch in self.block_out_channels),
            cross_attention_dim=(self.cross_attention_dim,) * n, use_linear_projection=True,
            norm_num_groups=self.norm_num_groups, norm_eps=self.norm_eps, downsample_padding=self.downsample_padding,
            mid_block=True, mid_block_scale_factor=self.mid_block_scale_factor, mid_block_layers=1,
            mid_transformer_layers=1, act_fn=self.act_fn,
        )


# ============================================================================= temporal layers
class TemporalConvLayer(nn.Cell):
    """Four (GroupNorm -> SiLU -> [Dropout] -> Conv3d over time) stages and a residual.
    Sub-cells are indexed like diffusers' nn.Sequential: conv1.0 norm, conv1.2 conv; convK.0 norm,
    convK.3 conv for K = 2, 3, 4."""

    def __init__(self, in_dim: int, out_dim: int | None = None, norm_num_groups: int = 32, num_frames: int = 1):
        super().__init__()
        out_dim = out_dim or in_dim
        self.num_frames = num_frames
        k, p = (3, 1, 1), (1, 0, 0)
        self.conv1 = nn.CellList([GroupNorm(norm_num_groups, in_dim), Identity(), Conv3d(in_dim, out_dim, k, padding=p)])
        self.conv2 = nn.CellList([GroupNorm(norm_num_groups, out_dim), Identity(), Identity(),
                                  Conv3d(out_dim, in_dim, k, padding=p)])
        self.conv3 = nn.CellList([GroupNorm(norm_num_groups, out_dim), Identity(), Identity(),
                                  Conv3d(out_dim, in_dim, k, padding=p)])
        self.conv4 = nn.CellList([GroupNorm(norm_num_groups, out_dim), Identity(), Identity(),
                                  Conv3d(out_dim, in_dim, k, padding=p)])

    def construct(self, x):
        # x: [B*F, C, H, W] -> [B, C, F, H, W] -> convs over time -> [B*F, C, H, W]
        bf, c, hgt, wid = x.shape
        f = self.num_frames
        x = x.reshape(bf // f, f, c, hgt, wid).transpose(0, 2, 1, 3, 4)
        h = self.conv1[2](silu(self.conv1[0](x)))
        h = self.conv2[3](silu(self.conv2[0](h)))
        h = self.conv3[3](silu(self.conv3[0](h)))
        h = self.conv4[3](silu(self.conv4[0](h)))
        h = x + h
        return h.transpose(0, 2, 1, 3, 4).reshape(bf, h.shape[1], hgt, wid)


class TransformerTemporalModel(nn.Cell):
    """Self-attention over frames, per pixel: [B*F, C, H, W] -> [B*H*W, F, C] -> blocks -> back,
    plus the residual. The GroupNorm statistics span all frames of a video (diffusers normalises
    the [B, C, F, H, W] view). Blocks use double self-attention: attn2 attends the frames again.
    ``num_positional_embeddings`` adds sinusoidal frame positions to both attentions' inputs: that
    is AnimateDiff's motion module (AnimateDiffTransformer3D, models/animatediff.py)."""

    def __init__(self, num_attention_heads: int, attention_head_dim: int, in_channels: int, num_layers: int = 1,
                 norm_num_groups: int = 32, cross_attention_dim: int | None = None, num_frames: int = 1,
                 num_positional_embeddings: int | None = None):
        super().__init__()
        inner = num_attention_heads * attention_head_dim
        self.num_frames = num_frames
        self.norm = GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.proj_in = Linear(in_channels, inner)
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(inner, num_attention_heads, attention_head_dim,
                                  cross_attention_dim=cross_attention_dim, double_self_attention=True,
                                  positional_embeddings="sinusoidal" if num_positional_embeddings else None,
                                  num_positional_embeddings=num_positional_embeddings)
            for _ in range(num_layers)
        ])
        self.proj_out = Linear(inner, in_channels)

    def construct(self, x):
        # x: [B*F, C, H, W]
        bf, c, hgt, wid = x.shape
        f = self.num_frames
        b = bf // f
        residual = x
        h = x.reshape(b, f, c, hgt, wid).transpose(0, 2, 1, 3, 4)  # [B, C, F, H, W]
        h = self.norm(h)
        h = h.transpose(0, 3, 4, 2, 1).reshape(b * hgt * wid, f, c)  # [B*H*W, F, C]
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h)  # no context: attn2 is self-attention (double_self_attention)
        h = self.proj_out(h)
        h = h.reshape(b, hgt, wid, f, c).transpose(0, 3, 4, 1, 2).reshape(bf, c, hgt, wid)
        return h + residual


# ============================================================================= UNet
class UNet3DConditionModel(UNet2DBody):
    """One UNet call: sample [B, C_in, F, h, w], timestep [1] or [B], encoder_hidden_states [B, M, D]
    -> [B, C_out, F, h, w] float32. ``num_frames`` is the static frame count of the export.

    The levels are the SD UNet's (models/unet2d.py UNet2DBody, with linear-projection spatial
    transformers) plus UNet3D's temporal layers: a TemporalConvLayer after every resnet
    (``temp_convs``), a TransformerTemporalModel after every spatial transformer
    (``temp_attentions``) and one (``transformer_in``) after conv_in."""

    def __init__(self, config: UNet3DConditionConfig, num_frames: int = 16):
        super().__init__()
        self.config = config
        self.num_frames = num_frames
        head_dim = config.attention_head_dim  # heads of attention_head_dim channels (see the module docstring)
        groups = config.norm_num_groups

        def temporal(kind, block, layers, channels, cross_attention):
            convs = layers + 1 if kind == "mid" else layers  # the mid block: one per resnet
            cells = {"temp_convs": [TemporalConvLayer(channels, channels, groups, num_frames) for _ in range(convs)]}
            if cross_attention:
                cells["temp_attentions"] = [
                    TransformerTemporalModel(channels // head_dim, head_dim, channels, 1, groups,
                                             config.cross_attention_dim, num_frames)
                    for _ in range(layers)
                ]
            return cells

        ch0 = config.block_out_channels[0]
        self._build(config.layout(), temporal=temporal,
                    transformer_in=TransformerTemporalModel(8, head_dim, ch0, 1, groups, None, num_frames))

    def construct(self, sample, timestep, encoder_hidden_states):
        # sample: [B, C, F, h, w]; timestep: [1] or [B]; encoder_hidden_states: [B, M, D]
        f = sample.shape[2]
        check_frame_count(f, self.num_frames)
        dtype = self.conv_in.weight.dtype
        # 1. time: [B, T], repeated per frame -> [B*F, T]; the context likewise -> [B*F, M, D]
        emb = repeat_per_frame(self._time_embedding(timestep, sample.shape[0]), f)
        ctx = repeat_per_frame(encoder_hidden_states.astype(dtype), f)
        # 2. [B, C, F, h, w] -> [B*F, C, h, w] -> levels -> [B, C_out, F, h, w]
        h = self._levels(frames_to_batch(sample.astype(dtype)), emb, ctx)
        return batch_to_frames(h, f).astype(ms.float32)


register("UNet3DConditionModel", UNet3DConditionConfig, UNet3DConditionModel)
