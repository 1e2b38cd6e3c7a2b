"""2-D VAE pieces shared by the families whose autoencoders use diffusers' ``Encoder`` and
``Decoder`` (``autoencoders/vae.py``): SVD's AutoencoderKLTemporalDecoder (encoder only) and
AutoencoderKL (models/autoencoder_kl.py: ModelScope, zeroscope, later AnimateDiff, I2VGen-XL)."""
from __future__ import annotations

import re

from mindspore import nn

from .layers import (
    Attention, Conv2d, Downsample2D, GroupNorm, ResnetAttentionStack, ResnetBlock2D, ResnetStack, Upsample2D, silu,
)


# older checkpoints (AttentionBlock, before diffusers moved the VAE mid-block to Attention) name these weights so;
# diffusers renames them on load (ModelMixin._fix_state_dict_keys_on_load), so the same files load here
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_DEPRECATED_ATTENTION_KEY = re.compile(
    r"^((?:encoder|decoder)\.mid_block\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


def map_vae_weights(key: str, value) -> list:
    """``encoder/decoder.mid_block.attentions.N.{query,key,value,proj_attn}.*`` -> ``to_q``, ``to_k``,
    ``to_v``, ``to_out.0`` (the same [C, C] linear weights); every other key unchanged."""
    match = _DEPRECATED_ATTENTION_KEY.match(key)
    if match is None:
        return [(key, value)]
    path, old, param = match.groups()
    return [(f"{path}.{_DEPRECATED_ATTENTION[old]}.{param}", value)]


class DownEncoderBlock2D(ResnetStack):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_downsample: bool,
                 eps: float = 1e-6, downsample_padding: int = 0):
        resnets = [
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None,
                          groups=groups, eps=eps)
            for i in range(num_layers)
        ]
        super().__init__(resnets, downsampler=Downsample2D(out_channels, out_channels=out_channels,
                                                           padding=downsample_padding) if add_downsample else None)


class UNetMidBlock2D(ResnetAttentionStack):
    """resnet -> (self-attention with group norm and residual -> resnet) x num_layers, no temb."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-6, add_attention: bool = True,
                 attention_head_dim: int | None = None, num_layers: int = 1):
        head_dim = attention_head_dim or channels
        resnets = [ResnetBlock2D(channels, channels, temb_channels=None, groups=groups, eps=eps)
                   for _ in range(num_layers + 1)]
        attentions = [
            Attention(channels, heads=channels // head_dim, dim_head=head_dim, bias=True, norm_num_groups=groups,
                      eps=eps, residual_connection=True)
            for _ in range(num_layers)
        ] if add_attention else None
        super().__init__(resnets, attentions)


class Encoder(nn.Cell):
    """diffusers ``Encoder``: [N, 3, H, W] -> [N, 2*latent (double_z) or latent, H/f, W/f]."""

    def __init__(self, in_channels: int, out_channels: int, down_block_types, block_out_channels,
                 layers_per_block: int, norm_num_groups: int = 32, act_fn: str = "silu", double_z: bool = True,
                 mid_block_add_attention: bool = True):
        super().__init__()
        if act_fn not in ("silu", "swish"):
            raise ValueError(f"VAE encoder act_fn {act_fn!r} is not supported (only 'silu', 'swish')")
        for kind in down_block_types:
            if kind != "DownEncoderBlock2D":
                raise ValueError(f"VAE down block {kind!r} is not supported (only 'DownEncoderBlock2D')")
        self.conv_in = Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        blocks = []
        out_ch = block_out_channels[0]
        for i in range(len(down_block_types)):
            in_ch, out_ch = out_ch, block_out_channels[i]
            blocks.append(DownEncoderBlock2D(in_ch, out_ch, layers_per_block, norm_num_groups,
                                             add_downsample=i != len(block_out_channels) - 1))
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], norm_num_groups, add_attention=mid_block_add_attention)
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6)
        self.conv_out = Conv2d(block_out_channels[-1], 2 * out_channels if double_z else out_channels, 3, padding=1)

    def construct(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(silu(self.conv_norm_out(x)))


class UpDecoderBlock2D(ResnetStack):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_upsample: bool,
                 eps: float = 1e-6):
        resnets = [
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None,
                          groups=groups, eps=eps)
            for i in range(num_layers)
        ]
        super().__init__(resnets, upsampler=Upsample2D(out_channels, out_channels=out_channels) if add_upsample
                         else None)


class Decoder(nn.Cell):
    """diffusers ``Decoder`` (norm_type="group"): [N, latent, h, w] -> [N, out, h*f, w*f]."""

    def __init__(self, in_channels: int, out_channels: int, up_block_types, block_out_channels,
                 layers_per_block: int, norm_num_groups: int = 32, act_fn: str = "silu",
                 mid_block_add_attention: bool = True):
        super().__init__()
        if act_fn not in ("silu", "swish"):
            raise ValueError(f"VAE decoder act_fn {act_fn!r} is not supported (only 'silu')")
        for kind in up_block_types:
            if kind != "UpDecoderBlock2D":
                raise ValueError(f"VAE up block {kind!r} is not supported (only 'UpDecoderBlock2D')")
        if len(up_block_types) != len(block_out_channels):
            raise ValueError(f"up_block_types {tuple(up_block_types)} and block_out_channels "
                             f"{tuple(block_out_channels)} must have the same length")
        self.conv_in = Conv2d(in_channels, block_out_channels[-1], 3, padding=1)
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], norm_num_groups, add_attention=mid_block_add_attention)
        reversed_channels = list(reversed(block_out_channels))
        blocks = []
        out_ch = reversed_channels[0]
        for i in range(len(up_block_types)):
            prev, out_ch = out_ch, reversed_channels[i]
            blocks.append(UpDecoderBlock2D(prev, out_ch, layers_per_block + 1, norm_num_groups,
                                           add_upsample=i != len(block_out_channels) - 1))
        self.up_blocks = nn.CellList(blocks)
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6)
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def construct(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(silu(self.conv_norm_out(x)))
