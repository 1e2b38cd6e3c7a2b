"""I2VGenXLUNet (ali-vilab/i2vgen-xl), ported from diffusers with the checkpoint's own submodule names.

The backbone is ModelScope's UNet3D (models/unet3d.py: the same conv_in, transformer_in, 3-D down /
mid / up blocks and output head, built from the same config values), so ``I2VGenXLUNet`` subclasses
``UNet3DConditionModel`` and adds the image-conditioning stem:

- ``image_latents`` [B, 4, F, h, w] (the VAE latent of the first frame, then per-frame position
  masks) go through ``image_latents_proj_in`` (three 3x3 convs) and ``image_latents_temporal_encoder``
  (self-attention over frames per pixel) and are concatenated to the sample on channels, so
  ``conv_in`` takes 2 * in_channels;
- the cross-attention context is [text tokens, 64 tokens of the first frame's latent through
  ``image_latents_context_embedding`` (conv, SiLU, adaptive average pool to 32x32, two stride-2 convs),
  in_channels tokens of the CLIP image embedding through ``context_embedding``];
- ``fps`` goes through the shared sinusoidal ``time_proj`` and ``fps_embedding`` and is added to the
  time embedding.

Frames travel folded into the batch, [B*F, C, h, w]; the frame count is a construction-time constant.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from .layers import Attention, Conv2d, FeedForward, Identity, LayerNorm, Linear, silu
from .loading import register
from .unet2d import batch_to_frames, check_frame_count, frames_to_batch, repeat_per_frame
from .unet3d import UNet3DConditionConfig, UNet3DConditionModel

# diffusers builds the image stem's first convs for 4 latent channels whatever in_channels is
IMAGE_LATENT_CHANNELS = 4
CONTEXT_POOL_SIZE = (32, 32)


# ============================================================================= config
@dataclass(frozen=True)
class I2VGenXLUNetConfig:
    """diffusers ``I2VGenXLUNet.__init__`` (same names and defaults)."""

    sample_size: int | None = None
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple = ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D")
    up_block_types: tuple = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    norm_num_groups: int | None = 32
    cross_attention_dim: int = 1024
    attention_head_dim: int | tuple = 64  # the number of heads per block, as in UNet3D (diffusers' naming)
    num_attention_heads: int | tuple | None = None  # ignored: diffusers overwrites it with attention_head_dim

    def __post_init__(self):
        self.backbone_config()  # the UNet3D checks (block kinds, counts, channel divisibility) with their messages

    def backbone_config(self) -> UNet3DConditionConfig:
        """The UNet3D config the shared backbone is built from: conv_in takes the sample and the encoded
        image latents (2 * in_channels); diffusers fixes eps, padding and the mid-block scale."""
        return UNet3DConditionConfig(
            sample_size=self.sample_size, in_channels=2 * self.in_channels, out_channels=self.out_channels,
            down_block_types=self.down_block_types, up_block_types=self.up_block_types,
            block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block,
            downsample_padding=1, mid_block_scale_factor=1.0, act_fn="silu", norm_num_groups=self.norm_num_groups,
            norm_eps=1e-5, cross_attention_dim=self.cross_attention_dim,
            attention_head_dim=self.attention_head_dim, num_attention_heads=None, time_cond_proj_dim=None,
        )


# ============================================================================= adaptive average pool
def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_in, n_out] float32 averaging matrix with torch's adaptive-pool bins: output i averages
    inputs floor(i*n_in/n_out) .. ceil((i+1)*n_in/n_out) - 1. Bins overlap when n_in is not a multiple
    of n_out and repeat inputs when n_in < n_out."""
    m = np.zeros((n_in, n_out), np.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -(-((i + 1) * n_in) // n_out)
        m[start:end, i] = 1.0 / (end - start)
    return m


@ops.constexpr
def _pool_matrix(n_in, n_out):
    # evaluated at graph compile time from the static input shape: the matrix is a graph constant
    return Tensor(adaptive_pool_matrix(n_in, n_out))


class AdaptiveAvgPool2d(nn.Cell):
    """torch.nn.AdaptiveAvgPool2d for any static input size: two matmuls with averaging matrices
    built from the input's (static) height and width; the identity when the size already matches."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * 2

    def construct(self, x):
        # x: [N, C, H, W] -> [N, C, oh, ow]
        n, c, hgt, wid = x.shape
        oh, ow = self.output_size
        if hgt == oh and wid == ow:
            return x
        pool_w = _pool_matrix(wid, ow).astype(x.dtype)  # [W, ow]
        pool_h = _pool_matrix(hgt, oh).astype(x.dtype)  # [H, oh]
        h = ops.matmul(x.reshape(n * c * hgt, wid), pool_w)  # [N*C*H, ow]
        h = h.reshape(n * c, hgt, ow).transpose(0, 2, 1).reshape(n * c * ow, hgt)
        h = ops.matmul(h, pool_h)  # [N*C*ow, oh]
        return h.reshape(n, c, ow, oh).transpose(0, 1, 3, 2)


# ============================================================================= image stem
class I2VGenXLTransformerTemporalEncoder(nn.Cell):
    """Pre-norm self-attention (residual) then a GELU feed-forward (residual, no norm) over [N, F, dim]."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, activation_fn: str = "geglu",
                 ff_inner_dim: int | None = None):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads=num_attention_heads, dim_head=attention_head_dim, bias=False, out_bias=True)
        self.ff = FeedForward(dim, activation_fn=activation_fn, inner_dim=ff_inner_dim, bias=True)

    def construct(self, x):
        # x: [N, F, dim]
        x = self.attn1(self.norm1(x)) + x
        return self.ff(x) + x


def _mlp(in_dim, hidden, out_dim):
    # diffusers nn.Sequential(Linear, SiLU, Linear): indices 0 and 2 carry the weights
    return nn.CellList([Linear(in_dim, hidden), Identity(), Linear(hidden, out_dim)])


def _run_mlp(mlp, x):
    return mlp[2](silu(mlp[0](x)))


# ============================================================================= UNet
class I2VGenXLUNet(UNet3DConditionModel):
    """One UNet call:
    sample [B, C_in, F, h, w], timestep [1] or [B], fps [1] or [B], image_latents [B, 4, F, h, w],
    image_embeddings [B, 1, D] (or [B, D]), encoder_hidden_states [B, M, D]  ->  [B, C_out, F, h, w] float32.
    The context the blocks attend to has M + 64 + C_in tokens. ``num_frames`` is the static frame count."""

    def __init__(self, config: I2VGenXLUNetConfig, num_frames: int = 16):
        super().__init__(config.backbone_config(), num_frames)
        self.config = config
        cin, d = config.in_channels, config.cross_attention_dim
        ch0 = config.block_out_channels[0]
        temb = ch0 * 4
        lat = IMAGE_LATENT_CHANNELS
        # nn.Sequential indices: convs at 0, 2, 4; SiLU in between
        self.image_latents_proj_in = nn.CellList([
            Conv2d(lat, cin * 4, 3, padding=1), Identity(), Conv2d(cin * 4, cin * 4, 3, padding=1), Identity(),
            Conv2d(cin * 4, cin, 3, padding=1),
        ])
        self.image_latents_temporal_encoder = I2VGenXLTransformerTemporalEncoder(
            cin, num_attention_heads=2, attention_head_dim=cin, activation_fn="gelu", ff_inner_dim=cin * 4)
        # convs at 0, 3, 5; SiLU at 1 and 4, the pool at 2
        self.image_latents_context_embedding = nn.CellList([
            Conv2d(lat, cin * 8, 3, padding=1), Identity(), AdaptiveAvgPool2d(CONTEXT_POOL_SIZE),
            Conv2d(cin * 8, cin * 16, 3, stride=2, padding=1), Identity(),
            Conv2d(cin * 16, d, 3, stride=2, padding=1),
        ])
        self.context_embedding = _mlp(d, temb, d * cin)
        self.fps_embedding = _mlp(ch0, temb, temb)

    def _encode_image_latents(self, image_latents):
        # image_latents: [B, 4, F, h, w] -> [B*F, C_in, h, w]
        b, _, f, hgt, wid = image_latents.shape
        proj = self.image_latents_proj_in
        h = frames_to_batch(image_latents)
        h = proj[4](silu(proj[2](silu(proj[0](h)))))  # [B*F, C, h, w]
        c = h.shape[1]
        h = h.reshape(b, f, c, hgt, wid).transpose(0, 3, 4, 1, 2).reshape(b * hgt * wid, f, c)  # [B*h*w, F, C]
        h = self.image_latents_temporal_encoder(h)
        return h.reshape(b, hgt, wid, f, c).transpose(0, 3, 4, 1, 2).reshape(b * f, c, hgt, wid)

    def _image_context(self, first_latent):
        # first_latent: [B, 4, h, w] -> [B, 64, D] (32x32 pooled, two stride-2 convs: 8x8 tokens)
        emb = self.image_latents_context_embedding
        h = emb[2](silu(emb[0](first_latent)))  # [B, 8*C_in, 32, 32]
        h = emb[5](silu(emb[3](h)))  # [B, D, 8, 8]
        b, d = h.shape[0], h.shape[1]
        return h.reshape(b, d, -1).transpose(0, 2, 1)

    def construct(self, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states):
        # sample: [B, C, F, h, w]; timestep, fps: [1] or [B]; image_latents: [B, 4, F, h, w];
        # image_embeddings: [B, 1, D] or [B, D]; encoder_hidden_states: [B, M, D]
        b, cin, f = sample.shape[0], sample.shape[1], sample.shape[2]
        check_frame_count(f, self.num_frames)
        dtype = self.conv_in.weight.dtype
        d = self.config.cross_attention_dim
        # 1-3. time + fps embeddings: [B, T], repeated per frame -> [B*F, T]
        emb = self._time_embedding(timestep, b)
        fps = ops.broadcast_to(fps.reshape(-1), (b,))
        emb = repeat_per_frame(emb + _run_mlp(self.fps_embedding, self.time_proj(fps).astype(dtype)), f)
        # 4. context: [text (M), first-frame latent (64), image embedding (C_in)] -> [B*F, M + 64 + C_in, D]
        image_latents = image_latents.astype(dtype)
        image_ctx = self._image_context(image_latents[:, :, 0])
        image_emb = _run_mlp(self.context_embedding, image_embeddings.astype(dtype)).reshape(b, cin, d)
        ctx = repeat_per_frame(ops.cat((encoder_hidden_states.astype(dtype), image_ctx, image_emb), 1), f)
        # 5. [sample, encoded image latents] on channels -> [B*F, 2C, h, w] -> the UNet3D levels
        h = ops.cat((frames_to_batch(sample.astype(dtype)), self._encode_image_latents(image_latents)), 1)
        h = self._levels(h, emb, ctx)
        # 6. [B*F, C_out, h, w] -> [B, C_out, F, h, w]
        return batch_to_frames(h, f).astype(ms.float32)


register("I2VGenXLUNet", I2VGenXLUNetConfig, I2VGenXLUNet)
