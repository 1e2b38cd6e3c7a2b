"""UNet2DConditionModel as Stable Diffusion 1.x uses it (the image UNet under AnimateDiff and
Text2Video-Zero), ported from diffusers with the checkpoint's own submodule names.

The level structure (conv_in, time embedding, down blocks, mid block, up blocks, conv_norm_out,
conv_out) lives in :class:`UNet2DBody`, which the video UNets reuse with temporal layers after the
spatial ones: AnimateDiff's UNetMotionModel (models/animatediff.py: a motion module after every
spatial layer), UNet3DConditionModel (models/unet3d.py: a temporal conv after every resnet, a
temporal transformer after every spatial transformer) and I2VGenXLUNet (models/i2vgen.py).

Text2Video-Zero: ``cross_frame_attention_frames=f`` makes every self-attention (attn1) take its
keys and values from the first frame of each group of ``f`` consecutive batch entries, as diffusers'
``CrossFrameAttnProcessor(batch_size=2)`` does; that processor groups by
``video_length = max(1, batch // 2)`` (see :func:`cross_frame_video_length`), so an export for a
UNet batch of N rows passes ``cross_frame_attention_frames=cross_frame_video_length(N)``.

Naming quirk kept from diffusers: the config's ``attention_head_dim`` is really the number of heads
per block (diffusers issue #2011).
"""
from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
from mindspore import nn, ops

from .layers import (
    Attention, BasicTransformerBlock, Conv2d, Downsample2D, GroupNorm, Linear, ResnetBlock2D, TimestepEmbedding,
    Timesteps, Upsample2D, get_activation, scaled_dot_product_attention,
)
from .loading import register


# ============================================================================= config
def _per_block(value, n: int, name: str, unit: str = "blocks", nested: bool = False) -> tuple:
    """An int (or bool) for each of ``n`` blocks (or layers: ``unit``), or a tuple of one each;
    nested tuples (per-layer values within a block) are refused unless ``nested``. Shared by the UNet
    configs (SD, UNet3D, AnimateDiff, SVD)."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"{name} {tuple(value)} has {len(value)} entries for {n} {unit}")
        if not nested and any(isinstance(v, (tuple, list)) for v in value):
            raise ValueError(f"{name} {tuple(value)}: nested per-layer values are not supported")
        return tuple(value)
    return (value,) * n


def check_block_types(config):
    """What every UNet config checks first, with diffusers' messages: as many up block types and
    block widths as down block types, each kind one of the config's ``DOWN`` / ``UP``."""
    n = len(config.down_block_types)
    if len(config.up_block_types) != n:
        raise ValueError(f"Must provide the same number of `down_block_types` as `up_block_types`: "
                         f"{config.down_block_types} vs {config.up_block_types}")
    if len(config.block_out_channels) != n:
        raise ValueError(f"Must provide the same number of `block_out_channels` as `down_block_types`: "
                         f"{config.block_out_channels} vs {config.down_block_types}")
    for kind in config.down_block_types:
        if kind not in config.DOWN:
            raise ValueError(f"down block {kind!r} is not supported; supported: {config.DOWN}")
    for kind in config.up_block_types:
        if kind not in config.UP:
            raise ValueError(f"up block {kind!r} is not supported; supported: {config.UP}")


@dataclass(frozen=True)
class UNet2DConditionConfig:
    """diffusers ``UNet2DConditionModel.__init__`` (same names and defaults). Only the SD 1.x/2.x
    form is supported: the values ``__post_init__`` lists; anything else is refused by name."""

    sample_size: int | tuple | None = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    only_cross_attention: bool | tuple = False
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: int | tuple = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_num_groups: int | None = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple = 1280
    transformer_layers_per_block: int | tuple = 1
    reverse_transformer_layers_per_block: tuple | None = None
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    attention_head_dim: int | tuple = 8  # the number of heads per block (diffusers' naming, see above)
    num_attention_heads: int | tuple | None = None
    dual_cross_attention: bool = False
    use_linear_projection: bool = False
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    num_class_embeds: int | None = None
    upcast_attention: bool = False  # no effect: diffusers' default (SDPA) processor ignores it too
    resnet_time_scale_shift: str = "default"
    resnet_skip_time_act: bool = False  # unused by the supported block types (as in diffusers)
    resnet_out_scale_factor: float = 1.0  # unused by the supported block types (as in diffusers)
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    time_embedding_act_fn: str | None = None
    timestep_post_act: str | None = None
    time_cond_proj_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    projection_class_embeddings_input_dim: int | None = None
    attention_type: str = "default"
    class_embeddings_concat: bool = False
    mid_block_only_cross_attention: bool | None = None
    cross_attention_norm: str | None = None
    addition_embed_type_num_heads: int = 64

    DOWN = ("CrossAttnDownBlock2D", "DownBlock2D")
    UP = ("CrossAttnUpBlock2D", "UpBlock2D")
    MID = ("UNetMidBlock2DCrossAttn", None)
    # field -> the only supported value (what SD 1.x / 2.x checkpoints use)
    FIXED = {
        "num_attention_heads": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
        "dual_cross_attention": False, "class_embed_type": None, "addition_embed_type": None,
        "addition_time_embed_dim": None, "num_class_embeds": None, "resnet_time_scale_shift": "default",
        "time_embedding_type": "positional", "timestep_post_act": None, "time_cond_proj_dim": None,
        "projection_class_embeddings_input_dim": None, "attention_type": "default",
        "class_embeddings_concat": False, "cross_attention_norm": None, "reverse_transformer_layers_per_block": None,
    }

    def __post_init__(self):
        n = len(self.down_block_types)
        check_block_types(self)
        if self.mid_block_type not in self.MID:
            raise ValueError(f"mid_block_type {self.mid_block_type!r} is not supported; supported: {self.MID}")
        for name, value in self.FIXED.items():
            if getattr(self, name) != value:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; supported: {value!r} "
                                 "(the Stable Diffusion 1.x/2.x UNet)")
        # mid_block_only_cross_attention is not checked: diffusers reads it for UNetMidBlock2DSimpleCrossAttn only
        if any(_per_block(self.only_cross_attention, n, "only_cross_attention")):
            raise ValueError(f"only_cross_attention={self.only_cross_attention!r} is not supported; supported: False")
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"act_fn {self.act_fn!r} is not supported; supported: 'silu', 'swish'")
        if self.time_embedding_act_fn is not None:
            get_activation(self.time_embedding_act_fn)
        if self.norm_num_groups is None:
            raise ValueError("norm_num_groups=null is not supported (the blocks need group norms); supported: an int")
        if self.conv_in_kernel % 2 == 0 or self.conv_out_kernel % 2 == 0:
            raise ValueError(f"conv_in_kernel / conv_out_kernel must be odd, got {self.conv_in_kernel} / "
                             f"{self.conv_out_kernel}")
        for name in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim"):
            _per_block(getattr(self, name), n, name)
        for ch, heads in zip(self.block_out_channels, self.heads()):
            if ch % self.norm_num_groups:
                raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of "
                                 f"norm_num_groups {self.norm_num_groups}")
            if ch % heads:
                raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of the head "
                                 f"counts attention_head_dim {self.attention_head_dim}")

    def per_block(self, name) -> tuple:
        return _per_block(getattr(self, name), len(self.down_block_types), name)

    def heads(self) -> tuple:
        return self.per_block("attention_head_dim")

    def layout(self) -> "UNetLayout":
        n = len(self.down_block_types)
        return UNetLayout(
            in_channels=self.in_channels, out_channels=self.out_channels, block_out_channels=self.block_out_channels,
            down_cross=tuple(k == "CrossAttnDownBlock2D" for k in self.down_block_types),
            up_cross=tuple(k == "CrossAttnUpBlock2D" for k in self.up_block_types),
            layers_per_block=self.per_block("layers_per_block"),
            transformer_layers=self.per_block("transformer_layers_per_block"),
            heads=self.heads(), cross_attention_dim=self.per_block("cross_attention_dim"),
            use_linear_projection=self.use_linear_projection, norm_num_groups=self.norm_num_groups,
            norm_eps=self.norm_eps, downsample_padding=self.downsample_padding,
            mid_block=self.mid_block_type is not None, mid_block_scale_factor=self.mid_block_scale_factor,
            mid_block_layers=1, mid_transformer_layers=self.per_block("transformer_layers_per_block")[n - 1],
            act_fn=self.act_fn, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift,
            time_embedding_dim=self.time_embedding_dim, time_embedding_act_fn=self.time_embedding_act_fn,
            conv_in_kernel=self.conv_in_kernel, conv_out_kernel=self.conv_out_kernel,
            center_input_sample=self.center_input_sample,
        )


@dataclass(frozen=True)
class UNetLayout:
    """Everything :class:`UNet2DBody` builds from, resolved per block (UNet2DConditionConfig and
    UNetMotionConfig both reduce to it)."""

    in_channels: int
    out_channels: int
    block_out_channels: tuple
    down_cross: tuple
    up_cross: tuple
    layers_per_block: tuple
    transformer_layers: tuple
    heads: tuple
    cross_attention_dim: tuple
    use_linear_projection: bool
    norm_num_groups: int
    norm_eps: float
    downsample_padding: int
    mid_block: bool
    mid_block_scale_factor: float
    mid_block_layers: int
    mid_transformer_layers: int
    act_fn: str = "silu"
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embedding_dim: int | None = None
    time_embedding_act_fn: str | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    center_input_sample: bool = False


def cross_frame_video_length(batch: int, batch_size: int = 2) -> int:
    """The frames per group diffusers' CrossFrameAttnProcessor(batch_size) uses for a UNet batch of
    ``batch`` rows: ``max(1, batch // batch_size)`` (CrossFrameAttnProcessor2_0, the processor torch 2
    selects). Text2Video-Zero always passes batch_size=2: under CFG, [uncond frames, cond frames]."""
    return max(1, batch // batch_size)


# ============================================================================= attention
class CrossFrameAttention(Attention):
    """Self-attention whose keys and values come from the first frame of each group of ``frames``
    consecutive batch entries (diffusers' CrossFrameAttnProcessor on a block's attn1; the processor
    leaves cross-attention, attn2, unchanged). The queries of a group's frames are stacked into one
    sequence, so to_k / to_v run on the first frame only; each query's result is the same as
    diffusers' repeated K/V."""

    def __init__(self, *args, frames: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.frames = frames

    def construct(self, hidden_states, encoder_hidden_states=None):
        # hidden_states: [N, S, C], N = G * frames -> every query of a group attends frame 0's K/V
        n, s, c = hidden_states.shape
        f = self.frames
        g = n // f
        grouped = hidden_states.reshape(g, f, s, c)
        first = grouped[:, 0]  # [G, S, C]
        q = self.to_q(grouped.reshape(g, f * s, c))  # [G, F*S, inner]
        out = scaled_dot_product_attention(q, self.to_k(first), self.to_v(first), self.heads)
        out = self.to_out[0](out)  # [G, F*S, C]
        return out.reshape(n, s, out.shape[-1])


# ============================================================================= blocks
class Transformer2DModel(nn.Cell):
    """diffusers Transformer2DModel on continuous inputs: GroupNorm -> proj_in (1x1 conv, or Linear
    with use_linear_projection) -> [N, H*W, inner] -> BasicTransformerBlocks -> proj_out -> residual."""

    def __init__(self, num_attention_heads: int, attention_head_dim: int, in_channels: int, num_layers: int = 1,
                 norm_num_groups: int = 32, cross_attention_dim: int | None = None,
                 use_linear_projection: bool = False, cross_frame_attention_frames: int | None = None):
        super().__init__()
        inner = num_attention_heads * attention_head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = Linear(in_channels, inner)
        else:
            self.proj_in = Conv2d(in_channels, inner, 1)
        blocks = []
        for _ in range(num_layers):
            block = BasicTransformerBlock(inner, num_attention_heads, attention_head_dim,
                                          cross_attention_dim=cross_attention_dim)
            if cross_frame_attention_frames is not None:
                # same submodule names (to_q, to_k, to_v, to_out.0): the checkpoint loads unchanged
                block.attn1 = CrossFrameAttention(inner, heads=num_attention_heads, dim_head=attention_head_dim,
                                                  frames=cross_frame_attention_frames)
            blocks.append(block)
        self.transformer_blocks = nn.CellList(blocks)
        if use_linear_projection:
            self.proj_out = Linear(inner, in_channels)
        else:
            self.proj_out = Conv2d(inner, in_channels, 1)

    def construct(self, x, encoder_hidden_states):
        # x: [N, C, H, W]; encoder_hidden_states: [N, M, D]
        n, c, hgt, wid = x.shape
        residual = x
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.transpose(0, 2, 3, 1).reshape(n, hgt * wid, c))
        else:
            h = self.proj_in(h)
            h = h.transpose(0, 2, 3, 1).reshape(n, hgt * wid, h.shape[1])
        for block in self.transformer_blocks:
            h = block(h, encoder_hidden_states)  # [N, H*W, inner]
        if self.use_linear_projection:
            h = self.proj_out(h).reshape(n, hgt, wid, c).transpose(0, 3, 1, 2)
        else:
            h = self.proj_out(h.reshape(n, hgt, wid, -1).transpose(0, 3, 1, 2))
        return h + residual


def _resnet(in_ch, out_ch, temb, layout, scale=1.0):
    return ResnetBlock2D(in_ch, out_ch, temb_channels=temb, groups=layout.norm_num_groups, eps=layout.norm_eps,
                         output_scale_factor=scale)


def _spatial(channels, heads, num_layers, cross_attention_dim, layout, cross_frames):
    return Transformer2DModel(heads, channels // heads, channels, num_layers, layout.norm_num_groups,
                              cross_attention_dim, layout.use_linear_projection, cross_frames)


# the temporal layers a video UNet adds to a block, by checkpoint name, in the order they run
# after their resnet (temp_convs) or spatial transformer (the others)
TEMPORAL_LAYERS = ("temp_convs", "temp_attentions", "motion_modules")


def _add_temporal(block: nn.Cell, temporal: dict | None):
    """``temporal``: None, or checkpoint name (one of TEMPORAL_LAYERS) -> a list of cells (one per
    layer; the mid block's temp_convs, one per resnet). Absent names are None attributes."""
    temporal = temporal or {}
    unknown = sorted(set(temporal) - set(TEMPORAL_LAYERS))
    if unknown:
        raise ValueError(f"temporal layers {unknown} are not supported; supported: {TEMPORAL_LAYERS}")
    for name in TEMPORAL_LAYERS:
        setattr(block, name, nn.CellList(temporal[name]) if name in temporal else None)


class _Block2D(nn.Cell):
    """What the down, up and mid blocks share: their layers, as cells the caller builds (the
    resnets, the spatial transformers or None, the temporal layers: see :func:`_add_temporal`), and
    one layer's pass: resnet [-> temporal conv] [-> spatial transformer [-> temporal transformer]]
    [-> motion module]."""

    def _set_layers(self, resnets, attentions, temporal):
        self.resnets = nn.CellList(resnets)
        self.attentions = nn.CellList(attentions) if attentions is not None else None
        _add_temporal(self, temporal)

    def _layer(self, i, x, temb, encoder_hidden_states):
        x = self.resnets[i](x, temb)
        if self.temp_convs is not None:
            x = self.temp_convs[i](x)
        if self.attentions is not None:
            x = self.attentions[i](x, encoder_hidden_states)
        if self.temp_attentions is not None:
            x = self.temp_attentions[i](x)
        if self.motion_modules is not None:
            x = self.motion_modules[i](x)
        return x


class DownBlock2D(_Block2D):
    """resnet [-> temporal layers] [-> spatial attention] per layer, then a stride-2 conv: DownBlock2D,
    CrossAttnDownBlock2D with ``attentions`` (CrossAttnDownBlock3D / CrossAttnDownBlockMotion with
    ``temporal``; SVD's DownBlockSpatioTemporal with its own cells). :func:`down_block` builds the SD
    UNet's from a layout."""

    def __init__(self, resnets, attentions=None, downsampler=None, temporal=None):
        super().__init__()
        self._set_layers(resnets, attentions, temporal)
        self.downsamplers = nn.CellList([downsampler]) if downsampler is not None else None

    def construct(self, x, temb, encoder_hidden_states):
        outputs = ()
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, encoder_hidden_states)
            outputs = outputs + (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            outputs = outputs + (x,)
        return x, outputs


class UpBlock2D(_Block2D):
    """Per layer: concat the skip, resnet [-> temporal layers] [-> spatial attention]; then nearest
    2x + conv: UpBlock2D, CrossAttnUpBlock2D with ``attentions`` (and their 3-D, Motion and SVD
    forms, as :class:`DownBlock2D`). :func:`up_block` builds the SD UNet's from a layout."""

    def __init__(self, resnets, attentions=None, upsampler=None, temporal=None):
        super().__init__()
        self._set_layers(resnets, attentions, temporal)
        self.upsamplers = nn.CellList([upsampler]) if upsampler is not None else None

    def construct(self, x, skips, temb, encoder_hidden_states, upsample_size=None):
        # skips: this block's skip connections, oldest first; popped from the end as diffusers does
        n = len(self.resnets)
        for i in range(n):
            x = ops.cat((x, skips[n - 1 - i]), 1)
            x = self._layer(i, x, temb, encoder_hidden_states)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNetMidBlock2DCrossAttn(_Block2D):
    """resnet [-> temporal conv], then per layer: spatial attention [-> temporal attention]
    [-> motion module] -> resnet [-> temporal conv] (UNetMidBlock3DCrossAttn /
    UNetMidBlockCrossAttnMotion with ``temporal``, SVD's UNetMidBlockSpatioTemporal with its own
    cells). :func:`mid_block` builds the SD UNet's from a layout."""

    def __init__(self, resnets, attentions, temporal=None):
        super().__init__()
        self._set_layers(resnets, attentions, temporal)

    def construct(self, x, temb, encoder_hidden_states):
        x = self.resnets[0](x, temb)
        if self.temp_convs is not None:
            x = self.temp_convs[0](x)
        for i in range(len(self.attentions)):
            x = self.attentions[i](x, encoder_hidden_states)
            if self.temp_attentions is not None:
                x = self.temp_attentions[i](x)
            if self.motion_modules is not None:
                x = self.motion_modules[i](x)
            x = self.resnets[i + 1](x, temb)
            if self.temp_convs is not None:
                x = self.temp_convs[i + 1](x)
        return x


def up_resnet_in_channels(in_channels: int, prev_output_channel: int, out_channels: int, n: int) -> list:
    """The input width of each of an up block's n resnets: the layer below's output (the previous
    block's for the first) plus the skip concatenated to it (the level's input for the last)."""
    return [(prev_output_channel if i == 0 else out_channels) + (in_channels if i == n - 1 else out_channels)
            for i in range(n)]


def down_block(in_channels, out_channels, temb_channels, layout, index, add_downsample, cross_attention,
               cross_frames=None, temporal=None) -> DownBlock2D:
    n = layout.layers_per_block[index]
    resnets = [_resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, layout) for i in range(n)]
    attentions = [
        _spatial(out_channels, layout.heads[index], layout.transformer_layers[index], layout.cross_attention_dim[index],
                 layout, cross_frames)
        for _ in range(n)
    ] if cross_attention else None
    downsampler = Downsample2D(out_channels, out_channels=out_channels, padding=layout.downsample_padding) \
        if add_downsample else None
    return DownBlock2D(resnets, attentions, downsampler, temporal)


def up_block(in_channels, prev_output_channel, out_channels, temb_channels, layout, index, add_upsample,
             cross_attention, cross_frames=None, temporal=None) -> UpBlock2D:
    """``index`` counts the up blocks (the reversed per-block values)."""
    r = len(layout.block_out_channels) - 1 - index
    n = layout.layers_per_block[r] + 1
    resnets = [_resnet(res_in, out_channels, temb_channels, layout)
               for res_in in up_resnet_in_channels(in_channels, prev_output_channel, out_channels, n)]
    attentions = [
        _spatial(out_channels, layout.heads[r], layout.transformer_layers[r], layout.cross_attention_dim[r], layout,
                 cross_frames)
        for _ in range(n)
    ] if cross_attention else None
    upsampler = Upsample2D(out_channels, out_channels=out_channels) if add_upsample else None
    return UpBlock2D(resnets, attentions, upsampler, temporal)


def mid_block(channels, temb_channels, layout, cross_frames=None, temporal=None) -> UNetMidBlock2DCrossAttn:
    n = layout.mid_block_layers
    resnets = [_resnet(channels, channels, temb_channels, layout, layout.mid_block_scale_factor) for _ in range(n + 1)]
    attentions = [
        _spatial(channels, layout.heads[-1], layout.mid_transformer_layers, layout.cross_attention_dim[-1], layout,
                 cross_frames)
        for _ in range(n)
    ]
    return UNetMidBlock2DCrossAttn(resnets, attentions, temporal)


# ============================================================================= UNet
# the video UNets run their levels on frames folded into the batch, [B*F, C, h, w], as diffusers does
def check_frame_count(frames: int, num_frames: int):
    """A video UNet's temporal layers group the [B*F, ...] rows by the ``num_frames`` it was built
    with; diffusers reads F from the sample instead. Another frame count would mix frames of different
    videos without any error, so it is refused (a constant test: shapes are static)."""
    if frames != num_frames:
        raise ValueError(f"the sample has {frames} frames but this network was built for num_frames="
                         f"{num_frames}; build (load_network(..., num_frames=...)) or export it for {frames}")


def frames_to_batch(x):
    # x: [B, C, F, h, w] -> [B*F, C, h, w]
    b, c, f, hgt, wid = x.shape
    return x.transpose(0, 2, 1, 3, 4).reshape(b * f, c, hgt, wid)


def batch_to_frames(x, frames: int):
    # x: [B*F, C, h, w] -> [B, C, F, h, w]
    return x.reshape((x.shape[0] // frames, frames) + x.shape[1:]).transpose(0, 2, 1, 3, 4)


def repeat_per_frame(x, frames: int):
    # x: [B, ...] -> [B*F, ...], each row repeated for its video's frames (repeat_interleave)
    b = x.shape[0]
    return ops.broadcast_to(x[:, None], (b, frames) + x.shape[1:]).reshape((b * frames,) + x.shape[1:])


class UNet2DBody(nn.Cell):
    """The UNet levels shared by UNet2DConditionModel, UNetMotionModel, UNet3DConditionModel and
    I2VGenXLUNet. ``temporal(kind, block, layers, channels, cross_attention)`` (the video UNets)
    returns the temporal layers of one block as a dict (see :func:`_add_temporal`) or None for none
    (kind "down" / "mid" / "up", ``block`` the block's index in its list, ``layers`` its spatial
    layer count). ``transformer_in`` (UNet3D) runs after conv_in."""

    def _build(self, layout: UNetLayout, cross_frames=None, temporal=None, transformer_in=None):
        ch = layout.block_out_channels
        nb = len(ch)
        temb = layout.time_embedding_dim or ch[0] * 4
        self.center_input_sample = layout.center_input_sample
        self.conv_in = Conv2d(layout.in_channels, ch[0], layout.conv_in_kernel, padding=(layout.conv_in_kernel - 1) // 2)
        self.time_proj = Timesteps(ch[0], layout.flip_sin_to_cos, layout.freq_shift)
        self.time_embedding = TimestepEmbedding(ch[0], temb, act_fn=layout.act_fn)
        self.time_embed_act = get_activation(layout.time_embedding_act_fn) if layout.time_embedding_act_fn else None
        self.transformer_in = transformer_in
        temporal = temporal or (lambda kind, block, layers, channels, cross_attention: None)

        def down(i, in_ch, out_ch, add_downsample):
            return down_block(in_ch, out_ch, temb, layout, i, add_downsample, layout.down_cross[i], cross_frames,
                              temporal("down", i, layout.layers_per_block[i], out_ch, layout.down_cross[i]))

        def mid(channels):
            if not layout.mid_block:
                return None
            return mid_block(channels, temb, layout, cross_frames,
                             temporal("mid", 0, layout.mid_block_layers, channels, True))

        def up(i, in_ch, prev, out_ch, add_upsample):
            return up_block(in_ch, prev, out_ch, temb, layout, i, add_upsample, layout.up_cross[i], cross_frames,
                            temporal("up", i, layout.layers_per_block[nb - 1 - i] + 1, out_ch, layout.up_cross[i]))

        self._add_levels(ch, down, mid, up)
        self.conv_norm_out = GroupNorm(layout.norm_num_groups, ch[0], eps=layout.norm_eps)
        self.conv_out = Conv2d(ch[0], layout.out_channels, layout.conv_out_kernel,
                               padding=(layout.conv_out_kernel - 1) // 2)
        self.act = get_activation(layout.act_fn)

    def _add_levels(self, ch, down, mid, up):
        """down_blocks, mid_block, up_blocks for the level widths ``ch``: ``down(i, in_ch, out_ch,
        add_downsample)``, ``mid(channels)`` and ``up(i, in_ch, prev_output_channel, out_ch,
        add_upsample)`` build one block each (``i`` counts the down, or the up, blocks)."""
        nb = len(ch)
        blocks = []
        out_ch = ch[0]
        for i in range(nb):
            in_ch, out_ch = out_ch, ch[i]
            blocks.append(down(i, in_ch, out_ch, i != nb - 1))
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = mid(ch[-1])
        rch = list(reversed(ch))
        blocks = []
        out_ch = rch[0]
        for i in range(nb):
            prev, out_ch = out_ch, rch[i]
            blocks.append(up(i, rch[min(i + 1, nb - 1)], prev, out_ch, i != nb - 1))
        self.up_blocks = nn.CellList(blocks)
        self.num_upsamplers = nb - 1

    def enable_forward_chunking(self, chunk_size: int | None = None, dim: int = 0):
        """As diffusers: every transformer block's feed-forward runs in slices of ``chunk_size``
        (default 1) along ``dim`` (0: batch, 1: sequence). Call before exporting."""
        if dim not in (0, 1):
            raise ValueError(f"Make sure to set `dim` to either 0 or 1, not {dim}")
        for _, cell in self.cells_and_names():
            if isinstance(cell, BasicTransformerBlock):
                cell.set_chunk_feed_forward(chunk_size or 1, dim)

    def disable_forward_chunking(self):
        for _, cell in self.cells_and_names():
            if isinstance(cell, BasicTransformerBlock):
                cell.set_chunk_feed_forward(None, 0)

    def _time_embedding(self, timestep, batch: int):
        # timestep: [1] or [batch] -> emb [batch, T] in the compute dtype
        dtype = self.conv_in.weight.dtype
        t = ops.broadcast_to(timestep.reshape(-1), (batch,))
        emb = self.time_embedding(self.time_proj(t).astype(dtype))
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb

    def _levels(self, h, emb, ctx):
        # h: [N, C_in, h, w]; emb: [N, T]; ctx: [N, M, D] -> [N, C_out, h, w]
        hgt, wid = h.shape[2], h.shape[3]
        if self.center_input_sample:
            h = 2 * h - 1.0
        h = self.conv_in(h)
        if self.transformer_in is not None:
            h = self.transformer_in(h)
        # down
        skips = (h,)
        for block in self.down_blocks:
            h, res = block(h, emb, ctx)
            skips = skips + res
        # mid
        if self.mid_block is not None:
            h = self.mid_block(h, emb, ctx)
        # up (forward the skip's size when the sample is not a multiple of 2 ** num_upsamplers)
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
        return self.conv_out(self.act(self.conv_norm_out(h)))


class UNet2DConditionModel(UNet2DBody):
    """One SD UNet call: sample [N, C_in, h, w], timestep [1] or [N], encoder_hidden_states
    [N, M, D] -> [N, C_out, h, w] float32. ``cross_frame_attention_frames`` (Text2Video-Zero): see
    the module docstring; N must then be a multiple of it."""

    def __init__(self, config: UNet2DConditionConfig, cross_frame_attention_frames: int | None = None):
        super().__init__()
        if cross_frame_attention_frames is not None and (
                not isinstance(cross_frame_attention_frames, int) or cross_frame_attention_frames < 1):
            raise ValueError(f"cross_frame_attention_frames must be None or an int >= 1, "
                             f"got {cross_frame_attention_frames!r}")
        self.config = config
        self.cross_frame_attention_frames = cross_frame_attention_frames
        self._build(config.layout(), cross_frame_attention_frames)

    def construct(self, sample, timestep, encoder_hidden_states):
        # sample: [N, C, h, w]; timestep: [1] or [N]; encoder_hidden_states: [N, M, D]
        dtype = self.conv_in.weight.dtype
        emb = self._time_embedding(timestep, sample.shape[0])
        out = self._levels(sample.astype(dtype), emb, encoder_hidden_states.astype(dtype))
        return out.astype(ms.float32)


register("UNet2DConditionModel", UNet2DConditionConfig, UNet2DConditionModel)
