"""Llama decoder stack (transformers ``LlamaModel``) as a text encoder: HunyuanVideo's text_encoder
(llava-llama-3-8b's language model, 32 layers, 4096 wide, 32 query / 8 key-value heads).

input_ids [B, L] int32, attention_mask [B, L] 0/1 -> one hidden state [B, L, hidden_size] float32.

Which hidden state. transformers' ``output_hidden_states=True`` returns num_hidden_layers + 1 states:
``hidden_states[0]`` is the token embedding, ``hidden_states[i]`` the output of decoder layer i
(no norm) for 1 <= i < n, and ``hidden_states[n]`` (= ``hidden_states[-1]``) the output of the last
layer *with* the final RMSNorm applied (it is tied to ``last_hidden_state``). HunyuanVideoPipeline
takes ``hidden_states[-(num_hidden_layers_to_skip + 1)]``, ``hidden_states[-3]`` by default: the
output of layer n - 2, unnormalised. The index is the build kwarg ``hidden_state_index`` (a Python
index into that tuple); the graph runs only the layers it needs, and applies ``norm`` only for the
last index. All layers are still built so that the checkpoint loads strictly (the unused layers'
weights are not part of the compiled graph).

Attention: grouped-query attention (num_key_value_heads key/value heads, each shared by
num_attention_heads / num_key_value_heads consecutive query heads, as transformers' ``repeat_kv``),
rotary embeddings (rotate-half form; positions 0..L-1 whatever the padding, as transformers does
when no position_ids are given), a causal mask plus the padding mask on keys: a blocked (query, key)
pair gets the additive bias finfo(float32).min (transformers' choice). A query row whose every key
is blocked (a left-padded prompt's leading pads) is not reproduced: HunyuanVideo's tokenizer pads on
the right, where every row sees at least token 0.

The rotary tables (cos, sin for positions 0..max_positions-1) are computed at construction in
numpy from ``rope_theta`` and ``rope_scaling`` ("default", "linear", "llama3" and, up to
max_position_embeddings, "dynamic" rope types).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .layers import FP32, Linear, get_activation, scaled_dot_product_attention
from .loading import register
from .t5 import Embedding

# additive bias of a blocked (query, key) pair: transformers' finfo(float32).min
MASKED = float(np.finfo(np.float32).min)

# "dynamic" (dynamic NTK) equals "default" up to max_position_embeddings, the longest sequence a built
# network accepts for it (beyond, transformers rescales the frequencies for each sequence length)
ROPE_TYPES = ("default", "linear", "llama3", "dynamic")


# ============================================================================= config
@dataclass(frozen=True)
class LlamaConfig:
    """transformers ``LlamaConfig``: every field the network depends on, transformers' defaults.
    transformers 5 writes the rotary settings as ``rope_parameters`` ({"rope_theta", "rope_type",
    ...}); older snapshots (HunyuanVideo's) write ``rope_theta`` and ``rope_scaling``. Both load."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: Optional[int] = None  # None: num_attention_heads (no grouping)
    head_dim: Optional[int] = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[tuple] = None  # frozen dict: (("rope_type", "llama3"), ("factor", 8.0), ...)
    rope_parameters: Optional[tuple] = None  # transformers 5: (("rope_theta", ...), ("rope_type", ...), ...)
    attention_bias: bool = False
    mlp_bias: bool = False
    pretraining_tp: int = 1  # training-time tensor parallelism; no effect on the forward
    use_cache: bool = True  # generation only
    layer_norm_eps: Optional[float] = None  # written by HunyuanVideo's tiny test config; Llama does not read it
    projection_dim: Optional[int] = None  # idem

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.kv_heads}")
        if self.dim_head % 2:
            raise ValueError(f"head_dim {self.dim_head} must be even (rotary halves)")
        get_activation(self.hidden_act)  # raises with the supported names
        rope = self.rope
        if rope.get("rope_type", "default") not in ROPE_TYPES:
            raise ValueError(f"rope type {rope.get('rope_type')!r} is not supported; supported: {ROPE_TYPES}")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not supported")

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def rope(self) -> dict:
        """The rotary settings as one dict with ``rope_theta`` and ``rope_type`` (transformers'
        ``standardize_rope_params``)."""
        if self.rope_parameters is not None:
            out = dict(self.rope_parameters)
        else:
            out = dict(self.rope_scaling or ())
            out.setdefault("rope_theta", self.rope_theta)
        if "type" in out and "rope_type" not in out:
            out["rope_type"] = out.pop("type")
        out.setdefault("rope_type", "default")
        out.setdefault("rope_theta", self.rope_theta)
        return out


# ============================================================================= rotary tables (numpy)
def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """transformers' inverse frequencies for the config's rope type: [head_dim / 2] float32."""
    rope = config.rope
    dim = config.dim_head
    base = float(rope["rope_theta"])
    kind = rope["rope_type"]
    if kind == "dynamic":
        # transformers' _compute_dynamic_ntk_parameters at seq_len = max_position_embeddings
        factor, length = rope["factor"], config.max_position_embeddings
        base = base * ((factor * length / length) - (factor - 1)) ** (dim / (dim - 2))
    exponent = (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)).astype(np.float32)
    # torch: 1.0 / (base ** exponent) with a python-float base and a float32 exponent -> float32
    inv_freq = (1.0 / np.power(np.float32(base), exponent, dtype=np.float32)).astype(np.float32)
    if kind == "linear":
        inv_freq = (inv_freq / np.float32(rope["factor"])).astype(np.float32)
    elif kind == "llama3":
        factor = rope["factor"]
        low, high = rope["low_freq_factor"], rope["high_freq_factor"]
        old_context = rope["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_context / low, old_context / high
        # torch evaluates ``scalar / tensor`` as ``tensor.reciprocal() * scalar``; so does this
        wavelen = ((np.float32(1.0) / inv_freq) * np.float32(2 * math.pi)).astype(np.float32)
        scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
        ratio = ((np.float32(1.0) / wavelen) * np.float32(old_context)).astype(np.float32)
        smooth = ((ratio - np.float32(low)) / np.float32(high - low)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_tables(config: LlamaConfig, num_positions: int) -> tuple:
    """cos, sin for positions 0..num_positions-1: [num_positions, head_dim] float32 each, the two
    halves repeated (transformers ``LlamaRotaryEmbedding``; these rope types scale nothing after)."""
    freqs = (np.arange(num_positions, dtype=np.float32)[:, None] * rope_inv_freq(config)[None, :]).astype(np.float32)
    emb = np.concatenate([freqs, freqs], -1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def rotate_half_apply(x, cos, sin):
    # x: [B, L, heads, d]; cos/sin: [L, 1, d] -> x * cos + rotate_half(x) * sin
    d = x.shape[-1]
    rotated = ops.cat((-x[..., d // 2:], x[..., :d // 2]), -1)
    return x * cos + rotated * sin


# ============================================================================= network
class LlamaRMSNorm(nn.Cell):
    """Normalised in float32, cast back to the input dtype, then times the weight (transformers)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(Tensor(np.ones(dim, np.float32)), name="weight")

    def construct(self, x):
        dtype = x.dtype
        h = x.astype(FP32)
        h = h * ops.rsqrt((h * h).mean(-1, keep_dims=True) + self.eps)
        return self.weight * h.astype(dtype)


class LlamaAttention(nn.Cell):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        c = config
        d = c.dim_head
        self.heads = c.num_attention_heads
        self.kv_heads = c.kv_heads
        self.dim_head = d
        self.q_proj = Linear(c.hidden_size, c.num_attention_heads * d, bias=c.attention_bias)
        self.k_proj = Linear(c.hidden_size, c.kv_heads * d, bias=c.attention_bias)
        self.v_proj = Linear(c.hidden_size, c.kv_heads * d, bias=c.attention_bias)
        self.o_proj = Linear(c.num_attention_heads * d, c.hidden_size, bias=c.attention_bias)

    def _expand(self, x):
        # [B, L, kv_heads * d] -> [B, L, heads * d]: kv head i serves query heads i*rep .. i*rep+rep-1
        b, n, _ = x.shape
        rep = self.heads // self.kv_heads
        if rep == 1:
            return x
        x = ops.broadcast_to(x.reshape(b, n, self.kv_heads, 1, self.dim_head), (b, n, self.kv_heads, rep, self.dim_head))
        return x.reshape(b, n, self.heads * self.dim_head)

    def construct(self, x, cos, sin, bias):
        # x: [B, L, hidden]; cos/sin: [L, 1, d]; bias: [B, 1, L, L] additive
        b, n, _ = x.shape
        d = self.dim_head
        q = rotate_half_apply(self.q_proj(x).reshape(b, n, self.heads, d), cos, sin)
        k = rotate_half_apply(self.k_proj(x).reshape(b, n, self.kv_heads, d), cos, sin)
        q = q.reshape(b, n, self.heads * d)
        k = self._expand(k.reshape(b, n, self.kv_heads * d))
        v = self._expand(self.v_proj(x))
        return self.o_proj(scaled_dot_product_attention(q, k, v, self.heads, mask=bias))


class LlamaMLP(nn.Cell):
    """down_proj(act(gate_proj x) * up_proj x) (SwiGLU with silu; the act is the config's)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        c = config
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.act = get_activation(c.hidden_act)

    def construct(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Cell):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def construct(self, x, cos, sin, bias):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, bias)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Cell):
    """``construct(input_ids [B, L] int32, attention_mask [B, L] 0/1)`` -> ``hidden_states[hidden_state_index]``
    of transformers' output, [B, L, hidden_size] float32 (computed in the weights' dtype).

    Build kwargs: ``hidden_state_index`` (default -3, HunyuanVideoPipeline's
    ``-(num_hidden_layers_to_skip + 1)`` with 2 skipped layers; -1 is the normed last layer, 0 the
    embeddings) and ``max_positions`` (the longest L the graph may see; default
    max_position_embeddings)."""

    def __init__(self, config: LlamaConfig, hidden_state_index: int = -3, max_positions: Optional[int] = None):
        super().__init__()
        self.config = config
        n = config.num_hidden_layers
        if not -(n + 1) <= hidden_state_index <= n:
            raise ValueError(f"hidden_state_index {hidden_state_index} is out of range for {n} layers "
                             f"({n + 1} hidden states: -{n + 1} .. {n})")
        self.hidden_state_index = hidden_state_index
        # layers to run: hidden_states[i] is the output after i layers (i = n: normed)
        self.num_run = hidden_state_index % (n + 1)
        self.apply_norm = self.num_run == n
        self.max_positions = max_positions or config.max_position_embeddings
        if config.rope["rope_type"] == "dynamic" and self.max_positions > config.max_position_embeddings:
            raise ValueError(f"max_positions {self.max_positions} exceeds max_position_embeddings "
                             f"{config.max_position_embeddings}: past it the 'dynamic' rope frequencies depend on "
                             "the sequence length, which this network does not reproduce")
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.CellList([LlamaDecoderLayer(config) for _ in range(n)])
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        cos, sin = rope_tables(config, self.max_positions)
        self.rope_cos = Tensor(cos)
        self.rope_sin = Tensor(sin)

    def construct(self, input_ids, attention_mask):
        b, n = input_ids.shape
        if n > self.max_positions:
            raise ValueError(f"LlamaModel: sequence length {n} exceeds max_positions {self.max_positions} "
                             "the rotary tables were built for; build with a larger max_positions")
        dtype = self.embed_tokens.weight.dtype
        x = self.embed_tokens(input_ids)  # [B, L, hidden]
        cos = self.rope_cos[:n].astype(dtype)[:, None, :]  # [L, 1, d]
        sin = self.rope_sin[:n].astype(dtype)[:, None, :]
        # blocked: a later key (causal) or a padded key -> finfo.min
        causal = Tensor(np.triu(np.ones((n, n), np.float32), 1))  # [L, L], 1 above the diagonal
        padded = 1.0 - attention_mask.astype(FP32)  # [B, L]
        blocked = ops.maximum(causal[None, None], padded[:, None, None, :])  # [B, 1, L, L]
        bias = blocked * MASKED
        for i in range(self.num_run):
            x = self.layers[i](x, cos, sin, bias)
        if self.apply_norm:
            x = self.norm(x)
        return x.astype(FP32)


def map_llama_weights(key: str, value):
    """A ``LlamaForCausalLM`` checkpoint holds the same stack under ``model.``; its LM head is not used."""
    if key.startswith("model."):
        return [(key[len("model."):], value)]
    if key.startswith("lm_head."):
        return []
    return [(key, value)]


def build_llama(config: LlamaConfig, hidden_state_index: int = -3, max_positions: Optional[int] = None):
    return LlamaModel(config, hidden_state_index=hidden_state_index, max_positions=max_positions)


register("LlamaModel", LlamaConfig, build_llama)
register("LlamaForCausalLM", LlamaConfig, build_llama, map_llama_weights)
