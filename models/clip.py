"""CLIP towers from transformers, as MindSpore cells that compile in GRAPH_MODE.

* ``CLIPVisionModelWithProjection``: Stable Video Diffusion's ``image_encoder``
  (pixel_values [B, 3, S, S] -> image_embeds [B, projection_dim]).
* ``CLIPTextModel`` / ``CLIPTextModelWithProjection``: the ``text_encoder`` of ModelScope,
  zeroscope and AnimateDiff (input_ids [B, 77] -> last_hidden_state [B, 77, hidden], pooled).
* ``CLIPPromptEncoder``: a thin wrapper that computes diffusers' ``encode_prompt`` output for a
  fixed ``clip_skip``, so that value is a constant of the exported graph.

Submodules carry the checkpoint's own names (``vision_model.encoder.layers.0.self_attn.q_proj.weight``,
``text_model.embeddings.token_embedding.weight`` ...). The only renaming lives in
:func:`map_clip_text_weights` and :func:`map_clip_vision_weights`: transformers >= 5 saves a
bare ``CLIPTextModel`` without its ``text_model.`` prefix (checkpoints on the Hub have it), and
transformers < 4.31 saved the ``embeddings.position_ids`` buffer, which no network needs.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .layers import ACTIVATIONS, FP32, Conv2d, LayerNorm, Linear, get_activation, scaled_dot_product_attention
from .loading import register

# additive bias for masked attention scores, as transformers' eager path (torch.finfo(float32).min)
MASK_MIN = float(np.finfo(np.float32).min)


def _refuse_nested(config, nested: str, tower: str):
    if config.text_config is not None or config.vision_config is not None:
        raise ValueError(
            f"config.json nests 'text_config'/'vision_config' (a full CLIPConfig), but {tower} expects the flat "
            f"{nested} that transformers writes for this class. Save the tower alone "
            f"({tower}.save_pretrained) or copy the '{'vision_config' if 'Vision' in nested else 'text_config'}' "
            "dict to the top level of config.json."
        )


def _check_common(config):
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads {config.num_attention_heads}"
        )
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {config.hidden_act!r}; supported: {sorted(ACTIVATIONS)}")
    if not isinstance(config.layer_norm_eps, (int, float)) or isinstance(config.layer_norm_eps, bool):
        raise ValueError(f"layer_norm_eps must be a number, got {config.layer_norm_eps!r}")


# ============================================================================= shared blocks
class Embedding(nn.Cell):
    """torch.nn.Embedding: weight [num_embeddings, dim]; lookup with ops.gather."""

    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.weight = Parameter(
            Tensor(np.random.normal(0.0, 0.02, (num_embeddings, dim)).astype(np.float32)), name="weight"
        )

    def construct(self, ids):
        # ids: [...] int -> [..., dim]
        return ops.gather(self.weight, ids, 0)


class CLIPAttention(nn.Cell):
    """q_proj/k_proj/v_proj/out_proj, all with bias; scale head_dim ** -0.5."""

    def __init__(self, hidden_size: int, heads: int):
        super().__init__()
        self.heads = heads
        self.k_proj = Linear(hidden_size, hidden_size)
        self.v_proj = Linear(hidden_size, hidden_size)
        self.q_proj = Linear(hidden_size, hidden_size)
        self.out_proj = Linear(hidden_size, hidden_size)

    def construct(self, x, bias=None):
        # x: [B, N, D]; bias: additive, broadcastable to [B, heads, N, N], or None
        out = scaled_dot_product_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, bias)
        return self.out_proj(out)


class CLIPMLP(nn.Cell):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.act = get_activation(hidden_act)
        self.fc1 = Linear(hidden_size, intermediate_size)
        self.fc2 = Linear(intermediate_size, hidden_size)

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Cell):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config):
        super().__init__()
        self.self_attn = CLIPAttention(config.hidden_size, config.num_attention_heads)
        self.layer_norm1 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.layer_norm2 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def construct(self, x, bias=None):
        # x: [B, N, D]
        x = x + self.self_attn(self.layer_norm1(x), bias)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.num_layers = config.num_hidden_layers
        self.layers = nn.CellList([CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)])

    def construct(self, x, bias=None, num_layers=None):
        # x: [B, N, D]. Runs the first ``num_layers`` layers (a construction-time constant; None:
        # all of them), so the result is transformers' hidden_states[num_layers].
        n = self.num_layers if num_layers is None else num_layers
        for i in range(n):
            x = self.layers[i](x, bias)
        return x


# ============================================================================= vision tower
@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """transformers' CLIPVisionConfig (flat config.json of CLIPVisionModelWithProjection)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # training-only (dropout, initialisation); read so the config round-trips, unused here
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    # present only in a full CLIPConfig, which this tower refuses
    text_config: Optional[tuple] = None
    vision_config: Optional[tuple] = None

    def __post_init__(self):
        _refuse_nested(self, "CLIPVisionConfig", "CLIPVisionModelWithProjection")
        _check_common(self)
        for name in ("image_size", "patch_size", "num_channels", "projection_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"{name} must be a positive int (square images and patches only), got {value!r}"
                )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


class CLIPVisionEmbeddings(nn.Cell):
    """CLS token + non-overlapping patch conv (no bias) + learned positions (no interpolation)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.image_size = config.image_size
        self.hidden_size = config.hidden_size
        self.class_embedding = Parameter(
            Tensor(np.random.normal(0.0, 1.0, (config.hidden_size,)).astype(np.float32)), name="class_embedding"
        )
        self.patch_embedding = Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size, bias=False
        )
        self.position_embedding = Embedding(config.num_positions, config.hidden_size)

    def construct(self, pixel_values):
        # pixel_values: [B, C, S, S] -> [B, 1 + (S/p)^2, D]
        b, _, h, w = pixel_values.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"input image size ({h}*{w}) doesn't match the model ({self.image_size}*{self.image_size})")
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.astype(weight.dtype))  # [B, D, g, g]
        patches = patches.reshape(b, self.hidden_size, -1).transpose(0, 2, 1)  # [B, g*g, D]
        cls = ops.broadcast_to(self.class_embedding.reshape(1, 1, self.hidden_size), (b, 1, self.hidden_size))
        x = ops.cat((cls.astype(patches.dtype), patches), 1)
        return x + self.position_embedding.weight.astype(x.dtype)[None]


class CLIPVisionTransformer(nn.Cell):
    """transformers' CLIPVisionModel body (``vision_model.*``)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # sic, checkpoint name
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def construct(self, pixel_values):
        # -> last_hidden_state [B, N, D], pooler_output [B, D] (post-norm CLS token)
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        x = self.encoder(x)
        pooled = self.post_layernorm(x[:, 0, :])
        return x, pooled


class CLIPVisionModelWithProjection(nn.Cell):
    """pixel_values [B, C, image_size, image_size] (float) -> image_embeds [B, projection_dim]."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.config = config
        self.vision_model = CLIPVisionTransformer(config)
        self.visual_projection = Linear(config.hidden_size, config.projection_dim, bias=False)

    def construct(self, pixel_values):
        _, pooled = self.vision_model(pixel_values)
        return self.visual_projection(pooled)


# ============================================================================= text tower
@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """transformers' CLIPTextConfig (flat config.json of CLIPTextModel[WithProjection])."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: Optional[int] = 512  # used by CLIPTextModelWithProjection only
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: Optional[int] = 1  # not used by the network (padding is positional)
    bos_token_id: Optional[int] = 49406  # not used by the network
    # picks the pooled token: 2 (legacy configs) -> argmax(input_ids); else the first position
    # equal to eos_token_id (position 0 if there is none)
    eos_token_id: int = 49407
    # training-only (dropout, initialisation); read so the config round-trips, unused here
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    # present only in a full CLIPConfig, which this tower refuses
    text_config: Optional[tuple] = None
    vision_config: Optional[tuple] = None

    def __post_init__(self):
        _refuse_nested(self, "CLIPTextConfig", "CLIPTextModel")
        _check_common(self)
        for name in ("vocab_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.eos_token_id, int) or isinstance(self.eos_token_id, bool):
            raise ValueError(
                f"eos_token_id must be one int (it picks the pooled token), got {self.eos_token_id!r}; "
                "null or a list of eos ids is not supported"
            )
        if self.projection_dim is not None and (not isinstance(self.projection_dim, int) or self.projection_dim <= 0):
            raise ValueError(f"projection_dim must be a positive int or null, got {self.projection_dim!r}")


def text_attention_bias(causal, attention_mask, seq_len: int):
    """Additive bias [B or 1, 1, N, N] (float32): 0 where query i may attend key j, MASK_MIN
    elsewhere. ``causal`` is the [P, P] lower-triangular 0/1 table; ``attention_mask`` is the
    tokenizer's [B, N] 1 (token) / 0 (padding) mask or None."""
    allowed = causal[:seq_len, :seq_len][None, None]  # [1, 1, N, N]
    if attention_mask is not None:
        allowed = allowed * attention_mask.astype(FP32)[:, None, None, :]  # [B, 1, N, N]
    return (1.0 - allowed) * MASK_MIN


def pooled_token_index(input_ids, eos_token_id):
    """[B, N] ids -> [B, N] float32 one-hot of the pooled position, as transformers picks it:
    first argmax of the ids when eos_token_id == 2 (legacy configs), else the first position
    equal to eos_token_id, position 0 when there is none (torch's argmax of all zeros)."""
    n = input_ids.shape[-1]
    ids = input_ids.astype(ms.int32)
    positions = ops.arange(n, dtype=ms.int32).astype(FP32)[None]  # [1, N]
    if eos_token_id == 2:
        hit = ids == ids.max(-1, keepdims=True)
    else:
        hit = ids == eos_token_id
    first = ops.where(hit, positions, float(n)).min(-1, keepdims=True)  # [B, 1]
    first = ops.where(first >= float(n), 0.0, first)
    return (positions == first).astype(FP32)


class CLIPTextEmbeddings(nn.Cell):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.max_positions = config.max_position_embeddings
        self.token_embedding = Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = Embedding(config.max_position_embeddings, config.hidden_size)

    def construct(self, input_ids):
        # input_ids: [B, N] -> [B, N, D]; positions 0..N-1
        n = input_ids.shape[-1]
        if n > self.max_positions:
            raise ValueError(f"sequence length {n} exceeds max_position_embeddings {self.max_positions}")
        x = self.token_embedding(input_ids)
        return x + self.position_embedding.weight[:n][None].astype(x.dtype)


class CLIPTextTransformer(nn.Cell):
    """transformers' CLIPTextModel body (``text_model.*``)."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.eos_token_id = config.eos_token_id
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        p = config.max_position_embeddings
        self.causal = Tensor(np.tril(np.ones((p, p), np.float32)))  # a constant, not a weight

    def construct(self, input_ids, attention_mask=None, num_layers=None):
        # input_ids: [B, N] int; attention_mask: [B, N] 1/0 or None.
        # -> final_layer_norm(hidden_states[num_layers]) [B, N, D], pooled [B, D] picked from it.
        # num_layers is a construction-time constant (None: all layers, transformers' outputs).
        n = input_ids.shape[-1]
        x = self.embeddings(input_ids)
        bias = text_attention_bias(self.causal, attention_mask, n)
        x = self.final_layer_norm(self.encoder(x, bias, num_layers))
        onehot = pooled_token_index(input_ids, self.eos_token_id).astype(x.dtype)  # [B, N]
        pooled = (x * onehot[:, :, None]).sum(1)
        return x, pooled


class CLIPTextModel(nn.Cell):
    """input_ids [B, N<=max_position_embeddings] (int32/int64), attention_mask [B, N] (1/0) or None
    -> (last_hidden_state [B, N, hidden], pooler_output [B, hidden]), as transformers."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config)

    def construct(self, input_ids, attention_mask=None):
        return self.text_model(input_ids, attention_mask)


class CLIPTextModelWithProjection(nn.Cell):
    """-> (text_embeds [B, projection_dim], last_hidden_state [B, N, hidden]), transformers' order."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        if config.projection_dim is None:
            raise ValueError("CLIPTextModelWithProjection needs projection_dim in its config.json")
        self.config = config
        self.text_model = CLIPTextTransformer(config)
        self.text_projection = Linear(config.hidden_size, config.projection_dim, bias=False)

    def construct(self, input_ids, attention_mask=None):
        hidden, pooled = self.text_model(input_ids, attention_mask)
        return self.text_projection(pooled), hidden


class CLIPPromptEncoder(nn.Cell):
    """diffusers' ``encode_prompt`` body for a fixed ``clip_skip`` (a constant of the graph):

        None / 0: text_encoder(ids, attention_mask)[0]
        k >= 1:   final_layer_norm(hidden_states[-(k + 1)]), i.e. after num_hidden_layers - k layers

    Wraps a loaded CLIPTextModel or CLIPTextModelWithProjection (shares its weights; the layers
    past the skipped point are not run). input_ids [B, N], attention_mask [B, N] or None
    -> prompt_embeds [B, N, hidden]."""

    def __init__(self, text_encoder, clip_skip: Optional[int] = None):
        super().__init__()
        layers = text_encoder.config.num_hidden_layers
        if clip_skip is not None and (not isinstance(clip_skip, int) or not 0 <= clip_skip <= layers):
            raise ValueError(f"clip_skip must be None or an int in [0, {layers}] (num_hidden_layers), got {clip_skip!r}")
        self.clip_skip = clip_skip
        self.num_layers = layers - (clip_skip or 0)
        self.text_model = text_encoder.text_model

    def construct(self, input_ids, attention_mask=None):
        prompt_embeds, _ = self.text_model(input_ids, attention_mask, self.num_layers)
        return prompt_embeds


# ============================================================================= registry
def map_clip_vision_weights(key: str, value):
    """checkpoint key -> [(network key, value)]: drops the ``position_ids`` buffer that
    transformers < 4.31 saved."""
    if key.endswith("embeddings.position_ids"):
        return []
    return [(key, value)]


def map_clip_text_weights(key: str, value):
    """checkpoint key -> [(network key, value)]: drops the ``position_ids`` buffer that
    transformers < 4.31 saved, and restores the ``text_model.`` prefix that transformers >= 5
    leaves out when it saves a bare CLIPTextModel (Hub checkpoints have it)."""
    if key.endswith("embeddings.position_ids"):
        return []
    if key.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
        return [("text_model." + key, value)]
    return [(key, value)]


register("CLIPVisionModelWithProjection", CLIPVisionConfig, CLIPVisionModelWithProjection, map_clip_vision_weights)
register("CLIPTextModel", CLIPTextConfig, CLIPTextModel, map_clip_text_weights)
register("CLIPTextModelWithProjection", CLIPTextConfig, CLIPTextModelWithProjection, map_clip_text_weights)
