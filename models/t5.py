"""T5 encoder (transformers ``T5EncoderModel``), the text encoder of CogVideoX and Mochi (T5 v1.1 XXL).

input_ids [B, L] (+ optional attention_mask [B, L]) -> last_hidden_state [B, L, d_model].
CogVideoX runs it without an attention mask at a fixed length of 226 tokens
(``max_sequence_length``): every position, padding included, attends to every other one, as in
diffusers' ``CogVideoXPipeline._get_t5_prompt_embeds``. Mochi passes the tokenizer's mask (0/1):
padded keys then get the additive bias transformers builds for float32, finfo(float32).min, on
top of the relative position bias (a padded query row is still computed, as in transformers).

Submodules carry the checkpoint's own names (``encoder.block.0.layer.0.SelfAttention.q.weight``,
``encoder.block.0.layer.1.DenseReluDense.wi_0.weight``, ``shared.weight`` ...). The one renaming
lives in :func:`map_t5_weights`: ``encoder.embed_tokens.weight`` is tied to ``shared.weight``
(transformers saves only ``shared.weight``; some checkpoints store both).

Numerics as transformers: RMS norm ("T5LayerNorm") in float32, no 1/sqrt(d) scaling of the
attention scores, one relative position bias (bidirectional buckets) computed by block 0 and
shared by all blocks.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .layers import FP32, Linear, RMSNorm, gelu, scaled_dot_product_attention, silu
from .loading import register


# ============================================================================= config
# transformers ACT2FN names used by T5 configs -> our activation
T5_ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")


def t5_activation(x, name: str):
    # name is a construction-time constant, so this folds to one branch in GRAPH_MODE
    if name == "relu":
        return ops.relu(x)
    if name == "gelu":
        return gelu(x)  # exact (erf)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return gelu(x, "tanh")
    return silu(x)


@dataclasses.dataclass(frozen=True)
class T5Config:
    """transformers ``T5Config`` fields the encoder depends on, with transformers' defaults."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: Optional[int] = None  # decoder only; not built
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    use_cache: bool = True  # decoder only
    classifier_dropout: float = 0.0  # training only
    dense_act_fn: Optional[str] = None  # derived from feed_forward_proj; written by transformers
    is_gated_act: Optional[bool] = None  # derived from feed_forward_proj; written by transformers
    scale_decoder_outputs: bool = True  # decoder only

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} is not 'gated-ACT' or 'ACT' "
                             "(T5 v1.1 uses 'gated-gelu', the original T5 'relu')")
        if self.activation not in T5_ACTIVATIONS:
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r}: activation {self.activation!r} is not "
                             f"supported; supported: {sorted(T5_ACTIVATIONS)}")
        if self.dense_act_fn is not None and self.dense_act_fn != self.activation:
            raise ValueError(f"dense_act_fn {self.dense_act_fn!r} contradicts feed_forward_proj "
                             f"{self.feed_forward_proj!r} (which gives {self.activation!r})")
        if self.is_gated_act is not None and self.is_gated_act != self.gated:
            raise ValueError(f"is_gated_act {self.is_gated_act!r} contradicts feed_forward_proj "
                             f"{self.feed_forward_proj!r}")

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def activation(self) -> str:
        # transformers keeps "gated-gelu" on the tanh approximation for backwards compatibility
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]


# additive bias of a padded key (transformers: finfo(dtype).min; the scores are float32 here)
MASKED_BIAS = float(np.finfo(np.float32).min)


# ============================================================================= position buckets
def relative_position_buckets(query_length: int, key_length: int, num_buckets: int = 32,
                              max_distance: int = 128, bidirectional: bool = True) -> np.ndarray:
    """transformers ``T5Attention._relative_position_bucket`` over the (query, key) grid, int32
    [Lq, Lk]. The logarithmic bins are computed in float32 as torch does."""
    context = np.arange(query_length, dtype=np.int64)[:, None]
    memory = np.arange(key_length, dtype=np.int64)[None, :]
    relative = memory - context  # [Lq, Lk]
    buckets = np.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).astype(np.int64) * num_buckets
        relative = np.abs(relative)
    else:
        relative = -np.minimum(relative, 0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    with np.errstate(divide="ignore"):
        scaled = np.log(relative.astype(np.float32) / np.float32(max_exact)).astype(np.float32)
    scaled = (scaled / np.float32(math.log(max_distance / max_exact))).astype(np.float32)
    scaled = (scaled * np.float32(num_buckets - max_exact)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)  # .to(long) truncates
    large = np.minimum(large, num_buckets - 1)
    buckets += np.where(is_small, relative, large)
    return buckets.astype(np.int32)


# ============================================================================= network
class Embedding(nn.Cell):
    """torch.nn.Embedding: weight [num_embeddings, dim]."""

    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.weight = Parameter(Tensor(np.random.normal(0.0, 1.0, (num_embeddings, dim)).astype(np.float32)),
                                name="weight")

    def construct(self, ids):
        # ids: [...] int -> [..., dim]
        return ops.gather(self.weight, ids, 0)


class T5LayerNorm(RMSNorm):
    """T5's RMS norm: variance in float32, weight applied after, no bias. The output takes the
    weight's dtype (transformers: a half-precision model's norms cast back to half, so the fp32
    residual stream of an fp16 model feeds half-precision layers)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps, elementwise_affine=True)

    def construct(self, x):
        return super().construct(x.astype(FP32)).astype(self.weight.dtype)


def residual_add(x, y):
    """x + y with torch's type promotion: an fp16 sum with an fp32 ``wo`` output is fp32."""
    if x.dtype != y.dtype:
        return x.astype(FP32) + y.astype(FP32)
    return x + y


def clamp_fp16(x):
    """transformers' T5Block clamp of an fp16 residual stream: to the fp16 range, or 1000 below
    it when the stream already holds an inf."""
    if x.dtype != ms.float16:
        return x
    limit = ops.select(ops.isinf(x).any(), Tensor(65504.0 - 1000.0, ms.float16), Tensor(65504.0, ms.float16))
    return ops.clamp(x, -limit, limit)


class T5Attention(nn.Cell):
    """q/k/v/o without bias; block 0 also owns ``relative_attention_bias`` [num_buckets, heads]."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        inner = config.num_heads * config.d_kv
        self.heads = config.num_heads
        self.q = Linear(config.d_model, inner, bias=False)
        self.k = Linear(config.d_model, inner, bias=False)
        self.v = Linear(config.d_model, inner, bias=False)
        self.o = Linear(inner, config.d_model, bias=False)
        self.has_relative_attention_bias = has_relative_attention_bias
        if has_relative_attention_bias:
            self.relative_attention_bias = Embedding(config.relative_attention_num_buckets, config.num_heads)

    def compute_bias(self, buckets):
        # buckets: [L, L] int32 -> [1, heads, L, L]
        values = self.relative_attention_bias(buckets)  # [L, L, heads]
        return values.transpose(2, 0, 1)[None].astype(FP32)

    def construct(self, x, position_bias):
        # x: [B, L, d_model]; position_bias: [1, heads, L, L]
        out = scaled_dot_product_attention(self.q(x), self.k(x), self.v(x), self.heads, mask=position_bias,
                                           scale=1.0)
        return self.o(out)


class T5LayerSelfAttention(nn.Cell):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def construct(self, x, position_bias):
        return residual_add(x, self.SelfAttention(self.layer_norm(x), position_bias))


class T5DenseActDense(nn.Cell):
    """wi -> act -> wo (original T5)."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.wi = Linear(config.d_model, config.d_ff, bias=False)
        self.wo = Linear(config.d_ff, config.d_model, bias=False)
        self.act = config.activation

    def construct(self, x):
        return self.wo(t5_activation(self.wi(x), self.act).astype(self.wo.weight.dtype))


class T5DenseGatedActDense(nn.Cell):
    """act(wi_0 x) * wi_1 x -> wo (T5 v1.1)."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.wi_0 = Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = Linear(config.d_model, config.d_ff, bias=False)
        self.wo = Linear(config.d_ff, config.d_model, bias=False)
        self.act = config.activation

    def construct(self, x):
        # wo may be float32 in an fp16 network (``keep_fp32``): its input is cast to it, as transformers does
        return self.wo((t5_activation(self.wi_0(x), self.act) * self.wi_1(x)).astype(self.wo.weight.dtype))


class T5LayerFF(nn.Cell):
    def __init__(self, config: T5Config):
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(config) if config.gated else T5DenseActDense(config)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def construct(self, x):
        return residual_add(x, self.DenseReluDense(self.layer_norm(x)))


class T5Block(nn.Cell):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.layer = nn.CellList([T5LayerSelfAttention(config, has_relative_attention_bias), T5LayerFF(config)])

    def construct(self, x, position_bias):
        return clamp_fp16(self.layer[1](clamp_fp16(self.layer[0](x, position_bias))))


class T5Stack(nn.Cell):
    def __init__(self, config: T5Config, max_positions: int):
        super().__init__()
        self.block = nn.CellList([T5Block(config, i == 0) for i in range(config.num_layers)])
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.max_positions = max_positions
        # bucket of every (query, key) pair up to max_positions; a shorter sequence uses the
        # top-left corner (the bucket depends only on key - query)
        self.buckets = Tensor(relative_position_buckets(
            max_positions, max_positions, config.relative_attention_num_buckets,
            config.relative_attention_max_distance))

    def construct(self, x, attention_mask=None):
        # x: [B, L, d_model] (embedded tokens); attention_mask: [B, L] 0/1 or None (every key valid)
        length = x.shape[1]
        if length > self.max_positions:
            raise ValueError(f"T5 encoder: sequence length {length} exceeds the {self.max_positions} positions "
                             "the relative-bias table was built for; build with a larger max_positions")
        position_bias = self.block[0].layer[0].SelfAttention.compute_bias(self.buckets[:length, :length])
        if attention_mask is not None:
            # [1, heads, L, L] + [B, 1, 1, L] -> [B, heads, L, L]
            masked = (1.0 - attention_mask.astype(FP32)) * MASKED_BIAS
            position_bias = position_bias + masked[:, None, None, :]
        for block in self.block:
            x = block(x, position_bias)
        return self.final_layer_norm(x)


class T5EncoderModel(nn.Cell):
    """input_ids [B, L] int32, attention_mask [B, L] 0/1 (optional) -> last_hidden_state [B, L, d_model]
    float32 (computed in the weights' dtype)."""

    def __init__(self, config: T5Config, max_positions: int = 512):
        super().__init__()
        self.config = config
        self.shared = Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, max_positions)

    def construct(self, input_ids, attention_mask=None):
        return self.encoder(self.shared(input_ids), attention_mask).astype(FP32)


def map_t5_weights(key: str, value):
    """``encoder.embed_tokens.weight`` is the tied ``shared.weight``; the decoder (T5Model,
    T5ForConditionalGeneration checkpoints) and the LM head are not part of the encoder."""
    if key == "encoder.embed_tokens.weight":
        return [("shared.weight", value)]
    if key.startswith(("decoder.", "lm_head.")):
        return []
    return [(key, value)]


def build_t5_encoder(config: T5Config, max_positions: int = 512):
    return T5EncoderModel(config, max_positions=max_positions)


register("T5EncoderModel", T5Config, build_t5_encoder, map_t5_weights, keep_fp32=("wo",))
