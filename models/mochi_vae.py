"""Mochi-1 VAE (diffusers ``AutoencoderKLMochi``): the decoder MochiPipeline runs, and the
encoder, so that every key of the checkpoint loads strictly (the text-to-video pipeline never
encodes).

Differences from the CogVideoX VAE: every causal Conv3d pads with ``replicate`` (k - 1 copies of the
first frame in front, one edge row/column on each side in space) and keeps no conv cache;
GroupNorm statistics are taken per frame (``MochiChunkedGroupNorm3D``: 32 groups, eps 1e-5); the
decoder upsamples with a Linear over channels followed by depth-to-space (time x st, height and
width x s), and diffusers drops the first ``temporal_compression_ratio - 1`` decoded frames, so
L latent frames decode to (L - 1) * 6 + 1 pixel frames. The encoder starts with Fourier features
and has causal self-attention over time (per pixel) with L2-normalised queries and keys.

``AutoencoderKLMochi(z)`` decodes the whole latent video at once (diffusers' ``vae.decode`` without
tiling or framewise decoding: with replicate padding and per-frame norms, only tiling changes
nothing but memory; tiling is a runtime matter). The latents MochiPipeline hands to the VAE are
de-normalised first (:func:`denormalize_latents`).

Submodules carry diffusers' names (``decoder.up_blocks.0.resnets.1.conv1.conv.weight``,
``encoder.down_blocks.1.attentions.0.to_out.0.weight`` ...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from mindspore import Tensor, nn, ops

from .layers import FP32, Conv3d, GroupNorm, Linear, scaled_dot_product_attention, silu
from .loading import register

MOCHI_LATENTS_MEAN = (
    -0.06730895953510081, -0.038011381506090416, -0.07477820912866141, -0.05565264470995561,
    0.012767231469026969, -0.04703542746246419, 0.043896967884726704, -0.09346305707025976,
    -0.09918314763016893, -0.008729793427399178, -0.011931556316503654, -0.0321993391887285,
)
MOCHI_LATENTS_STD = (
    0.9263795028493863, 0.9248894543193766, 0.9393059390890617, 0.959253732819592,
    0.8244560132752793, 0.917259975397747, 0.9294154431013696, 1.3720942357788521,
    0.881393668867029, 0.9168315692124348, 0.9185249279345552, 0.9274757570805041,
)


# ============================================================================= config
@dataclass(frozen=True)
class AutoencoderKLMochiConfig:
    """diffusers ``AutoencoderKLMochi.__init__``: every field, every default."""

    in_channels: int = 15
    out_channels: int = 3
    encoder_block_out_channels: tuple = (64, 128, 256, 384)
    decoder_block_out_channels: tuple = (128, 256, 512, 768)
    latent_channels: int = 12
    layers_per_block: tuple = (3, 3, 4, 6, 3)
    act_fn: str = "silu"
    temporal_expansions: tuple = (1, 2, 3)
    spatial_expansions: tuple = (2, 2, 2)
    add_attention_block: tuple = (False, True, True, True, True)
    latents_mean: Optional[tuple] = MOCHI_LATENTS_MEAN
    latents_std: Optional[tuple] = MOCHI_LATENTS_STD
    scaling_factor: float = 1.0

    def __post_init__(self):
        levels = len(self.encoder_block_out_channels) - 1
        if len(self.decoder_block_out_channels) != levels + 1:
            raise ValueError("encoder_block_out_channels and decoder_block_out_channels must have the same length")
        for name in ("layers_per_block", "add_attention_block"):
            if len(getattr(self, name)) != levels + 2:
                raise ValueError(f"{name} needs {levels + 2} entries (block_in, {levels} down/up blocks, block_out), "
                                 f"got {getattr(self, name)}")
        for name in ("temporal_expansions", "spatial_expansions"):
            if len(getattr(self, name)) != levels:
                raise ValueError(f"{name} needs {levels} entries, got {getattr(self, name)}")
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"act_fn {self.act_fn!r} is not supported; supported: 'silu'")
        for name in ("encoder_block_out_channels", "decoder_block_out_channels"):
            if any(c % 32 for c in getattr(self, name)):
                raise ValueError(f"{name} must be multiples of 32 (GroupNorm with 32 groups, 32-wide attention heads)")
        if (self.latents_mean is None) != (self.latents_std is None):
            raise ValueError("latents_mean and latents_std must both be given or both be None")
        # the length of latents_mean/std is not checked against latent_channels: diffusers' own tiny test
        # config keeps the 12 default entries with 4 latent channels (denormalize_latents checks its input)

    @property
    def temporal_compression_ratio(self) -> int:
        return math.prod(self.temporal_expansions)

    @property
    def spatial_compression_ratio(self) -> int:
        return math.prod(self.spatial_expansions)


def decoded_frames(latent_frames: int, config: AutoencoderKLMochiConfig) -> int:
    """Pixel frames diffusers' ``vae.decode`` returns for ``latent_frames``: (L - 1) * ratio + 1
    (the first ratio - 1 upsampled frames are dropped; fewer than ratio frames are all kept)."""
    frames = latent_frames * config.temporal_compression_ratio
    return frames - (config.temporal_compression_ratio - 1) if frames >= config.temporal_compression_ratio else frames


def denormalize_latents(latents: np.ndarray, config: AutoencoderKLMochiConfig) -> np.ndarray:
    """MochiPipeline before ``vae.decode``: latents [B, C, F, H, W] * std / scaling_factor + mean
    (per channel), or latents / scaling_factor without mean/std. Computed in float32 as the
    pipeline does for fp32 latents."""
    latents = np.asarray(latents, np.float32)
    if config.latents_mean is None:
        return (latents / np.float32(config.scaling_factor)).astype(np.float32)
    if latents.shape[1] != len(config.latents_mean):
        raise ValueError(f"latents have {latents.shape[1]} channels, latents_mean/std {len(config.latents_mean)}")
    shape = (1, -1, 1, 1, 1)
    mean = np.asarray(config.latents_mean, np.float32).reshape(shape)
    std = np.asarray(config.latents_std, np.float32).reshape(shape)
    return (latents * std / np.float32(config.scaling_factor) + mean).astype(np.float32)


# ============================================================================= blocks
def replicate_pad(x, time_pad: int, height_pad: int, width_pad: int):
    """torch ``F.pad(x, (w, w, h, h, t, 0), mode="replicate")`` for x: [B, C, T, H, W], as concats."""
    b, c, t, h, w = x.shape
    if time_pad:
        x = ops.cat((ops.broadcast_to(x[:, :, :1], (b, c, time_pad, h, w)), x), 2)
        t += time_pad
    if height_pad:
        top = ops.broadcast_to(x[:, :, :, :1], (b, c, t, height_pad, w))
        bottom = ops.broadcast_to(x[:, :, :, h - 1:], (b, c, t, height_pad, w))
        x = ops.cat((top, x, bottom), 3)
        h += 2 * height_pad
    if width_pad:
        left = ops.broadcast_to(x[:, :, :, :, :1], (b, c, t, h, width_pad))
        right = ops.broadcast_to(x[:, :, :, :, w - 1:], (b, c, t, h, width_pad))
        x = ops.cat((left, x, right), 4)
    return x


class MochiCausalConv3d(nn.Cell):
    """diffusers ``CogVideoXCausalConv3d`` with pad_mode="replicate": replicate-pad k_t - 1 frames in
    front and (k - 1) // 2 rows/columns on each side, then an unpadded (strided) Conv3d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1):
        super().__init__()
        k = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 3
        stride = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, 1, 1)
        self.time_pad = k[0] - 1
        self.height_pad = (k[1] - 1) // 2
        self.width_pad = (k[2] - 1) // 2
        self.conv = Conv3d(in_channels, out_channels, k, stride=stride)

    def construct(self, x):
        # x: [B, C, T, H, W]
        return self.conv(replicate_pad(x, self.time_pad, self.height_pad, self.width_pad))


class MochiChunkedGroupNorm3D(nn.Cell):
    """GroupNorm (32 groups, eps 1e-5) over each frame of [B, C, T, H, W] on its own."""

    def __init__(self, num_channels: int, num_groups: int = 32):
        super().__init__()
        self.norm_layer = GroupNorm(num_groups, num_channels, eps=1e-5)

    def construct(self, x):
        b, c, t, h, w = x.shape
        y = self.norm_layer(x.transpose(0, 2, 1, 3, 4).reshape(b * t, c, h, w))  # [B*T, C, H, W]
        return y.reshape(b, t, c, h, w).transpose(0, 2, 1, 3, 4)


class MochiResnetBlock3D(nn.Cell):
    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = MochiChunkedGroupNorm3D(channels)
        self.conv1 = MochiCausalConv3d(channels, channels, 3)
        self.norm2 = MochiChunkedGroupNorm3D(channels)
        self.conv2 = MochiCausalConv3d(channels, channels, 3)

    def construct(self, x):
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(silu(self.norm2(h)))
        return h + x


def linear_channels(linear, x):
    # a Linear over the channel axis of [B, C, T, H, W] -> [B, C', T, H, W]
    return linear(x.transpose(0, 2, 3, 4, 1)).transpose(0, 4, 1, 2, 3)


class MochiVaeAttention(nn.Cell):
    """diffusers ``Attention`` (qk_norm="l2", is_causal=True) with ``MochiVaeAttnProcessor2_0``:
    causal self-attention over the frames of one pixel, 32-wide heads, L2-normalised q and k."""

    def __init__(self, channels: int, dim_head: int = 32, eps: float = 1e-5):
        super().__init__()
        self.heads = channels // dim_head
        self.dim_head = dim_head
        self.eps = eps
        self.to_q = Linear(channels, channels, bias=False)
        self.to_k = Linear(channels, channels, bias=False)
        self.to_v = Linear(channels, channels, bias=False)
        self.to_out = nn.CellList([Linear(channels, channels)])

    def _l2(self, x):
        # F.normalize over each head's features: x / max(||x||, eps)
        n, t, c = x.shape
        h = x.reshape(n, t, self.heads, self.dim_head)
        norm = ops.sqrt((h * h).sum(-1, keepdims=True))
        return (h / ops.maximum(norm, self.eps)).reshape(n, t, c)

    def construct(self, x):
        # x: [N, T, C] (N = B*H*W pixels)
        t = x.shape[1]
        if t == 1:
            # one frame: the softmax over one key is 1
            return self.to_out[0](self.to_v(x))
        q = self._l2(self.to_q(x))
        k = self._l2(self.to_k(x))
        causal = np.triu(np.full((t, t), np.finfo(np.float32).min, np.float32), 1)
        out = scaled_dot_product_attention(q, k, self.to_v(x), self.heads, mask=Tensor(causal[None, None]))
        return self.to_out[0](out)


class MochiMidBlock3D(nn.Cell):
    """resnets, each followed (add_attention) by a residual per-frame-normed causal attention."""

    def __init__(self, channels: int, num_layers: int, add_attention: bool):
        super().__init__()
        self.resnets = nn.CellList([MochiResnetBlock3D(channels) for _ in range(num_layers)])
        self.add_attention = add_attention
        if add_attention:
            self.norms = nn.CellList([MochiChunkedGroupNorm3D(channels) for _ in range(num_layers)])
            self.attentions = nn.CellList([MochiVaeAttention(channels) for _ in range(num_layers)])

    def construct(self, x):
        return self.run_layers(x)

    def run_layers(self, x):
        for i in range(len(self.resnets)):
            x = self.resnets[i](x)
            if self.add_attention:
                x = x + attend_over_time(self.attentions[i], self.norms[i](x))
        return x


def attend_over_time(attn, x):
    # x: [B, C, T, H, W] -> [B*H*W, T, C] -> attention -> back
    b, c, t, h, w = x.shape
    y = attn(x.transpose(0, 3, 4, 2, 1).reshape(b * h * w, t, c))
    return y.reshape(b, h, w, t, c).transpose(0, 4, 3, 1, 2)


class MochiDownBlock3D(MochiMidBlock3D):
    """Strided causal conv (time x te, space x se), then a mid block."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, temporal_expansion: int,
                 spatial_expansion: int, add_attention: bool):
        super().__init__(out_channels, num_layers, add_attention)
        k = (temporal_expansion, spatial_expansion, spatial_expansion)
        self.conv_in = MochiCausalConv3d(in_channels, out_channels, k, stride=k)

    def construct(self, x):
        return self.run_layers(self.conv_in(x))


class MochiUpBlock3D(nn.Cell):
    """resnets, then a Linear to out * st * s * s channels and depth-to-space."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, temporal_expansion: int,
                 spatial_expansion: int):
        super().__init__()
        self.resnets = nn.CellList([MochiResnetBlock3D(in_channels) for _ in range(num_layers)])
        self.out_channels = out_channels
        self.st = temporal_expansion
        self.s = spatial_expansion
        self.proj = Linear(in_channels, out_channels * temporal_expansion * spatial_expansion ** 2)

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        b, _, t, h, w = x.shape
        st, s, oc = self.st, self.s, self.out_channels
        y = self.proj(x.transpose(0, 2, 3, 4, 1))  # [B, T, H, W, oc*st*s*s]
        y = y.reshape(b, t, h, w, oc, st, s, s).transpose(0, 4, 1, 5, 2, 6, 3, 7)  # [B, oc, T, st, H, s, W, s]
        return y.reshape(b, oc, t * st, h * s, w * s)


class FourierFeatures(nn.Cell):
    """[x, sin(2^f 2pi x), cos(2^f 2pi x)] for f = 6, 7, channel-interleaved as diffusers, in float32."""

    def __init__(self, start: int = 6, stop: int = 8, step: int = 1):
        super().__init__()
        freqs = np.arange(start, stop, step, dtype=np.float32)
        self.num_freqs = len(freqs)
        self.w = Tensor((np.power(np.float32(2.0), freqs) * np.float32(2 * np.pi)).astype(np.float32))

    def construct(self, x):
        # x: [B, C, T, H, W] -> [B, C * (1 + 2 * num_freqs), T, H, W]
        dtype = x.dtype
        h = x.astype(FP32)
        b, c, t, hh, ww = h.shape
        # channel c * num_freqs + j holds x_c * w_j
        scaled = (h[:, :, None] * self.w.reshape(1, 1, -1, 1, 1, 1)).reshape(b, c * self.num_freqs, t, hh, ww)
        return ops.cat((h, ops.sin(scaled), ops.cos(scaled)), 1).astype(dtype)


# ============================================================================= encoder / decoder
class MochiEncoder3D(nn.Cell):
    """video [B, 3, T, H, W] in [-1, 1] -> moments [B, 2 * latent_channels, T', H/8, W/8] (mean, logvar)."""

    def __init__(self, config: AutoencoderKLMochiConfig):
        super().__init__()
        c = config
        ch = c.encoder_block_out_channels
        self.fourier_features = FourierFeatures()
        self.proj_in = Linear(c.in_channels, ch[0])
        self.block_in = MochiMidBlock3D(ch[0], c.layers_per_block[0], c.add_attention_block[0])
        self.down_blocks = nn.CellList([
            MochiDownBlock3D(ch[i], ch[i + 1], c.layers_per_block[i + 1], c.temporal_expansions[i],
                             c.spatial_expansions[i], c.add_attention_block[i + 1])
            for i in range(len(ch) - 1)
        ])
        self.block_out = MochiMidBlock3D(ch[-1], c.layers_per_block[-1], c.add_attention_block[-1])
        self.norm_out = MochiChunkedGroupNorm3D(ch[-1])
        self.proj_out = Linear(ch[-1], 2 * c.latent_channels, bias=False)

    def construct(self, x):
        x = linear_channels(self.proj_in, self.fourier_features(x))
        x = self.block_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.block_out(x)
        return linear_channels(self.proj_out, silu(self.norm_out(x)))


class MochiDecoder3D(nn.Cell):
    """latents [B, latent_channels, L, h, w] -> video [B, 3, L * 6, h * 8, w * 8] (nothing dropped yet)."""

    def __init__(self, config: AutoencoderKLMochiConfig):
        super().__init__()
        c = config
        ch = c.decoder_block_out_channels
        n = len(ch)
        self.conv_in = Conv3d(c.latent_channels, ch[-1], 1)
        self.block_in = MochiMidBlock3D(ch[-1], c.layers_per_block[-1], add_attention=False)
        self.up_blocks = nn.CellList([
            MochiUpBlock3D(ch[-i - 1], ch[-i - 2], c.layers_per_block[-i - 2], c.temporal_expansions[-i - 1],
                           c.spatial_expansions[-i - 1])
            for i in range(n - 1)
        ])
        self.block_out = MochiMidBlock3D(ch[0], c.layers_per_block[0], add_attention=False)
        self.proj_out = Linear(ch[0], c.out_channels)

    def construct(self, z):
        x = self.block_in(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        x = self.block_out(x)
        return linear_channels(self.proj_out, silu(x))


class AutoencoderKLMochi(nn.Cell):
    """``construct(z)``: diffusers ``vae.decode(z)`` -- de-normalised latents [B, latent_channels, L, h, w]
    -> video [B, out_channels, decoded_frames(L), 8h, 8w] float32 in about [-1, 1]. ``encode(x)``
    returns the encoder's moments (mean = the first latent_channels channels)."""

    def __init__(self, config: AutoencoderKLMochiConfig):
        super().__init__()
        self.config = config
        self.encoder = MochiEncoder3D(config)
        self.decoder = MochiDecoder3D(config)
        self.drop = config.temporal_compression_ratio - 1

    def encode(self, x):
        return self.encoder(x.astype(self.encoder.proj_in.weight.dtype)).astype(FP32)

    def construct(self, z):
        video = self.decoder(z.astype(self.decoder.proj_out.weight.dtype))
        if video.shape[2] > self.drop:
            video = video[:, :, self.drop:]
        return video.astype(FP32)


class MochiVaeEncoder(nn.Cell):
    """Thin wrapper whose ``construct`` is ``AutoencoderKLMochi.encode`` (for compiling/exporting)."""

    def __init__(self, vae: AutoencoderKLMochi):
        super().__init__()
        self.vae = vae

    def construct(self, x):
        return self.vae.encode(x)


def build_vae(config: AutoencoderKLMochiConfig):
    return AutoencoderKLMochi(config)


register("AutoencoderKLMochi", AutoencoderKLMochiConfig, build_vae)
