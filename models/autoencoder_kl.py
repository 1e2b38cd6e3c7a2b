"""AutoencoderKL, the 2-D image VAE of Stable Diffusion that ModelScope T2V and zeroscope use per
frame (and, later, AnimateDiff and I2VGen-XL). Encoder and Decoder live in models/vae.py.

The export wraps two functions: ``encode_moments`` (the DiagonalGaussianDistribution's mean and
std, so the runtime draws ``latent_dist.sample()`` with its own numpy generator) and ``decode``.
Frames are independent images, so a decode of B*F frames may run in slices of K frames (diffusers'
``enable_slicing`` decodes one at a time) with identical results.
"""
from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
from mindspore import nn, ops

from .layers import Conv2d
from .loading import register
from .vae import Decoder, Encoder, map_vae_weights


@dataclass(frozen=True)
class AutoencoderKLConfig:
    """diffusers ``AutoencoderKL.__init__`` (same names and defaults)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",)
    up_block_types: tuple = ("UpDecoderBlock2D",)
    block_out_channels: tuple = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple = 32  # only used by diffusers' tiled encode/decode, which is not exported
    scaling_factor: float = 0.18215
    shift_factor: float | None = None  # read by SD3/Flux pipelines; the video pipelines ignore it, as diffusers
    latents_mean: tuple | None = None  # likewise pipeline-level metadata
    latents_std: tuple | None = None
    force_upcast: bool = True  # diffusers' fp16 hint; our graphs choose their dtype at export
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"down_block_types {self.down_block_types}, up_block_types {self.up_block_types} and "
                             f"block_out_channels {self.block_out_channels} must have the same length")
        for kind in self.down_block_types:
            if kind != "DownEncoderBlock2D":
                raise ValueError(f"VAE down block {kind!r} is not supported (only 'DownEncoderBlock2D')")
        for kind in self.up_block_types:
            if kind != "UpDecoderBlock2D":
                raise ValueError(f"VAE up block {kind!r} is not supported (only 'UpDecoderBlock2D')")
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"act_fn {self.act_fn!r} is not supported (only 'silu')")
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups:
                raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of "
                                 f"norm_num_groups {self.norm_num_groups}")

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class AutoencoderKL(nn.Cell):
    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        self.config = config
        self.latent_channels = config.latent_channels
        self.encoder = Encoder(config.in_channels, config.latent_channels, config.down_block_types,
                               config.block_out_channels, config.layers_per_block, config.norm_num_groups,
                               config.act_fn, double_z=True, mid_block_add_attention=config.mid_block_add_attention)
        self.decoder = Decoder(config.latent_channels, config.out_channels, config.up_block_types,
                               config.block_out_channels, config.layers_per_block, config.norm_num_groups,
                               config.act_fn, mid_block_add_attention=config.mid_block_add_attention)
        c = config.latent_channels
        self.quant_conv = Conv2d(2 * c, 2 * c, 1) if config.use_quant_conv else None
        self.post_quant_conv = Conv2d(c, c, 1) if config.use_post_quant_conv else None

    def encode_moments(self, x):
        # x: [N, 3, H, W] in [-1, 1] -> latent_dist (mean, std): 2 x [N, latent, H/f, W/f] float32
        dtype = self.encoder.conv_in.weight.dtype
        h = self.encoder(x.astype(dtype))
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        h = h.astype(ms.float32)
        mean = h[:, :self.latent_channels]
        logvar = ops.clamp(h[:, self.latent_channels:], -30.0, 20.0)
        return mean, ops.exp(0.5 * logvar)

    def decode(self, z):
        # z: [N, latent, h, w] (already divided by scaling_factor) -> [N, 3, H, W] float32
        z = z.astype(self.decoder.conv_in.weight.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(ms.float32)

    def construct(self, z):
        return self.decode(z)


register("AutoencoderKL", AutoencoderKLConfig, AutoencoderKL, map_weights=map_vae_weights)
