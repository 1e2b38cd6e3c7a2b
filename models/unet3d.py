"""UNet3DConditionModel (ModelScope text-to-video-ms-1.7b, zeroscope_v2_576w / XL), ported from
diffusers with the checkpoint's own submodule names.

Every level interleaves spatial layers (ResnetBlock2D, Transformer2DModel over each frame's pixels)
with temporal ones (TemporalConvLayer: Conv3d with kernel (3, 1, 1); TransformerTemporalModel:
self-attention over the frames of each pixel). Frames travel folded into the batch, [B*F, C, H, W],
as in diffusers; the frame count is a construction-time constant (static graphs).

Naming quirk kept from diffusers: the config's ``attention_head_dim`` is really the number of
heads per block (diffusers issue #2011). ModelScope's value 64 therefore gives 5/10/20 heads of
64 channels for the 320/640/1280 levels, and ``transformer_in`` has 8 heads of 64.
"""
from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
from mindspore import nn, ops

from .layers import (
    BasicTransformerBlock, Conv2d, Conv3d, Downsample2D, GroupNorm, Identity, Linear, ResnetBlock2D,
    TimestepEmbedding, Timesteps, Upsample2D, get_activation, silu,
)
from .loading import register


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
        n = len(self.down_block_types)
        if len(self.up_block_types) != n:
            raise ValueError(f"Must provide the same number of `down_block_types` as `up_block_types`: "
                             f"{self.down_block_types} vs {self.up_block_types}")
        if len(self.block_out_channels) != n:
            raise ValueError(f"Must provide the same number of `block_out_channels` as `down_block_types`: "
                             f"{self.block_out_channels} vs {self.down_block_types}")
        for kind in self.down_block_types:
            if kind not in self.DOWN:
                raise ValueError(f"down block {kind!r} is not supported; supported: {self.DOWN}")
        for kind in self.up_block_types:
            if kind not in self.UP:
                raise ValueError(f"up block {kind!r} is not supported; supported: {self.UP}")
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

    def per_block_heads(self) -> tuple:
        return (self.attention_head_dim,) * len(self.down_block_types)


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
    the [B, C, F, H, W] view). Blocks use double self-attention: attn2 attends the frames again."""

    def __init__(self, num_attention_heads: int, attention_head_dim: int, in_channels: int, num_layers: int = 1,
                 norm_num_groups: int = 32, cross_attention_dim: int | None = None, num_frames: int = 1):
        super().__init__()
        inner = num_attention_heads * attention_head_dim
        self.num_frames = num_frames
        self.norm = GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.proj_in = Linear(in_channels, inner)
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(inner, num_attention_heads, attention_head_dim,
                                  cross_attention_dim=cross_attention_dim, double_self_attention=True)
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


class Transformer2DModel(nn.Cell):
    """diffusers Transformer2DModel on continuous inputs with use_linear_projection=True (what the
    3-D blocks build): GroupNorm -> [N, H*W, C] -> proj_in -> blocks -> proj_out -> residual."""

    def __init__(self, num_attention_heads: int, attention_head_dim: int, in_channels: int, num_layers: int = 1,
                 norm_num_groups: int = 32, cross_attention_dim: int | None = None):
        super().__init__()
        inner = num_attention_heads * attention_head_dim
        self.norm = GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.proj_in = Linear(in_channels, inner)
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(inner, num_attention_heads, attention_head_dim,
                                  cross_attention_dim=cross_attention_dim)
            for _ in range(num_layers)
        ])
        self.proj_out = Linear(inner, in_channels)

    def construct(self, x, encoder_hidden_states):
        # x: [N, C, H, W]; encoder_hidden_states: [N, M, D]
        n, c, hgt, wid = x.shape
        residual = x
        h = self.norm(x).transpose(0, 2, 3, 1).reshape(n, hgt * wid, c)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, encoder_hidden_states)
        h = self.proj_out(h)
        return h.reshape(n, hgt, wid, -1).transpose(0, 3, 1, 2) + residual


# ============================================================================= blocks
def _resnet(in_ch, out_ch, temb, config, scale=1.0):
    return ResnetBlock2D(in_ch, out_ch, temb_channels=temb, groups=config.norm_num_groups, eps=config.norm_eps,
                         output_scale_factor=scale)


def _spatial(channels, heads, config):
    return Transformer2DModel(channels // heads, heads, channels, 1, config.norm_num_groups,
                              config.cross_attention_dim)


def _temporal(channels, heads, config, num_frames):
    return TransformerTemporalModel(channels // heads, heads, channels, 1, config.norm_num_groups,
                                    config.cross_attention_dim, num_frames)


class _Block3D(nn.Cell):
    """What the UNet3D down and up blocks share: per layer, resnet -> temporal conv [-> spatial
    attention -> temporal attention]."""

    def _add_layers(self, n, out_channels, config, heads, num_frames, cross_attention):
        self.temp_convs = nn.CellList([
            TemporalConvLayer(out_channels, out_channels, config.norm_num_groups, num_frames) for _ in range(n)
        ])
        self.attentions = nn.CellList([_spatial(out_channels, heads, config) for _ in range(n)]) \
            if cross_attention else None
        self.temp_attentions = nn.CellList([_temporal(out_channels, heads, config, num_frames) for _ in range(n)]) \
            if cross_attention else None

    def _layer(self, i, x, temb, encoder_hidden_states):
        x = self.temp_convs[i](self.resnets[i](x, temb))
        if self.attentions is not None:
            x = self.attentions[i](x, encoder_hidden_states)
            x = self.temp_attentions[i](x)
        return x


class DownBlock3D(_Block3D):
    """resnet -> temporal conv [-> spatial attention -> temporal attention] per layer, then a
    stride-2 conv. ``cross_attention`` selects CrossAttnDownBlock3D."""

    def __init__(self, in_channels, out_channels, temb_channels, config, heads, add_downsample, num_frames,
                 cross_attention):
        super().__init__()
        n = config.layers_per_block
        self.resnets = nn.CellList([
            _resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, config) for i in range(n)
        ])
        self._add_layers(n, out_channels, config, heads, num_frames, cross_attention)
        self.downsamplers = nn.CellList([
            Downsample2D(out_channels, out_channels=out_channels, padding=config.downsample_padding)
        ]) if add_downsample else None

    def construct(self, x, temb, encoder_hidden_states):
        outputs = ()
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, encoder_hidden_states)
            outputs = outputs + (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            outputs = outputs + (x,)
        return x, outputs


class UpBlock3D(_Block3D):
    """Per layer: concat the skip, resnet -> temporal conv [-> spatial -> temporal attention];
    then nearest 2x + conv. ``cross_attention`` selects CrossAttnUpBlock3D."""

    def __init__(self, in_channels, prev_output_channel, out_channels, temb_channels, config, heads, add_upsample,
                 num_frames, cross_attention):
        super().__init__()
        n = config.layers_per_block + 1
        resnets = []
        for i in range(n):
            skip = in_channels if i == n - 1 else out_channels
            res_in = prev_output_channel if i == 0 else out_channels
            resnets.append(_resnet(res_in + skip, out_channels, temb_channels, config))
        self.resnets = nn.CellList(resnets)
        self._add_layers(n, out_channels, config, heads, num_frames, cross_attention)
        self.upsamplers = nn.CellList([Upsample2D(out_channels, out_channels=out_channels)]) if add_upsample else None

    def construct(self, x, skips, temb, encoder_hidden_states, upsample_size=None):
        # skips: this block's skip connections, oldest first; popped from the end as diffusers does
        n = len(self.resnets)
        for i in range(n):
            x = ops.cat((x, skips[n - 1 - i]), 1)
            x = self._layer(i, x, temb, encoder_hidden_states)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNetMidBlock3DCrossAttn(nn.Cell):
    def __init__(self, channels, temb_channels, config, heads, num_frames):
        super().__init__()
        scale = config.mid_block_scale_factor
        self.resnets = nn.CellList([_resnet(channels, channels, temb_channels, config, scale) for _ in range(2)])
        self.temp_convs = nn.CellList([
            TemporalConvLayer(channels, channels, config.norm_num_groups, num_frames) for _ in range(2)
        ])
        self.attentions = nn.CellList([_spatial(channels, heads, config)])
        self.temp_attentions = nn.CellList([_temporal(channels, heads, config, num_frames)])

    def construct(self, x, temb, encoder_hidden_states):
        x = self.temp_convs[0](self.resnets[0](x, temb))
        x = self.attentions[0](x, encoder_hidden_states)
        x = self.temp_attentions[0](x)
        return self.temp_convs[1](self.resnets[1](x, temb))


# ============================================================================= UNet
class UNet3DConditionModel(nn.Cell):
    """One UNet call: sample [B, C_in, F, h, w], timestep [1] or [B], encoder_hidden_states [B, M, D]
    -> [B, C_out, F, h, w] float32. ``num_frames`` is the static frame count of the export."""

    def __init__(self, config: UNet3DConditionConfig, num_frames: int = 16):
        super().__init__()
        self.config = config
        f = num_frames
        self.num_frames = f
        ch = config.block_out_channels
        heads = config.per_block_heads()
        temb = ch[0] * 4
        self.conv_in = Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.time_proj = Timesteps(ch[0], True, 0)
        self.time_embedding = TimestepEmbedding(ch[0], temb, act_fn=config.act_fn)
        self.transformer_in = TransformerTemporalModel(8, config.attention_head_dim, ch[0], 1, config.norm_num_groups,
                                                       None, f)
        down = []
        out_ch = ch[0]
        for i, kind in enumerate(config.down_block_types):
            in_ch, out_ch = out_ch, ch[i]
            down.append(DownBlock3D(in_ch, out_ch, temb, config, heads[i], add_downsample=i != len(ch) - 1,
                                    num_frames=f, cross_attention=kind == "CrossAttnDownBlock3D"))
        self.down_blocks = nn.CellList(down)
        self.mid_block = UNetMidBlock3DCrossAttn(ch[-1], temb, config, heads[-1], f)
        rch, rheads = list(reversed(ch)), list(reversed(heads))
        up = []
        out_ch = rch[0]
        for i, kind in enumerate(config.up_block_types):
            prev, out_ch = out_ch, rch[i]
            in_ch = rch[min(i + 1, len(ch) - 1)]
            up.append(UpBlock3D(in_ch, prev, out_ch, temb, config, rheads[i], add_upsample=i != len(ch) - 1,
                                num_frames=f, cross_attention=kind == "CrossAttnUpBlock3D"))
        self.up_blocks = nn.CellList(up)
        self.conv_norm_out = GroupNorm(config.norm_num_groups, ch[0], eps=config.norm_eps)
        self.conv_out = Conv2d(ch[0], config.out_channels, 3, padding=1)
        self.act = get_activation(config.act_fn)
        self.num_upsamplers = len(ch) - 1

    def enable_forward_chunking(self, chunk_size: int | None = None, dim: int = 0):
        """As diffusers: every transformer block's feed-forward runs in slices of ``chunk_size``
        (default 1) along ``dim`` (0: batch, 1: sequence). Same output, lower peak memory; call it
        before exporting (the slices are unrolled into the static graph)."""
        if dim not in (0, 1):
            raise ValueError(f"Make sure to set `dim` to either 0 or 1, not {dim}")
        self._set_chunking(chunk_size or 1, dim)

    def disable_forward_chunking(self):
        self._set_chunking(None, 0)

    def _set_chunking(self, chunk_size, dim):
        for _, cell in self.cells_and_names():
            if isinstance(cell, BasicTransformerBlock):
                cell.set_chunk_feed_forward(chunk_size, dim)

    def construct(self, sample, timestep, encoder_hidden_states):
        # sample: [B, C, F, h, w]; timestep: [1] or [B]; encoder_hidden_states: [B, M, D]
        b, cin, f, hgt, wid = sample.shape
        dtype = self.conv_in.weight.dtype
        # 1. time: [B, T], repeated per frame -> [B*F, T]; the context likewise -> [B*F, M, D]
        t = ops.broadcast_to(timestep.reshape(-1), (b,))
        emb = self.time_embedding(self.time_proj(t).astype(dtype))
        emb = ops.broadcast_to(emb[:, None], (b, f, emb.shape[-1])).reshape(b * f, -1)
        ctx = encoder_hidden_states.astype(dtype)
        ctx = ops.broadcast_to(ctx[:, None], (b, f) + ctx.shape[1:]).reshape((b * f,) + ctx.shape[1:])
        # 2. pre-process: [B, C, F, h, w] -> [B*F, C, h, w]
        h = sample.astype(dtype).transpose(0, 2, 1, 3, 4).reshape(b * f, cin, hgt, wid)
        h = self.transformer_in(self.conv_in(h))
        # 3. down
        skips = (h,)
        for block in self.down_blocks:
            h, res = block(h, emb, ctx)
            skips = skips + res
        # 4. mid
        h = self.mid_block(h, emb, ctx)
        # 5. up (forward the skip's size when the sample is not a multiple of 2 ** num_upsamplers)
        factor = 2 ** self.num_upsamplers
        forward_size = hgt % factor != 0 or wid % factor != 0
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res = skips[len(skips) - n:]
            skips = skips[:len(skips) - n]
            size = None
            if i < len(self.up_blocks) - 1 and forward_size:
                size = skips[-1].shape[2:]
            h = block(h, res, emb, ctx, size)
        # 6. post-process: [B*F, C_out, h, w] -> [B, C_out, F, h, w]
        h = self.conv_out(self.act(self.conv_norm_out(h)))
        h = h.reshape((b, f) + h.shape[1:]).transpose(0, 2, 1, 3, 4)
        return h.astype(ms.float32)


register("UNet3DConditionModel", UNet3DConditionConfig, UNet3DConditionModel)
