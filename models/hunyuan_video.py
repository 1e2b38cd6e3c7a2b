"""HunyuanVideo denoiser: ``HunyuanVideoTransformer3DModel`` (diffusers), as a MindSpore cell that
compiles in GRAPH_MODE. The VAE is :mod:`video_aot.models.hunyuan_video_vae`; the text encoders are
Llama (:mod:`video_aot.models.llama`, ``hidden_states[-3]``) and CLIP (``pooler_output``,
:mod:`video_aot.models.clip`).

One step: the latents [B, C, F, H, W] are patchified (Conv3d, (patch_size_t, patch_size, patch_size))
into N video tokens; the Llama embeddings [B, L, text_embed_dim] go through the token refiner (a
timestep + mask-averaged-caption conditioned, masked self-attention stack) into L text tokens; the
conditioning vector is timestep + guidance (guidance-distilled) + CLIP pooled embeddings. Then
``num_layers`` dual-stream blocks (separate weights per stream, one joint attention over
[video | text]) and ``num_single_layers`` single-stream blocks (one set of weights over the
concatenated sequence, attention and MLP in parallel), an adaptive norm and the unpatchify.

Image-to-video (``image_condition_type``): "latent_concat" only widens the input channels;
"token_replace" modulates the first latent frame's video tokens with the timestep-0 embedding (plus
the pooled text, without guidance) in every block, the other tokens with the step's conditioning.

Text mask. diffusers builds the joint attention mask from the number of valid caption tokens only:
key j of [video | text] is attended to iff j < N + sum(encoder_attention_mask) (it assumes the
valid tokens are a prefix, which is what the right-padding Llama tokenizer gives). Padded text rows
are *not* dropped: they are computed like any other query (they attend to the valid keys) and carry
through the blocks. This cell does the same with a static L: an additive bias finfo(float32).min on
the keys at and after N + sum(mask), so the whole output (video and the discarded text stream) equals
diffusers'. The token refiner uses the mask itself: query i, key j attend iff mask_i and mask_j,
and key 0 is always attended to (so a padded row is never empty).

Rotary embeddings: 3D RoPE over (frame, row, column) of the video tokens, ``rope_axes_dim`` channels
per axis, theta ``rope_theta``; the text tokens get none. cos and sin are graph *inputs* ([N, head_dim]
each); :func:`rope_cos_sin` computes them in numpy as diffusers' ``HunyuanVideoRotaryPosEmbed``.

Guidance: HunyuanVideoPipeline passes ``guidance_scale * 1000`` as a tensor of the transformer's
dtype (so for a bf16 transformer the value is rounded to bf16 twice); :func:`guidance_input` gives
the same numbers as float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from mindspore import Tensor, nn, ops

from .cogvideox import _rotary_1d, apply_rotary
from .layers import (
    FP32, Attention, Conv3d, FeedForward, LayerNorm, Linear, RMSNorm, TimestepEmbedding, Timesteps, gelu,
    scaled_dot_product_attention, silu,
)
from .loading import register
from .mochi import MASKED, AdaLayerNormContinuous


# ============================================================================= config
# None: text-to-video. "latent_concat" (I2V): the image latents are concatenated to the input channels,
# the network is the text-to-video one. "token_replace" (I2V): the first latent frame's tokens are
# modulated by the timestep-0 embedding instead of the step's (diffusers' TokenReplace blocks).
IMAGE_CONDITION_TYPES = (None, "latent_concat", "token_replace")


@dataclass(frozen=True)
class HunyuanVideoTransformerConfig:
    """diffusers ``HunyuanVideoTransformer3DModel.__init__``: every field, every default."""

    in_channels: int = 16
    out_channels: int = 16
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    num_layers: int = 20
    num_single_layers: int = 40
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 2
    patch_size_t: int = 1
    qk_norm: str = "rms_norm"
    guidance_embeds: bool = True
    text_embed_dim: int = 4096
    pooled_projection_dim: int = 768
    rope_theta: float = 256.0
    rope_axes_dim: tuple = (16, 56, 56)
    image_condition_type: Optional[str] = None  # HunyuanVideo-I2V: "latent_concat" or "token_replace"

    def __post_init__(self):
        if self.image_condition_type not in IMAGE_CONDITION_TYPES:
            raise ValueError(f"image_condition_type {self.image_condition_type!r} is not supported; supported: "
                             f"{list(IMAGE_CONDITION_TYPES)}")
        if self.qk_norm != "rms_norm":
            raise ValueError(f"qk_norm {self.qk_norm!r} is not supported; supported: 'rms_norm'")
        if len(self.rope_axes_dim) != 3 or sum(self.rope_axes_dim) != self.attention_head_dim:
            raise ValueError(f"rope_axes_dim {self.rope_axes_dim} must be 3 even sizes summing to attention_head_dim "
                             f"{self.attention_head_dim}")
        if any(d % 2 for d in self.rope_axes_dim):
            raise ValueError(f"rope_axes_dim {self.rope_axes_dim} must all be even")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels


# ============================================================================= runtime-side numpy
def rope_cos_sin(config: HunyuanVideoTransformerConfig, latent_frames: int, latent_height: int,
                 latent_width: int) -> tuple:
    """diffusers ``HunyuanVideoRotaryPosEmbed`` for latents [*, *, latent_frames, latent_height, latent_width]:
    cos, sin [N, attention_head_dim] float32, N = F/p_t * H/p * W/p video tokens in token order
    (frame-major, then rows, then columns); per axis ``rope_axes_dim[i]`` channels, each frequency
    repeated for the pair (2i, 2i+1)."""
    sizes = (latent_frames // config.patch_size_t, latent_height // config.patch_size,
             latent_width // config.patch_size)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in sizes], indexing="ij")
    cos, sin = [], []
    for axis in range(3):
        c, s = _rotary_1d(config.rope_axes_dim[axis], grids[axis].reshape(-1), config.rope_theta)
        cos.append(c)
        sin.append(s)
    return np.concatenate(cos, 1).astype(np.float32), np.concatenate(sin, 1).astype(np.float32)


def round_to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded to fp32/fp16/bf16 (round to nearest even) and returned as float32."""
    x = np.asarray(x, np.float32)
    if dtype == "fp32":
        return x
    if dtype == "fp16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        bits = x.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return rounded.astype(np.uint32).view(np.float32)
    raise ValueError(f"dtype {dtype!r} is not one of 'fp32', 'fp16', 'bf16'")


def guidance_input(guidance_scale: float, batch_size: int, dtype: str = "fp32") -> np.ndarray:
    """HunyuanVideoPipeline's ``torch.tensor([guidance_scale] * B, dtype=transformer_dtype) * 1000.0``
    as float32 [B]: the scale is rounded to the transformer's dtype, multiplied, rounded again."""
    scale = round_to_dtype(np.full((batch_size,), guidance_scale, np.float32), dtype)
    return round_to_dtype(scale * np.float32(1000.0), dtype)


# ============================================================================= embeddings
def sinusoid_frequencies(dim: int = 256, max_period: float = 10000.0) -> np.ndarray:
    """diffusers get_timestep_embedding's frequencies (shift 0), the exponent in float32 as torch
    computes it, the exp in float64 rounded once to float32. HunyuanVideo embeds the guidance
    ``guidance_scale * 1000`` (6000 by default) on this sinusoid, where a 1-ulp change of a frequency
    moves the angle by ~4e-4 rad: numpy's float32 exp differs from torch's in 55 of the 128
    frequencies (up to 2 ulp) and gave 4e-5 relative error at the transformer output; the
    correctly rounded values differ from torch's in 2 and give about 1e-5."""
    half = dim // 2
    exponent = (-np.log(max_period) * np.arange(half, dtype=np.float32)).astype(np.float32)
    exponent = (exponent / np.float32(half)).astype(np.float32)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def hunyuan_timesteps() -> Timesteps:
    """Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0) with :func:`sinusoid_frequencies`."""
    proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    proj.freqs = Tensor(sinusoid_frequencies(256)[None, :])
    return proj


class TextProjectionSiLU(nn.Cell):
    """diffusers PixArtAlphaTextProjection(act_fn="silu"): linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_features: int, hidden_size: int):
        super().__init__()
        self.linear_1 = Linear(in_features, hidden_size)
        self.linear_2 = Linear(hidden_size, hidden_size)

    def construct(self, x):
        return self.linear_2(silu(self.linear_1(x)))


class CombinedTimestepTextProjEmbeddings(nn.Cell):
    """timestep (256-channel sinusoid, cos first) embedding + projected pooled text -> [B, dim]."""

    def __init__(self, embedding_dim: int, pooled_projection_dim: int):
        super().__init__()
        self.time_proj = hunyuan_timesteps()
        self.timestep_embedder = TimestepEmbedding(256, embedding_dim)
        self.text_embedder = TextProjectionSiLU(pooled_projection_dim, embedding_dim)

    def construct(self, timestep, pooled):
        return self.timestep_embedder(self.time_proj(timestep).astype(pooled.dtype)) + self.text_embedder(pooled)


class HunyuanVideoConditionEmbedding(CombinedTimestepTextProjEmbeddings):
    """The above plus, for a guidance-distilled model, a guidance embedding on the same sinusoid."""

    def __init__(self, embedding_dim: int, pooled_projection_dim: int, guidance_embeds: bool):
        super().__init__(embedding_dim, pooled_projection_dim)
        self.guidance_embedder = TimestepEmbedding(256, embedding_dim) if guidance_embeds else None

    def construct(self, timestep, pooled, guidance):
        cond = super().construct(timestep, pooled)
        if self.guidance_embedder is not None:
            cond = cond + self.guidance_embedder(self.time_proj(guidance).astype(pooled.dtype))
        return cond


# ============================================================================= token refiner
class HunyuanVideoAdaNorm(nn.Cell):
    """linear(silu(temb)) -> gate_msa, gate_mlp ([B, 1, D] each)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = Linear(in_features, out_features)

    def construct(self, temb):
        gate_msa, gate_mlp = ops.chunk(self.linear(silu(temb)), 2, 1)
        return gate_msa[:, None], gate_mlp[:, None]


class HunyuanVideoIndividualTokenRefinerBlock(nn.Cell):
    def __init__(self, heads: int, dim_head: int, mlp_width_ratio: float = 4.0):
        super().__init__()
        hidden = heads * dim_head
        self.norm1 = LayerNorm(hidden, eps=1e-6)
        self.attn = Attention(hidden, heads=heads, dim_head=dim_head, bias=True)
        self.norm2 = LayerNorm(hidden, eps=1e-6)
        self.ff = FeedForward(hidden, mult=mlp_width_ratio, activation_fn="linear-silu")
        self.norm_out = HunyuanVideoAdaNorm(hidden, 2 * hidden)

    def construct(self, x, temb, bias):
        # x: [B, L, D]; temb: [B, D]; bias: [B, 1, L, L] additive
        gate_msa, gate_mlp = self.norm_out(temb)
        x = x + self.attn(self.norm1(x), attention_mask=bias) * gate_msa
        return x + self.ff(self.norm2(x)) * gate_mlp


class HunyuanVideoIndividualTokenRefiner(nn.Cell):
    def __init__(self, heads: int, dim_head: int, num_layers: int, mlp_width_ratio: float = 4.0):
        super().__init__()
        self.refiner_blocks = nn.CellList([
            HunyuanVideoIndividualTokenRefinerBlock(heads, dim_head, mlp_width_ratio) for _ in range(num_layers)])

    def construct(self, x, temb, mask):
        # mask: [B, L] float 0/1. Pair (i, j) attends iff mask_i and mask_j; key 0 always
        length = x.shape[1]
        both = mask[:, :, None] * mask[:, None, :]  # [B, L, L]
        first_key = Tensor((np.arange(length) == 0).astype(np.float32))  # [L]
        allowed = ops.maximum(both, first_key[None, None, :])
        bias = ((1.0 - allowed) * MASKED)[:, None]  # [B, 1, L, L]
        for block in self.refiner_blocks:
            x = block(x, temb, bias)
        return x


class HunyuanVideoTokenRefiner(nn.Cell):
    """Llama embeddings [B, L, text_embed_dim] -> text tokens [B, L, inner]; conditioned on the
    timestep and on the mask-averaged embedding."""

    def __init__(self, in_channels: int, heads: int, dim_head: int, num_layers: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = heads * dim_head
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(hidden, in_channels)
        self.proj_in = Linear(in_channels, hidden)
        self.token_refiner = HunyuanVideoIndividualTokenRefiner(heads, dim_head, num_layers, mlp_ratio)

    def construct(self, x, timestep, mask):
        # x: [B, L, C]; timestep: [B]; mask: [B, L] float32 0/1
        # masked mean over the tokens, in float32 (as diffusers; a mask of zeros gives NaN there too)
        summed = ops.bmm(mask[:, None, :], x.astype(FP32))[:, 0]  # [B, C]
        pooled = (summed / mask.sum(1, keepdims=True)).astype(x.dtype)
        temb = self.time_text_embed(timestep, pooled)
        return self.token_refiner(self.proj_in(x), temb, mask)


# ============================================================================= main blocks
def modulation(linear, emb, tr_emb, first: int, length: int):
    """linear(silu(emb)) as [B, 1, M], or with a token-replace embedding (image_condition_type
    "token_replace") per token [B, length, M]: the first ``first`` tokens (the first latent frame) take
    linear(silu(tr_emb)), the others linear(silu(emb)), as diffusers' TokenReplace norms."""
    mod = linear(silu(emb))[:, None]  # [B, 1, M]
    if tr_emb is None:
        return mod
    b, _, m = mod.shape
    tr = linear(silu(tr_emb))[:, None]
    if first >= length:  # one latent frame: every token is a first-frame token (no empty slice)
        return tr
    return ops.cat((ops.broadcast_to(tr, (b, first, m)), ops.broadcast_to(mod, (b, length - first, m))), 1)


class AdaLayerNormZero(nn.Cell):
    """linear(silu(emb)) -> shift, scale, gate (msa), shift, scale, gate (mlp) ([B, T, D] each, T = 1, or
    the sequence length with a token-replace embedding); x -> norm(x) * (1 + scale) + shift."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = Linear(dim, 6 * dim)
        self.norm = LayerNorm(dim, eps=1e-6, elementwise_affine=False)

    def construct(self, x, emb, tr_emb=None, first: int = 0):
        mod = modulation(self.linear, emb, tr_emb, first, x.shape[1])
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ops.chunk(mod, 6, 2)
        x = self.norm(x) * (1 + scale_msa) + shift_msa
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormZeroSingle(nn.Cell):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = Linear(dim, 3 * dim)
        self.norm = LayerNorm(dim, eps=1e-6, elementwise_affine=False)

    def construct(self, x, emb, tr_emb=None, first: int = 0):
        shift, scale, gate = ops.chunk(modulation(self.linear, emb, tr_emb, first, x.shape[1]), 3, 2)
        return self.norm(x) * (1 + scale) + shift, gate


class HunyuanVideoAttention(nn.Cell):
    """diffusers Attention with HunyuanVideoAttnProcessor2_0: per-head RMS norms on q and k, rotary
    on the video tokens. Dual-stream (``added_kv``): the text stream has its own projections and
    norms and its own output projection ``to_add_out``. Single-stream (``pre_only``): one set of
    projections over [video | text], no output projection."""

    def __init__(self, dim: int, heads: int, dim_head: int, added_kv: bool, eps: float = 1e-6,
                 heads_per_chunk: Optional[int] = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.added_kv = added_kv
        self.heads_per_chunk = heads_per_chunk or heads
        self.to_q = Linear(dim, inner)
        self.to_k = Linear(dim, inner)
        self.to_v = Linear(dim, inner)
        self.norm_q = RMSNorm(dim_head, eps=eps)
        self.norm_k = RMSNorm(dim_head, eps=eps)
        if added_kv:
            self.add_q_proj = Linear(dim, inner)
            self.add_k_proj = Linear(dim, inner)
            self.add_v_proj = Linear(dim, inner)
            self.norm_added_q = RMSNorm(dim_head, eps=eps)
            self.norm_added_k = RMSNorm(dim_head, eps=eps)
            self.to_out = nn.CellList([Linear(inner, dim)])
            self.to_add_out = Linear(inner, dim)

    def _heads(self, x):
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.dim_head)

    def _rope(self, x, cos, sin, n):
        # x: [B, S, heads, d]; rotary on the first n (video) tokens only
        if x.shape[1] == n:
            return apply_rotary(x, cos, sin)
        return ops.cat((apply_rotary(x[:, :n], cos, sin), x[:, n:]), 1)

    def construct(self, hidden_states, encoder_hidden_states, rope_cos, rope_sin, key_bias):
        # hidden_states: [B, N, dim] video; encoder_hidden_states: [B, L, dim] text;
        # rope_cos/sin: [N, d]; key_bias: [B, 1, 1, N + L]
        b, n, _ = hidden_states.shape
        inner = self.heads * self.dim_head
        if self.added_kv:
            x = hidden_states
        else:
            x = ops.cat((hidden_states, encoder_hidden_states), 1)  # [B, N + L, dim]
        q = self._rope(self.norm_q(self._heads(self.to_q(x))), rope_cos, rope_sin, n)
        k = self._rope(self.norm_k(self._heads(self.to_k(x))), rope_cos, rope_sin, n)
        v = self.to_v(x)
        if self.added_kv:
            eq = self.norm_added_q(self._heads(self.add_q_proj(encoder_hidden_states)))
            ek = self.norm_added_k(self._heads(self.add_k_proj(encoder_hidden_states)))
            q = ops.cat((q, eq), 1)
            k = ops.cat((k, ek), 1)
            v = ops.cat((v, self.add_v_proj(encoder_hidden_states)), 1)
        s = q.shape[1]
        q, k = q.reshape(b, s, inner), k.reshape(b, s, inner)
        if self.heads_per_chunk >= self.heads:
            out = scaled_dot_product_attention(q, k, v, self.heads, mask=key_bias)  # [B, N + L, inner]
        else:
            # heads in groups: the [B * heads, S, S] float32 scores exist for one group at a time
            width = self.heads_per_chunk * self.dim_head
            parts = ()
            for start in range(0, inner, width):
                stop = min(start + width, inner)
                parts = parts + (scaled_dot_product_attention(
                    q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop], (stop - start) // self.dim_head,
                    mask=key_bias),)
            out = ops.cat(parts, 2)
        if self.added_kv:
            return self.to_out[0](out[:, :n]), self.to_add_out(out[:, n:])
        return out[:, :n], out[:, n:]


class HunyuanVideoTransformerBlock(nn.Cell):
    """Dual-stream block: separate modulation, norms and feed-forwards per stream, joint attention."""

    def __init__(self, heads: int, dim_head: int, mlp_ratio: float, heads_per_chunk: Optional[int] = None):
        super().__init__()
        dim = heads * dim_head
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormZero(dim)
        self.attn = HunyuanVideoAttention(dim, heads, dim_head, added_kv=True, heads_per_chunk=heads_per_chunk)
        self.norm2 = LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.ff = FeedForward(dim, mult=mlp_ratio, activation_fn="gelu-approximate")
        self.norm2_context = LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.ff_context = FeedForward(dim, mult=mlp_ratio, activation_fn="gelu-approximate")

    def construct(self, x, ctx, temb, rope_cos, rope_sin, key_bias, tr_temb=None, first: int = 0):
        # x: [B, N, D]; ctx: [B, L, D]; temb: [B, D]; tr_temb: [B, D] token-replace embedding of the
        # first ``first`` video tokens (or None); modulations are [B, 1 or N, D]
        norm_x, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, temb, tr_temb, first)
        norm_c, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(ctx, temb)
        attn_x, attn_c = self.attn(norm_x, norm_c, rope_cos, rope_sin, key_bias)
        x = x + attn_x * gate_msa
        ctx = ctx + attn_c * c_gate_msa
        norm_x = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        norm_c = self.norm2_context(ctx) * (1 + c_scale_mlp) + c_shift_mlp
        x = x + gate_mlp * self.ff(norm_x)
        ctx = ctx + c_gate_mlp * self.ff_context(norm_c)
        return x, ctx


class HunyuanVideoSingleTransformerBlock(nn.Cell):
    """Single-stream block over [video | text]: attention and a tanh-GELU MLP in parallel, one
    output projection of their concatenation, gated residual."""

    def __init__(self, heads: int, dim_head: int, mlp_ratio: float, heads_per_chunk: Optional[int] = None):
        super().__init__()
        dim = heads * dim_head
        mlp_dim = int(dim * mlp_ratio)
        self.attn = HunyuanVideoAttention(dim, heads, dim_head, added_kv=False, heads_per_chunk=heads_per_chunk)
        self.norm = AdaLayerNormZeroSingle(dim)
        self.proj_mlp = Linear(dim, mlp_dim)
        self.proj_out = Linear(dim + mlp_dim, dim)

    def construct(self, x, ctx, temb, rope_cos, rope_sin, key_bias, tr_temb=None, first: int = 0):
        n = x.shape[1]
        h = ops.cat((x, ctx), 1)  # [B, N + L, D]
        norm_h, gate = self.norm(h, temb, tr_temb, first)
        mlp = gelu(self.proj_mlp(norm_h), "tanh")
        attn_x, attn_c = self.attn(norm_h[:, :n], norm_h[:, n:], rope_cos, rope_sin, key_bias)
        out = self.proj_out(ops.cat((ops.cat((attn_x, attn_c), 1), mlp), 2))
        h = h + gate * out
        return h[:, :n], h[:, n:]


# ============================================================================= network
class HunyuanVideoTransformer3DModel(nn.Cell):
    """``construct(hidden_states [B, C, F, H, W], timestep [B], encoder_hidden_states [B, L, text_embed_dim],
    encoder_attention_mask [B, L] 0/1, pooled_projections [B, pooled_projection_dim], guidance [B],
    rope_cos [N, head_dim], rope_sin [N, head_dim])`` -> noise (flow) prediction [B, out_channels, F, H, W]
    float32. All inputs float32 (cast to the weights' dtype inside); ``guidance`` is ignored when
    the config has no guidance embedding; N = F/p_t * H/p * W/p and cos/sin come from
    :func:`rope_cos_sin`.

    Build kwarg ``attention_heads_per_chunk`` (None: all heads at once): the joint attentions run
    over groups of that many heads, one after the other. The float32 scores are
    [B * heads, N + L, N + L]: 10.6 GB for all 24 heads at 61 frames of 320x512 (N = 10240,
    L = 256); 4 heads per chunk keep 1.8 GB. The result is the same."""

    def __init__(self, config: HunyuanVideoTransformerConfig, attention_heads_per_chunk: Optional[int] = None):
        super().__init__()
        c = config
        self.config = c
        heads, d, inner = c.num_attention_heads, c.attention_head_dim, c.inner_dim
        self.x_embedder = HunyuanVideoPatchEmbed((c.patch_size_t, c.patch_size, c.patch_size), c.in_channels, inner)
        self.context_embedder = HunyuanVideoTokenRefiner(c.text_embed_dim, heads, d, c.num_refiner_layers)
        self.time_text_embed = HunyuanVideoConditionEmbedding(inner, c.pooled_projection_dim, c.guidance_embeds)
        self.transformer_blocks = nn.CellList(
            [HunyuanVideoTransformerBlock(heads, d, c.mlp_ratio, attention_heads_per_chunk) for _ in range(c.num_layers)])
        self.single_transformer_blocks = nn.CellList(
            [HunyuanVideoSingleTransformerBlock(heads, d, c.mlp_ratio, attention_heads_per_chunk)
             for _ in range(c.num_single_layers)])
        self.token_replace = c.image_condition_type == "token_replace"
        self.norm_out = AdaLayerNormContinuous(inner, inner, eps=1e-6)
        self.proj_out = Linear(inner, c.patch_size_t * c.patch_size * c.patch_size * c.output_channels)

    def construct(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections,
                  guidance, rope_cos, rope_sin):
        b, ch, f, h, w = hidden_states.shape
        c = self.config
        p, pt = c.patch_size, c.patch_size_t
        fp, hp, wp = f // pt, h // p, w // p
        n = fp * hp * wp
        if rope_cos.shape[0] != n or rope_cos.shape[1] != c.attention_head_dim:
            raise ValueError("HunyuanVideoTransformer3DModel: rope_cos/rope_sin must be [F/p_t * H/p * W/p, "
                             "attention_head_dim] for the latent shape (see rope_cos_sin)")
        dtype = self.proj_out.weight.dtype
        mask = encoder_attention_mask.astype(FP32)  # [B, L]
        length = mask.shape[1]
        # 1. conditioning [B, inner]; token_replace: the first frame's tokens take the timestep-0
        # embedding plus the pooled text (no guidance), as diffusers' HunyuanVideoConditionEmbedding
        temb = self.time_text_embed(timestep, pooled_projections.astype(dtype), guidance)
        tr_temb = None
        if self.token_replace:
            embed = self.time_text_embed
            tr_temb = (embed.timestep_embedder(embed.time_proj(ops.zeros_like(timestep)).astype(dtype))
                       + embed.text_embedder(pooled_projections.astype(dtype)))
        first = hp * wp  # tokens of the first latent frame
        # 2. video tokens [B, N, inner], text tokens [B, L, inner]
        x = self.x_embedder(hidden_states.astype(dtype))
        ctx = self.context_embedder(encoder_hidden_states.astype(dtype), timestep, mask)
        # 3. key mask over [video | text]: text keys at or after sum(mask) are blocked (diffusers)
        count = mask.sum(1, keepdims=True)  # [B, 1]
        position = Tensor(np.arange(length, dtype=np.float32))[None, :]  # [1, L]
        text_blocked = (position >= count).astype(FP32)  # [B, L]
        key_bias = ops.cat((ops.zeros((b, n), FP32), text_blocked * MASKED), 1)[:, None, None, :]
        cos = rope_cos.astype(FP32)
        sin = rope_sin.astype(FP32)
        # 4. blocks
        for block in self.transformer_blocks:
            x, ctx = block(x, ctx, temb, cos, sin, key_bias, tr_temb, first)
        for block in self.single_transformer_blocks:
            x, ctx = block(x, ctx, temb, cos, sin, key_bias, tr_temb, first)
        # 5. output: [B, N, p_t*p*p*C] -> [B, F', H', W', C, p_t, p, p] -> [B, C, F', p_t, H', p, W', p]
        x = self.proj_out(self.norm_out(x, temb))
        oc = c.output_channels
        x = x.reshape(b, fp, hp, wp, oc, pt, p, p).transpose(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(b, oc, f, h, w).astype(FP32)


class HunyuanVideoPatchEmbed(nn.Cell):
    """Conv3d with kernel = stride = (p_t, p, p): [B, C, F, H, W] -> [B, N, inner] (frame-major tokens)."""

    def __init__(self, patch_size: tuple, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = Conv3d(in_channels, embed_dim, patch_size, stride=patch_size)

    def construct(self, x):
        x = self.proj(x)  # [B, D, F', H', W']
        b, d = x.shape[0], x.shape[1]
        return x.reshape(b, d, -1).transpose(0, 2, 1)


def build_transformer(config: HunyuanVideoTransformerConfig, attention_heads_per_chunk: Optional[int] = None):
    return HunyuanVideoTransformer3DModel(config, attention_heads_per_chunk)


register("HunyuanVideoTransformer3DModel", HunyuanVideoTransformerConfig, build_transformer)
