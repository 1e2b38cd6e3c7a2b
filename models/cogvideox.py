"""CogVideoX denoiser: ``CogVideoXTransformer3DModel`` (diffusers), as a MindSpore cell that
compiles in GRAPH_MODE. The 3-D causal VAE lives in :mod:`video_aot.models.cogvideox_vae`.

Variants, all read from the checkpoint's config.json:
  * CogVideoX-2b: 3-D sincos positional embeddings added after the patch embedding;
  * CogVideoX-5b: 3-D rotary embeddings on the video part of q and k (``use_rotary_positional_embeddings``);
  * CogVideoX-5b-I2V: learned positional embeddings (``patch_embed.pos_embedding`` in the
    checkpoint) and twice the input channels (noise latents + image latents);
  * CogVideoX 1.5: ``patch_size_t`` (patches span frames too, the patch embedding is a Linear),
    optionally ``ofs_embed_dim`` (the I2V "ofs" embedding, fed the constant 2.0 by diffusers).

Static shapes: the positional (sincos) embeddings and the rotary tables depend on the latent
frame count and size, so the network is built for one latent shape (``latent_frames``,
``latent_height``, ``latent_width``) and refuses any other. The rotary tables are not part of
the network (diffusers computes them in the pipeline); :func:`rotary_positional_embeddings`
computes them in numpy for an export to bake in as constants.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .layers import (
    FP32, Conv2d, FeedForward, LayerNorm, Linear, TimestepEmbedding, Timesteps, scaled_dot_product_attention, silu,
)
from .loading import register


# ============================================================================= config
# diffusers get_activation's choices for TimestepEmbedding (mish is not ported)
TIMESTEP_ACTIVATIONS = ("silu", "swish", "gelu", "relu")


@dataclass(frozen=True)
class CogVideoXTransformerConfig:
    """diffusers ``CogVideoXTransformer3DModel.__init__``: every field, every default."""

    num_attention_heads: int = 30
    attention_head_dim: int = 64
    in_channels: int = 16
    out_channels: Optional[int] = 16
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embed_dim: int = 512
    ofs_embed_dim: Optional[int] = None
    text_embed_dim: int = 4096
    num_layers: int = 30
    dropout: float = 0.0
    attention_bias: bool = True
    sample_width: int = 90
    sample_height: int = 60
    sample_frames: int = 49
    patch_size: int = 2
    patch_size_t: Optional[int] = None
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    activation_fn: str = "gelu-approximate"
    timestep_activation_fn: str = "silu"
    norm_elementwise_affine: bool = True
    norm_eps: float = 1e-5
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = False
    use_learned_positional_embeddings: bool = False
    patch_bias: bool = True

    def __post_init__(self):
        if not self.use_rotary_positional_embeddings and self.use_learned_positional_embeddings:
            raise ValueError(
                "use_learned_positional_embeddings=True needs use_rotary_positional_embeddings=True: no CogVideoX "
                "checkpoint combines learned positional embeddings with disabled rotary embeddings (diffusers "
                "refuses this config too)"
            )
        if self.patch_size_t is not None and self.uses_sincos:
            raise ValueError(
                "patch_size_t (CogVideoX 1.5) is only supported with use_rotary_positional_embeddings=True: the "
                "sincos table has one row per latent frame, not per temporal patch"
            )
        if self.patch_size_t is not None and self.use_learned_positional_embeddings:
            raise ValueError(
                "patch_size_t (CogVideoX 1.5) with use_learned_positional_embeddings=True is not supported: the "
                "learned table has one row per latent frame, not per temporal patch (diffusers fails on it too)"
            )
        if self.activation_fn not in FeedForward._ACTS:
            raise ValueError(f"activation_fn {self.activation_fn!r} is not supported; "
                             f"supported: {sorted(FeedForward._ACTS)}")
        if self.timestep_activation_fn not in TIMESTEP_ACTIVATIONS:
            raise ValueError(f"timestep_activation_fn {self.timestep_activation_fn!r} is not supported; supported: "
                             f"{list(TIMESTEP_ACTIVATIONS)}")
        if self.attention_head_dim % 16 and self.use_rotary_positional_embeddings:
            raise ValueError(f"attention_head_dim {self.attention_head_dim} must be a multiple of 16 for the 3-D "
                             "rotary embedding (t: d/4, h: 3d/8, w: 3d/8, each an even number of channels)")
        if self.uses_sincos and self.inner_dim % 16:
            raise ValueError(f"num_attention_heads * attention_head_dim = {self.inner_dim} must be a multiple of 16 "
                             "for the 3-D sincos positional embedding")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def uses_sincos(self) -> bool:
        # diffusers: use_positional_embeddings = not use_rotary_positional_embeddings
        return not self.use_rotary_positional_embeddings

    @property
    def output_channels(self) -> int:
        return self.out_channels if self.out_channels is not None else self.in_channels

    @property
    def sample_latent_frames(self) -> int:
        return (self.sample_frames - 1) // self.temporal_compression_ratio + 1


# ============================================================================= positional tables (numpy)
def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    # diffusers get_1d_sincos_pos_embed_from_grid: frequencies in float64, positions float32
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_3d_positional_embedding(embed_dim: int, grid_w: int, grid_h: int, frames: int,
                                   spatial_interpolation_scale: float, temporal_interpolation_scale: float) -> np.ndarray:
    """diffusers ``get_3d_sincos_pos_embed`` -> [frames, grid_h * grid_w, embed_dim] (float64)."""
    dim_spatial = 3 * embed_dim // 4
    dim_temporal = embed_dim // 4
    gh = (np.arange(grid_h, dtype=np.float32) / np.float32(spatial_interpolation_scale)).astype(np.float32)
    gw = (np.arange(grid_w, dtype=np.float32) / np.float32(spatial_interpolation_scale)).astype(np.float32)
    mesh_w, mesh_h = np.meshgrid(gw, gh, indexing="xy")  # [grid_h, grid_w] each; w first as diffusers
    emb_h = _sincos_1d(dim_spatial // 2, mesh_w)  # diffusers' grid[0] is the w-grid
    emb_w = _sincos_1d(dim_spatial // 2, mesh_h)
    spatial = np.concatenate([emb_h, emb_w], axis=1)  # [H*W, 3D/4]
    gt = (np.arange(frames, dtype=np.float32) / np.float32(temporal_interpolation_scale)).astype(np.float32)
    temporal = _sincos_1d(dim_temporal, gt)  # [T, D/4]
    spatial = np.broadcast_to(spatial[None], (frames,) + spatial.shape)
    temporal = np.broadcast_to(temporal[:, None], (frames, grid_h * grid_w, dim_temporal))
    return np.concatenate([temporal, spatial], axis=-1)


def joint_sincos_embedding(config: CogVideoXTransformerConfig, latent_frames: int, latent_height: int,
                           latent_width: int) -> np.ndarray:
    """diffusers ``CogVideoXPatchEmbed._get_positional_embeddings`` for a latent shape: zeros over
    the text tokens, then the video table -> [1, max_text_seq_length + N, inner_dim] float32."""
    p = config.patch_size
    table = sincos_3d_positional_embedding(
        config.inner_dim, latent_width // p, latent_height // p, latent_frames,
        config.spatial_interpolation_scale, config.temporal_interpolation_scale,
    ).reshape(-1, config.inner_dim)
    joint = np.zeros((1, config.max_text_seq_length + table.shape[0], config.inner_dim), np.float64)
    joint[0, config.max_text_seq_length:] = table
    return joint.astype(np.float32)


def _rotary_1d(dim: int, pos: np.ndarray, theta: float = 10000.0):
    # diffusers get_1d_rotary_pos_embed(use_real=True, repeat_interleave_real=True), float32
    exponent = (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)).astype(np.float32)
    freqs = (np.float32(1.0) / np.power(np.float32(theta), exponent)).astype(np.float32)
    freqs = np.outer(pos.astype(np.float32), freqs).astype(np.float32)
    return np.repeat(np.cos(freqs), 2, axis=1), np.repeat(np.sin(freqs), 2, axis=1)


def _resize_crop_region_for_grid(src, tgt_width, tgt_height):
    tw, th = tgt_width, tgt_height
    h, w = src
    if h / w > th / tw:
        resize_height = th
        resize_width = int(round(th / h * w))
    else:
        resize_width = tw
        resize_height = int(round(tw / w * h))
    crop_top = int(round((th - resize_height) / 2.0))
    crop_left = int(round((tw - resize_width) / 2.0))
    return (crop_top, crop_left), (crop_top + resize_height, crop_left + resize_width)


def _linspace_f32(start, stop, steps):
    return np.linspace(float(start), float(stop), steps, dtype=np.float64).astype(np.float32)


def rotary_positional_embeddings(config: CogVideoXTransformerConfig, latent_frames: int, latent_height: int,
                                 latent_width: int):
    """diffusers ``CogVideoXPipeline._prepare_rotary_positional_embeddings`` +
    ``get_3d_rotary_pos_embed`` for a latent shape -> (cos, sin), each [N_video, attention_head_dim]
    float32. ``latent_frames`` is the (padded) latent frame count the transformer sees."""
    p, p_t = config.patch_size, config.patch_size_t
    grid_h, grid_w = latent_height // p, latent_width // p
    base_w, base_h = config.sample_width // p, config.sample_height // p
    dim = config.attention_head_dim
    if p_t is None:
        (top, left), (bottom, right) = _resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
        pos_h = _linspace_f32(top, bottom * (grid_h - 1) / grid_h, grid_h)
        pos_w = _linspace_f32(left, right * (grid_w - 1) / grid_w, grid_w)
        frames = latent_frames
        pos_t = _linspace_f32(0, frames * (frames - 1) / frames, frames)
    else:  # grid_type="slice"
        frames = (latent_frames + p_t - 1) // p_t
        pos_h = np.arange(base_h, dtype=np.float32)
        pos_w = np.arange(base_w, dtype=np.float32)
        pos_t = np.arange(frames, dtype=np.float32)
    t_cos, t_sin = _rotary_1d(dim // 4, pos_t)
    h_cos, h_sin = _rotary_1d(dim // 8 * 3, pos_h)
    w_cos, w_sin = _rotary_1d(dim // 8 * 3, pos_w)
    if p_t is not None:
        if grid_h > base_h or grid_w > base_w:
            raise ValueError(f"latent grid {grid_h}x{grid_w} exceeds the rotary table of "
                             f"{base_h}x{base_w} patches (sample_height/width // patch_size)")
        t_cos, t_sin = t_cos[:frames], t_sin[:frames]
        h_cos, h_sin = h_cos[:grid_h], h_sin[:grid_h]
        w_cos, w_sin = w_cos[:grid_w], w_sin[:grid_w]

    def combine(ft, fh, fw):
        ft = np.broadcast_to(ft[:, None, None, :], (frames, grid_h, grid_w, ft.shape[-1]))
        fh = np.broadcast_to(fh[None, :, None, :], (frames, grid_h, grid_w, fh.shape[-1]))
        fw = np.broadcast_to(fw[None, None, :, :], (frames, grid_h, grid_w, fw.shape[-1]))
        return np.concatenate([ft, fh, fw], axis=-1).reshape(frames * grid_h * grid_w, -1).astype(np.float32)

    return combine(t_cos, h_cos, w_cos), combine(t_sin, h_sin, w_sin)


# ============================================================================= blocks
class CogVideoXPatchEmbed(nn.Cell):
    """text_proj + patch projection (Conv2d, or Linear over [C, p_t, p, p] with patch_size_t),
    then the (sincos or learned) positional embedding when the config uses one."""

    def __init__(self, config: CogVideoXTransformerConfig, latent_frames: int, latent_height: int, latent_width: int):
        super().__init__()
        c = config
        self.patch_size = c.patch_size
        self.patch_size_t = c.patch_size_t
        if c.patch_size_t is None:
            self.proj = Conv2d(c.in_channels, c.inner_dim, c.patch_size, stride=c.patch_size, bias=c.patch_bias)
        else:
            self.proj = Linear(c.in_channels * c.patch_size * c.patch_size * c.patch_size_t, c.inner_dim)
        self.text_proj = Linear(c.text_embed_dim, c.inner_dim)
        self.use_learned = c.use_learned_positional_embeddings
        self.use_positional = c.uses_sincos or c.use_learned_positional_embeddings
        if self.use_learned:
            # the checkpoint's table for the training shape (sample_height/width/frames)
            table = joint_sincos_embedding(c, c.sample_latent_frames, c.sample_height, c.sample_width)
            self.pos_embedding = Parameter(Tensor(table), name="pos_embedding")
        # diffusers recomputes a sincos table whenever the input shape differs from the training
        # shape (also for learned embeddings, when only the frame count differs)
        pre_frames = (latent_frames - 1) * c.temporal_compression_ratio + 1
        self.use_stored = (c.sample_height == latent_height and c.sample_width == latent_width
                           and c.sample_frames == pre_frames)
        if self.use_learned and (c.sample_height != latent_height or c.sample_width != latent_width):
            raise ValueError(
                f"learned positional embeddings (CogVideoX-5b-I2V) only work at the training size "
                f"{c.sample_height}x{c.sample_width} latents ({c.sample_height * 8}x{c.sample_width * 8} pixels for "
                f"an 8x VAE); asked for {latent_height}x{latent_width} latents. diffusers refuses this too."
            )
        self.sincos = None
        if self.use_positional and not (self.use_learned and self.use_stored):
            self.sincos = Tensor(joint_sincos_embedding(c, latent_frames, latent_height, latent_width))

    def construct(self, text_embeds, image_embeds):
        # text_embeds: [B, L, text_dim]; image_embeds: [B, F, C, H, W] -> [B, L + N, D]
        text_embeds = self.text_proj(text_embeds)
        b, f, c, h, w = image_embeds.shape
        p = self.patch_size
        if self.patch_size_t is None:
            x = self.proj(image_embeds.reshape(b * f, c, h, w))  # [B*F, D, H/p, W/p]
            d = x.shape[1]
            x = x.reshape(b, f, d, -1).transpose(0, 1, 3, 2).reshape(b, -1, d)  # [B, F*H/p*W/p, D]
        else:
            pt = self.patch_size_t
            x = image_embeds.transpose(0, 1, 3, 4, 2)  # [B, F, H, W, C]
            x = x.reshape(b, f // pt, pt, h // p, p, w // p, p, c)
            x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # [B, F/pt, H/p, W/p, C, pt, p, p]
            x = self.proj(x.reshape(b, (f // pt) * (h // p) * (w // p), c * pt * p * p))
        embeds = ops.cat((text_embeds, x), 1)
        if self.use_positional:
            if self.sincos is None:
                embeds = embeds + self.pos_embedding.astype(embeds.dtype)
            else:
                embeds = embeds + self.sincos.astype(embeds.dtype)
        return embeds


class CogVideoXLayerNormZero(nn.Cell):
    """linear(silu(temb)) -> shift, scale, gate for video and text; one shared LayerNorm."""

    def __init__(self, conditioning_dim: int, embedding_dim: int, elementwise_affine: bool, eps: float):
        super().__init__()
        self.linear = Linear(conditioning_dim, 6 * embedding_dim)
        self.norm = LayerNorm(embedding_dim, eps=eps, elementwise_affine=elementwise_affine)

    def construct(self, hidden_states, encoder_hidden_states, temb):
        # temb: [B, T] -> six [B, 1, D]
        mod = self.linear(silu(temb))[:, None, :]
        shift, scale, gate, enc_shift, enc_scale, enc_gate = ops.chunk(mod, 6, -1)
        hidden_states = self.norm(hidden_states) * (1 + scale) + shift
        encoder_hidden_states = self.norm(encoder_hidden_states) * (1 + enc_scale) + enc_shift
        return hidden_states, encoder_hidden_states, gate, enc_gate


def apply_rotary(x, cos, sin):
    # x: [B, N, heads, d]; cos/sin: [N, d] with each frequency repeated twice (pairs (2i, 2i+1))
    b, n, heads, d = x.shape
    pairs = x.reshape(b, n, heads, d // 2, 2)
    real = pairs[:, :, :, :, 0:1]
    imag = pairs[:, :, :, :, 1:2]
    rotated = ops.cat((-imag, real), -1).reshape(b, n, heads, d)
    # in float32 whatever x's dtype, as diffusers' apply_rotary_emb
    out = x.astype(FP32) * cos[None, :, None, :] + rotated.astype(FP32) * sin[None, :, None, :]
    return out.astype(x.dtype)


class CogVideoXAttention(nn.Cell):
    """diffusers ``Attention`` with ``CogVideoXAttnProcessor2_0``: joint attention over
    [text, video] tokens, per-head LayerNorm on q and k, rotary on the video part."""

    def __init__(self, dim: int, heads: int, dim_head: int, bias: bool, qk_norm: bool = True):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = Linear(dim, inner, bias=bias)
        self.to_k = Linear(dim, inner, bias=bias)
        self.to_v = Linear(dim, inner, bias=bias)
        self.qk_norm = qk_norm
        if qk_norm:
            self.norm_q = LayerNorm(dim_head, eps=1e-6)
            self.norm_k = LayerNorm(dim_head, eps=1e-6)
        self.to_out = nn.CellList([Linear(inner, dim, bias=True)])

    def construct(self, hidden_states, encoder_hidden_states, rotary_cos=None, rotary_sin=None):
        # hidden_states: [B, N, D] video; encoder_hidden_states: [B, L, D] text
        text_len = encoder_hidden_states.shape[1]
        x = ops.cat((encoder_hidden_states, hidden_states), 1)  # [B, L+N, D]
        b, s, _ = x.shape
        q = self.to_q(x).reshape(b, s, self.heads, self.dim_head)
        k = self.to_k(x).reshape(b, s, self.heads, self.dim_head)
        v = self.to_v(x)
        if self.qk_norm:
            q = self.norm_q(q)
            k = self.norm_k(k)
        if rotary_cos is not None:
            q = ops.cat((q[:, :text_len], apply_rotary(q[:, text_len:], rotary_cos, rotary_sin)), 1)
            k = ops.cat((k[:, :text_len], apply_rotary(k[:, text_len:], rotary_cos, rotary_sin)), 1)
        out = scaled_dot_product_attention(q.reshape(b, s, -1), k.reshape(b, s, -1), v, self.heads)
        out = self.to_out[0](out)
        return out[:, text_len:], out[:, :text_len]


class CogVideoXBlock(nn.Cell):
    def __init__(self, config: CogVideoXTransformerConfig):
        super().__init__()
        c = config
        self.norm1 = CogVideoXLayerNormZero(c.time_embed_dim, c.inner_dim, c.norm_elementwise_affine, c.norm_eps)
        self.attn1 = CogVideoXAttention(c.inner_dim, c.num_attention_heads, c.attention_head_dim, c.attention_bias)
        self.norm2 = CogVideoXLayerNormZero(c.time_embed_dim, c.inner_dim, c.norm_elementwise_affine, c.norm_eps)
        self.ff = FeedForward(c.inner_dim, activation_fn=c.activation_fn)

    def construct(self, hidden_states, encoder_hidden_states, temb, rotary_cos=None, rotary_sin=None):
        # hidden_states: [B, N, D]; encoder_hidden_states: [B, L, D]; temb: [B, T]
        text_len = encoder_hidden_states.shape[1]
        norm_h, norm_e, gate, enc_gate = self.norm1(hidden_states, encoder_hidden_states, temb)
        attn_h, attn_e = self.attn1(norm_h, norm_e, rotary_cos, rotary_sin)
        hidden_states = hidden_states + gate * attn_h
        encoder_hidden_states = encoder_hidden_states + enc_gate * attn_e
        norm_h, norm_e, gate_ff, enc_gate_ff = self.norm2(hidden_states, encoder_hidden_states, temb)
        ff = self.ff(ops.cat((norm_e, norm_h), 1))
        hidden_states = hidden_states + gate_ff * ff[:, text_len:]
        encoder_hidden_states = encoder_hidden_states + enc_gate_ff * ff[:, :text_len]
        return hidden_states, encoder_hidden_states


class AdaLayerNorm(nn.Cell):
    """diffusers AdaLayerNorm with chunk_dim=1 (shift first, then scale)."""

    def __init__(self, embedding_dim: int, output_dim: int, elementwise_affine: bool, eps: float):
        super().__init__()
        self.linear = Linear(embedding_dim, output_dim)
        self.norm = LayerNorm(output_dim // 2, eps=eps, elementwise_affine=elementwise_affine)

    def construct(self, x, temb):
        shift, scale = ops.chunk(self.linear(silu(temb))[:, None, :], 2, -1)
        return self.norm(x) * (1 + scale) + shift


# ============================================================================= network
class CogVideoXTransformer3DModel(nn.Cell):
    """hidden_states [B, F, C, h, w], encoder_hidden_states [B, L, text_embed_dim], timestep [B]
    (or [1]), ofs [1] (configs with ofs_embed_dim), rotary cos/sin [N, head_dim] (rotary configs)
    -> noise prediction [B, F, out_channels, h, w]."""

    def __init__(self, config: CogVideoXTransformerConfig, latent_frames: Optional[int] = None,
                 latent_height: Optional[int] = None, latent_width: Optional[int] = None):
        super().__init__()
        c = config
        self.config = c
        self.latent_frames = c.sample_latent_frames if latent_frames is None else latent_frames
        self.latent_height = c.sample_height if latent_height is None else latent_height
        self.latent_width = c.sample_width if latent_width is None else latent_width
        p = c.patch_size
        if self.latent_height % p or self.latent_width % p:
            raise ValueError(f"latent size {self.latent_height}x{self.latent_width} is not a multiple of "
                             f"patch_size {p}")
        if c.patch_size_t is not None and self.latent_frames % c.patch_size_t:
            raise ValueError(f"{self.latent_frames} latent frames are not a multiple of patch_size_t "
                             f"{c.patch_size_t}; the CogVideoX 1.5 pipeline pads the latents first")
        self.patch_embed = CogVideoXPatchEmbed(c, self.latent_frames, self.latent_height, self.latent_width)
        self.time_proj = Timesteps(c.inner_dim, c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(c.inner_dim, c.time_embed_dim, act_fn=c.timestep_activation_fn)
        self.has_ofs = bool(c.ofs_embed_dim)
        if self.has_ofs:
            self.ofs_proj = Timesteps(c.ofs_embed_dim, c.flip_sin_to_cos, c.freq_shift)
            self.ofs_embedding = TimestepEmbedding(c.ofs_embed_dim, c.ofs_embed_dim,
                                                   act_fn=c.timestep_activation_fn)
        self.transformer_blocks = nn.CellList([CogVideoXBlock(c) for _ in range(c.num_layers)])
        self.norm_final = LayerNorm(c.inner_dim, eps=c.norm_eps, elementwise_affine=c.norm_elementwise_affine)
        self.norm_out = AdaLayerNorm(c.time_embed_dim, 2 * c.inner_dim, c.norm_elementwise_affine, c.norm_eps)
        pt = 1 if c.patch_size_t is None else c.patch_size_t
        self.proj_out = Linear(c.inner_dim, p * p * pt * c.output_channels)

    def construct(self, hidden_states, encoder_hidden_states, timestep, ofs=None, rotary_cos=None, rotary_sin=None):
        b, f, c, h, w = hidden_states.shape
        if f != self.latent_frames or h != self.latent_height or w != self.latent_width:
            raise ValueError("CogVideoXTransformer3DModel: the input's latent frames/size differ from the shape "
                             "the network was built for (latent_frames, latent_height, latent_width)")
        # inputs arrive in float32 and are cast to the weights' compute dtype; the output is float32
        dtype = self.proj_out.weight.dtype
        hidden_states = hidden_states.astype(dtype)
        encoder_hidden_states = encoder_hidden_states.astype(dtype)
        if rotary_cos is not None:
            rotary_cos, rotary_sin = rotary_cos.astype(FP32), rotary_sin.astype(FP32)
        # 1. time embedding
        emb = self.time_embedding(self.time_proj(timestep).astype(dtype))  # [B, T]
        if self.has_ofs:
            emb = emb + self.ofs_embedding(self.ofs_proj(ofs).astype(dtype))
        # 2. patch embedding
        x = self.patch_embed(encoder_hidden_states, hidden_states)  # [B, L + N, D]
        text_len = encoder_hidden_states.shape[1]
        encoder_hidden_states = x[:, :text_len]
        hidden_states = x[:, text_len:]
        # 3. blocks
        for block in self.transformer_blocks:
            hidden_states, encoder_hidden_states = block(hidden_states, encoder_hidden_states, emb,
                                                         rotary_cos, rotary_sin)
        hidden_states = self.norm_final(hidden_states)
        # 4. final block
        hidden_states = self.proj_out(self.norm_out(hidden_states, emb))  # [B, N, p*p*pt*C]
        # 5. unpatchify
        p = self.config.patch_size
        oc = self.config.output_channels
        if self.config.patch_size_t is None:
            out = hidden_states.reshape(b, f, h // p, w // p, oc, p, p)
            out = out.transpose(0, 1, 4, 2, 5, 3, 6).reshape(b, f, oc, h, w)
        else:
            pt = self.config.patch_size_t
            out = hidden_states.reshape(b, f // pt, h // p, w // p, oc, pt, p, p)
            out = out.transpose(0, 1, 5, 4, 2, 6, 3, 7).reshape(b, f, oc, h, w)
        return out.astype(FP32)


def build_transformer(config: CogVideoXTransformerConfig, latent_frames: Optional[int] = None,
                      latent_height: Optional[int] = None, latent_width: Optional[int] = None):
    return CogVideoXTransformer3DModel(config, latent_frames, latent_height, latent_width)


register("CogVideoXTransformer3DModel", CogVideoXTransformerConfig, build_transformer)
