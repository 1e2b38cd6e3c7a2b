"""LTX-Video denoiser: ``LTXVideoTransformer3DModel`` (diffusers), as a MindSpore cell that compiles in
GRAPH_MODE. The video VAE lives in :mod:`video_aot.models.ltx_vae`.

One network serves LTX-Video 0.9.0, 0.9.1 and 0.9.5 (they differ in weights, not in structure):
  * the input is the packed latent sequence [B, S, C] (see ``ltx_vae.pack_latents``);
  * the timestep is [B] (text-to-video) or per token [B, S] (image-to-video: diffusers multiplies
    the step's timestep by ``1 - conditioning_mask``, so the first latent frame's tokens get 0).
    As diffusers, it is flattened, embedded by AdaLayerNormSingle, and the block modulation and the
    final shift/scale are taken per token;
  * the text mask is the 0/1 mask [B, L]; the network turns it into diffusers' additive bias
    ``(1 - mask) * -10000`` for the cross-attention;
  * the rotary cos/sin [S, inner_dim] are inputs: :func:`ltx_rotary_cos_sin` computes them in numpy
    exactly as diffusers' ``LTXVideoRotaryPosEmbed`` (with the ``inner_dim % 6`` pad channels in front),
    so that the runtime owns them and one graph serves any frame rate.

Submodules carry diffusers' names (``transformer_blocks.0.attn1.norm_q.weight``,
``time_embed.emb.timestep_embedder.linear_1.weight``, ``caption_projection.linear_2.bias`` ...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .layers import (
    FP32, FeedForward, LayerNorm, Linear, RMSNorm, TimestepEmbedding, Timesteps, gelu, scaled_dot_product_attention,
    silu,
)
from .loading import register


# ============================================================================= config
@dataclass(frozen=True)
class LTXVideoTransformerConfig:
    """diffusers ``LTXVideoTransformer3DModel.__init__``: every field, every default."""

    in_channels: int = 128
    out_channels: int = 128
    patch_size: int = 1
    patch_size_t: int = 1
    num_attention_heads: int = 32
    attention_head_dim: int = 64
    cross_attention_dim: int = 2048
    num_layers: int = 28
    activation_fn: str = "gelu-approximate"
    qk_norm: str = "rms_norm_across_heads"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    caption_channels: int = 4096
    attention_bias: bool = True
    attention_out_bias: bool = True

    def __post_init__(self):
        if self.qk_norm != "rms_norm_across_heads":
            raise ValueError(f"qk_norm {self.qk_norm!r} is not supported; diffusers only implements "
                             "'rms_norm_across_heads'")
        if self.activation_fn not in FeedForward._ACTS:
            raise ValueError(f"activation_fn {self.activation_fn!r} is not supported; "
                             f"supported: {sorted(FeedForward._ACTS)}")
        if self.cross_attention_dim != self.inner_dim:
            raise ValueError(f"cross_attention_dim {self.cross_attention_dim} must equal num_attention_heads * "
                             f"attention_head_dim = {self.inner_dim}: the caption projection maps the text to "
                             "inner_dim before the cross-attention")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels


# diffusers LTXVideoRotaryPosEmbed constants (set in LTXVideoTransformer3DModel.__init__, not in the config)
ROPE_BASE_NUM_FRAMES = 20
ROPE_BASE_HEIGHT = 2048
ROPE_BASE_WIDTH = 2048
ROPE_THETA = 10000.0


# ============================================================================= rotary tables (numpy)
def ltx_rope_interpolation_scale(frame_rate: float, vae_temporal_compression_ratio: int = 8,
                                 vae_spatial_compression_ratio: int = 32) -> tuple:
    """The ``rope_interpolation_scale`` LTXPipeline / LTXImageToVideoPipeline pass to the transformer."""
    return (vae_temporal_compression_ratio / frame_rate, vae_spatial_compression_ratio,
            vae_spatial_compression_ratio)


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    # torch.linspace(dtype=float32) on the CPU: the first half counts up from start, the second half
    # down from end, with one float32 step
    if steps == 1:
        return np.array([start], np.float32)
    step = np.float32((np.float32(end) - np.float32(start)) / np.float32(steps - 1))
    idx = np.arange(steps)
    half = steps // 2
    up = np.float32(start) + step * idx.astype(np.float32)
    down = np.float32(end) - step * (steps - 1 - idx).astype(np.float32)
    return np.where(idx < half, up, down).astype(np.float32)


def ltx_rotary_cos_sin(config: LTXVideoTransformerConfig, num_frames: int, height: int, width: int,
                       frame_rate: float = 25.0, vae_temporal_compression_ratio: int = 8,
                       vae_spatial_compression_ratio: int = 32, rope_interpolation_scale=None):
    """diffusers ``LTXVideoRotaryPosEmbed`` for a latent grid of ``num_frames x height x width`` tokens
    -> (cos, sin), each [num_frames * height * width, inner_dim] float32 (the same for every batch row).

    The grid is scaled by ``rope_interpolation_scale`` (default: the pipelines' value from
    ``frame_rate`` and the VAE compression ratios, :func:`ltx_rope_interpolation_scale`), the patch
    sizes and the base sizes (20 frames, 2048 x 2048). Channel layout as diffusers: ``inner_dim % 6`` pad
    channels first (cos 1, sin 0), then for each of the ``inner_dim // 6`` frequencies the (t, h, w)
    angles, each repeated twice (pairs (2i, 2i+1) rotate together). Float32 step by step, as diffusers."""
    if rope_interpolation_scale is None:
        rope_interpolation_scale = ltx_rope_interpolation_scale(frame_rate, vae_temporal_compression_ratio,
                                                                vae_spatial_compression_ratio)
    dim = config.inner_dim
    f32 = np.float32
    gf, gh, gw = np.meshgrid(np.arange(num_frames, dtype=f32), np.arange(height, dtype=f32),
                             np.arange(width, dtype=f32), indexing="ij")
    s_t, s_h, s_w = (float(s) for s in rope_interpolation_scale)
    gf = gf * f32(s_t) * f32(config.patch_size_t) / f32(ROPE_BASE_NUM_FRAMES)
    gh = gh * f32(s_h) * f32(config.patch_size) / f32(ROPE_BASE_HEIGHT)
    gw = gw * f32(s_w) * f32(config.patch_size) / f32(ROPE_BASE_WIDTH)
    grid = np.stack([gf.reshape(-1), gh.reshape(-1), gw.reshape(-1)], -1).astype(f32)  # [S, 3]
    n = dim // 6
    exps = _linspace_f32(math.log(1.0, ROPE_THETA), math.log(ROPE_THETA, ROPE_THETA), n)
    # torch raises the scalar to the float32 exponents with a vectorised powf (1 ulp); the correctly
    # rounded float64 power agrees with it on more frequencies than numpy's float32 power
    freqs = np.power(float(ROPE_THETA), exps.astype(np.float64)).astype(f32)
    freqs = (freqs * f32(math.pi) / f32(2.0)).astype(f32)  # [n]
    angles = freqs[None, None, :] * (grid[:, :, None] * f32(2) - f32(1))  # [S, 3, n]
    angles = angles.transpose(0, 2, 1).reshape(grid.shape[0], 3 * n).astype(f32)  # [S, n*3]: (freq, axis)
    cos = np.repeat(np.cos(angles), 2, axis=-1)
    sin = np.repeat(np.sin(angles), 2, axis=-1)
    pad = dim % 6
    if pad:
        cos = np.concatenate([np.ones((cos.shape[0], pad), f32), cos], -1)
        sin = np.concatenate([np.zeros((sin.shape[0], pad), f32), sin], -1)
    return cos.astype(f32), sin.astype(f32)


# ============================================================================= blocks
def apply_rotary(x, cos, sin):
    # x: [B, S, D]; cos/sin: [S, D] or [B, S, D], each angle repeated for the pair (2i, 2i+1)
    b, s, d = x.shape
    pairs = x.reshape(b, s, d // 2, 2)
    rotated = ops.cat((-pairs[:, :, :, 1:2], pairs[:, :, :, 0:1]), -1).reshape(b, s, d)
    if len(cos.shape) == 2:
        cos, sin = cos[None], sin[None]
    # in float32 whatever x's dtype, as diffusers' apply_rotary_emb
    return (x.astype(FP32) * cos + rotated.astype(FP32) * sin).astype(x.dtype)


class PixArtAlphaCombinedTimestepSizeEmbeddings(nn.Cell):
    """diffusers PixArtAlphaCombinedTimestepSizeEmbeddings without additional conditions: sinusoidal
    256-channel projection (cos first, shift 0) -> TimestepEmbedding. [N] -> [N, embedding_dim]."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(256, embedding_dim)

    def construct(self, timestep, dtype):
        return self.timestep_embedder(self.time_proj(timestep).astype(dtype))


class AdaLayerNormSingle(nn.Cell):
    """diffusers AdaLayerNormSingle: emb (timestep embedding) and linear(silu(emb)) -> 6 * dim."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.emb = PixArtAlphaCombinedTimestepSizeEmbeddings(embedding_dim)
        self.linear = Linear(embedding_dim, 6 * embedding_dim)

    def construct(self, timestep, dtype):
        # timestep: [N] -> ([N, 6 * dim], [N, dim])
        embedded = self.emb(timestep, dtype)
        return self.linear(silu(embedded)), embedded


class PixArtAlphaTextProjection(nn.Cell):
    """linear_1 -> tanh-GELU -> linear_2."""

    def __init__(self, in_features: int, hidden_size: int):
        super().__init__()
        self.linear_1 = Linear(in_features, hidden_size)
        self.linear_2 = Linear(hidden_size, hidden_size)

    def construct(self, caption):
        return self.linear_2(gelu(self.linear_1(caption), "tanh"))


class LTXAttention(nn.Cell):
    """diffusers ``LTXAttention`` + ``LTXVideoAttnProcessor``: RMSNorm of q and k over all heads
    (eps 1e-5, with weights), rotary on q and k (self-attention), additive mask bias (cross-attention)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, bias: bool, out_bias: bool,
                 cross_attention_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        kv_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.heads = heads
        self.norm_q = RMSNorm(inner, eps=1e-5)
        self.norm_k = RMSNorm(inner, eps=1e-5)
        self.to_q = Linear(query_dim, inner, bias=bias)
        self.to_k = Linear(kv_dim, inner, bias=bias)
        self.to_v = Linear(kv_dim, inner, bias=bias)
        self.to_out = nn.CellList([Linear(inner, query_dim, bias=out_bias)])

    def construct(self, hidden_states, encoder_hidden_states=None, mask_bias=None, rope_cos=None, rope_sin=None):
        # hidden_states: [B, S, D]; encoder_hidden_states: [B, L, D]; mask_bias: [B, 1, 1, L]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = self.norm_q(self.to_q(hidden_states))
        k = self.norm_k(self.to_k(context))
        v = self.to_v(context)
        if rope_cos is not None:
            q = apply_rotary(q, rope_cos, rope_sin)
            k = apply_rotary(k, rope_cos, rope_sin)
        out = scaled_dot_product_attention(q, k, v, self.heads, mask=mask_bias)
        return self.to_out[0](out)


class LTXVideoTransformerBlock(nn.Cell):
    def __init__(self, config: LTXVideoTransformerConfig):
        super().__init__()
        c = config
        dim = c.inner_dim
        self.dim = dim
        self.norm1 = RMSNorm(dim, eps=c.norm_eps, elementwise_affine=c.norm_elementwise_affine)
        self.attn1 = LTXAttention(dim, c.num_attention_heads, c.attention_head_dim, c.attention_bias,
                                  c.attention_out_bias)
        self.norm2 = RMSNorm(dim, eps=c.norm_eps, elementwise_affine=c.norm_elementwise_affine)
        self.attn2 = LTXAttention(dim, c.num_attention_heads, c.attention_head_dim, c.attention_bias,
                                  c.attention_out_bias, cross_attention_dim=c.cross_attention_dim)
        self.ff = FeedForward(dim, activation_fn=c.activation_fn)
        self.scale_shift_table = Parameter(Tensor(np.random.randn(6, dim).astype(np.float32) / dim ** 0.5),
                                           name="scale_shift_table")

    def construct(self, hidden_states, encoder_hidden_states, temb, rope_cos, rope_sin, mask_bias=None):
        # hidden_states: [B, S, D]; encoder_hidden_states: [B, L, D]; temb: [B, T, 6D] (T = 1 or S)
        b, t = temb.shape[0], temb.shape[1]
        ada = self.scale_shift_table.reshape(1, 1, 6, self.dim) + temb.reshape(b, t, 6, self.dim)
        shift_msa, scale_msa, gate_msa = ada[:, :, 0], ada[:, :, 1], ada[:, :, 2]
        shift_mlp, scale_mlp, gate_mlp = ada[:, :, 3], ada[:, :, 4], ada[:, :, 5]
        norm = self.norm1(hidden_states) * (1 + scale_msa) + shift_msa
        hidden_states = hidden_states + self.attn1(norm, rope_cos=rope_cos, rope_sin=rope_sin) * gate_msa
        # the cross-attention takes the un-normed hidden states, as diffusers
        hidden_states = hidden_states + self.attn2(hidden_states, encoder_hidden_states, mask_bias)
        norm = self.norm2(hidden_states) * (1 + scale_mlp) + shift_mlp
        return hidden_states + self.ff(norm) * gate_mlp


# ============================================================================= network
class LTXVideoTransformer3DModel(nn.Cell):
    """hidden_states [B, S, in_channels] (packed latents), encoder_hidden_states [B, L, caption_channels],
    timestep [B] or [B, S], encoder_attention_mask [B, L] (0/1, or None), rope_cos / rope_sin [S, inner_dim]
    (:func:`ltx_rotary_cos_sin`) -> velocity [B, S, out_channels] float32."""

    def __init__(self, config: LTXVideoTransformerConfig):
        super().__init__()
        c = config
        self.config = c
        dim = c.inner_dim
        self.proj_in = Linear(c.in_channels, dim)
        self.scale_shift_table = Parameter(Tensor(np.random.randn(2, dim).astype(np.float32) / dim ** 0.5),
                                           name="scale_shift_table")
        self.time_embed = AdaLayerNormSingle(dim)
        self.caption_projection = PixArtAlphaTextProjection(c.caption_channels, dim)
        self.transformer_blocks = nn.CellList([LTXVideoTransformerBlock(c) for _ in range(c.num_layers)])
        self.norm_out = LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.proj_out = Linear(dim, c.output_channels)

    def construct(self, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, rope_cos, rope_sin):
        # inputs arrive in float32 and are cast to the weights' compute dtype; the output is float32
        dtype = self.proj_out.weight.dtype
        b = hidden_states.shape[0]
        dim = self.config.inner_dim
        hidden_states = self.proj_in(hidden_states.astype(dtype))  # [B, S, D]
        rope_cos, rope_sin = rope_cos.astype(FP32), rope_sin.astype(FP32)
        # 1. text mask -> additive bias [B, 1, 1, L], as diffusers: (1 - mask) * -10000
        mask_bias = None
        if encoder_attention_mask is not None:
            mask_bias = ((1.0 - encoder_attention_mask.astype(dtype)) * -10000.0).reshape(b, 1, 1, -1)
        # 2. timestep ([B] or per token [B, S]) -> temb [B, T, 6D], embedded [B, T, D]
        temb, embedded = self.time_embed(timestep.reshape(-1), dtype)
        temb = temb.reshape(b, -1, 6 * dim)
        embedded = embedded.reshape(b, -1, dim)
        # 3. text projection
        encoder_hidden_states = self.caption_projection(encoder_hidden_states.astype(dtype))  # [B, L, D]
        # 4. blocks
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, encoder_hidden_states, temb, rope_cos, rope_sin, mask_bias)
        # 5. output modulation (per sample or per token)
        mod = self.scale_shift_table.reshape(1, 1, 2, dim) + embedded.reshape(b, -1, 1, dim)  # [B, T, 2, D]
        shift, scale = mod[:, :, 0], mod[:, :, 1]
        hidden_states = self.norm_out(hidden_states) * (1 + scale) + shift
        return self.proj_out(hidden_states).astype(FP32)


def build_transformer(config: LTXVideoTransformerConfig):
    return LTXVideoTransformer3DModel(config)


register("LTXVideoTransformer3DModel", LTXVideoTransformerConfig, build_transformer)
