"""LTX-Video VAE (diffusers ``AutoencoderKLLTXVideo``) for the three generations of checkpoints:

  * 0.9.0: causal encoder, non-causal decoder, ``LTXVideoDownBlock3D`` (stride-2 conv downsampling,
    a resnet ``conv_out`` where the channel count changes);
  * 0.9.1: decoder timestep conditioning (``timestep_conditioning``: a per-block PixArt timestep
    embedding modulating every resnet, plus a final shift/scale), noise injection in the decoder
    resnets (``decoder_inject_noise``), residual depth-to-space upsamplers (``upsample_residual``)
    with channel reduction (``upsample_factor``);
  * 0.9.5: ``LTXVideo095DownBlock3D`` with space-to-depth downsamplers of type ``spatial`` /
    ``temporal`` / ``spatiotemporal`` (or ``conv``), explicit compression ratios.

No randomness lives in a graph. Every noise tensor is an input:
  * ``decoder(z, temb, noise)``: ``noise`` is the tuple of the [H, W] maps that diffusers draws with
    ``torch.randn`` in each noise-injecting resnet (two per resnet), in diffusers' draw order
    (:func:`decoder_noise_specs` lists names and shapes for a latent size);
  * ``AutoencoderKLLTXVideo.decode(z, timestep, decode_noise_scale, decode_noise, noise)`` also does
    the pipelines' ``(1 - s) * z + s * decode_noise`` mixing for timestep-conditioned decoders.
``encoder(x)`` returns the moments (diffusers' ``latent_dist.parameters``): the runtime takes the
mean or samples (:func:`latent_dist_mean_std`, :func:`sample_latent_dist`).

Pipeline-side numpy helpers: :func:`pack_latents`, :func:`unpack_latents`, :func:`normalize_latents`,
:func:`denormalize_latents` (LTXPipeline's static methods).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .layers import FP32, Conv3d, LayerNorm, ResnetStack, silu
from .loading import register
from .ltx import PixArtAlphaCombinedTimestepSizeEmbeddings

DOWN_BLOCK_TYPES = ("LTXVideoDownBlock3D", "LTXVideo095DownBlock3D")
DOWNSAMPLE_TYPES = ("conv", "spatial", "temporal", "spatiotemporal")
_DOWNSAMPLE_STRIDES = {"spatial": (1, 2, 2), "temporal": (2, 1, 1), "spatiotemporal": (2, 2, 2)}


# ============================================================================= config
@dataclass(frozen=True)
class AutoencoderKLLTXVideoConfig:
    """diffusers ``AutoencoderKLLTXVideo.__init__``: every field, every default (0.9.0's values)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 128
    block_out_channels: tuple = (128, 256, 512, 512)
    down_block_types: tuple = ("LTXVideoDownBlock3D",) * 4
    decoder_block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: tuple = (4, 3, 3, 3, 4)
    decoder_layers_per_block: tuple = (4, 3, 3, 3, 4)
    spatio_temporal_scaling: tuple = (True, True, True, False)
    decoder_spatio_temporal_scaling: tuple = (True, True, True, False)
    decoder_inject_noise: tuple = (False, False, False, False, False)
    downsample_type: tuple = ("conv", "conv", "conv", "conv")
    upsample_residual: tuple = (False, False, False, False)
    upsample_factor: tuple = (1, 1, 1, 1)
    timestep_conditioning: bool = False
    patch_size: int = 4
    patch_size_t: int = 1
    resnet_norm_eps: float = 1e-6
    scaling_factor: float = 1.0
    encoder_causal: bool = True
    decoder_causal: bool = False
    spatial_compression_ratio: Optional[int] = None
    temporal_compression_ratio: Optional[int] = None

    def __post_init__(self):
        for kind in self.down_block_types:
            if kind not in DOWN_BLOCK_TYPES:
                raise ValueError(f"down block {kind!r} is not supported; supported: {DOWN_BLOCK_TYPES}")
        n_enc = len(self.block_out_channels) - (1 if self.is_095_encoder else 0)
        if len(self.down_block_types) < n_enc or len(self.spatio_temporal_scaling) < n_enc \
                or len(self.layers_per_block) < n_enc:
            raise ValueError(f"down_block_types, spatio_temporal_scaling and layers_per_block need {n_enc} entries "
                             f"for block_out_channels {self.block_out_channels} (the mid block takes "
                             "layers_per_block[-1])")
        if self.patch_size_t != 1:
            raise ValueError(f"patch_size_t {self.patch_size_t} is not supported (only 1): diffusers sizes conv_in "
                             "and conv_out by patch_size alone, so its encoder and decoder fail on temporal patches; "
                             "no LTX checkpoint has them")
        for i in range(n_enc):
            if self.down_block_types[i] != "LTXVideo095DownBlock3D":
                continue
            if len(self.downsample_type) <= i:
                raise ValueError(f"downsample_type {self.downsample_type} needs an entry for down block {i}")
            kind = self.downsample_type[i] if self.spatio_temporal_scaling[i] else None
            if kind is not None and kind not in DOWNSAMPLE_TYPES:
                raise ValueError(f"downsample_type {kind!r} is not supported; supported: {DOWNSAMPLE_TYPES}")
            # the encoder's channels as diffusers lays them out (see LTXVideoEncoder3d)
            cin = self.block_out_channels[i]
            cout = self.block_out_channels[i + 1] if self.is_095_encoder or i + 1 < n_enc else cin
            if kind in (None, "conv") and cin != cout:
                raise ValueError(
                    f"down block {i} (LTXVideo095DownBlock3D, downsample_type {kind or 'none'}) would change channels "
                    f"{cin} -> {cout}, but only the space-to-depth downsamplers ('spatial', 'temporal', "
                    "'spatiotemporal') change channels: diffusers' encoder fails on this layout; no LTX checkpoint "
                    "has it")
        n_dec = len(self.decoder_block_out_channels)
        for name in ("decoder_spatio_temporal_scaling", "upsample_residual", "upsample_factor"):
            if len(getattr(self, name)) < n_dec:
                raise ValueError(f"{name} needs {n_dec} entries for decoder_block_out_channels "
                                 f"{self.decoder_block_out_channels}")
        if len(self.decoder_layers_per_block) < n_dec + 1 or len(self.decoder_inject_noise) < n_dec + 1:
            raise ValueError(f"decoder_layers_per_block and decoder_inject_noise need {n_dec + 1} entries (mid block "
                             "+ one per up block)")
        inject = tuple(reversed(self.decoder_inject_noise))  # [mid block, up block 0, ...]
        for i, (cin, cout) in enumerate(_decoder_block_channels(self)):
            if cin == cout:
                continue
            # the up block's first resnet has a conv_in; diffusers fails on it when it is conditioned or noisy
            if self.timestep_conditioning:
                raise ValueError(
                    f"decoder up block {i} changes channels ({cin} -> {cout}) with a resnet conv_in while "
                    "timestep_conditioning is on: diffusers feeds that resnet the raw timestep and fails; no "
                    "LTX checkpoint has this layout")
            if inject[i + 1]:
                raise ValueError(
                    f"decoder up block {i} changes channels ({cin} -> {cout}) with a resnet conv_in that injects "
                    "noise (decoder_inject_noise): diffusers sizes its per-channel noise scales by the input "
                    "channels and fails; no LTX checkpoint has this layout")

    @property
    def is_095_encoder(self) -> bool:
        # diffusers decides the encoder's channel layout by the last down block type
        return self.down_block_types[-1] == "LTXVideo095DownBlock3D"

    @property
    def spatial_ratio(self) -> int:
        """diffusers ``vae.spatial_compression_ratio``."""
        if self.spatial_compression_ratio is not None:
            return self.spatial_compression_ratio
        return self.patch_size * 2 ** sum(bool(s) for s in self.spatio_temporal_scaling)

    @property
    def temporal_ratio(self) -> int:
        """diffusers ``vae.temporal_compression_ratio``."""
        if self.temporal_compression_ratio is not None:
            return self.temporal_compression_ratio
        return self.patch_size_t * 2 ** sum(bool(s) for s in self.spatio_temporal_scaling)


def latent_shape(config: AutoencoderKLLTXVideoConfig, num_frames: int, height: int, width: int) -> tuple:
    """(C, F, H, W) of the latents LTXPipeline prepares for a video of num_frames x height x width."""
    return (config.latent_channels, (num_frames - 1) // config.temporal_ratio + 1, height // config.spatial_ratio,
            width // config.spatial_ratio)


def _decoder_block_channels(config) -> list:
    """(in, out) channels of each decoder up block as diffusers computes them (the conv_in resnet exists
    where they differ)."""
    boc = tuple(reversed(config.decoder_block_out_channels))
    factors = tuple(reversed(config.upsample_factor))
    out = boc[0]
    result = []
    for i in range(len(boc)):
        cin = out // factors[i]
        out = boc[i] // factors[i]
        result.append((cin, out))
    return result


def decoder_noise_specs(config: AutoencoderKLLTXVideoConfig, latent_height: int, latent_width: int) -> list:
    """The decoder's injected-noise inputs in diffusers' draw order: [(name, (H, W)), ...]. Each
    noise-injecting resnet draws one [H, W] map after conv1 and one after conv2 (shared by batch rows,
    channels and frames); H, W are the resnet's spatial size. Empty for decoders without noise."""
    # diffusers reverses each whole tuple: the mid block takes the last entry, up block i entry -(i + 2)
    inject = tuple(reversed(config.decoder_inject_noise))
    layers = tuple(reversed(config.decoder_layers_per_block))
    scaling = tuple(reversed(config.decoder_spatio_temporal_scaling))
    h, w = latent_height, latent_width
    specs = []

    def resnet(name):
        specs.append((f"{name}.noise1", (h, w)))
        specs.append((f"{name}.noise2", (h, w)))

    if inject[0]:
        for i in range(layers[0]):
            resnet(f"mid_block.resnets.{i}")
    for i, (cin, cout) in enumerate(_decoder_block_channels(config)):
        if inject[i + 1] and cin != cout:
            resnet(f"up_blocks.{i}.conv_in")
        if scaling[i]:
            h, w = 2 * h, 2 * w
        if inject[i + 1]:
            for j in range(layers[i + 1]):
                resnet(f"up_blocks.{i}.resnets.{j}")
    return specs


def decode_input_specs(config: AutoencoderKLLTXVideoConfig, batch: int, latent_frames: int, latent_height: int,
                       latent_width: int) -> list:
    """Every input of :meth:`AutoencoderKLLTXVideo.decode` for a static latent shape, in order:
    latents, then (timestep-conditioned decoders) timestep [B], decode_noise_scale [B], decode_noise
    (latent-shaped), then the injected noise maps (:func:`decoder_noise_specs`)."""
    shape = (batch, config.latent_channels, latent_frames, latent_height, latent_width)
    specs = [("latents", shape)]
    if config.timestep_conditioning:
        specs += [("timestep", (batch,)), ("decode_noise_scale", (batch,)), ("decode_noise", shape)]
    return specs + decoder_noise_specs(config, latent_height, latent_width)


# ============================================================================= numpy helpers (pipeline side)
def pack_latents(latents: np.ndarray, patch_size: int = 1, patch_size_t: int = 1) -> np.ndarray:
    """LTXPipeline._pack_latents: [B, C, F, H, W] -> [B, F/pt * H/p * W/p, C * pt * p * p]."""
    b, c, f, h, w = latents.shape
    p, pt = patch_size, patch_size_t
    x = latents.reshape(b, c, f // pt, pt, h // p, p, w // p, p)
    x = x.transpose(0, 2, 4, 6, 1, 3, 5, 7)  # [B, F', H', W', C, pt, p, p]
    return np.ascontiguousarray(x.reshape(b, (f // pt) * (h // p) * (w // p), c * pt * p * p))


def unpack_latents(latents: np.ndarray, num_frames: int, height: int, width: int, patch_size: int = 1,
                   patch_size_t: int = 1) -> np.ndarray:
    """LTXPipeline._unpack_latents: [B, S, D] -> [B, C, num_frames * pt, height * p, width * p]
    (num_frames, height, width are the token grid, as diffusers passes them)."""
    b = latents.shape[0]
    p, pt = patch_size, patch_size_t
    x = latents.reshape(b, num_frames, height, width, -1, pt, p, p)
    x = x.transpose(0, 4, 1, 5, 2, 6, 3, 7)  # [B, C, F, pt, H, p, W, p]
    return np.ascontiguousarray(x.reshape(b, x.shape[1], num_frames * pt, height * p, width * p))


def normalize_latents(latents: np.ndarray, latents_mean, latents_std, scaling_factor: float = 1.0) -> np.ndarray:
    """LTXPipeline._normalize_latents over the channel axis of [B, C, F, H, W]."""
    mean = np.asarray(latents_mean, latents.dtype).reshape(1, -1, 1, 1, 1)
    std = np.asarray(latents_std, latents.dtype).reshape(1, -1, 1, 1, 1)
    return ((latents - mean) * latents.dtype.type(scaling_factor) / std).astype(latents.dtype)


def denormalize_latents(latents: np.ndarray, latents_mean, latents_std, scaling_factor: float = 1.0) -> np.ndarray:
    """LTXPipeline._denormalize_latents over the channel axis of [B, C, F, H, W]."""
    mean = np.asarray(latents_mean, latents.dtype).reshape(1, -1, 1, 1, 1)
    std = np.asarray(latents_std, latents.dtype).reshape(1, -1, 1, 1, 1)
    return (latents * std / latents.dtype.type(scaling_factor) + mean).astype(latents.dtype)


def latent_dist_mean_std(moments: np.ndarray):
    """diffusers DiagonalGaussianDistribution on the encoder's moments [B, 2C, ...] -> (mean, std)."""
    mean, logvar = np.split(moments, 2, axis=1)
    logvar = np.clip(logvar, -30.0, 20.0)
    return mean, np.exp(0.5 * logvar).astype(moments.dtype)


def sample_latent_dist(moments: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``latent_dist.sample()`` with the standard-normal ``noise`` (mean-shaped) drawn by the runtime."""
    mean, std = latent_dist_mean_std(moments)
    return (mean + std * noise).astype(moments.dtype)


# ============================================================================= blocks
def channel_rms_norm(x, eps: float):
    # x: [B, C, F, H, W]; diffusers RMSNorm (no weight) over channels, statistics in float32. The channel
    # mean is a [1, C] x [B, C, F*H*W] matmul: 3x faster than ReduceMean over axis 1 on this CPU
    # (1x256x9x64x64: 63 ms against 200 ms), the same to 1e-6
    b, c, f, h, w = x.shape
    y = x.astype(FP32)
    col = ops.ones((1, c), FP32) * (1.0 / c)
    mean_sq = ops.matmul(col, (y * y).reshape(b, c, f * h * w)).reshape(b, 1, f, h, w)
    return (y * ops.rsqrt(mean_sq + eps)).astype(x.dtype)


def _triple(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class LTXVideoCausalConv3d(nn.Cell):
    """Conv3d padded in time by repeating the first frame k-1 times (causal) or the first and the last
    frame (k-1)/2 times each (non-causal); zero-padded in space."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, is_causal: bool = True):
        super().__init__()
        k = _triple(kernel_size)
        self.time_kernel = k[0]
        self.is_causal = is_causal
        self.conv = Conv3d(in_channels, out_channels, k, stride=_triple(stride), padding=(0, k[1] // 2, k[2] // 2))

    def construct(self, x):
        # x: [B, C, F, H, W]
        kt = self.time_kernel
        if kt > 1:
            b, c, _, h, w = x.shape
            if self.is_causal:
                x = ops.cat((ops.broadcast_to(x[:, :, :1], (b, c, kt - 1, h, w)), x), 2)
            else:
                n = (kt - 1) // 2
                if n > 0:
                    f = x.shape[2]
                    x = ops.cat((ops.broadcast_to(x[:, :, :1], (b, c, n, h, w)), x,
                                 ops.broadcast_to(x[:, :, f - 1:], (b, c, n, h, w))), 2)
        return self.conv(x)


class LTXVideoResnetBlock3d(nn.Cell):
    """RMSNorm -> (timestep shift/scale) -> SiLU -> conv1 -> (+noise) -> RMSNorm -> (shift/scale) -> SiLU ->
    conv2 -> (+noise), + shortcut (LayerNorm over channels and a 1x1x1 conv where channels change)."""

    def __init__(self, in_channels: int, out_channels: Optional[int] = None, eps: float = 1e-6,
                 is_causal: bool = True, inject_noise: bool = False, timestep_conditioning: bool = False):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels = in_channels
        self.conv1 = LTXVideoCausalConv3d(in_channels, out_channels, 3, is_causal=is_causal)
        self.conv2 = LTXVideoCausalConv3d(out_channels, out_channels, 3, is_causal=is_causal)
        self.has_shortcut = in_channels != out_channels
        if self.has_shortcut:
            self.norm3 = LayerNorm(in_channels, eps=eps)
            self.conv_shortcut = LTXVideoCausalConv3d(in_channels, out_channels, 1, is_causal=is_causal)
        self.inject_noise = inject_noise
        self.noise_index = -1  # position of this resnet's first noise map in the decoder's noise tuple
        if inject_noise:
            zeros = np.zeros((in_channels, 1, 1), np.float32)
            self.per_channel_scale1 = Parameter(Tensor(zeros), name="per_channel_scale1")
            self.per_channel_scale2 = Parameter(Tensor(zeros.copy()), name="per_channel_scale2")
        self.timestep_conditioning = timestep_conditioning
        if timestep_conditioning:
            table = np.random.randn(4, in_channels).astype(np.float32) / in_channels ** 0.5
            self.scale_shift_table = Parameter(Tensor(table), name="scale_shift_table")

    def _add_noise(self, h, noise, scale):
        # noise: [H, W] (one map for every batch row, channel and frame); scale: [C, 1, 1]
        n = noise.astype(h.dtype).reshape(1, 1, 1, noise.shape[0], noise.shape[1])
        return h + n * scale.astype(h.dtype).reshape(1, -1, 1, 1, 1)

    def construct(self, x, temb=None, noise=None):
        # x: [B, C, F, H, W]; temb: [B, 4C, 1, 1, 1] (timestep-conditioned); noise: the decoder's noise tuple
        h = channel_rms_norm(x, 1e-8)
        if self.timestep_conditioning:
            b = temb.shape[0]
            mod = temb.reshape(b, 4, self.in_channels, 1, 1, 1) \
                + self.scale_shift_table.reshape(1, 4, self.in_channels, 1, 1, 1)
            shift_1, scale_1, shift_2, scale_2 = mod[:, 0], mod[:, 1], mod[:, 2], mod[:, 3]
            h = h * (1 + scale_1) + shift_1
        h = self.conv1(silu(h))
        if self.inject_noise:
            h = self._add_noise(h, noise[self.noise_index], self.per_channel_scale1)
        h = channel_rms_norm(h, 1e-8)
        if self.timestep_conditioning:
            h = h * (1 + scale_2) + shift_2
        h = self.conv2(silu(h))
        if self.inject_noise:
            h = self._add_noise(h, noise[self.noise_index + 1], self.per_channel_scale2)
        if self.has_shortcut:
            x = self.norm3(x.transpose(0, 2, 3, 4, 1)).transpose(0, 4, 1, 2, 3)
            x = self.conv_shortcut(x)
        return h + x


def _space_to_depth(x, stride):
    # [B, C, F, H, W] -> [B, C * st * sh * sw, F/st, H/sh, W/sw], channel index ((c * st + i) * sh + j) * sw + k
    st, sh, sw = stride
    b, c, f, h, w = x.shape
    x = x.reshape(b, c, f // st, st, h // sh, sh, w // sw, sw).transpose(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * st * sh * sw, f // st, h // sh, w // sw)


def _depth_to_space(x, stride):
    # [B, C * st * sh * sw, F, H, W] -> [B, C, F * st, H * sh, W * sw] (inverse of _space_to_depth)
    st, sh, sw = stride
    b, c, f, h, w = x.shape
    x = x.reshape(b, c // (st * sh * sw), st, sh, sw, f, h, w).transpose(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c // (st * sh * sw), f * st, h * sh, w * sw)


class LTXVideoDownsampler3d(nn.Cell):
    """0.9.5 downsampling: space-to-depth of a causal 3x3x3 conv, plus the space-to-depth of the input
    averaged over channel groups as a residual. The first stride_t - 1 frames are repeated in front."""

    def __init__(self, in_channels: int, out_channels: int, stride, is_causal: bool = True):
        super().__init__()
        self.stride = _triple(stride)
        prod = self.stride[0] * self.stride[1] * self.stride[2]
        self.group_size = in_channels * prod // out_channels
        self.out_channels = out_channels
        self.conv = LTXVideoCausalConv3d(in_channels, out_channels // prod, 3, is_causal=is_causal)

    def construct(self, x):
        st = self.stride[0]
        if st > 1:
            x = ops.cat((x[:, :, :st - 1], x), 2)
        residual = _space_to_depth(x, self.stride)  # [B, C * prod, F', H', W']
        b, cp, f, h, w = residual.shape
        residual = residual.reshape(b, cp // self.group_size, self.group_size, f, h, w).mean(2)
        return _space_to_depth(self.conv(x), self.stride) + residual


class LTXVideoUpsampler3d(nn.Cell):
    """Depth-to-space (2x in time and space) of a 3x3x3 conv, dropping the first stride_t - 1 frames;
    with ``residual`` the depth-to-space of the input, channel-tiled, is added."""

    def __init__(self, in_channels: int, stride=2, is_causal: bool = True, residual: bool = False,
                 upscale_factor: int = 1):
        super().__init__()
        self.stride = _triple(stride)
        self.residual = residual
        prod = self.stride[0] * self.stride[1] * self.stride[2]
        self.repeats = prod // upscale_factor
        self.conv = LTXVideoCausalConv3d(in_channels, in_channels * prod // upscale_factor, 3, is_causal=is_causal)

    def construct(self, x):
        st = self.stride[0]
        if self.residual:
            residual = _depth_to_space(x, self.stride)  # [B, C / prod, 2F, 2H, 2W]
            residual = ops.tile(residual, (1, self.repeats, 1, 1, 1))
            residual = residual[:, :, st - 1:]
        h = _depth_to_space(self.conv(x), self.stride)
        h = h[:, :, st - 1:]
        if self.residual:
            h = h + residual
        return h


class LTXVideoDownBlock3D(nn.Cell):
    """0.9.0 down block: resnets, stride-2 conv downsampler, resnet ``conv_out`` where channels change."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, eps: float, spatio_temporal_scale: bool,
                 is_causal: bool):
        super().__init__()
        self.resnets = nn.CellList([LTXVideoResnetBlock3d(in_channels, in_channels, eps, is_causal)
                                    for _ in range(num_layers)])
        self.has_down = spatio_temporal_scale
        if spatio_temporal_scale:
            self.downsamplers = nn.CellList([LTXVideoCausalConv3d(in_channels, in_channels, 3, stride=2,
                                                                  is_causal=is_causal)])
        self.has_conv_out = in_channels != out_channels
        if self.has_conv_out:
            self.conv_out = LTXVideoResnetBlock3d(in_channels, out_channels, eps, is_causal)

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.has_down:
            x = self.downsamplers[0](x)
        if self.has_conv_out:
            x = self.conv_out(x)
        return x


class LTXVideo095DownBlock3D(ResnetStack):
    """0.9.5 down block: resnets, then a conv or space-to-depth downsampler that also changes channels."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, eps: float, spatio_temporal_scale: bool,
                 is_causal: bool, downsample_type: str):
        resnets = [LTXVideoResnetBlock3d(in_channels, in_channels, eps, is_causal) for _ in range(num_layers)]
        down = None
        if spatio_temporal_scale:
            if downsample_type == "conv":
                down = LTXVideoCausalConv3d(in_channels, in_channels, 3, stride=2, is_causal=is_causal)
            else:
                down = LTXVideoDownsampler3d(in_channels, out_channels, _DOWNSAMPLE_STRIDES[downsample_type],
                                             is_causal)
        super().__init__(resnets, downsampler=down)


class LTXVideoMidBlock3d(nn.Cell):
    def __init__(self, in_channels: int, num_layers: int, eps: float, is_causal: bool, inject_noise: bool = False,
                 timestep_conditioning: bool = False):
        super().__init__()
        self.timestep_conditioning = timestep_conditioning
        if timestep_conditioning:
            self.time_embedder = PixArtAlphaCombinedTimestepSizeEmbeddings(in_channels * 4)
        self.resnets = nn.CellList([
            LTXVideoResnetBlock3d(in_channels, in_channels, eps, is_causal, inject_noise, timestep_conditioning)
            for _ in range(num_layers)
        ])

    def construct(self, x, temb=None, noise=None):
        # temb: [B] (the scaled timestep) -> [B, 4C, 1, 1, 1]
        if self.timestep_conditioning:
            temb = self.time_embedder(temb.reshape(-1), x.dtype).reshape(x.shape[0], -1, 1, 1, 1)
        for resnet in self.resnets:
            x = resnet(x, temb, noise)
        return x


class LTXVideoUpBlock3d(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, eps: float, spatio_temporal_scale: bool,
                 is_causal: bool, inject_noise: bool, timestep_conditioning: bool, upsample_residual: bool,
                 upscale_factor: int):
        super().__init__()
        self.timestep_conditioning = timestep_conditioning
        if timestep_conditioning:
            self.time_embedder = PixArtAlphaCombinedTimestepSizeEmbeddings(in_channels * 4)
        self.has_conv_in = in_channels != out_channels
        if self.has_conv_in:
            self.conv_in = LTXVideoResnetBlock3d(in_channels, out_channels, eps, is_causal, inject_noise,
                                                 timestep_conditioning)
        self.has_up = spatio_temporal_scale
        if spatio_temporal_scale:
            self.upsamplers = nn.CellList([LTXVideoUpsampler3d(out_channels * upscale_factor, 2, is_causal,
                                                               upsample_residual, upscale_factor)])
        self.resnets = nn.CellList([
            LTXVideoResnetBlock3d(out_channels, out_channels, eps, is_causal, inject_noise, timestep_conditioning)
            for _ in range(num_layers)
        ])

    def construct(self, x, temb=None, noise=None):
        if self.has_conv_in:
            # diffusers gives conv_in the un-embedded temb (the config check rules out conditioned conv_in)
            x = self.conv_in(x, temb, noise)
        if self.timestep_conditioning:
            temb = self.time_embedder(temb.reshape(-1), x.dtype).reshape(x.shape[0], -1, 1, 1, 1)
        if self.has_up:
            x = self.upsamplers[0](x)
        for resnet in self.resnets:
            x = resnet(x, temb, noise)
        return x


class LTXVideoEncoder3d(nn.Cell):
    """video [B, in_channels, F, H, W] -> moments [B, 2 * latent_channels, F', H', W'] (diffusers'
    ``latent_dist.parameters``: the mean, then the one log-variance channel repeated)."""

    def __init__(self, config: AutoencoderKLLTXVideoConfig):
        super().__init__()
        c = config
        self.patch_size = c.patch_size
        self.patch_size_t = c.patch_size_t
        self.latent_channels = c.latent_channels
        boc = c.block_out_channels
        causal = c.encoder_causal
        out = boc[0]
        self.conv_in = LTXVideoCausalConv3d(c.in_channels * c.patch_size ** 2, out, 3, is_causal=causal)
        n = len(boc) - (1 if c.is_095_encoder else 0)
        blocks = []
        for i in range(n):
            cin = out
            if c.is_095_encoder:
                out = boc[i + 1]
            else:
                out = boc[i + 1] if i + 1 < n else boc[i]
            if c.down_block_types[i] == "LTXVideoDownBlock3D":
                blocks.append(LTXVideoDownBlock3D(cin, out, c.layers_per_block[i], c.resnet_norm_eps,
                                                  bool(c.spatio_temporal_scaling[i]), causal))
            else:
                blocks.append(LTXVideo095DownBlock3D(cin, out, c.layers_per_block[i], c.resnet_norm_eps,
                                                     bool(c.spatio_temporal_scaling[i]), causal, c.downsample_type[i]))
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = LTXVideoMidBlock3d(out, c.layers_per_block[-1], c.resnet_norm_eps, causal)
        self.conv_out = LTXVideoCausalConv3d(out, c.latent_channels + 1, 3, is_causal=causal)

    def construct(self, x):
        # x: [B, C, F, H, W] -> patches [B, C * pt * p * p, F/pt, H/p, W/p], channel order (c, t, p_w, p_h)
        dtype = self.conv_in.conv.weight.dtype
        p, pt = self.patch_size, self.patch_size_t
        b, c, f, h, w = x.shape
        x = x.astype(dtype).reshape(b, c, f // pt, pt, h // p, p, w // p, p).transpose(0, 1, 3, 7, 5, 2, 4, 6)
        x = self.conv_in(x.reshape(b, c * pt * p * p, f // pt, h // p, w // p))
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        x = self.conv_out(silu(channel_rms_norm(x, 1e-8)))  # [B, C + 1, F', H', W']
        b, _, f, h, w = x.shape
        logvar = ops.broadcast_to(x[:, self.latent_channels:], (b, self.latent_channels - 1, f, h, w))
        return ops.cat((x, logvar), 1).astype(FP32)


class LTXVideoDecoder3d(nn.Cell):
    """latents [B, latent_channels, F, h, w], temb [B] (timestep-conditioned decoders), noise (tuple of
    the injected [H, W] maps, :func:`decoder_noise_specs`) -> video [B, out_channels, F', H, W] float32."""

    def __init__(self, config: AutoencoderKLLTXVideoConfig):
        super().__init__()
        c = config
        self.config = c
        self.patch_size = c.patch_size
        self.patch_size_t = c.patch_size_t
        boc = tuple(reversed(c.decoder_block_out_channels))
        # diffusers reverses each whole tuple: the mid block takes the last entry, up block i entry -(i + 2)
        scaling = tuple(reversed(c.decoder_spatio_temporal_scaling))
        layers = tuple(reversed(c.decoder_layers_per_block))
        inject = tuple(reversed(c.decoder_inject_noise))
        residual = tuple(reversed(c.upsample_residual))
        factors = tuple(reversed(c.upsample_factor))
        causal = c.decoder_causal
        tc = c.timestep_conditioning
        self.timestep_conditioning = tc
        out = boc[0]
        self.conv_in = LTXVideoCausalConv3d(c.latent_channels, out, 3, is_causal=causal)
        self.mid_block = LTXVideoMidBlock3d(out, layers[0], c.resnet_norm_eps, causal, bool(inject[0]), tc)
        blocks = []
        for i, (cin, out) in enumerate(_decoder_block_channels(c)):
            blocks.append(LTXVideoUpBlock3d(cin, out, layers[i + 1], c.resnet_norm_eps, bool(scaling[i]), causal,
                                            bool(inject[i + 1]), tc, bool(residual[i]), factors[i]))
        self.up_blocks = nn.CellList(blocks)
        self.conv_out = LTXVideoCausalConv3d(out, c.out_channels * c.patch_size ** 2, 3, is_causal=causal)
        if tc:
            self.timestep_scale_multiplier = Parameter(Tensor(np.array(1000.0, np.float32)),
                                                       name="timestep_scale_multiplier")
            self.time_embedder = PixArtAlphaCombinedTimestepSizeEmbeddings(out * 2)
            self.scale_shift_table = Parameter(Tensor(np.random.randn(2, out).astype(np.float32) / out ** 0.5),
                                               name="scale_shift_table")
        self.out_channels_last = out
        # number the noise-injecting resnets in diffusers' draw order
        resnets = list(self.mid_block.resnets)
        for block in blocks:
            resnets += ([block.conv_in] if block.has_conv_in else []) + list(block.resnets)
        self.num_noise = 0
        for resnet in resnets:
            if resnet.inject_noise:
                resnet.noise_index = self.num_noise
                self.num_noise += 2

    def noise_specs(self, latent_height: int, latent_width: int) -> list:
        return decoder_noise_specs(self.config, latent_height, latent_width)

    def construct(self, z, temb=None, noise=None):
        dtype = self.conv_in.conv.weight.dtype
        if self.num_noise and (noise is None or len(noise) != self.num_noise):
            raise ValueError("LTXVideoDecoder3d: this decoder injects noise; pass the tuple of noise maps "
                             "listed by decoder_noise_specs")
        x = self.conv_in(z.astype(dtype))
        if self.timestep_conditioning:
            temb = temb.astype(FP32) * self.timestep_scale_multiplier.astype(FP32)
        x = self.mid_block(x, temb, noise)
        for block in self.up_blocks:
            x = block(x, temb, noise)
        x = channel_rms_norm(x, 1e-8)
        if self.timestep_conditioning:
            b = x.shape[0]
            c = self.out_channels_last
            emb = self.time_embedder(temb.reshape(-1), x.dtype).reshape(b, 2, c, 1, 1, 1)
            mod = emb + self.scale_shift_table.reshape(1, 2, c, 1, 1, 1)
            x = x * (1 + mod[:, 1]) + mod[:, 0]
        x = self.conv_out(silu(x))
        # unpatchify: [B, C * pt * p * p, F, H, W] with channel order (c, t, p_w, p_h) -> [B, C, F*pt, H*p, W*p]
        p, pt = self.patch_size, self.patch_size_t
        b, ch, f, h, w = x.shape
        x = x.reshape(b, ch // (pt * p * p), pt, p, p, f, h, w).transpose(0, 1, 5, 2, 6, 4, 7, 3)
        return x.reshape(b, ch // (pt * p * p), f * pt, h * p, w * p).astype(FP32)


# ============================================================================= network
class AutoencoderKLLTXVideo(nn.Cell):
    """encoder / decoder cells plus the checkpoint's ``latents_mean`` / ``latents_std`` buffers.
    ``construct`` is :meth:`decode`."""

    def __init__(self, config: AutoencoderKLLTXVideoConfig):
        super().__init__()
        self.config = config
        self.encoder = LTXVideoEncoder3d(config)
        self.decoder = LTXVideoDecoder3d(config)
        c = config.latent_channels
        self.latents_mean = Parameter(Tensor(np.zeros(c, np.float32)), name="latents_mean", requires_grad=False)
        self.latents_std = Parameter(Tensor(np.ones(c, np.float32)), name="latents_std", requires_grad=False)

    def encode(self, x):
        # x: [B, 3, F, H, W] in [-1, 1] -> moments [B, 2C, F', H', W']
        return self.encoder(x)

    def decode(self, z, timestep=None, decode_noise_scale=None, decode_noise=None, noise=None):
        """z: denormalized latents [B, C, F, h, w]. Timestep-conditioned decoders: timestep [B],
        decode_noise_scale [B] and decode_noise (z-shaped) give the pipelines' mixing
        ``(1 - s) * z + s * decode_noise`` first (skipped when decode_noise is None); noise: the injected
        maps (:func:`decoder_noise_specs`)."""
        if decode_noise is not None:
            s = decode_noise_scale.astype(FP32).reshape(-1, 1, 1, 1, 1)
            z = (1 - s) * z.astype(FP32) + s * decode_noise.astype(FP32)
        return self.decoder(z, timestep, noise)

    def construct(self, z, timestep=None, decode_noise_scale=None, decode_noise=None, noise=None):
        return self.decode(z, timestep, decode_noise_scale, decode_noise, noise)


def build_vae(config: AutoencoderKLLTXVideoConfig):
    return AutoencoderKLLTXVideo(config)


register("AutoencoderKLLTXVideo", AutoencoderKLLTXVideoConfig, build_vae)
