"""Building blocks shared by every family: norms, activations, linear/conv layers, attention,
feed-forward, resnet blocks, up/down sampling and timestep embeddings.

Each block carries diffusers' submodule names (``to_q``, ``to_out.0``, ``net.0.proj``, ``norm1`` ...)
so that a checkpoint's keys load without renaming. Everything here compiles in GRAPH_MODE:
shapes are read from ``x.shape`` (static at export time) and all Python control flow depends
only on construction-time constants.

Numerics: norms, softmax and timestep embeddings are computed in float32 whatever the compute
dtype is (mindone upcasts the same places for SVD and I2VGen-XL), then cast back.
"""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

FP32 = ms.float32


# ----------------------------------------------------------------------------- activations
def silu(x):
    return x * ops.sigmoid(x)


def gelu(x, approximate: str = "none"):
    # exact (erf) GELU as torch.nn.functional.gelu; "tanh" for gelu-approximate. In float32 for a
    # half-precision x, as torch's CPU kernels compute it
    dtype = x.dtype
    h = x.astype(FP32)
    if approximate == "tanh":
        # 0.5 * (1 + tanh(u)) == sigmoid(2u): MindSpore's CPU Tanh is off by up to 1e-4 (torch's by an
        # ulp), Sigmoid by < 1e-6
        return (h * ops.sigmoid(1.5957691216057308 * (h + 0.044715 * h * h * h))).astype(dtype)
    # the Erf kernel, 5 ops a call. A polynomial erf (Abramowitz-Stegun 7.1.26, ~20 elementwise ops)
    # was faster on an AMD EPYC, but in the SVD-XT small UNet's per-op profile on an Intel Xeon its
    # ops took about 190 ms a step against 115 ms for Erf (benchmarks/NOTES.md, change 7)
    return (h * (0.5 + 0.5 * ops.erf(h * 0.7071067811865476))).astype(dtype)


def tanh(x):
    """tanh in float32 as torch's to ~2e-6 relative. MindSpore 2.7.1's CPU Tanh kernel is off by up to 1e-4
    relative for 1 <= |x| < 9 (within 3e-7 below 1); there 2 * sigmoid(2x) - 1 is within 2e-6."""
    h = x.astype(FP32)
    return ops.where(ops.abs(h) < 1.0, ops.tanh(h), 2.0 * ops.sigmoid(2.0 * h) - 1.0).astype(x.dtype)


def gelu_tanh(x):
    # a named function, not a lambda: GRAPH_MODE parses a lambda from its source line
    return gelu(x, "tanh")


def quick_gelu(x):
    return x * ops.sigmoid(1.702 * x)


ACTIVATIONS = {
    "silu": silu,
    "swish": silu,
    "gelu": gelu,
    "gelu_pytorch_tanh": gelu_tanh,
    # transformers' names for the same tanh approximation (ACT2FN "gelu_new", "gelu_fast")
    "gelu_new": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "quick_gelu": quick_gelu,
    "relu": ops.relu,
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ----------------------------------------------------------------------------- norms
def _centred_rstd(h, n: int, eps: float):
    """h: [M, n] float32 -> (h - mean, rsqrt(var + eps)) per row ([M, n], [M, 1]). The means are
    matmuls with a 1/n column: MindSpore's CPU reduction kernels are several times slower than its
    matmul. Two passes (mean, then the mean of the centred squares) keep the variance as accurate
    as torch's."""
    col = ops.ones((n, 1), FP32) * (1.0 / n)
    h = h - ops.matmul(h, col)
    return h, ops.rsqrt(ops.matmul(h * h, col) + eps)


def _row_stats(h, n: int, eps: float):
    """h: [M, n] float32 -> (h - mean) * rsqrt(var + eps), per row."""
    h, rstd = _centred_rstd(h, n, eps)
    return h * rstd


class GroupNorm(nn.Cell):
    """torch.nn.GroupNorm over [N, C, *spatial]; statistics in float32."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = Parameter(Tensor(np.ones(num_channels, np.float32)), name="weight")
            self.bias = Parameter(Tensor(np.zeros(num_channels, np.float32)), name="bias")

    def construct(self, x):
        shape = x.shape
        dtype = x.dtype
        n = 1
        for s in shape[1:]:
            n *= s
        n = n // self.num_groups
        # [N, C, *spatial] -> [N*groups, C/groups*spatial]
        h, rstd = _centred_rstd(x.reshape(shape[0] * self.num_groups, n).astype(FP32), n, self.eps)
        if not self.affine:
            return (h * rstd).reshape(shape).astype(dtype)
        # one full-size multiply-add: the per-group rstd and the per-channel weight fold into one
        # [N, C] scale first
        scale = rstd.reshape(shape[0], self.num_groups, 1) * self.weight.astype(FP32).reshape(1, self.num_groups, -1)
        h = h.reshape(shape[0], self.num_channels, -1) * scale.reshape(shape[0], self.num_channels, 1) \
            + self.bias.astype(FP32).reshape(-1, 1)
        return h.reshape(shape).astype(dtype)


class LayerNorm(nn.Cell):
    """torch.nn.LayerNorm over the last dimension; statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.has_bias = bias and elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(Tensor(np.ones(dim, np.float32)), name="weight")
        if self.has_bias:
            self.bias = Parameter(Tensor(np.zeros(dim, np.float32)), name="bias")

    def construct(self, x):
        dtype = x.dtype
        shape = x.shape
        d = shape[-1]
        h = _row_stats(x.reshape(-1, d).astype(FP32), d, self.eps).reshape(shape)  # [..., d]
        if self.elementwise_affine:
            h = h * self.weight.astype(FP32)
        if self.has_bias:
            h = h + self.bias.astype(FP32)
        return h.astype(dtype)


class RMSNorm(nn.Cell):
    """T5 / diffusers RMSNorm over the last dimension (no mean subtraction)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(Tensor(np.ones(dim, np.float32)), name="weight")

    def construct(self, x):
        dtype = x.dtype
        h = x.astype(FP32)
        h = h * ops.rsqrt((h * h).mean(-1, keep_dims=True) + self.eps)
        if self.elementwise_affine:
            h = h * self.weight.astype(FP32)
        return h.astype(dtype)


# ----------------------------------------------------------------------------- linear / conv
class Linear(nn.Cell):
    """torch.nn.Linear: weight [out, in], optional bias; works on any leading shape."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(
            Tensor(np.random.uniform(-bound, bound, (out_features, in_features)).astype(np.float32)), name="weight"
        )
        self.has_bias = bias
        if bias:
            self.bias = Parameter(Tensor(np.zeros(out_features, np.float32)), name="bias")
        # x @ weight^T without materialising weight.T: in GRAPH_MODE ``weight.T`` is a Transpose
        # of the whole weight on every call (7x slower for a 1280x10240 layer at 32 rows)
        self.matmul_nt = ops.MatMul(transpose_b=True)

    def construct(self, x):
        # x: [..., in] -> [..., out]
        lead = x.shape[:-1]
        h = self.matmul_nt(x.reshape(-1, self.in_features), self.weight)
        if self.has_bias:
            h = h + self.bias
        return h.reshape(lead + (self.out_features,))


def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class _ConvNd(nn.Cell):
    """torch.nn.Conv{2,3}d with zero padding; weight [out, in, *kernel], torch's default init."""

    def __init__(self, rank, in_channels, out_channels, kernel_size, stride, padding, bias):
        super().__init__()
        k = _tuple(kernel_size, rank)
        self.stride = _tuple(stride, rank)
        p = _tuple(padding, rank)
        self.padding = p  # symmetric, per spatial dim
        fan_in = in_channels * int(np.prod(k))
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = Parameter(
            Tensor(np.random.uniform(-bound, bound, (out_channels, in_channels) + k).astype(np.float32)), name="weight"
        )
        self.has_bias = bias
        self.bias = Parameter(Tensor(np.zeros(out_channels, np.float32)), name="bias") if bias else None


class Conv2d(_ConvNd):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__(2, in_channels, out_channels, kernel_size, stride, padding, bias)

    def construct(self, x):
        # x: [N, C, H, W]
        return ops.conv2d(x, self.weight, self.bias, self.stride, "pad", self.padding)


class Conv3d(_ConvNd):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__(3, in_channels, out_channels, kernel_size, stride, padding, bias)
        k = tuple(self.weight.shape[2:])
        # a kernel over time only (UNet3D's temporal convs, (3, 1, 1)) runs as a Conv2d over
        # [N, C, T, H*W]: MindSpore's CPU Conv2d is 1.5x (320 channels) to 4x (1280) faster than its
        # Conv3d at the same work, and the result is the same up to summation order
        self.temporal_only = k[1:] == (1, 1) and self.stride[1:] == (1, 1) and self.padding[1:] == (0, 0)
        if self.temporal_only:
            # the weight is kept as the Conv2d kernel [out, in, k, 1]: reshaping it in the graph
            # copied all of it on every call (3.5 ms a call for a 1280-channel layer). The loader
            # reads the checkpoint's [out, in, k, 1, 1] into it (see ``checkpoint_shape``)
            five = tuple(self.weight.shape)
            self.weight = Parameter(Tensor(self.weight.asnumpy().reshape(five[:3] + (1,))), name="weight")
            self.weight.checkpoint_shape = five

    def construct(self, x):
        # x: [N, C, T, H, W]; a temporal-only conv also takes [N, C, T, H*W]
        if self.temporal_only:
            shape = x.shape
            y = ops.conv2d(x.reshape(shape[:3] + (-1,)), self.weight, self.bias, (self.stride[0], 1), "pad",
                           (self.padding[0], 0))
            return y.reshape(y.shape[:3] + shape[3:])
        return ops.conv3d(x, self.weight, self.bias, self.stride, "pad", self.padding)


def checkpoint_shape(param) -> tuple:
    """The shape a parameter has in a diffusers checkpoint; a layer that keeps a weight in another
    layout of the same values (Conv3d's temporal-only kernel) records it on the parameter."""
    return tuple(getattr(param, "checkpoint_shape", None) or param.shape)


def parameters_by_name(cell: nn.Cell) -> dict:
    """Checkpoint-style names (``down_blocks.0.resnets.1.conv1.weight``) -> Parameter."""
    return dict(cell.parameters_and_names())


# ----------------------------------------------------------------------------- attention
def scaled_dot_product_attention(q, k, v, heads: int, mask=None, scale: float | None = None):
    """q: [B, Nq, heads*d], k/v: [B, Nk, heads*d] -> [B, Nq, heads*d].

    Runs as 3-D batched matmuls over B*heads with the softmax in float32. ``mask`` is an
    additive bias broadcastable to [B, heads, Nq, Nk] (or None). ``scale`` multiplies the
    query (None: d ** -0.5; T5 uses 1.0)."""
    b, nq, inner = q.shape
    nk = k.shape[1]
    d = inner // heads
    dtype = q.dtype
    # [B, N, heads, d] -> [B*heads, N, d]
    q = q.reshape(b, nq, heads, d).transpose(0, 2, 1, 3).reshape(b * heads, nq, d)
    k = k.reshape(b, nk, heads, d).transpose(0, 2, 1, 3).reshape(b * heads, nk, d)
    v = v.reshape(b, nk, heads, d).transpose(0, 2, 1, 3).reshape(b * heads, nk, d)
    if scale is None:
        scale = d ** -0.5
    if scale != 1.0:
        q = q * scale
    scores = ops.bmm(q, k.transpose(0, 2, 1)).astype(FP32)  # [B*heads, Nq, Nk]
    if mask is not None:
        scores = (scores.reshape(b, heads, nq, nk) + mask.astype(FP32)).reshape(b * heads, nq, nk)
    probs = ops.softmax(scores, -1).astype(dtype)
    out = ops.bmm(probs, v)  # [B*heads, Nq, d]
    return out.reshape(b, heads, nq, d).transpose(0, 2, 1, 3).reshape(b, nq, inner)


class Attention(nn.Cell):
    """diffusers ``Attention`` with the default processor: to_q/to_k/to_v, to_out.0,
    optional group norm on the input and residual connection (the VAE mid-block form)."""

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        bias: bool = False,
        out_bias: bool = True,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
        residual_connection: bool = False,
        rescale_output_factor: float = 1.0,
        out_dim: int | None = None,
    ):
        super().__init__()
        inner = out_dim if out_dim is not None else heads * dim_head
        self.heads = out_dim // dim_head if out_dim is not None else heads
        kv_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.group_norm = GroupNorm(norm_num_groups, query_dim, eps=eps) if norm_num_groups else None
        self.to_q = Linear(query_dim, inner, bias=bias)
        self.to_k = Linear(kv_dim, inner, bias=bias)
        self.to_v = Linear(kv_dim, inner, bias=bias)
        self.to_out = nn.CellList([Linear(inner, out_dim if out_dim is not None else query_dim, bias=out_bias)])
        self.residual_connection = residual_connection
        self.rescale_output_factor = rescale_output_factor

    def construct(self, hidden_states, encoder_hidden_states=None, attention_mask=None):
        # attention_mask: optional additive bias broadcastable to [B, heads, Nq, Nk] (HunyuanVideo's
        # causal frame mask in its VAE mid-block)
        residual = hidden_states
        in_shape = hidden_states.shape
        spatial = len(in_shape) == 4
        if spatial:
            # [B, C, H, W] -> [B, C, H*W]
            hidden_states = hidden_states.reshape(in_shape[0], in_shape[1], -1)
            if self.group_norm is not None:
                hidden_states = self.group_norm(hidden_states)
            hidden_states = hidden_states.transpose(0, 2, 1)  # [B, H*W, C]
        elif self.group_norm is not None:
            hidden_states = self.group_norm(hidden_states.transpose(0, 2, 1)).transpose(0, 2, 1)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if context.shape[1] == 1 and len(hidden_states.shape) == 3:
            # one key (SVD's image embedding): softmax over one score is exactly 1, so every query
            # gets v; to_q, to_k and the score matmuls drop out and to_out runs once per batch row.
            # context: [B, 1, D] -> out [B, 1, C] -> broadcast to [B, N, C]
            b, nq = hidden_states.shape[0], hidden_states.shape[1]
            out = self.to_out[0](self.to_v(context))
            out = ops.broadcast_to(out, (b, nq, out.shape[-1]))
        else:
            out = scaled_dot_product_attention(
                self.to_q(hidden_states), self.to_k(context), self.to_v(context), self.heads, mask=attention_mask
            )
            out = self.to_out[0](out)
        if spatial:
            out = out.transpose(0, 2, 1).reshape(in_shape)
        if self.residual_connection:
            out = out + residual
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out


# ----------------------------------------------------------------------------- feed-forward
class GELUProj(nn.Cell):
    """diffusers GELU / GEGLU: ``proj`` then (gated) GELU."""

    def __init__(self, dim_in: int, dim_out: int, gated: bool, approximate: str = "none", bias: bool = True):
        super().__init__()
        self.gated = gated
        self.approximate = approximate
        self.proj = Linear(dim_in, dim_out * 2 if gated else dim_out, bias=bias)

    def construct(self, x):
        h = self.proj(x)
        if self.gated:
            h, gate = ops.chunk(h, 2, -1)
            return h * gelu(gate, self.approximate)
        return gelu(h, self.approximate)


class SwiGLU(nn.Cell):
    """diffusers SwiGLU: ``proj`` to twice the width, then hidden * silu(gate)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2, bias=bias)

    def construct(self, x):
        h, gate = ops.chunk(self.proj(x), 2, -1)
        return h * silu(gate)


class LinearActivation(nn.Cell):
    """diffusers LinearActivation: ``proj`` then an activation (FeedForward "linear-silu")."""

    def __init__(self, dim_in: int, dim_out: int, activation: str = "silu", bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out, bias=bias)
        self.act = get_activation(activation)

    def construct(self, x):
        return self.act(self.proj(x))


class Identity(nn.Cell):
    def construct(self, x):
        return x


class FeedForward(nn.Cell):
    """diffusers FeedForward: net.0 (activation projection), net.1 dropout, net.2 Linear."""

    _ACTS = {
        "geglu": (True, "none"),
        "geglu-approximate": (True, "tanh"),
        "gelu": (False, "none"),
        "gelu-approximate": (False, "tanh"),
        "swiglu": (True, "silu"),  # SwiGLU (Mochi)
        "linear-silu": (False, "linear-silu"),  # Linear then SiLU (HunyuanVideo's token refiner)
    }

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, activation_fn: str = "geglu",
                 inner_dim: int | None = None, bias: bool = True):
        super().__init__()
        if activation_fn not in self._ACTS:
            raise ValueError(f"unsupported feed-forward activation {activation_fn!r}; supported: {sorted(self._ACTS)}")
        inner = inner_dim if inner_dim is not None else int(dim * mult)
        gated, approx = self._ACTS[activation_fn]
        self.net = nn.CellList([
            SwiGLU(dim, inner, bias=bias) if approx == "silu"
            else LinearActivation(dim, inner, "silu", bias=bias) if approx == "linear-silu"
            else GELUProj(dim, inner, gated, approx, bias=bias),
            Identity(),
            Linear(inner, dim_out if dim_out is not None else dim, bias=bias),
        ])

    def construct(self, x):
        return self.net[2](self.net[0](x))


# ----------------------------------------------------------------------------- resnets, sampling
class ResnetBlock2D(nn.Cell):
    """diffusers ResnetBlock2D (time_embedding_norm="default", SiLU)."""

    def __init__(self, in_channels: int, out_channels: int | None = None, temb_channels: int | None = 512,
                 groups: int = 32, groups_out: int | None = None, eps: float = 1e-6,
                 output_scale_factor: float = 1.0, use_in_shortcut: bool | None = None,
                 conv_shortcut_bias: bool = True):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = GroupNorm(groups, in_channels, eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = GroupNorm(groups_out or groups, out_channels, eps)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        use_shortcut = in_channels != out_channels if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = Conv2d(in_channels, out_channels, 1, bias=conv_shortcut_bias) if use_shortcut else None
        self.output_scale_factor = output_scale_factor

    def construct(self, x, temb=None):
        # x: [N, C, H, W]; temb: [N, T]
        h = self.conv1(silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(silu(temb))[:, :, None, None]
        h = self.conv2(silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


def upsample_nearest2x(x):
    # x: [N, C, H, W] -> [N, C, 2H, 2W]
    n, c, h, w = x.shape
    x = ops.broadcast_to(x.reshape(n, c, h, 1, w, 1), (n, c, h, 2, w, 2))
    return x.reshape(n, c, 2 * h, 2 * w)


class Upsample2D(nn.Cell):
    """Nearest 2x (or to an explicit size) followed by a 3x3 conv, as diffusers Upsample2D."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        self.conv = Conv2d(channels, out_channels or channels, 3, padding=1) if use_conv else None

    def construct(self, x, output_size=None):
        if output_size is None:
            x = upsample_nearest2x(x)
        else:
            x = ops.interpolate(x, size=output_size, mode="nearest")
        if self.conv is not None:
            x = self.conv(x)
        return x


class Downsample2D(nn.Cell):
    """Stride-2 3x3 conv; with padding=0 the input is first padded by (0, 1, 0, 1) as diffusers does."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        if not use_conv:
            raise ValueError("Downsample2D without a conv (average pooling) is not used by any supported family")
        self.padding = padding
        self.conv = Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding)

    def construct(self, x):
        if self.padding == 0:
            x = pad_bottom_right(x)
        return self.conv(x)


class ResnetStack(nn.Cell):
    """Resnets in sequence, then at most one resampler, under the checkpoint names ``resnets.N`` and
    ``downsamplers.0`` / ``upsamplers.0``: diffusers' DownEncoderBlock2D / UpDecoderBlock2D and the
    video VAE blocks of the same shape (SVD's UpBlockTemporalDecoder, LTX 0.9.5's down block). The
    cells come built; each takes and returns x alone."""

    def __init__(self, resnets, downsampler=None, upsampler=None):
        super().__init__()
        self.resnets = nn.CellList(resnets)
        self.downsamplers = nn.CellList([downsampler]) if downsampler is not None else None
        self.upsamplers = nn.CellList([upsampler]) if upsampler is not None else None

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class ResnetAttentionStack(nn.Cell):
    """resnet, then (attention -> resnet) per layer, no time embedding: the shape of diffusers'
    UNetMidBlock2D as the VAEs use it (models/vae.py, HunyuanVideo's mid block). The cells come
    built: n + 1 resnets and n attentions, or None for resnets only; each takes and returns x alone."""

    def __init__(self, resnets, attentions=None):
        super().__init__()
        self.resnets = nn.CellList(resnets)
        self.attentions = nn.CellList(attentions) if attentions is not None else None

    def construct(self, x):
        x = self.resnets[0](x)
        for i in range(len(self.resnets) - 1):
            if self.attentions is not None:
                x = self.attentions[i](x)
            x = self.resnets[i + 1](x)
        return x


def pad_bottom_right(x):
    """One zero row at the bottom and one zero column at the right of [..., H, W] (torch's
    ``F.pad(x, (0, 1, 0, 1))``), written as concats so that it also traces in bf16, which
    ``ops.pad``'s scalar fill does not accept."""
    lead, h, w = x.shape[:-2], x.shape[-2], x.shape[-1]
    x = ops.cat((x, ops.zeros(lead + (h, 1), x.dtype)), -1)
    return ops.cat((x, ops.zeros(lead + (1, w + 1), x.dtype)), -2)


# ----------------------------------------------------------------------------- embeddings
def timestep_frequencies(dim: int, downscale_freq_shift: float = 1.0, max_period: float = 10000.0) -> np.ndarray:
    half = dim // 2
    exponent = (-math.log(max_period) * np.arange(half, dtype=np.float32)).astype(np.float32)
    exponent = (exponent / np.float32(half - downscale_freq_shift)).astype(np.float32)
    # the exp rounded once from float64: torch's float32 exp is within an ulp of it, numpy's float32 exp
    # differs from torch's on about a fifth of the frequencies (up to 2 ulp, 1e-4 rad at t = 999)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


class Timesteps(nn.Cell):
    """Sinusoidal timestep embedding (diffusers get_timestep_embedding): [N] -> [N, dim] float32."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: float = 1.0,
                 max_period: float = 10000.0):
        super().__init__()
        self.dim = num_channels
        self.flip = flip_sin_to_cos
        self.scale = scale
        self.freqs = Tensor(timestep_frequencies(num_channels, downscale_freq_shift, max_period)[None, :])

    def construct(self, timesteps):
        args = timesteps.astype(FP32)[:, None] * self.freqs
        if self.scale != 1.0:
            args = args * self.scale
        sin, cos = ops.sin(args), ops.cos(args)
        emb = ops.cat((cos, sin), -1) if self.flip else ops.cat((sin, cos), -1)
        if self.dim % 2:
            emb = ops.pad(emb, (0, 1))
        return emb


class TimestepEmbedding(nn.Cell):
    """linear_1 -> SiLU -> linear_2 (diffusers TimestepEmbedding, no cond projection)."""

    def __init__(self, in_channels: int, time_embed_dim: int, out_dim: int | None = None, act_fn: str = "silu"):
        super().__init__()
        self.linear_1 = Linear(in_channels, time_embed_dim)
        self.act = get_activation(act_fn)
        self.linear_2 = Linear(time_embed_dim, out_dim or time_embed_dim)

    def construct(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


FORWARD_CHUNK_DIMS = (0, 1)


def chunked_feed_forward(ff, x, chunk_dim: int, chunk_size: int):
    """diffusers ``_chunked_feed_forward``: run ``ff`` on slices of ``chunk_size`` along
    ``chunk_dim`` (0: batch, 1: sequence) and concatenate; the same result as ``ff(x)`` with a
    smaller intermediate activation. The slices are unrolled into the graph (static shapes), so
    the number of chunks, ``x.shape[chunk_dim] // chunk_size``, also sets the graph's size."""
    n = x.shape[chunk_dim]
    if n % chunk_size != 0:
        raise ValueError(
            f"`hidden_states` dimension to be chunked: {n} has to be divisible by chunk size: {chunk_size}. "
            "Make sure to set an appropriate `chunk_size` when calling `unet.enable_forward_chunking`."
        )
    parts = ()
    for start in range(0, n, chunk_size):
        if chunk_dim == 0:
            part = x[start:start + chunk_size]
        else:
            part = x[:, start:start + chunk_size]
        parts = parts + (ff(part),)
    return ops.cat(parts, chunk_dim)


class SinusoidalPositionalEmbedding(nn.Cell):
    """diffusers SinusoidalPositionalEmbedding: adds ``pe[:, :N]`` to [B, N, dim]. ``pe`` is a
    persistent buffer in diffusers (checkpoints carry it, [1, max_seq_length, dim]), so it is a
    parameter here and loads like one."""

    def __init__(self, embed_dim: int, max_seq_length: int = 32):
        super().__init__()
        position = np.arange(max_seq_length, dtype=np.float32)[:, None]
        div_term = np.exp(np.arange(0, embed_dim, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / embed_dim))
        pe = np.zeros((1, max_seq_length, embed_dim), np.float32)
        pe[0, :, 0::2] = np.sin(position * div_term)
        pe[0, :, 1::2] = np.cos(position * div_term)
        self.max_seq_length = max_seq_length
        self.pe = Parameter(Tensor(pe), name="pe", requires_grad=False)

    def construct(self, x):
        # x: [B, N, dim], N <= max_seq_length
        return x + self.pe[:, :x.shape[1]].astype(x.dtype)


class BasicTransformerBlock(nn.Cell):
    """diffusers BasicTransformerBlock with norm_type="layer_norm": self-attention, cross-attention
    (self-attention again when there is no cross_attention_dim and double_self_attention), GEGLU
    feed-forward, each pre-normed and residual. ``set_chunk_feed_forward`` turns on diffusers'
    feed-forward chunking (off by default). ``positional_embeddings="sinusoidal"`` adds
    ``pos_embed`` to the normed input of both attentions (AnimateDiff's motion modules)."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int,
                 cross_attention_dim: int | None = None, activation_fn: str = "geglu", attention_bias: bool = False,
                 only_cross_attention: bool = False, double_self_attention: bool = False, norm_eps: float = 1e-5,
                 norm_elementwise_affine: bool = True, ff_inner_dim: int | None = None, ff_bias: bool = True,
                 attention_out_bias: bool = True, positional_embeddings: str | None = None,
                 num_positional_embeddings: int | None = None):
        super().__init__()
        if positional_embeddings not in (None, "sinusoidal"):
            raise ValueError(f"positional_embeddings {positional_embeddings!r} is not supported; "
                             "supported: None, 'sinusoidal'")
        if positional_embeddings is not None and num_positional_embeddings is None:
            raise ValueError("If `positional_embedding` type is defined, `num_positition_embeddings` must also be "
                             "defined.")
        self.pos_embed = SinusoidalPositionalEmbedding(dim, num_positional_embeddings) \
            if positional_embeddings is not None else None
        self.only_cross_attention = only_cross_attention
        self.norm1 = LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn1 = Attention(dim, cross_attention_dim=cross_attention_dim if only_cross_attention else None,
                               heads=num_attention_heads, dim_head=attention_head_dim, bias=attention_bias,
                               out_bias=attention_out_bias)
        self.has_cross = cross_attention_dim is not None or double_self_attention
        if self.has_cross:
            self.norm2 = LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
            self.attn2 = Attention(dim, cross_attention_dim=None if double_self_attention else cross_attention_dim,
                                   heads=num_attention_heads, dim_head=attention_head_dim, bias=attention_bias,
                                   out_bias=attention_out_bias)
        self.norm3 = LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.ff = FeedForward(dim, activation_fn=activation_fn, inner_dim=ff_inner_dim, bias=ff_bias)
        self.chunk_size = None  # feed-forward chunking (diffusers set_chunk_feed_forward); None: off
        self.chunk_dim = 0

    def set_chunk_feed_forward(self, chunk_size: int | None, dim: int = 0):
        """As diffusers: chunk the feed-forward over ``dim`` (0 batch, 1 sequence) in slices of
        ``chunk_size``; ``None`` turns chunking off. Call before compiling/exporting."""
        if dim not in FORWARD_CHUNK_DIMS:
            raise ValueError(f"Make sure to set `dim` to either 0 or 1, not {dim}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.chunk_dim = dim

    def construct(self, hidden_states, encoder_hidden_states=None):
        # hidden_states: [B, N, dim]; encoder_hidden_states: [B, M, cross_dim]
        norm = self.norm1(hidden_states)
        if self.pos_embed is not None:
            norm = self.pos_embed(norm)
        if self.only_cross_attention:
            hidden_states = self.attn1(norm, encoder_hidden_states) + hidden_states
        else:
            hidden_states = self.attn1(norm) + hidden_states
        if self.has_cross:
            norm = self.norm2(hidden_states)
            if self.pos_embed is not None:
                norm = self.pos_embed(norm)
            hidden_states = self.attn2(norm, encoder_hidden_states) + hidden_states
        if self.chunk_size is None:
            return self.ff(self.norm3(hidden_states)) + hidden_states
        return chunked_feed_forward(self.ff, self.norm3(hidden_states), self.chunk_dim, self.chunk_size) + hidden_states
