"""CogVideoX 3-D causal VAE (diffusers ``AutoencoderKLCogVideoX``) with its convolution caches
as explicit inputs and outputs, so that one static graph serves every latent-frame batch.

diffusers decodes latents in batches of ``num_latent_frames_batch_size`` (2) frames and encodes
videos in batches of ``num_sample_frames_batch_size`` (8) frames; the first batch also takes the
remainder. Each causal Conv3d with a temporal kernel k > 1 pads its input in time with the last
k - 1 frames of the previous batch's input (its "conv cache"), or, in the first batch, with k - 1
copies of the first frame. mindone keeps those caches as hidden Python state, which static graphs
cannot express. Here:

  * ``decoder(z, caches)`` / ``encoder(x, caches)`` take the caches as a flat tuple of tensors
    (``None`` for the first batch) and return ``(output, new_caches)``. No state lives in the cell.
  * ``cache_specs(...)`` lists the cache shapes in call order, so an export can declare them.
  * GroupNorm statistics span every frame of a batch (as in diffusers), so the batching is part of
    the model: the runtime must split frames exactly as diffusers does (see
    :func:`frame_batches`), which is what makes the output match.

Submodules carry diffusers' names (``decoder.up_blocks.0.resnets.1.norm1.conv_y.conv.weight`` ...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from mindspore import nn, ops

from .layers import FP32, Conv2d, Conv3d, GroupNorm, pad_bottom_right, silu
from .loading import register


# ============================================================================= config
@dataclass(frozen=True)
class AutoencoderKLCogVideoXConfig:
    """diffusers ``AutoencoderKLCogVideoX.__init__``: every field, every default."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("CogVideoXDownBlock3D",) * 4
    up_block_types: tuple = ("CogVideoXUpBlock3D",) * 4
    block_out_channels: tuple = (128, 256, 256, 512)
    latent_channels: int = 16
    layers_per_block: int = 3
    act_fn: str = "silu"
    norm_eps: float = 1e-6
    norm_num_groups: int = 32
    temporal_compression_ratio: float = 4
    sample_height: int = 480
    sample_width: int = 720
    scaling_factor: float = 1.15258426
    shift_factor: Optional[float] = None
    latents_mean: Optional[tuple] = None
    latents_std: Optional[tuple] = None
    force_upcast: float = True
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    invert_scale_latents: bool = False

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        for kind in self.down_block_types:
            if kind != "CogVideoXDownBlock3D":
                raise ValueError(f"down block {kind!r} is not supported; only 'CogVideoXDownBlock3D'")
        for kind in self.up_block_types:
            if kind != "CogVideoXUpBlock3D":
                raise ValueError(f"up block {kind!r} is not supported; only 'CogVideoXUpBlock3D'")
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"act_fn {self.act_fn!r} is not supported; supported: 'silu'")
        ratio = self.temporal_compression_ratio
        level = math.log2(ratio) if ratio > 0 else -1
        if level != int(level) or level < 0 or level > n - 1:
            raise ValueError(f"temporal_compression_ratio {ratio} must be a power of two up to 2**{n - 1}")
        if self.use_quant_conv or self.use_post_quant_conv:
            raise ValueError("use_quant_conv / use_post_quant_conv are not used by any CogVideoX checkpoint and are "
                             "not supported (diffusers sizes them from out_channels, not latent_channels)")
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups:
                raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of "
                                 f"norm_num_groups {self.norm_num_groups}")

    @property
    def spatial_scale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def temporal_levels(self) -> int:
        return int(math.log2(self.temporal_compression_ratio))


# diffusers AutoencoderKLCogVideoX batch sizes (set in __init__, not in the config)
NUM_LATENT_FRAMES_BATCH_SIZE = 2
NUM_SAMPLE_FRAMES_BATCH_SIZE = 8


def frame_batches(num_frames: int, frame_batch_size: int) -> list:
    """diffusers' ``_encode`` / ``_decode`` split of ``num_frames`` into (start, end) batches:
    max(num_frames // size, 1) batches; the first also takes the remainder."""
    num_batches = max(num_frames // frame_batch_size, 1)
    remaining = num_frames % frame_batch_size
    out = []
    for i in range(num_batches):
        start = frame_batch_size * i + (0 if i == 0 else remaining)
        end = min(frame_batch_size * (i + 1) + remaining, num_frames)
        out.append((start, end))
    return out


def upsampled_frames(frames: int, levels: int) -> int:
    """Frames after ``levels`` CogVideoXUpsample3D with compress_time (the decoder's time axis)."""
    for _ in range(levels):
        if frames > 1 and frames % 2 == 1:
            frames = 1 + 2 * (frames - 1)
        elif frames > 1:
            frames = 2 * frames
    return frames


def downsampled_frames(frames: int, levels: int) -> int:
    """Frames after ``levels`` CogVideoXDownsample3D with compress_time (the encoder's time axis)."""
    for _ in range(levels):
        if frames % 2 == 1:
            frames = 1 + (frames - 1) // 2
        else:
            frames = frames // 2
    return frames


def decoded_frames(latent_frames: int, config: AutoencoderKLCogVideoXConfig) -> int:
    """Pixel frames diffusers' ``vae.decode`` returns for ``latent_frames`` (batch by batch)."""
    return sum(upsampled_frames(e - s, config.temporal_levels)
               for s, e in frame_batches(latent_frames, NUM_LATENT_FRAMES_BATCH_SIZE))


def encoded_frames(num_frames: int, config: AutoencoderKLCogVideoXConfig) -> int:
    """Latent frames diffusers' ``vae.encode`` returns for ``num_frames`` (batch by batch)."""
    return sum(downsampled_frames(e - s, config.temporal_levels)
               for s, e in frame_batches(num_frames, NUM_SAMPLE_FRAMES_BATCH_SIZE))


# ============================================================================= helpers
def repeat_nearest(x, rt: int, rh: int, rw: int):
    # x: [B, C, T, H, W] -> [B, C, T*rt, H*rh, W*rw]: nearest-neighbour resize by integer factors
    b, c, t, h, w = x.shape
    if rt == 1 and rh == 1 and rw == 1:
        return x
    x = ops.broadcast_to(x.reshape(b, c, t, 1, h, 1, w, 1), (b, c, t, rt, h, rh, w, rw))
    return x.reshape(b, c, t * rt, h * rh, w * rw)


def resize_nearest(x, size):
    # torch F.interpolate(x, size=size) (mode="nearest") for whole-number ratios
    _, _, t, h, w = x.shape
    ft, fh, fw = size
    if ft % t or fh % h or fw % w:
        raise ValueError(f"nearest resize from {(t, h, w)} to {tuple(size)} needs whole-number factors")
    return repeat_nearest(x, ft // t, fh // h, fw // w)


# ============================================================================= blocks
class CogVideoXCausalConv3d(nn.Cell):
    """Causal in time (pad with the cache, or k-1 copies of the first frame), zero-padded in
    space. ``construct(x, cache)`` -> (y, new_cache) for a temporal kernel > 1, y alone otherwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        k = kernel_size
        self.in_channels = in_channels
        self.time_kernel = k
        self.conv = Conv3d(in_channels, out_channels, k, padding=(0, (k - 1) // 2, (k - 1) // 2))

    @property
    def has_cache(self) -> bool:
        return self.time_kernel > 1

    def construct(self, x, cache=None):
        # x: [B, C, T, H, W]; cache: [B, C, k-1, H, W] (the last k-1 padded input frames of the previous batch)
        if self.time_kernel == 1:
            return self.conv(x)
        b, c, _, h, w = x.shape
        if cache is None:
            pad = ops.broadcast_to(x[:, :, :1], (b, c, self.time_kernel - 1, h, w))
        else:
            pad = cache
        x = ops.cat((pad, x), 2)
        new_cache = x[:, :, x.shape[2] - self.time_kernel + 1:]
        return self.conv(x), new_cache


class CogVideoXSpatialNorm3D(nn.Cell):
    """GroupNorm(f) * conv_y(zq) + conv_b(zq), zq resized (nearest) to f's frames and size; with an
    odd frame count > 1 the first frame is resized on its own."""

    def __init__(self, f_channels: int, zq_channels: int, groups: int = 32):
        super().__init__()
        self.norm_layer = GroupNorm(groups, f_channels, eps=1e-6)
        self.conv_y = CogVideoXCausalConv3d(zq_channels, f_channels, kernel_size=1)
        self.conv_b = CogVideoXCausalConv3d(zq_channels, f_channels, kernel_size=1)

    def construct(self, f, zq):
        _, _, t, h, w = f.shape
        if t > 1 and t % 2 == 1:
            zq = ops.cat((resize_nearest(zq[:, :, :1], (1, h, w)), resize_nearest(zq[:, :, 1:], (t - 1, h, w))), 2)
        else:
            zq = resize_nearest(zq, (t, h, w))
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


class CogVideoXResnetBlock3D(nn.Cell):
    """norm1 -> silu -> conv1 -> norm2 -> silu -> conv2, + (1x1x1 conv) shortcut. Two caches
    (conv1, conv2). Spatial norms (decoder) take the latent ``zq``."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float,
                 spatial_norm_dim: Optional[int] = None):
        super().__init__()
        self.spatial = spatial_norm_dim is not None
        if self.spatial:
            self.norm1 = CogVideoXSpatialNorm3D(in_channels, spatial_norm_dim, groups)
            self.norm2 = CogVideoXSpatialNorm3D(out_channels, spatial_norm_dim, groups)
        else:
            self.norm1 = GroupNorm(groups, in_channels, eps)
            self.norm2 = GroupNorm(groups, out_channels, eps)
        self.conv1 = CogVideoXCausalConv3d(in_channels, out_channels, 3)
        self.conv2 = CogVideoXCausalConv3d(out_channels, out_channels, 3)
        self.has_shortcut = in_channels != out_channels
        if self.has_shortcut:
            self.conv_shortcut = Conv3d(in_channels, out_channels, 1)

    def construct(self, x, zq=None, cache1=None, cache2=None):
        if self.spatial:
            h = self.norm1(x, zq)
        else:
            h = self.norm1(x)
        h, new1 = self.conv1(silu(h), cache1)
        if self.spatial:
            h = self.norm2(h, zq)
        else:
            h = self.norm2(h)
        h, new2 = self.conv2(silu(h), cache2)
        if self.has_shortcut:
            x = self.conv_shortcut(x)
        return h + x, new1, new2


class CogVideoXDownsample3D(nn.Cell):
    """Average pairs of frames (compress_time; an odd first frame is kept), then pad (0,1,0,1) and
    a stride-2 3x3 conv per frame."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.compress_time = compress_time
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=0)

    def construct(self, x):
        b, c, t, h, w = x.shape
        if self.compress_time:
            if t % 2 == 1:
                pairs = (t - 1) // 2
                if pairs > 0:
                    rest = x[:, :, 1:1 + 2 * pairs].reshape(b, c, pairs, 2, h, w).mean(3)
                    x = ops.cat((x[:, :, :1], rest), 2)
            else:
                x = x.reshape(b, c, t // 2, 2, h, w).mean(3)
        x = pad_bottom_right(x)
        b, c, t, h, w = x.shape
        y = self.conv(x.transpose(0, 2, 1, 3, 4).reshape(b * t, c, h, w))  # [B*T, C, H', W']
        return y.reshape(b, t, c, y.shape[2], y.shape[3]).transpose(0, 2, 1, 3, 4)


class CogVideoXUpsample3D(nn.Cell):
    """Nearest 2x in space (and in time with compress_time; an odd first frame is not doubled),
    then a 3x3 conv per frame."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.compress_time = compress_time
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def construct(self, x):
        _, _, t, _, _ = x.shape
        if self.compress_time and t > 1 and t % 2 == 1:
            x = ops.cat((repeat_nearest(x[:, :, :1], 1, 2, 2), repeat_nearest(x[:, :, 1:], 2, 2, 2)), 2)
        elif self.compress_time and t > 1:
            x = repeat_nearest(x, 2, 2, 2)
        else:
            x = repeat_nearest(x, 1, 2, 2)
        b, c, t, h, w = x.shape
        y = self.conv(x.transpose(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(0, 2, 1, 3, 4)


def _cache_at(caches, i: int):
    """Entry i of the flat cache tuple; None for the first frame batch, which has no caches."""
    if caches is None:
        return None
    return caches[i]


def _cast_all(tensors, dtype):
    """Every tensor of a tuple (or None) in ``dtype``. Graph inputs and outputs are float32 whatever
    the compute dtype, so the runtime carries the caches as it carries every other tensor."""
    if tensors is None:
        return None
    out = ()
    for t in tensors:
        out = out + (t.astype(dtype),)
    return out


def _run_resnets(resnets, x, zq, caches, offset: int):
    # caches: flat tuple (or None); each resnet takes two, starting at ``offset``
    new = ()
    for i, resnet in enumerate(resnets):
        x, c1, c2 = resnet(x, zq, _cache_at(caches, offset + 2 * i), _cache_at(caches, offset + 2 * i + 1))
        new = new + (c1, c2)
    return x, new


class CogVideoXDownBlock3D(nn.Cell):
    def __init__(self, in_channels, out_channels, num_layers, eps, groups, add_downsample, compress_time):
        super().__init__()
        self.resnets = nn.CellList([
            CogVideoXResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups, eps)
            for i in range(num_layers)
        ])
        self.add_downsample = add_downsample
        if add_downsample:
            self.downsamplers = nn.CellList([CogVideoXDownsample3D(out_channels, compress_time)])
        self.num_caches = 2 * num_layers

    def construct(self, x, caches=None, offset=0):
        x, new = _run_resnets(self.resnets, x, None, caches, offset)
        if self.add_downsample:
            x = self.downsamplers[0](x)
        return x, new


class CogVideoXMidBlock3D(nn.Cell):
    def __init__(self, channels, eps, groups, spatial_norm_dim=None, num_layers=2):
        super().__init__()
        self.resnets = nn.CellList([
            CogVideoXResnetBlock3D(channels, channels, groups, eps, spatial_norm_dim) for _ in range(num_layers)
        ])
        self.num_caches = 2 * num_layers

    def construct(self, x, zq=None, caches=None, offset=0):
        return _run_resnets(self.resnets, x, zq, caches, offset)


class CogVideoXUpBlock3D(nn.Cell):
    def __init__(self, in_channels, out_channels, num_layers, eps, groups, spatial_norm_dim, add_upsample,
                 compress_time):
        super().__init__()
        self.resnets = nn.CellList([
            CogVideoXResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups, eps,
                                   spatial_norm_dim)
            for i in range(num_layers)
        ])
        self.add_upsample = add_upsample
        if add_upsample:
            self.upsamplers = nn.CellList([CogVideoXUpsample3D(out_channels, compress_time)])
        self.num_caches = 2 * num_layers

    def construct(self, x, zq, caches=None, offset=0):
        x, new = _run_resnets(self.resnets, x, zq, caches, offset)
        if self.add_upsample:
            x = self.upsamplers[0](x)
        return x, new


# ============================================================================= encoder / decoder
class CogVideoXEncoder3D(nn.Cell):
    """x [B, 3, T, H, W] (one frame batch), caches -> moments [B, 2*latent, t, h, w], new caches."""

    def __init__(self, config: AutoencoderKLCogVideoXConfig):
        super().__init__()
        c = config
        ch = c.block_out_channels
        self.conv_in = CogVideoXCausalConv3d(c.in_channels, ch[0], 3)
        blocks = []
        out = ch[0]
        for i in range(len(ch)):
            inp, out = out, ch[i]
            blocks.append(CogVideoXDownBlock3D(inp, out, c.layers_per_block, c.norm_eps, c.norm_num_groups,
                                               add_downsample=i < len(ch) - 1, compress_time=i < c.temporal_levels))
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = CogVideoXMidBlock3D(ch[-1], c.norm_eps, c.norm_num_groups)
        self.norm_out = GroupNorm(c.norm_num_groups, ch[-1], eps=1e-6)
        self.conv_out = CogVideoXCausalConv3d(ch[-1], 2 * c.latent_channels, 3)
        self.config = c
        self.num_caches = 2 + sum(b.num_caches for b in blocks) + self.mid_block.num_caches

    def construct(self, x, caches=None):
        dtype = self.conv_in.conv.weight.dtype
        h, new = self._encode(x.astype(dtype), _cast_all(caches, dtype))
        return h.astype(FP32), _cast_all(new, FP32)

    def _encode(self, x, caches):
        h, new = self.conv_in(x, _cache_at(caches, 0))
        new = (new,)
        offset = 1
        for block in self.down_blocks:
            h, part = block(h, caches, offset)
            new = new + part
            offset = offset + block.num_caches
        h, part = self.mid_block(h, None, caches, offset)
        new = new + part
        offset = offset + self.mid_block.num_caches
        h = silu(self.norm_out(h))
        h, last = self.conv_out(h, _cache_at(caches, offset))
        return h, new + (last,)

    def cache_specs(self, batch: int, height: int, width: int) -> list:
        return encoder_cache_specs(self.config, batch, height, width)


class CogVideoXDecoder3D(nn.Cell):
    """z [B, latent, t, h, w] (one latent-frame batch), caches -> frames [B, 3, T, H, W], new caches."""

    def __init__(self, config: AutoencoderKLCogVideoXConfig):
        super().__init__()
        c = config
        rev = list(reversed(c.block_out_channels))
        self.conv_in = CogVideoXCausalConv3d(c.latent_channels, rev[0], 3)
        self.mid_block = CogVideoXMidBlock3D(rev[0], c.norm_eps, c.norm_num_groups, spatial_norm_dim=c.latent_channels)
        blocks = []
        out = rev[0]
        for i in range(len(rev)):
            prev, out = out, rev[i]
            blocks.append(CogVideoXUpBlock3D(prev, out, c.layers_per_block + 1, c.norm_eps, c.norm_num_groups,
                                             c.latent_channels, add_upsample=i < len(rev) - 1,
                                             compress_time=i < c.temporal_levels))
        self.up_blocks = nn.CellList(blocks)
        self.norm_out = CogVideoXSpatialNorm3D(rev[-1], c.latent_channels, c.norm_num_groups)
        self.conv_out = CogVideoXCausalConv3d(rev[-1], c.out_channels, 3)
        self.config = c
        self.num_caches = 2 + self.mid_block.num_caches + sum(b.num_caches for b in blocks)

    def construct(self, z, caches=None):
        dtype = self.conv_in.conv.weight.dtype
        h, new = self._decode(z.astype(dtype), _cast_all(caches, dtype))
        return h.astype(FP32), _cast_all(new, FP32)

    def _decode(self, z, caches):
        h, new = self.conv_in(z, _cache_at(caches, 0))
        new = (new,)
        offset = 1
        h, part = self.mid_block(h, z, caches, offset)
        new = new + part
        offset = offset + self.mid_block.num_caches
        for block in self.up_blocks:
            h, part = block(h, z, caches, offset)
            new = new + part
            offset = offset + block.num_caches
        h = silu(self.norm_out(h, z))
        h, last = self.conv_out(h, _cache_at(caches, offset))
        return h, new + (last,)

    def cache_specs(self, batch: int, height: int, width: int) -> list:
        return decoder_cache_specs(self.config, batch, height, width)


def encoder_cache_specs(config: AutoencoderKLCogVideoXConfig, batch: int, height: int, width: int) -> list:
    """[(name, shape)] of every encoder conv cache in call order, for frames of ``height`` x ``width``
    (computed from the config alone, so an export plan needs no network)."""
    c = config
    ch = c.block_out_channels
    specs = [("conv_in", (batch, c.in_channels, 2, height, width))]
    h, w, cin = height, width, ch[0]
    for i in range(len(ch)):
        for j in range(c.layers_per_block):
            specs.append((f"down_blocks.{i}.resnets.{j}.conv1", (batch, cin, 2, h, w)))
            specs.append((f"down_blocks.{i}.resnets.{j}.conv2", (batch, ch[i], 2, h, w)))
            cin = ch[i]
        if i < len(ch) - 1:
            h, w = (h - 2) // 2 + 1, (w - 2) // 2 + 1
    for j in range(2):
        specs.append((f"mid_block.resnets.{j}.conv1", (batch, ch[-1], 2, h, w)))
        specs.append((f"mid_block.resnets.{j}.conv2", (batch, ch[-1], 2, h, w)))
    specs.append(("conv_out", (batch, ch[-1], 2, h, w)))
    return specs


def decoder_cache_specs(config: AutoencoderKLCogVideoXConfig, batch: int, height: int, width: int) -> list:
    """[(name, shape)] of every decoder conv cache in call order, for latents of ``height`` x ``width``."""
    c = config
    rev = list(reversed(c.block_out_channels))
    specs = [("conv_in", (batch, c.latent_channels, 2, height, width))]
    h, w = height, width
    for j in range(2):
        specs.append((f"mid_block.resnets.{j}.conv1", (batch, rev[0], 2, h, w)))
        specs.append((f"mid_block.resnets.{j}.conv2", (batch, rev[0], 2, h, w)))
    cin = rev[0]
    for i in range(len(rev)):
        for j in range(c.layers_per_block + 1):
            specs.append((f"up_blocks.{i}.resnets.{j}.conv1", (batch, cin, 2, h, w)))
            specs.append((f"up_blocks.{i}.resnets.{j}.conv2", (batch, rev[i], 2, h, w)))
            cin = rev[i]
        if i < len(rev) - 1:
            h, w = 2 * h, 2 * w
    specs.append(("conv_out", (batch, rev[-1], 2, h, w)))
    return specs


class AutoencoderKLCogVideoX(nn.Cell):
    """Holds ``encoder`` and ``decoder``; call them one frame batch at a time (see module doc)."""

    def __init__(self, config: AutoencoderKLCogVideoXConfig):
        super().__init__()
        self.config = config
        self.encoder = CogVideoXEncoder3D(config)
        self.decoder = CogVideoXDecoder3D(config)

    def construct(self, z, caches=None):
        return self.decoder(z, caches)


def build_vae(config: AutoencoderKLCogVideoXConfig):
    return AutoencoderKLCogVideoX(config)


register("AutoencoderKLCogVideoX", AutoencoderKLCogVideoXConfig, build_vae)
