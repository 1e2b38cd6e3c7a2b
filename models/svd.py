"""Stable Video Diffusion (SVD, SVD-XT): UNetSpatioTemporalConditionModel and
AutoencoderKLTemporalDecoder, ported from diffusers with the checkpoint's own submodule names.

SVD's networks always run with ``image_only_indicator`` all zeros (diffusers creates it with
``torch.zeros`` in both forwards), so every AlphaBlender reduces to a learned constant mix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .layers import (
    Attention, BasicTransformerBlock, Conv2d, Conv3d, Downsample2D, FeedForward, GroupNorm, LayerNorm, Linear,
    ResnetBlock2D, ResnetStack, TimestepEmbedding, Timesteps, Upsample2D, silu,
)
from .loading import register
from .unet2d import (
    DownBlock2D, UNet2DBody, UNetMidBlock2DCrossAttn, UpBlock2D, _per_block, check_block_types, check_frame_count,
    repeat_per_frame, up_resnet_in_channels,
)
from .vae import Encoder


# ============================================================================= configs
@dataclass(frozen=True)
class UNetSpatioTemporalConfig:
    sample_size: int | None = None
    in_channels: int = 8
    out_channels: int = 4
    down_block_types: tuple = (
        "CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal",
    )
    up_block_types: tuple = (
        "UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
    )
    block_out_channels: tuple = (320, 640, 1280, 1280)
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int = 768
    layers_per_block: int | tuple = 2
    cross_attention_dim: int | tuple = 1024
    transformer_layers_per_block: int | tuple = 1
    num_attention_heads: int | tuple = (5, 10, 20, 20)
    num_frames: int = 25  # the training frame count; the exported frame count is set at export

    DOWN = ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal")
    UP = ("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal")

    def __post_init__(self):
        n = len(self.down_block_types)
        check_block_types(self)
        for name in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block", "num_attention_heads"):
            _per_block(getattr(self, name), n, name)
        if self.projection_class_embeddings_input_dim != 3 * self.addition_time_embed_dim:
            raise ValueError(
                "projection_class_embeddings_input_dim must be 3 * addition_time_embed_dim "
                "(fps, motion_bucket_id and noise_aug_strength are each embedded with addition_time_embed_dim)"
            )

    def per_block(self, name):
        return _per_block(getattr(self, name), len(self.down_block_types), name)


@dataclass(frozen=True)
class AutoencoderKLTemporalDecoderConfig:
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",)
    block_out_channels: tuple = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    sample_size: int = 32
    scaling_factor: float = 0.18215
    force_upcast: bool = True

    def __post_init__(self):
        if len(self.down_block_types) != len(self.block_out_channels):
            raise ValueError("down_block_types and block_out_channels must have the same length")
        for ch in self.block_out_channels:
            if ch % 32:
                raise ValueError(f"block_out_channels {self.block_out_channels}: the temporal decoder's GroupNorms "
                                 "use 32 groups, so every width must be a multiple of 32")

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


# ============================================================================= shared SVD blocks
class AlphaBlender(nn.Cell):
    """Learned mix of spatial and temporal paths (image_only_indicator == 0 everywhere)."""

    def __init__(self, alpha: float, switch_spatial_to_temporal_mix: bool = False):
        super().__init__()
        self.mix_factor = Parameter(Tensor(np.array([alpha], np.float32)), name="mix_factor")
        self.switch = switch_spatial_to_temporal_mix

    def construct(self, x_spatial, x_temporal):
        alpha = ops.sigmoid(self.mix_factor.astype(ms.float32)).astype(x_spatial.dtype)
        if self.switch:
            alpha = 1.0 - alpha
        return alpha * x_spatial + (1.0 - alpha) * x_temporal


class TemporalResnetBlock(nn.Cell):
    """Resnet over time: Conv3d with kernel (3, 1, 1). x: [B, C, F, H*W] (or [B, C, F, H, W])."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, eps: float):
        super().__init__()
        self.norm1 = GroupNorm(32, in_channels, eps)
        self.conv1 = Conv3d(in_channels, out_channels, (3, 1, 1), padding=(1, 0, 0))
        self.time_emb_proj = Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = GroupNorm(32, out_channels, eps)
        self.conv2 = Conv3d(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0))
        self.conv_shortcut = Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def construct(self, x, temb=None):
        # x: [B, C, F, S]; temb: [B, F, T]
        h = self.conv1(silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            t = self.time_emb_proj(silu(temb)).transpose(0, 2, 1)  # [B, C, F]
            h = h + t.reshape(t.shape + (1,) * (len(h.shape) - 3))
        h = self.conv2(silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class SpatioTemporalResBlock(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, num_frames: int,
                 eps: float = 1e-6, temporal_eps: float | None = None, merge_factor: float = 0.5,
                 switch_spatial_to_temporal_mix: bool = False):
        super().__init__()
        self.num_frames = num_frames
        self.spatial_res_block = ResnetBlock2D(in_channels, out_channels, temb_channels=temb_channels, eps=eps)
        self.temporal_res_block = TemporalResnetBlock(
            out_channels, out_channels, temb_channels, temporal_eps if temporal_eps is not None else eps
        )
        self.time_mixer = AlphaBlender(merge_factor, switch_spatial_to_temporal_mix)

    def construct(self, x, temb=None):
        # x: [B*F, C, H, W]; temb: [B*F, T]
        h = self.spatial_res_block(x, temb)
        bf, c, hgt, wid = h.shape
        b = bf // self.num_frames
        # [B, C, F, H*W]: 4-D, so that the temporal convs need no copy to flatten H and W
        h = h.reshape(b, self.num_frames, c, hgt * wid).transpose(0, 2, 1, 3)
        t = None if temb is None else temb.reshape(b, self.num_frames, -1)
        mixed = self.time_mixer(h, self.temporal_res_block(h, t))
        return mixed.transpose(0, 2, 1, 3).reshape(bf, c, hgt, wid)


# ============================================================================= UNet
class TemporalBasicTransformerBlock(nn.Cell):
    def __init__(self, dim: int, time_mix_inner_dim: int, num_attention_heads: int, attention_head_dim: int,
                 cross_attention_dim: int | None, num_frames: int):
        super().__init__()
        self.num_frames = num_frames
        self.is_res = dim == time_mix_inner_dim
        self.norm_in = LayerNorm(dim)
        self.ff_in = FeedForward(dim, dim_out=time_mix_inner_dim, activation_fn="geglu")
        self.norm1 = LayerNorm(time_mix_inner_dim)
        self.attn1 = Attention(time_mix_inner_dim, heads=num_attention_heads, dim_head=attention_head_dim)
        self.has_cross = cross_attention_dim is not None
        if self.has_cross:
            self.norm2 = LayerNorm(time_mix_inner_dim)
            self.attn2 = Attention(time_mix_inner_dim, cross_attention_dim=cross_attention_dim,
                                   heads=num_attention_heads, dim_head=attention_head_dim)
        self.norm3 = LayerNorm(time_mix_inner_dim)
        self.ff = FeedForward(time_mix_inner_dim, activation_fn="geglu")

    def construct(self, x, context):
        # x: [B*F, S, C] -> attention over frames: [B*S, F, C]; context: [B*S, M, D]
        bf, s, c = x.shape
        f = self.num_frames
        b = bf // f
        x = x.reshape(b, f, s, c).transpose(0, 2, 1, 3).reshape(b * s, f, c)
        h = self.ff_in(self.norm_in(x))
        if self.is_res:
            h = h + x
        h = self.attn1(self.norm1(h)) + h
        if self.has_cross:
            h = self.attn2(self.norm2(h), context) + h
        ff = self.ff(self.norm3(h))
        h = ff + h if self.is_res else ff
        cout = h.shape[-1]
        return h.reshape(b, s, f, cout).transpose(0, 2, 1, 3).reshape(bf, s, cout)


class TransformerSpatioTemporalModel(nn.Cell):
    def __init__(self, num_attention_heads: int, attention_head_dim: int, in_channels: int, num_layers: int,
                 cross_attention_dim: int, num_frames: int):
        super().__init__()
        inner = num_attention_heads * attention_head_dim
        self.num_frames = num_frames
        self.norm = GroupNorm(32, in_channels, eps=1e-6)
        self.proj_in = Linear(in_channels, inner)
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(inner, num_attention_heads, attention_head_dim, cross_attention_dim=cross_attention_dim)
            for _ in range(num_layers)
        ])
        self.temporal_transformer_blocks = nn.CellList([
            TemporalBasicTransformerBlock(inner, inner, num_attention_heads, attention_head_dim, cross_attention_dim,
                                          num_frames)
            for _ in range(num_layers)
        ])
        self.time_pos_embed = TimestepEmbedding(in_channels, in_channels * 4, out_dim=in_channels)
        self.time_proj = Timesteps(in_channels, True, 0)
        self.time_mixer = AlphaBlender(0.5)
        self.proj_out = Linear(inner, in_channels)
        self.frame_index = Tensor(np.arange(num_frames, dtype=np.float32))

    def construct(self, x, encoder_hidden_states):
        # x: [B*F, C, H, W]; encoder_hidden_states: [B*F, M, D]
        bf, c, hgt, wid = x.shape
        f = self.num_frames
        b = bf // f
        m, d = encoder_hidden_states.shape[1], encoder_hidden_states.shape[2]
        # the temporal blocks attend to the first frame's context, once per pixel: [B*H*W, M, D]
        first = encoder_hidden_states.reshape(b, f, m, d)[:, 0]
        time_context = ops.broadcast_to(first[:, None], (b, hgt * wid, m, d)).reshape(b * hgt * wid, m, d)
        residual = x
        h = self.norm(x).transpose(0, 2, 3, 1).reshape(bf, hgt * wid, c)
        h = self.proj_in(h)
        # frame-position embedding, identical for every video in the batch: [F, 1, C] -> [B*F, 1, C]
        emb = self.time_pos_embed(self.time_proj(self.frame_index).astype(h.dtype))
        emb = ops.tile(emb[None], (b, 1, 1)).reshape(bf, 1, -1)
        for block, temporal in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            h = block(h, encoder_hidden_states)
            h = self.time_mixer(h, temporal(h + emb, time_context))
        h = self.proj_out(h)
        return h.reshape(bf, hgt, wid, c).transpose(0, 3, 1, 2) + residual


class DownBlockSpatioTemporal(DownBlock2D):
    """The SD UNet's down block (models/unet2d.py) with SVD's cells: SpatioTemporalResBlocks and
    TransformerSpatioTemporalModels."""

    def __init__(self, in_channels, out_channels, temb_channels, num_layers, add_downsample, num_frames,
                 cross_attention=False, transformer_layers=1, num_attention_heads=1, cross_attention_dim=1280):
        eps = 1e-6 if cross_attention else 1e-5
        resnets = [
            SpatioTemporalResBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels, num_frames, eps)
            for i in range(num_layers)
        ]
        attentions = [
            TransformerSpatioTemporalModel(num_attention_heads, out_channels // num_attention_heads, out_channels,
                                           transformer_layers, cross_attention_dim, num_frames)
            for _ in range(num_layers)
        ] if cross_attention else None
        downsampler = Downsample2D(out_channels, out_channels=out_channels, padding=1) if add_downsample else None
        super().__init__(resnets, attentions, downsampler)


class UpBlockSpatioTemporal(UpBlock2D):
    """The SD UNet's up block (models/unet2d.py) with SVD's cells."""

    def __init__(self, in_channels, prev_output_channel, out_channels, temb_channels, num_layers, add_upsample,
                 num_frames, cross_attention=False, transformer_layers=1, num_attention_heads=1,
                 cross_attention_dim=1280):
        resnets = [SpatioTemporalResBlock(res_in, out_channels, temb_channels, num_frames, 1e-6)
                   for res_in in up_resnet_in_channels(in_channels, prev_output_channel, out_channels, num_layers)]
        attentions = [
            TransformerSpatioTemporalModel(num_attention_heads, out_channels // num_attention_heads, out_channels,
                                           transformer_layers, cross_attention_dim, num_frames)
            for _ in range(num_layers)
        ] if cross_attention else None
        upsampler = Upsample2D(out_channels, out_channels=out_channels) if add_upsample else None
        super().__init__(resnets, attentions, upsampler)


class UNetMidBlockSpatioTemporal(UNetMidBlock2DCrossAttn):
    """The SD UNet's mid block (resnet, attention, resnet) with SVD's cells."""

    def __init__(self, channels, temb_channels, transformer_layers, num_attention_heads, cross_attention_dim,
                 num_frames):
        resnets = [SpatioTemporalResBlock(channels, channels, temb_channels, num_frames, 1e-5) for _ in range(2)]
        attentions = [TransformerSpatioTemporalModel(num_attention_heads, channels // num_attention_heads, channels,
                                                     transformer_layers, cross_attention_dim, num_frames)]
        super().__init__(resnets, attentions)


class UNetSpatioTemporalConditionModel(UNet2DBody):
    """One UNet call. The frame count is a construction-time constant (static graphs). The levels
    are the SD UNet's (models/unet2d.py UNet2DBody) with SVD's blocks."""

    def __init__(self, config: UNetSpatioTemporalConfig, num_frames: int | None = None):
        super().__init__()
        self.config = config
        f = num_frames or config.num_frames
        self.num_frames = f
        ch = config.block_out_channels
        n = len(ch)
        heads = config.per_block("num_attention_heads")
        cross = config.per_block("cross_attention_dim")
        layers = config.per_block("layers_per_block")
        tlayers = config.per_block("transformer_layers_per_block")
        temb = ch[0] * 4
        self.center_input_sample = False
        self.conv_in = Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.transformer_in = None
        self.time_proj = Timesteps(ch[0], True, 0)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.time_embed_act = None
        self.add_time_proj = Timesteps(config.addition_time_embed_dim, True, 0)
        self.add_embedding = TimestepEmbedding(config.projection_class_embeddings_input_dim, temb)

        def down(i, in_ch, out_ch, add_downsample):
            return DownBlockSpatioTemporal(
                in_ch, out_ch, temb, layers[i], add_downsample, f,
                cross_attention=config.down_block_types[i].startswith("CrossAttn"), transformer_layers=tlayers[i],
                num_attention_heads=heads[i], cross_attention_dim=cross[i])

        def mid(channels):
            return UNetMidBlockSpatioTemporal(channels, temb, tlayers[-1], heads[-1], cross[-1], f)

        def up(i, in_ch, prev, out_ch, add_upsample):
            r = n - 1 - i
            return UpBlockSpatioTemporal(
                in_ch, prev, out_ch, temb, layers[r] + 1, add_upsample, f,
                cross_attention=config.up_block_types[i].startswith("CrossAttn"), transformer_layers=tlayers[r],
                num_attention_heads=heads[r], cross_attention_dim=cross[r])

        self._add_levels(ch, down, mid, up)
        self.conv_norm_out = GroupNorm(32, ch[0], eps=1e-5)
        self.conv_out = Conv2d(ch[0], config.out_channels, 3, padding=1)
        self.act = silu

    def construct(self, sample, timestep, encoder_hidden_states, added_time_ids):
        # sample: [B, F, C_in, h, w]; timestep: [B] or [1]; encoder_hidden_states: [B, M, D];
        # added_time_ids: [B, 3]  ->  [B, F, C_out, h, w]
        b, f, cin, hgt, wid = sample.shape
        check_frame_count(f, self.num_frames)
        dtype = self.conv_in.weight.dtype
        emb = self._time_embedding(timestep, b)
        time_embeds = self.add_time_proj(added_time_ids.reshape(-1)).reshape(b, -1).astype(dtype)
        # repeat_interleave over frames: [B, T] -> [B*F, T]; the context likewise -> [B*F, M, D]
        emb = repeat_per_frame(emb + self.add_embedding(time_embeds), f)
        ctx = repeat_per_frame(encoder_hidden_states.astype(dtype), f)
        h = self._levels(sample.astype(dtype).reshape(b * f, cin, hgt, wid), emb, ctx)
        return h.reshape((b, f) + h.shape[1:]).astype(ms.float32)


# ============================================================================= VAE
class MidBlockTemporalDecoder(nn.Cell):
    def __init__(self, channels: int, attention_head_dim: int, num_layers: int, num_frames: int):
        super().__init__()
        self.resnets = nn.CellList([
            SpatioTemporalResBlock(channels, channels, None, num_frames, eps=1e-6, temporal_eps=1e-5,
                                   merge_factor=0.0, switch_spatial_to_temporal_mix=True)
            for _ in range(num_layers)
        ])
        self.attentions = nn.CellList([
            Attention(channels, heads=channels // attention_head_dim, dim_head=attention_head_dim, bias=True,
                      norm_num_groups=32, eps=1e-6, residual_connection=True)
        ])
        self.num_layers = num_layers

    def construct(self, x):
        x = self.resnets[0](x)
        if self.num_layers > 1:  # diffusers zips resnets[1:] with its single attention
            x = self.resnets[1](self.attentions[0](x))
        return x


class UpBlockTemporalDecoder(ResnetStack):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_upsample: bool, num_frames: int):
        resnets = [
            SpatioTemporalResBlock(in_channels if i == 0 else out_channels, out_channels, None, num_frames,
                                   eps=1e-6, temporal_eps=1e-5, merge_factor=0.0,
                                   switch_spatial_to_temporal_mix=True)
            for i in range(num_layers)
        ]
        super().__init__(resnets, upsampler=Upsample2D(out_channels, out_channels=out_channels) if add_upsample
                         else None)


class TemporalDecoder(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, block_out_channels, layers_per_block: int,
                 num_frames: int):
        super().__init__()
        self.num_frames = num_frames
        ch = list(block_out_channels)
        self.conv_in = Conv2d(in_channels, ch[-1], 3, padding=1)
        self.mid_block = MidBlockTemporalDecoder(ch[-1], ch[-1], layers_per_block, num_frames)
        rch = list(reversed(ch))
        blocks = []
        out_ch = rch[0]
        for i in range(len(ch)):
            prev, out_ch = out_ch, rch[i]
            blocks.append(UpBlockTemporalDecoder(prev, out_ch, layers_per_block + 1, i != len(ch) - 1, num_frames))
        self.up_blocks = nn.CellList(blocks)
        self.conv_norm_out = GroupNorm(32, ch[0], eps=1e-6)
        self.conv_out = Conv2d(ch[0], out_channels, 3, padding=1)
        self.time_conv_out = Conv3d(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0))

    def construct(self, z):
        # z: [B*F, latent, h, w] -> [B*F, 3, H, W]; F is num_frames, as diffusers' decode(z, num_frames)
        if z.shape[0] % self.num_frames:
            raise ValueError(f"the decoder was built for chunks of num_frames={self.num_frames} frames; "
                             f"{z.shape[0]} latent frames are not whole chunks")
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        x = self.conv_out(silu(self.conv_norm_out(x)))
        bf, c, hgt, wid = x.shape
        f = self.num_frames
        x = x.reshape(bf // f, f, c, hgt, wid).transpose(0, 2, 1, 3, 4)
        x = self.time_conv_out(x)
        return x.transpose(0, 2, 1, 3, 4).reshape(bf, c, hgt, wid)


class AutoencoderKLTemporalDecoder(nn.Cell):
    """Holds encoder, temporal decoder and quant_conv; ``encode_mean`` and ``decode`` are the
    two functions the export layer wraps. ``num_frames`` is the decode chunk's frame count."""

    def __init__(self, config: AutoencoderKLTemporalDecoderConfig, num_frames: int = 1):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.in_channels, config.latent_channels, config.down_block_types,
                               config.block_out_channels, config.layers_per_block, double_z=True)
        self.decoder = TemporalDecoder(config.latent_channels, config.out_channels, config.block_out_channels,
                                       config.layers_per_block, num_frames)
        self.quant_conv = Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)

    def encode_mean(self, x):
        # x: [N, 3, H, W] in [-1, 1] -> latent_dist.mode(): [N, latent, H/f, W/f]
        dtype = self.quant_conv.weight.dtype
        moments = self.quant_conv(self.encoder(x.astype(dtype)))
        return moments[:, : self.config.latent_channels].astype(ms.float32)

    def decode(self, z):
        # z: [N, latent, h, w] (already divided by scaling_factor) -> [N, 3, H, W]
        dtype = self.quant_conv.weight.dtype
        return self.decoder(z.astype(dtype)).astype(ms.float32)

    def construct(self, z):
        return self.decode(z)


register("UNetSpatioTemporalConditionModel", UNetSpatioTemporalConfig, UNetSpatioTemporalConditionModel)
register("AutoencoderKLTemporalDecoder", AutoencoderKLTemporalDecoderConfig, AutoencoderKLTemporalDecoder)
