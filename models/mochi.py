"""Mochi-1 denoiser: ``MochiTransformer3DModel`` (diffusers), as a MindSpore cell that compiles in
GRAPH_MODE. The VAE lives in :mod:`video_aot.models.mochi_vae`; the text encoder is T5 with an
attention mask (:mod:`video_aot.models.t5`).

The network has two streams: the visual tokens (``inner_dim`` = heads * head_dim wide) and the
caption tokens (``pooled_projection_dim`` wide, 1536 for mochi-1-preview). Every block normalises
and modulates both with fp32 RMS norms, runs one joint attention over [video, text] and a SwiGLU
feed-forward per stream; the last block is ``context_pre_only`` (the text stream only feeds keys and
values there, and is not updated). The conditioning vector is the timestep embedding plus an
attention pool over the valid caption tokens (``MochiAttentionPool``).

Static shapes and the text mask. diffusers gathers each sample's valid caption tokens (a variable
length) and runs attention on [video, valid text] per sample, then pads the text rows with zeros.
Here the caption length L stays fixed:
  * padded text keys get an additive -inf-like bias (finfo(float32).min), so no query sees them;
  * the attention output rows of padded text queries are zeroed before ``to_add_out``, which is
    what diffusers' zero padding gives.
The visual output then equals diffusers'. The text stream also equals it when the valid tokens
form a prefix of the caption (right padding, which is what the T5 tokenizer in MochiPipeline
produces); for a mask with holes diffusers would shift the later valid tokens' attention rows
down onto the hole positions, which this cell does not imitate.

Rotary embeddings: the angles are ``positions @ pos_frequencies`` (a learned parameter,
[3, heads, head_dim / 2]) over a fixed (t, h, w) position grid. The grid depends only on the latent
shape, so the network is built for one latent shape (``latent_frames``, ``latent_height``,
``latent_width``) and keeps the grid as a constant; the product, cos and sin are computed inside
the graph in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .layers import (
    FP32, Conv2d, FeedForward, LayerNorm, Linear, RMSNorm, TimestepEmbedding, Timesteps,
    scaled_dot_product_attention, silu, tanh,
)
from .loading import register

# additive bias of a masked key: transformers' choice for float32 (finfo.min); the softmax runs in float32
MASKED = float(np.finfo(np.float32).min)


# ============================================================================= config
@dataclass(frozen=True)
class MochiTransformerConfig:
    """diffusers ``MochiTransformer3DModel.__init__``: every field, every default."""

    patch_size: int = 2
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    num_layers: int = 48
    pooled_projection_dim: int = 1536
    in_channels: int = 12
    out_channels: Optional[int] = None
    qk_norm: str = "rms_norm"
    text_embed_dim: int = 4096
    time_embed_dim: int = 256
    activation_fn: str = "swiglu"
    max_sequence_length: int = 256  # recorded by diffusers, not used by the network

    def __post_init__(self):
        if self.qk_norm != "rms_norm":
            raise ValueError(f"qk_norm {self.qk_norm!r} is not supported; diffusers' Mochi attention always uses "
                             "'rms_norm'")
        if self.activation_fn not in FeedForward._ACTS:
            raise ValueError(f"activation_fn {self.activation_fn!r} is not supported; "
                             f"supported: {sorted(FeedForward._ACTS)}")
        if self.attention_head_dim % 2:
            raise ValueError(f"attention_head_dim {self.attention_head_dim} must be even (rotary pairs)")
        if self.text_embed_dim % POOL_HEADS:
            raise ValueError(f"text_embed_dim {self.text_embed_dim} must split into the attention pool's "
                             f"{POOL_HEADS} heads")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels


POOL_HEADS = 8  # MochiCombinedTimestepCaptionEmbedding builds its attention pool with 8 heads

# MochiPipeline's defaults: 480x848 pixels, 19 frames -> (19 - 1) // 6 + 1 latent frames of 60x106
DEFAULT_LATENT_SHAPE = (4, 60, 106)


# ============================================================================= rotary grid (numpy)
def _centres(start: float, stop: float, num: int) -> np.ndarray:
    edges = np.linspace(start, stop, num + 1, dtype=np.float64)
    return (edges[:-1] + edges[1:]) / 2


def rope_positions(frames: int, grid_height: int, grid_width: int, base_height: int = 192,
                   base_width: int = 192) -> np.ndarray:
    """diffusers ``MochiRoPE._get_positions``: one (t, h, w) row per video token, in the token
    order (frame-major, then rows, then columns) -> [frames * grid_height * grid_width, 3] float32.
    h and w are cell centres over an extent scaled to the ``base_height * base_width`` area."""
    scale = (base_height * base_width / (grid_height * grid_width)) ** 0.5
    t = np.arange(frames, dtype=np.float64)
    h = _centres(-grid_height * scale / 2, grid_height * scale / 2, grid_height)
    w = _centres(-grid_width * scale / 2, grid_width * scale / 2, grid_width)
    gt, gh, gw = np.meshgrid(t, h, w, indexing="ij")
    return np.stack([gt, gh, gw], -1).reshape(-1, 3).astype(np.float32)


def apply_rotary(x, cos, sin):
    # x: [B, N, heads, d]; cos/sin: [N, heads, d/2]; pairs (2i, 2i+1) rotate by angle i
    b, n, heads, d = x.shape
    pairs = x.astype(FP32).reshape(b, n, heads, d // 2, 2)
    even = pairs[:, :, :, :, 0]
    odd = pairs[:, :, :, :, 1]
    real = even * cos - odd * sin
    imag = even * sin + odd * cos
    out = ops.stack((real, imag), -1).reshape(b, n, heads, d)
    return out.astype(x.dtype)


# ============================================================================= embeddings
class MochiAttentionPool(nn.Cell):
    """One query (the masked mean of the caption tokens) attends over [mean, valid tokens]."""

    def __init__(self, num_attention_heads: int, embed_dim: int, output_dim: int):
        super().__init__()
        self.heads = num_attention_heads
        self.embed_dim = embed_dim
        self.to_kv = Linear(embed_dim, 2 * embed_dim)
        self.to_q = Linear(embed_dim, embed_dim)
        self.to_out = Linear(embed_dim, output_dim)

    def construct(self, x, mask):
        # x: [B, L, D]; mask: [B, L] float32 0/1 -> [B, output_dim]
        d = self.embed_dim
        b = x.shape[0]
        # clamp(min=1) as a maximum: MindSpore's ONNX exporter cannot write a clamp without an upper bound
        weights = mask / ops.maximum(mask.sum(1, keepdims=True), 1.0)  # [B, L]
        pooled = ops.bmm(weights[:, None, :].astype(x.dtype), x)  # [B, 1, D]
        tokens = ops.cat((pooled, x), 1)  # [B, 1 + L, D]
        kv = self.to_kv(tokens)
        q = self.to_q(pooled)  # [B, 1, D]
        # the mean token is always a valid key
        bias = ops.cat((ops.zeros((b, 1), FP32), (1.0 - mask) * MASKED), 1)[:, None, None, :]  # [B, 1, 1, 1 + L]
        out = scaled_dot_product_attention(q, kv[:, :, :d], kv[:, :, d:], self.heads, mask=bias)  # [B, 1, D]
        return self.to_out(out[:, 0])


class MochiCombinedTimestepCaptionEmbedding(nn.Cell):
    """timestep embedding + attention-pooled caption -> conditioning [B, inner]; caption
    projected to the text stream width -> [B, L, pooled_projection_dim]."""

    def __init__(self, config: MochiTransformerConfig):
        super().__init__()
        c = config
        self.time_proj = Timesteps(c.time_embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0.0)
        self.timestep_embedder = TimestepEmbedding(c.time_embed_dim, c.inner_dim)
        self.pooler = MochiAttentionPool(POOL_HEADS, c.text_embed_dim, c.inner_dim)
        self.caption_proj = Linear(c.text_embed_dim, c.pooled_projection_dim)

    def construct(self, timestep, encoder_hidden_states, mask):
        dtype = encoder_hidden_states.dtype
        temb = self.timestep_embedder(self.time_proj(timestep).astype(dtype))  # [B, inner]
        pooled = self.pooler(encoder_hidden_states, mask)  # [B, inner]
        return temb + pooled, self.caption_proj(encoder_hidden_states)


# ============================================================================= norms
def rms_modulate(x, factor, eps: float):
    """diffusers ``MochiModulatedRMSNorm``: rms-normalise x (no weight) and multiply by factor, in
    float32; the result takes x's dtype. x: [B, N, D]; factor: [B, 1, D] or None."""
    h = x.astype(FP32)
    h = h * ops.rsqrt((h * h).mean(-1, keep_dims=True) + eps)
    if factor is not None:
        h = h * factor.astype(FP32)
    return h.astype(x.dtype)


class MochiRMSNormZero(nn.Cell):
    """linear(silu(temb)) -> scale_msa, gate_msa, scale_mlp, gate_mlp; x -> rms(x) * (1 + scale_msa)."""

    def __init__(self, embedding_dim: int, hidden_dim: int, eps: float):
        super().__init__()
        self.linear = Linear(embedding_dim, hidden_dim)
        self.eps = eps

    def construct(self, x, temb):
        # x: [B, N, D]; temb: [B, inner] -> x', and three [B, D]
        scale_msa, gate_msa, scale_mlp, gate_mlp = ops.chunk(self.linear(silu(temb)), 4, 1)
        return rms_modulate(x, 1.0 + scale_msa[:, None].astype(FP32), self.eps), gate_msa, scale_mlp, gate_mlp


class MochiLayerNormContinuous(nn.Cell):
    """The last block's caption norm: rms(x) * (1 + linear_1(silu(temb)))."""

    def __init__(self, embedding_dim: int, conditioning_embedding_dim: int, eps: float):
        super().__init__()
        self.linear_1 = Linear(conditioning_embedding_dim, embedding_dim)
        self.eps = eps

    def construct(self, x, temb):
        scale = self.linear_1(silu(temb).astype(x.dtype))
        return rms_modulate(x, 1.0 + scale[:, None].astype(FP32), self.eps)


class AdaLayerNormContinuous(nn.Cell):
    """diffusers AdaLayerNormContinuous (layer_norm, no affine): scale first, then shift."""

    def __init__(self, embedding_dim: int, conditioning_embedding_dim: int, eps: float):
        super().__init__()
        self.linear = Linear(conditioning_embedding_dim, embedding_dim * 2)
        self.norm = LayerNorm(embedding_dim, eps=eps, elementwise_affine=False)

    def construct(self, x, temb):
        scale, shift = ops.chunk(self.linear(silu(temb).astype(x.dtype)), 2, 1)
        return self.norm(x) * (1 + scale)[:, None] + shift[:, None]


# ============================================================================= attention
class MochiAttention(nn.Cell):
    """Joint attention over [video, text]: per-head RMS norms on q and k of both streams, rotary
    on the video q and k, padded text keys masked, padded text query rows zeroed."""

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int, context_pre_only: bool,
                 eps: float = 1e-5):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.context_pre_only = context_pre_only
        self.norm_q = RMSNorm(dim_head, eps=eps)
        self.norm_k = RMSNorm(dim_head, eps=eps)
        self.norm_added_q = RMSNorm(dim_head, eps=eps)
        self.norm_added_k = RMSNorm(dim_head, eps=eps)
        self.to_q = Linear(dim, inner, bias=False)
        self.to_k = Linear(dim, inner, bias=False)
        self.to_v = Linear(dim, inner, bias=False)
        self.add_k_proj = Linear(context_dim, inner, bias=False)
        self.add_v_proj = Linear(context_dim, inner, bias=False)
        self.add_q_proj = Linear(context_dim, inner, bias=False)  # present in the last block too
        self.to_out = nn.CellList([Linear(inner, dim)])
        if not context_pre_only:
            self.to_add_out = Linear(inner, context_dim)

    def _heads(self, x):
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.dim_head)

    def construct(self, hidden_states, encoder_hidden_states, rope_cos, rope_sin, key_bias, text_mask):
        # hidden_states: [B, N, dim]; encoder_hidden_states: [B, L, context_dim]; rope_cos/sin: [N, heads, d/2]
        # key_bias: [B, 1, 1, N + L] additive; text_mask: [B, L, 1] 0/1
        b, n, _ = hidden_states.shape
        q = apply_rotary(self.norm_q(self._heads(self.to_q(hidden_states))), rope_cos, rope_sin)
        k = apply_rotary(self.norm_k(self._heads(self.to_k(hidden_states))), rope_cos, rope_sin)
        eq = self.norm_added_q(self._heads(self.add_q_proj(encoder_hidden_states)))
        ek = self.norm_added_k(self._heads(self.add_k_proj(encoder_hidden_states)))
        q = ops.cat((q, eq), 1).reshape(b, -1, self.heads * self.dim_head)  # [B, N + L, inner]
        k = ops.cat((k, ek), 1).reshape(b, -1, self.heads * self.dim_head)
        v = ops.cat((self.to_v(hidden_states), self.add_v_proj(encoder_hidden_states)), 1)
        out = scaled_dot_product_attention(q, k, v, self.heads, mask=key_bias)  # [B, N + L, inner]
        video = self.to_out[0](out[:, :n])
        if self.context_pre_only:
            return video, None
        # padded caption rows are zeros in diffusers before the output projection
        return video, self.to_add_out(out[:, n:] * text_mask.astype(out.dtype))


class MochiTransformerBlock(nn.Cell):
    def __init__(self, config: MochiTransformerConfig, context_pre_only: bool, eps: float = 1e-6):
        super().__init__()
        c = config
        dim, ctx = c.inner_dim, c.pooled_projection_dim
        self.context_pre_only = context_pre_only
        self.eps = eps
        self.norm1 = MochiRMSNormZero(dim, 4 * dim, eps)
        if context_pre_only:
            self.norm1_context = MochiLayerNormContinuous(ctx, dim, eps)
        else:
            self.norm1_context = MochiRMSNormZero(dim, 4 * ctx, eps)
        self.attn1 = MochiAttention(dim, ctx, c.num_attention_heads, c.attention_head_dim, context_pre_only)
        self.ff = FeedForward(dim, inner_dim=(4 * dim * 2) // 3, activation_fn=c.activation_fn, bias=False)
        if not context_pre_only:
            self.ff_context = FeedForward(ctx, inner_dim=(4 * ctx * 2) // 3, activation_fn=c.activation_fn,
                                          bias=False)

    def construct(self, hidden_states, encoder_hidden_states, temb, rope_cos, rope_sin, key_bias, text_mask):
        # hidden_states: [B, N, inner]; encoder_hidden_states: [B, L, pooled_projection_dim]; temb: [B, inner]
        eps = self.eps
        norm_h, gate_msa, scale_mlp, gate_mlp = self.norm1(hidden_states, temb)
        if self.context_pre_only:
            norm_e = self.norm1_context(encoder_hidden_states, temb)
        else:
            norm_e, enc_gate_msa, enc_scale_mlp, enc_gate_mlp = self.norm1_context(encoder_hidden_states, temb)
        attn_h, attn_e = self.attn1(norm_h, norm_e, rope_cos, rope_sin, key_bias, text_mask)
        hidden_states = hidden_states + rms_modulate(attn_h, tanh(gate_msa)[:, None], eps)
        ff = self.ff(rms_modulate(hidden_states, 1.0 + scale_mlp[:, None].astype(FP32), eps))
        hidden_states = hidden_states + rms_modulate(ff, tanh(gate_mlp)[:, None], eps)
        if self.context_pre_only:
            return hidden_states, encoder_hidden_states
        encoder_hidden_states = encoder_hidden_states + rms_modulate(attn_e, tanh(enc_gate_msa)[:, None], eps)
        ff_e = self.ff_context(rms_modulate(encoder_hidden_states, 1.0 + enc_scale_mlp[:, None].astype(FP32), eps))
        encoder_hidden_states = encoder_hidden_states + rms_modulate(ff_e, tanh(enc_gate_mlp)[:, None], eps)
        return hidden_states, encoder_hidden_states


class PatchEmbed(nn.Cell):
    """diffusers PatchEmbed without positional embedding: a stride-p Conv2d per frame."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)

    def construct(self, x):
        # x: [N, C, H, W] -> [N, H/p * W/p, D]
        x = self.proj(x)
        return x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)


# ============================================================================= network
class MochiTransformer3DModel(nn.Cell):
    """hidden_states [B, C, F, H, W] (latents), encoder_hidden_states [B, L, text_embed_dim],
    timestep [B] (float), encoder_attention_mask [B, L] (0/1, any numeric dtype)
    -> noise prediction [B, out_channels, F, H, W] float32. (F, H, W) is fixed at construction."""

    def __init__(self, config: MochiTransformerConfig, latent_frames: Optional[int] = None,
                 latent_height: Optional[int] = None, latent_width: Optional[int] = None):
        super().__init__()
        c = config
        self.config = c
        f0, h0, w0 = DEFAULT_LATENT_SHAPE
        self.latent_frames = f0 if latent_frames is None else latent_frames
        self.latent_height = h0 if latent_height is None else latent_height
        self.latent_width = w0 if latent_width is None else latent_width
        p = c.patch_size
        if self.latent_height % p or self.latent_width % p:
            raise ValueError(f"latent size {self.latent_height}x{self.latent_width} is not a multiple of "
                             f"patch_size {p}")
        self.patch_embed = PatchEmbed(p, c.in_channels, c.inner_dim)
        self.time_embed = MochiCombinedTimestepCaptionEmbedding(c)
        self.pos_frequencies = Parameter(
            Tensor(np.zeros((3, c.num_attention_heads, c.attention_head_dim // 2), np.float32)), name="pos_frequencies")
        # (t, h, w) of every video token: [N, 3]
        self.rope_grid = Tensor(rope_positions(self.latent_frames, self.latent_height // p, self.latent_width // p))
        self.transformer_blocks = nn.CellList(
            [MochiTransformerBlock(c, context_pre_only=i == c.num_layers - 1) for i in range(c.num_layers)])
        self.norm_out = AdaLayerNormContinuous(c.inner_dim, c.inner_dim, eps=1e-6)
        self.proj_out = Linear(c.inner_dim, p * p * c.output_channels)

    def rope(self):
        """cos, sin of the rotary angles: [N, heads, head_dim / 2] each, float32."""
        c = self.config
        freqs = self.pos_frequencies.astype(FP32).reshape(3, -1)  # [3, heads * d/2]
        angles = ops.matmul(self.rope_grid, freqs).reshape(-1, c.num_attention_heads, c.attention_head_dim // 2)
        return ops.cos(angles), ops.sin(angles)

    def construct(self, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask):
        b, ch, f, h, w = hidden_states.shape
        if f != self.latent_frames or h != self.latent_height or w != self.latent_width:
            raise ValueError("MochiTransformer3DModel: the input's latent frames/size differ from the shape the "
                             "network was built for (latent_frames, latent_height, latent_width)")
        p = self.config.patch_size
        # inputs arrive in float32 and are cast to the weights' compute dtype; the output is float32
        dtype = self.proj_out.weight.dtype
        hidden_states = hidden_states.astype(dtype)
        encoder_hidden_states = encoder_hidden_states.astype(dtype)
        mask = encoder_attention_mask.astype(FP32)  # [B, L]
        # 1. conditioning and caption stream
        temb, encoder_hidden_states = self.time_embed(timestep, encoder_hidden_states, mask)
        # 2. patches: [B, C, F, H, W] -> [B*F, C, H, W] -> [B, F*H/p*W/p, inner]
        x = hidden_states.transpose(0, 2, 1, 3, 4).reshape(b * f, ch, h, w)
        x = self.patch_embed(x)
        x = x.reshape(b, -1, x.shape[-1])
        n = x.shape[1]
        # 3. rotary angles and the key mask over [video, text]
        rope_cos, rope_sin = self.rope()
        key_bias = ops.cat((ops.zeros((b, n), FP32), (1.0 - mask) * MASKED), 1)[:, None, None, :]
        text_mask = mask[:, :, None]
        # 4. blocks
        for block in self.transformer_blocks:
            x, encoder_hidden_states = block(x, encoder_hidden_states, temb, rope_cos, rope_sin, key_bias, text_mask)
        x = self.proj_out(self.norm_out(x, temb))  # [B, N, p*p*C]
        # 5. unpatchify: [B, F, H/p, W/p, p, p, C] -> [B, C, F, H/p, p, W/p, p]
        oc = self.config.output_channels
        out = x.reshape(b, f, h // p, w // p, p, p, oc).transpose(0, 6, 1, 2, 4, 3, 5)
        return out.reshape(b, oc, f, h, w).astype(FP32)


def build_transformer(config: MochiTransformerConfig, latent_frames: Optional[int] = None,
                      latent_height: Optional[int] = None, latent_width: Optional[int] = None):
    return MochiTransformer3DModel(config, latent_frames, latent_height, latent_width)


register("MochiTransformer3DModel", MochiTransformerConfig, build_transformer)
