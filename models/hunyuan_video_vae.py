"""HunyuanVideo VAE (diffusers ``AutoencoderKLHunyuanVideo``): the decoder HunyuanVideoPipeline runs,
and the encoder, so that every key of the checkpoint loads strictly.

A causal 3D VAE (8x spatial, 4x temporal compression): L latent frames decode to (L - 1) * 4 + 1
frames. Every convolution is a ``HunyuanVideoCausalConv3d``: replicate padding, k_t - 1 copies of
the first frame in front (nothing behind), (k - 1) // 2 edge rows/columns on each side
(:func:`video_aot.models.mochi_vae.replicate_pad`). GroupNorm statistics run over the whole
[C/groups, T, H, W] block (not per frame), so a temporal tile's output depends on the tile: tiled
and untiled decoding differ, as in diffusers. The mid-block attention is one head over all
F*H*W positions with a causal *frame* mask (a position attends to every position of its own and
earlier frames); here it runs frame by frame over the allowed keys only (the same softmax, and no
[N, N] mask or score matrix over blocked pairs). The decoder's time upsampling keeps the first frame
single (spatial 2x only) and doubles the others.

``AutoencoderKLHunyuanVideo(z)`` is diffusers' decode of one tile with tiling and framewise
decoding off: ``decoder(post_quant_conv(z))``, z [B, latent_channels, L, h, w] (already divided by
``scaling_factor``) -> video [B, out_channels, (L - 1) * 4 + 1, 8h, 8w] float32. diffusers decodes
framewise by default (``use_framewise_decoding``, tiles of ``tile_sample_min_num_frames // 4 + 1``
= 5 latent frames every 3, blended over 4 pixel frames) and spatially tiled on request; that
orchestration belongs to the runtime (``video_aot.runtime.vae.framewise_decode``), which calls one
decoded-tile function (the exported graph) per tile.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mindspore import nn, ops

from .layers import (
    FP32, Attention, Conv3d, GroupNorm, ResnetAttentionStack, ResnetStack, scaled_dot_product_attention, silu,
)
from .loading import register
from .mochi_vae import replicate_pad
from .vae import map_vae_weights

BLOCK_TYPES_DOWN = ("HunyuanVideoDownBlock3D",) * 4
BLOCK_TYPES_UP = ("HunyuanVideoUpBlock3D",) * 4


# ============================================================================= config
@dataclass(frozen=True)
class AutoencoderKLHunyuanVideoConfig:
    """diffusers ``AutoencoderKLHunyuanVideo.__init__``: every field, every default."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    down_block_types: tuple = BLOCK_TYPES_DOWN
    up_block_types: tuple = BLOCK_TYPES_UP
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    norm_num_groups: int = 32
    scaling_factor: float = 0.476986
    spatial_compression_ratio: int = 8
    temporal_compression_ratio: int = 4
    mid_block_add_attention: bool = True

    def __post_init__(self):
        if any(t != "HunyuanVideoDownBlock3D" for t in self.down_block_types):
            raise ValueError(f"down_block_types {self.down_block_types}: only 'HunyuanVideoDownBlock3D' is supported")
        if any(t != "HunyuanVideoUpBlock3D" for t in self.up_block_types):
            raise ValueError(f"up_block_types {self.up_block_types}: only 'HunyuanVideoUpBlock3D' is supported")
        if len(self.down_block_types) != len(self.block_out_channels) or \
                len(self.up_block_types) != len(self.block_out_channels):
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        if self.temporal_compression_ratio != 4:
            raise ValueError(f"temporal_compression_ratio {self.temporal_compression_ratio} is not supported "
                             "(diffusers' decoder supports only 4)")
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"act_fn {self.act_fn!r} is not supported; supported: 'silu'")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels {self.block_out_channels} must split into {self.norm_num_groups} "
                             "groups")


def decoded_frames(latent_frames: int, config: AutoencoderKLHunyuanVideoConfig) -> int:
    return (latent_frames - 1) * config.temporal_compression_ratio + 1


def _scale_flags(config: AutoencoderKLHunyuanVideoConfig, i: int) -> tuple:
    """(spatial, temporal) 2x resampling of level i, as diffusers' encoder and decoder choose them
    (temporal compression 4: the spatial steps at the first log2(s) levels, the temporal ones at
    the levels before the last)."""
    n = len(config.block_out_channels)
    spatial_layers = int(np.log2(config.spatial_compression_ratio))
    time_layers = int(np.log2(config.temporal_compression_ratio))
    is_final = i == n - 1
    return bool(i < spatial_layers), bool(i >= n - 1 - time_layers and not is_final)


# ============================================================================= blocks
class HunyuanVideoCausalConv3d(nn.Cell):
    """Replicate padding (k_t - 1 frames in front, (k - 1) // 2 on each spatial side), then an
    unpadded, optionally strided Conv3d (``conv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1):
        super().__init__()
        k = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 3
        # diffusers' pad tuple (k0 // 2, k0 // 2, k1 // 2, k1 // 2, k2 - 1, 0) is (W, W, H, H, T, T)
        self.time_pad = k[2] - 1
        self.height_pad = k[1] // 2
        self.width_pad = k[0] // 2
        self.conv = Conv3d(in_channels, out_channels, k, stride=stride)

    def construct(self, x):
        # x: [B, C, T, H, W]
        return self.conv(replicate_pad(x, self.time_pad, self.height_pad, self.width_pad))


class HunyuanVideoResnetBlockCausal3D(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = HunyuanVideoCausalConv3d(in_channels, out_channels, 3)
        self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = HunyuanVideoCausalConv3d(out_channels, out_channels, 3)
        self.conv_shortcut = HunyuanVideoCausalConv3d(in_channels, out_channels, 1) \
            if in_channels != out_channels else None

    def construct(self, x):
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return h + x


class CausalFrameAttention(Attention):
    """diffusers' mid-block ``Attention`` (one head as wide as the channels, group norm on the input,
    residual) under the causal frame mask: the queries of frame f attend to the keys of frames
    0..f. Computed per query frame over exactly those keys (equal to the masked softmax)."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-6):
        super().__init__(channels, heads=1, dim_head=channels, bias=True, norm_num_groups=groups, eps=eps,
                         residual_connection=True)

    def construct(self, x):
        # x: [B, C, F, H, W]
        b, c, f, h, w = x.shape
        hw = h * w
        tokens = x.transpose(0, 2, 3, 4, 1).reshape(b, f * hw, c)  # [B, F*H*W, C]
        normed = self.group_norm(tokens.transpose(0, 2, 1)).transpose(0, 2, 1)
        q, k, v = self.to_q(normed), self.to_k(normed), self.to_v(normed)
        parts = ()
        for i in range(f):
            parts = parts + (scaled_dot_product_attention(
                q[:, i * hw:(i + 1) * hw], k[:, :(i + 1) * hw], v[:, :(i + 1) * hw], 1),)
        out = self.to_out[0](ops.cat(parts, 1) if f > 1 else parts[0]) + tokens
        return out.reshape(b, f, h, w, c).transpose(0, 4, 1, 2, 3)


class HunyuanVideoMidBlock3D(ResnetAttentionStack):
    def __init__(self, channels: int, groups: int, add_attention: bool, num_layers: int = 1):
        resnets = [HunyuanVideoResnetBlockCausal3D(channels, channels, groups) for _ in range(num_layers + 1)]
        attentions = [CausalFrameAttention(channels, groups) for _ in range(num_layers)] if add_attention else None
        super().__init__(resnets, attentions)


def upsample_nearest(x, time_factor: int, space_factor: int):
    # x: [B, C, T, H, W] -> [B, C, T * ft, H * fs, W * fs], nearest (each value repeated)
    b, c, t, h, w = x.shape
    ft, fs = time_factor, space_factor
    y = ops.broadcast_to(x.reshape(b, c, t, 1, h, 1, w, 1), (b, c, t, ft, h, fs, w, fs))
    return y.reshape(b, c, t * ft, h * fs, w * fs)


class HunyuanVideoUpsampleCausal3D(nn.Cell):
    """Nearest upsampling (the first frame in space only, the others in time and space), then a causal conv."""

    def __init__(self, channels: int, out_channels: int, upsample_factor: tuple):
        super().__init__()
        self.time_factor = int(upsample_factor[0])
        self.space_factor = int(upsample_factor[1])
        self.conv = HunyuanVideoCausalConv3d(channels, out_channels, 3)

    def construct(self, x):
        t = x.shape[2]
        first = upsample_nearest(x[:, :, :1], 1, self.space_factor)
        if t > 1:
            x = ops.cat((first, upsample_nearest(x[:, :, 1:], self.time_factor, self.space_factor)), 2)
        else:
            x = first
        return self.conv(x)


class HunyuanVideoDownsampleCausal3D(nn.Cell):
    def __init__(self, channels: int, out_channels: int, stride: tuple):
        super().__init__()
        self.conv = HunyuanVideoCausalConv3d(channels, out_channels, 3, stride=stride)

    def construct(self, x):
        return self.conv(x)


class HunyuanVideoUpBlock3D(ResnetStack):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample_factor):
        resnets = [HunyuanVideoResnetBlockCausal3D(in_channels if i == 0 else out_channels, out_channels, groups)
                   for i in range(num_layers)]
        super().__init__(resnets, upsampler=HunyuanVideoUpsampleCausal3D(out_channels, out_channels, upsample_factor)
                         if upsample_factor is not None else None)


class HunyuanVideoDownBlock3D(ResnetStack):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, stride):
        resnets = [HunyuanVideoResnetBlockCausal3D(in_channels if i == 0 else out_channels, out_channels, groups)
                   for i in range(num_layers)]
        super().__init__(resnets, downsampler=HunyuanVideoDownsampleCausal3D(out_channels, out_channels, stride)
                         if stride is not None else None)


# ============================================================================= encoder / decoder
class HunyuanVideoEncoder3D(nn.Cell):
    """video [B, 3, T, H, W] -> moments [B, 2 * latent_channels, (T - 1) / 4 + 1, H / 8, W / 8]."""

    def __init__(self, config: AutoencoderKLHunyuanVideoConfig):
        super().__init__()
        c = config
        ch = c.block_out_channels
        g = c.norm_num_groups
        self.conv_in = HunyuanVideoCausalConv3d(c.in_channels, ch[0], 3)
        blocks = []
        out_ch = ch[0]
        for i in range(len(ch)):
            in_ch, out_ch = out_ch, ch[i]
            spatial, temporal = _scale_flags(c, i)
            stride = (2 if temporal else 1, 2 if spatial else 1, 2 if spatial else 1) if (spatial or temporal) else None
            blocks.append(HunyuanVideoDownBlock3D(in_ch, out_ch, c.layers_per_block, g, stride))
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = HunyuanVideoMidBlock3D(ch[-1], g, c.mid_block_add_attention)
        self.conv_norm_out = GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = HunyuanVideoCausalConv3d(ch[-1], 2 * c.latent_channels, 3)

    def construct(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(silu(self.conv_norm_out(x)))


class HunyuanVideoDecoder3D(nn.Cell):
    """latents [B, latent_channels, L, h, w] -> video [B, 3, (L - 1) * 4 + 1, 8h, 8w]."""

    def __init__(self, config: AutoencoderKLHunyuanVideoConfig):
        super().__init__()
        c = config
        ch = c.block_out_channels
        g = c.norm_num_groups
        self.conv_in = HunyuanVideoCausalConv3d(c.latent_channels, ch[-1], 3)
        self.mid_block = HunyuanVideoMidBlock3D(ch[-1], g, c.mid_block_add_attention)
        reversed_ch = list(reversed(ch))
        blocks = []
        out_ch = reversed_ch[0]
        for i in range(len(ch)):
            in_ch, out_ch = out_ch, reversed_ch[i]
            spatial, temporal = _scale_flags(c, i)
            factor = (2 if temporal else 1, 2 if spatial else 1, 2 if spatial else 1) if (spatial or temporal) else None
            blocks.append(HunyuanVideoUpBlock3D(in_ch, out_ch, c.layers_per_block + 1, g, factor))
        self.up_blocks = nn.CellList(blocks)
        self.conv_norm_out = GroupNorm(g, ch[0], eps=1e-6)
        self.conv_out = HunyuanVideoCausalConv3d(ch[0], c.out_channels, 3)

    def construct(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(silu(self.conv_norm_out(x)))


class AutoencoderKLHunyuanVideo(nn.Cell):
    """``construct(z)``: one decoded tile, z [B, latent_channels, L, h, w] -> video
    [B, out_channels, (L - 1) * 4 + 1, 8h, 8w] float32 (diffusers ``decoder(post_quant_conv(z))``).
    ``encode(x)``: video [B, 3, T, H, W] -> moments [B, 2 * latent_channels, ...] (mean first)."""

    def __init__(self, config: AutoencoderKLHunyuanVideoConfig):
        super().__init__()
        self.config = config
        lc = config.latent_channels
        self.encoder = HunyuanVideoEncoder3D(config)
        self.decoder = HunyuanVideoDecoder3D(config)
        self.quant_conv = Conv3d(2 * lc, 2 * lc, 1)
        self.post_quant_conv = Conv3d(lc, lc, 1)

    def encode(self, x):
        dtype = self.quant_conv.weight.dtype
        return self.quant_conv(self.encoder(x.astype(dtype))).astype(FP32)

    def construct(self, z):
        dtype = self.post_quant_conv.weight.dtype
        return self.decoder(self.post_quant_conv(z.astype(dtype))).astype(FP32)


class HunyuanVideoVaeEncoder(nn.Cell):
    """Thin wrapper whose ``construct`` is ``AutoencoderKLHunyuanVideo.encode`` (for compiling/exporting)."""

    def __init__(self, vae: AutoencoderKLHunyuanVideo):
        super().__init__()
        self.vae = vae

    def construct(self, x):
        return self.vae.encode(x)


def build_vae(config: AutoencoderKLHunyuanVideoConfig):
    return AutoencoderKLHunyuanVideo(config)


register("AutoencoderKLHunyuanVideo", AutoencoderKLHunyuanVideoConfig, build_vae, map_weights=map_vae_weights)


# ============================================================================= tiling settings
@dataclass(frozen=True)
class TilingConfig:
    """diffusers' tiling settings (sample-space sizes), with its defaults."""

    tile_sample_min_height: int = 256
    tile_sample_min_width: int = 256
    tile_sample_min_num_frames: int = 16
    tile_sample_stride_height: int = 192
    tile_sample_stride_width: int = 192
    tile_sample_stride_num_frames: int = 12
