"""AnimateDiff: UNetMotionModel (an SD 1.x UNet2DConditionModel with motion modules) and the
MotionAdapter that carries the motion modules, ported from diffusers
(models/unets/unet_motion_model.py) with the checkpoint's own submodule names.

A motion module (AnimateDiffTransformer3D) is self-attention over the frames of each pixel with
sinusoidal positional embeddings (at most ``motion_max_seq_length`` frames). One follows every
resnet (+ spatial transformer) of the down and up blocks, and every spatial transformer of the mid
block when the adapter has one (``use_motion_mid_block``: v1-5-2 does, v1-5-3 does not).

Two checkpoint layouts load:
  (a) a saved UNetMotionModel folder (config ``_class_name`` "UNetMotionModel"): through
      ``loading.load_network(folder, num_frames=F)``;
  (b) a UNet2DConditionModel folder plus a MotionAdapter folder (AnimateDiffPipeline snapshots ship
      ``unet`` + ``motion_adapter``): :func:`load_unet_motion`, which combines the configs as
      diffusers' ``UNetMotionModel.from_unet2d(unet, motion_adapter)`` does.

The network takes per-frame text embeddings, [B*F, M, D]: AnimateDiffPipeline repeat_interleaves
the prompt embeddings over the frames before the UNet, and taking them per frame keeps the graph
ready for FreeNoise's per-frame prompts. Frames travel folded into the batch, [B*F, C, h, w], as in
diffusers; the frame count is a construction-time constant (static graphs).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms

from .loading import (
    LoadError, component_class, config_from_dict, load_state_dict, read_json, read_weights, register, set_dtype,
)
from .unet2d import (
    UNet2DBody, UNet2DConditionConfig, UNetLayout, _per_block, batch_to_frames, check_block_types, check_frame_count,
    frames_to_batch, repeat_per_frame,
)
from .unet3d import TransformerTemporalModel


# ============================================================================= configs
def _per_layer(value, n: int, name: str) -> tuple:
    """One block's per-layer value: an int for every layer, or a tuple of one int per layer."""
    return _per_block(value, n, name, "layers")


@dataclass(frozen=True)
class UNetMotionConfig:
    """diffusers ``UNetMotionModel.__init__`` (same names and defaults)."""

    sample_size: int | None = None
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple = (
        "CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion", "DownBlockMotion",
    )
    up_block_types: tuple = ("UpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion")
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: int | tuple = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple = 1280
    transformer_layers_per_block: int | tuple = 1
    reverse_transformer_layers_per_block: int | tuple | None = None
    temporal_transformer_layers_per_block: int | tuple = 1
    reverse_temporal_transformer_layers_per_block: int | tuple | None = None
    transformer_layers_per_mid_block: int | tuple | None = None
    temporal_transformer_layers_per_mid_block: int | tuple | None = 1
    use_linear_projection: bool = False
    num_attention_heads: int | tuple = 8
    motion_max_seq_length: int = 32
    motion_num_attention_heads: int | tuple = 8
    reverse_motion_num_attention_heads: int | tuple | None = None  # unused by diffusers' __init__ as well
    use_motion_mid_block: bool = True
    mid_block_layers: int = 1
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    time_cond_proj_dim: int | None = None

    DOWN = ("CrossAttnDownBlockMotion", "DownBlockMotion")
    UP = ("CrossAttnUpBlockMotion", "UpBlockMotion")
    FIXED = {
        "encoder_hid_dim": None, "encoder_hid_dim_type": None, "addition_embed_type": None,
        "addition_time_embed_dim": None, "projection_class_embeddings_input_dim": None, "time_cond_proj_dim": None,
    }

    def __post_init__(self):
        n = len(self.down_block_types)
        check_block_types(self)
        for name, value in self.FIXED.items():
            if getattr(self, name) != value:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; supported: {value!r} "
                                 "(AnimateDiff on an SD 1.x UNet)")
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"act_fn {self.act_fn!r} is not supported; supported: 'silu', 'swish'")
        if self.reverse_transformer_layers_per_block is not None:
            raise ValueError(f"reverse_transformer_layers_per_block={self.reverse_transformer_layers_per_block!r} "
                             "is not supported; supported: None (the reversed transformer_layers_per_block)")
        if self.mid_block_layers < 1:
            raise ValueError(f"mid_block_layers must be >= 1, got {self.mid_block_layers}")
        if not isinstance(self.mid_transformer_layers(), int):
            raise ValueError(f"transformer_layers_per_mid_block {self.transformer_layers_per_mid_block!r}: "
                             "only an int is supported")
        for name in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block",
                     "num_attention_heads", "motion_num_attention_heads"):
            _per_block(getattr(self, name), n, name)
        self.temporal_layers("down")
        self.temporal_layers("up")
        self.temporal_layers("mid")
        for ch, heads, mheads in zip(self.block_out_channels, self.per_block("num_attention_heads"),
                                     self.per_block("motion_num_attention_heads")):
            if ch % self.norm_num_groups or ch % heads or ch % mheads:
                raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of norm_num_groups "
                                 f"{self.norm_num_groups}, num_attention_heads {self.num_attention_heads} and "
                                 f"motion_num_attention_heads {self.motion_num_attention_heads}")

    def per_block(self, name) -> tuple:
        return _per_block(getattr(self, name), len(self.down_block_types), name)

    def mid_transformer_layers(self):
        if self.transformer_layers_per_mid_block is not None:
            return self.transformer_layers_per_mid_block
        last = self.per_block("transformer_layers_per_block")[-1]
        return last if isinstance(last, int) else 1

    def temporal_layers(self, kind: str) -> tuple:
        """Transformer layers of every motion module: per block, a tuple of one int per layer (the up
        blocks in up order); for "mid", one tuple for the mid block's layers."""
        n = len(self.down_block_types)
        layers = self.per_block("layers_per_block")
        if kind == "mid":
            value = self.temporal_transformer_layers_per_mid_block
            return _per_layer(1 if value is None else value, self.mid_block_layers,
                              "temporal_transformer_layers_per_mid_block")
        # per block, each an int or a tuple per layer (diffusers' motion-module depths)
        down = _per_block(self.temporal_transformer_layers_per_block, n, "temporal_transformer_layers_per_block",
                          nested=True)
        if kind == "down":
            return tuple(_per_layer(down[i], layers[i], "temporal_transformer_layers_per_block") for i in range(n))
        if self.reverse_temporal_transformer_layers_per_block is None:
            if any(isinstance(v, (tuple, list)) for v in down):
                # an up block has one layer more than its down block: per-layer depths cannot be mirrored
                raise ValueError("Must provide 'reverse_temporal_transformer_layers_per_block` if using asymmetrical "
                                 f"motion module in UNet (temporal_transformer_layers_per_block {down} has per-layer "
                                 "values)")
            per = tuple(reversed(down))
        else:
            per = _per_block(self.reverse_temporal_transformer_layers_per_block, n,
                             "reverse_temporal_transformer_layers_per_block", nested=True)
        return tuple(_per_layer(per[i], layers[n - 1 - i] + 1, "reverse_temporal_transformer_layers_per_block")
                     for i in range(n))

    def layout(self) -> UNetLayout:
        return UNetLayout(
            in_channels=self.in_channels, out_channels=self.out_channels, block_out_channels=self.block_out_channels,
            down_cross=tuple(k == "CrossAttnDownBlockMotion" for k in self.down_block_types),
            up_cross=tuple(k == "CrossAttnUpBlockMotion" for k in self.up_block_types),
            layers_per_block=self.per_block("layers_per_block"),
            transformer_layers=self.per_block("transformer_layers_per_block"),
            heads=self.per_block("num_attention_heads"), cross_attention_dim=self.per_block("cross_attention_dim"),
            use_linear_projection=self.use_linear_projection, norm_num_groups=self.norm_num_groups,
            norm_eps=self.norm_eps, downsample_padding=self.downsample_padding, mid_block=True,
            mid_block_scale_factor=self.mid_block_scale_factor, mid_block_layers=self.mid_block_layers,
            mid_transformer_layers=self.mid_transformer_layers(), act_fn=self.act_fn,
        )


@dataclass(frozen=True)
class MotionAdapterConfig:
    """diffusers ``MotionAdapter.__init__`` (same names and defaults)."""

    block_out_channels: tuple = (320, 640, 1280, 1280)
    motion_layers_per_block: int | tuple = 2
    motion_transformer_layers_per_block: int | tuple = 1
    motion_mid_block_layers_per_block: int = 1
    motion_transformer_layers_per_mid_block: int | tuple = 1
    motion_num_attention_heads: int | tuple = 8
    motion_norm_num_groups: int = 32
    motion_max_seq_length: int = 32
    use_motion_mid_block: bool = True
    conv_in_channels: int | None = None

    def __post_init__(self):
        if self.conv_in_channels:
            raise ValueError(f"conv_in_channels={self.conv_in_channels!r} (a PIA adapter with its own conv_in) is "
                             "not supported; supported: None")


# UNet2DConditionModel values that UNetMotionModel cannot represent (it always builds the SD 1.x
# time embedding, 3x3 in/out convs and a cross-attention mid block); from_unet2d would drop them
_MOTION_UNET_FIXED = {
    "flip_sin_to_cos": True, "freq_shift": 0, "center_input_sample": False, "time_embedding_dim": None,
    "time_embedding_act_fn": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
}


def unet_motion_config(unet: UNet2DConditionConfig, adapter: MotionAdapterConfig) -> UNetMotionConfig:
    """The UNetMotionModel config diffusers' ``UNetMotionModel.from_unet2d(unet, motion_adapter)``
    builds: the UNet's values, Motion block types, and the adapter's motion settings."""
    n = len(unet.down_block_types)
    if n != len(adapter.block_out_channels):
        raise LoadError(f"Incompatible Motion Adapter: the UNet has {n} blocks, the adapter "
                        f"{len(adapter.block_out_channels)} (block_out_channels {adapter.block_out_channels})")
    if tuple(unet.block_out_channels) != tuple(adapter.block_out_channels):
        raise LoadError(f"Incompatible Motion Adapter: block_out_channels {adapter.block_out_channels} vs the UNet's "
                        f"{unet.block_out_channels}")
    unet_layers = list(_per_block(unet.layers_per_block, n, "layers_per_block"))
    adapter_layers = list(_per_block(adapter.motion_layers_per_block, n, "motion_layers_per_block"))
    if unet_layers != adapter_layers:
        raise LoadError(f"Incompatible Motion Adapter, got different number of layers per block: UNet "
                        f"layers_per_block {unet_layers} vs adapter motion_layers_per_block {adapter_layers}")
    for name, value in _MOTION_UNET_FIXED.items():
        if getattr(unet, name) != value:
            raise LoadError(f"UNet {name}={getattr(unet, name)!r} is not supported with a motion adapter "
                            f"(UNetMotionModel has no such option); supported: {value!r}")
    if adapter.motion_mid_block_layers_per_block != 1:
        # from_unet2d keeps UNetMotionModel's mid_block_layers=1, so diffusers cannot load such an adapter either
        raise LoadError(f"motion_mid_block_layers_per_block={adapter.motion_mid_block_layers_per_block} is not "
                        "supported; supported: 1 (UNetMotionModel.from_unet2d builds one mid layer)")
    values = dataclasses.asdict(unet)
    fields = {f.name for f in dataclasses.fields(UNetMotionConfig)}
    values = {k: v for k, v in values.items() if k in fields}
    values.update(
        down_block_types=tuple("CrossAttnDownBlockMotion" if "CrossAttn" in k else "DownBlockMotion"
                               for k in unet.down_block_types),
        up_block_types=tuple("CrossAttnUpBlockMotion" if "CrossAttn" in k else "UpBlockMotion"
                             for k in unet.up_block_types),
        motion_num_attention_heads=adapter.motion_num_attention_heads,
        motion_max_seq_length=adapter.motion_max_seq_length,
        use_motion_mid_block=adapter.use_motion_mid_block,
        layers_per_block=adapter.motion_layers_per_block,
        temporal_transformer_layers_per_mid_block=adapter.motion_transformer_layers_per_mid_block,
        temporal_transformer_layers_per_block=adapter.motion_transformer_layers_per_block,
        # UNet2DConditionModel's attention_head_dim is its head count (diffusers issue #2011)
        num_attention_heads=unet.num_attention_heads or unet.attention_head_dim,
    )
    try:
        return UNetMotionConfig(**values)
    except (TypeError, ValueError) as err:
        raise LoadError(f"UNetMotionModel config from the UNet and the motion adapter: {err}") from err


# ============================================================================= motion modules
def motion_module(num_attention_heads: int, attention_head_dim: int, in_channels: int, num_layers: int,
                  norm_num_groups: int, num_positional_embeddings: int, num_frames: int) -> TransformerTemporalModel:
    """diffusers' AnimateDiffTransformer3D: UNet3D's TransformerTemporalModel (self-attention over
    the frames of each pixel, double self-attention, GEGLU, no context) with sinusoidal frame
    positions added to both attentions' inputs."""
    return TransformerTemporalModel(num_attention_heads, attention_head_dim, in_channels, num_layers, norm_num_groups,
                                    None, num_frames, num_positional_embeddings=num_positional_embeddings)


# ============================================================================= UNetMotionModel
class UNetMotionModel(UNet2DBody):
    """One AnimateDiff UNet call: sample [B, C_in, F, h, w], timestep [1] or [B], per-frame
    encoder_hidden_states [B*F, M, D] (frame-major within each video, as repeat_interleave gives)
    -> [B, C_out, F, h, w] float32. ``num_frames`` is the static frame count of the export and may
    not exceed the motion modules' ``motion_max_seq_length``."""

    def __init__(self, config: UNetMotionConfig, num_frames: int = 16):
        super().__init__()
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
        if num_frames > config.motion_max_seq_length:
            raise ValueError(f"num_frames={num_frames} exceeds the motion modules' motion_max_seq_length="
                             f"{config.motion_max_seq_length} (their sinusoidal positional embeddings cover at most "
                             f"{config.motion_max_seq_length} frames); export at most that many frames "
                             "(longer videos need FreeNoise-style context windows)")
        self.config = config
        self.num_frames = num_frames
        heads = config.per_block("motion_num_attention_heads")
        n = len(heads)
        temporal = {"down": config.temporal_layers("down"), "up": config.temporal_layers("up"),
                    "mid": (config.temporal_layers("mid"),)}

        def motion(kind, block, layers, channels, cross_attention):
            if kind == "mid" and not config.use_motion_mid_block:
                return None
            h = {"down": heads[block], "up": heads[n - 1 - block], "mid": heads[-1]}[kind]
            return {"motion_modules": [
                motion_module(h, channels // h, channels, temporal[kind][block][i], config.norm_num_groups,
                              config.motion_max_seq_length, num_frames)
                for i in range(layers)
            ]}

        self._build(config.layout(), temporal=motion)

    def construct(self, sample, timestep, encoder_hidden_states):
        # sample: [B, C, F, h, w]; timestep: [1] or [B]; encoder_hidden_states: [B*F, M, D]
        f = sample.shape[2]
        check_frame_count(f, self.num_frames)
        dtype = self.conv_in.weight.dtype
        # 1. time: [B, T], repeated per frame -> [B*F, T]
        emb = repeat_per_frame(self._time_embedding(timestep, sample.shape[0]), f)
        # 2. [B, C, F, h, w] -> [B*F, C, h, w] -> levels -> [B, C_out, F, h, w]
        h = self._levels(frames_to_batch(sample.astype(dtype)), emb, encoder_hidden_states.astype(dtype))
        return batch_to_frames(h, f).astype(ms.float32)


def build_unet_motion(config: UNetMotionConfig, num_frames: int = 16) -> UNetMotionModel:
    return UNetMotionModel(config, num_frames=num_frames)


# ============================================================================= loading
_MOTION_KEY = re.compile(r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.\d+\.")


def map_motion_adapter_weights(key: str, value) -> list:
    """A MotionAdapter checkpoint key -> UNetMotionModel keys. The adapter's ``down_blocks.i``,
    ``up_blocks.i`` and ``mid_block`` hold only ``motion_modules``, which UNetMotionModel keeps
    under the same names (diffusers' ``load_motion_modules``); any other key (a PIA ``conv_in``)
    would collide with the UNet's weights and is refused."""
    if not _MOTION_KEY.match(key):
        raise LoadError(f"motion adapter weight {key!r} is not a motion module; supported: "
                        "down_blocks.N.motion_modules.*, up_blocks.N.motion_modules.*, mid_block.motion_modules.*")
    return [(key, value)]


def _config_of(folder: Path, cls_name: str, config_cls):
    raw = read_json(folder / "config.json")
    found = component_class(raw)
    if found != cls_name:
        raise LoadError(f"{folder}: expected a {cls_name} config, found {found!r}")
    return config_from_dict(config_cls, raw, source=str(folder / "config.json"))


def load_unet_motion(unet_dir, motion_adapter_dir, variant: str | None = None, dtype: str = "fp32",
                     random_weights: bool = False, adapter_variant: str | None = None, **build_kwargs):
    """Layout (b): a UNet2DConditionModel folder + a MotionAdapter folder -> (UNetMotionModel,
    UNetMotionConfig), combined as diffusers' ``UNetMotionModel.from_unet2d`` does and loaded
    strictly (every network weight from exactly one of the two checkpoints). ``adapter_variant``
    defaults to ``variant``. ``build_kwargs``: ``num_frames``."""
    unet_dir, motion_adapter_dir = Path(unet_dir), Path(motion_adapter_dir)
    unet_config = _config_of(unet_dir, "UNet2DConditionModel", UNet2DConditionConfig)
    adapter_config = _config_of(motion_adapter_dir, "MotionAdapter", MotionAdapterConfig)
    config = unet_motion_config(unet_config, adapter_config)
    cell = build_unet_motion(config, **build_kwargs)
    if random_weights:
        set_dtype(cell, dtype)
        return cell, config
    state = read_weights(unet_dir, variant)
    motion = read_weights(motion_adapter_dir, variant if adapter_variant is None else adapter_variant)
    motion = dict(kv for key, value in motion.items() for kv in map_motion_adapter_weights(key, value))
    both = sorted(set(state) & set(motion))
    if both:
        raise LoadError(f"{unet_dir} and {motion_adapter_dir} both hold {both[:5]}")
    state.update(motion)
    load_state_dict(cell, state, dtype=dtype, source=f"{unet_dir} + {motion_adapter_dir}")
    return cell, config


register("UNetMotionModel", UNetMotionConfig, build_unet_motion)
