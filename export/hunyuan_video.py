"""HunyuanVideo export (HunyuanVideoPipeline): which graphs, with which static shapes, built from which
snapshot components.

Graphs (B = batch, L = max_sequence_length (256), K = crop_start of the prompt template (95 for
diffusers' DEFAULT_PROMPT_TEMPLATE), D = Llama width (4096), P = CLIP width (768), C = latent
channels (16), F = latent frames ((num_frames - 1) // 4 + 1), h/w = latent size (pixels / 8),
N = video tokens (F/p_t * h/p * w/p), d = attention head dim (128)):
  text_encoder    input_ids[B,K+L] int32, attention_mask[B,K+L] int32 -> hidden_states[B,K+L,D]
                  Llama's hidden_states[-3]; the runtime formats the prompt template, tokenizes to
                  crop_start + L tokens (right padding; a shorter user crop_start is padded further,
                  which causal attention cannot see) and crops [crop_start:crop_start + L].
  text_encoder_2  input_ids[B,77] int32                                -> pooled_projections[B,P]
                  CLIP text model's pooler_output (HunyuanVideoPipeline passes no mask).
  transformer     hidden_states[B,C,F,h,w] timestep[1] encoder_hidden_states[B,L,D]
                  encoder_attention_mask[B,L] pooled_projections[B,P] guidance[B] rope_cos[N,d]
                  rope_sin[N,d]                                       -> noise_pred[B,C,F,h,w]
                  ONE transformer call: true CFG (true_cfg_scale > 1 with a negative prompt) calls it
                  twice, positive then negative, as diffusers does; guidance is the distilled
                  guidance_scale * 1000 rounded in the transformer's dtype (the runtime computes it);
                  the rotary tables are inputs the runtime computes (models.hunyuan_video.rope_cos_sin).
  vae_decoder_<T>_<th>x<tw>  latents[B,C,T,th,tw]                     -> frames[B,3,(T-1)*4+1,8th,8tw]
                  one decoded tile (post_quant_conv + decoder), latents already divided by the
                  scaling factor. diffusers decodes framewise (temporal tiles of 5 latent frames every
                  3, blended) by default: one graph per tile length; with tiling=True also one per
                  spatial tile shape of vae.enable_tiling() (256-pixel tiles every 192).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
from mindspore import nn, ops

from video_aot.models.hunyuan_video import HunyuanVideoTransformerConfig, guidance_input, rope_cos_sin
from video_aot.models.hunyuan_video_vae import (
    AutoencoderKLHunyuanVideoConfig, TilingConfig, decoded_frames,
)
from video_aot.models.loading import config_from_dict
from video_aot.runtime.vae import decode_tile_shapes

from .components import Components
from .graphs import Encode, GraphSpec, TensorSpec, relax_tolerance, spatial_tiling

LLAMA_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                         "merges.txt")
CLIP_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                        "tokenizer.json")
DEFAULT_CROP_START = 95  # diffusers' DEFAULT_PROMPT_TEMPLATE["crop_start"]
CLIP_MAX_LENGTH = 77  # HunyuanVideoPipeline._get_clip_prompt_embeds' fixed max_sequence_length


# ----------------------------------------------------------------------------- wrapper cells
class ClipPooled(nn.Cell):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def construct(self, input_ids):
        # [B, 77] -> pooler_output [B, P]
        _, pooled = self.encoder(input_ids)
        return pooled


class TransformerStep(nn.Cell):
    """One transformer call with the scalar timestep broadcast over the batch."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def construct(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections,
                  guidance, rope_cos, rope_sin):
        b = hidden_states.shape[0]
        t = ops.broadcast_to(timestep, (b,))
        return self.transformer(hidden_states, t, encoder_hidden_states, encoder_attention_mask, pooled_projections,
                                guidance, rope_cos, rope_sin)


class VaeDecodeTile(nn.Cell):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def construct(self, latents):
        # latents / scaling_factor [B, C, T, th, tw] -> frames [B, 3, (T-1)*4+1, 8th, 8tw]
        return self.vae(latents)


# ----------------------------------------------------------------------------- shapes
def latent_frames(num_frames: int, temporal: int = 4) -> int:
    """HunyuanVideoPipeline.prepare_latents: (num_frames - 1) // 4 + 1."""
    return (num_frames - 1) // temporal + 1


def decoder_tile_shapes(f: int, h: int, w: int, tiling: TilingConfig, spatial: int, temporal: int,
                        spatial_tiling: bool) -> list:
    """Every (T, th, tw) latent tile diffusers' vae.decode runs for latents of F x h x w: temporal
    tiles (framewise decoding, always on) and, with ``spatial_tiling``, the spatial tiles of each."""
    return decode_tile_shapes(f, h, w, asdict(tiling), spatial, temporal, use_tiling=spatial_tiling)


def decoder_graph_name(t: int, th: int, tw: int) -> str:
    return f"vae_decoder_{t}_{th}x{tw}"


# ----------------------------------------------------------------------------- plan
def plan(snapshot: Path, weights: Path | None, frames: int, height: int, width: int, batch: int = 1,
         dtype: str = "fp32", decode_chunk_size: int | None = None, variant: str | None = None,
         max_sequence_length: int | None = None, crop_start: int | None = None, tiling: bool | None = None):
    """(graphs, manifest fields) for a HunyuanVideo export. ``frames`` is diffusers' ``num_frames``.
    ``max_sequence_length``: Llama tokens after the template's crop (default 256, diffusers').
    ``crop_start``: the longest prompt-template prefix the Llama graph makes room for (default 95,
    DEFAULT_PROMPT_TEMPLATE's); a call's template may crop less, not more.
    ``tiling``: add the decoder graphs of vae.enable_tiling()'s spatial tiles (the runtime's
    ``enable_tiling()`` then decodes tile by tile as diffusers does)."""
    tiling = spatial_tiling(tiling, "HunyuanVideo")
    parts = Components(snapshot, weights, variant, dtype)
    pipeline = parts.index()["_class_name"]
    if pipeline != "HunyuanVideoPipeline":
        raise ValueError(f"the hunyuan_video export serves HunyuanVideoPipeline snapshots, not {pipeline}")
    if decode_chunk_size is not None:
        raise ValueError("HunyuanVideo decodes in diffusers' framewise temporal tiles (5 latent frames every 3, "
                         "blended); --decode-chunk-size does not apply to this family")
    raw = {name: parts.config(name) for name in ("transformer", "vae", "text_encoder", "text_encoder_2")}
    scheduler = parts.scheduler()
    tcfg = config_from_dict(HunyuanVideoTransformerConfig, raw["transformer"], "transformer/config.json")
    vcfg = config_from_dict(AutoencoderKLHunyuanVideoConfig, raw["vae"], "vae/config.json")
    text_dim = raw["text_encoder"]["hidden_size"]
    pooled_dim = raw["text_encoder_2"]["hidden_size"]
    llama_layers = raw["text_encoder"]["num_hidden_layers"]
    max_length = 256 if max_sequence_length is None else int(max_sequence_length)
    crop = DEFAULT_CROP_START if crop_start is None else int(crop_start)

    # request checks (diffusers' check_inputs and what its arithmetic assumes)
    if frames < 1 or batch < 1 or max_length < 1 or crop < 0:
        raise ValueError(f"frames ({frames}), batch ({batch}) and max_sequence_length ({max_length}) must be positive "
                         f"and crop_start ({crop}) non-negative")
    if height % 16 or width % 16:
        raise ValueError(f"`height` and `width` have to be divisible by 16 but are {height} and {width}.")
    spatial, temporal = vcfg.spatial_compression_ratio, vcfg.temporal_compression_ratio
    step = spatial * tcfg.patch_size
    if height % step or width % step:
        raise ValueError(f"height and width must be multiples of {step} (VAE factor {spatial} x patch_size "
                         f"{tcfg.patch_size}), got {height}x{width}")
    f, h, w = latent_frames(frames, temporal), height // spatial, width // spatial
    if f % tcfg.patch_size_t:
        raise ValueError(f"{frames} frames give {f} latent frames, not a multiple of patch_size_t {tcfg.patch_size_t}")
    if tcfg.image_condition_type is not None:
        raise ValueError(f"the transformer is an image-to-video one (image_condition_type "
                         f"{tcfg.image_condition_type!r}); HunyuanVideoPipeline is text-to-video and feeds no image")
    latent = vcfg.latent_channels
    if tcfg.in_channels != latent or tcfg.output_channels != latent:
        raise ValueError(f"transformer in/out channels ({tcfg.in_channels}/{tcfg.output_channels}) must equal the "
                         f"VAE's latent_channels {latent}")
    if text_dim != tcfg.text_embed_dim:
        raise ValueError(f"Llama hidden_size {text_dim} must equal the transformer's text_embed_dim "
                         f"{tcfg.text_embed_dim}")
    if pooled_dim != tcfg.pooled_projection_dim:
        raise ValueError(f"CLIP hidden_size {pooled_dim} must equal the transformer's pooled_projection_dim "
                         f"{tcfg.pooled_projection_dim}")
    if llama_layers < 2:
        raise ValueError(f"the Llama text encoder has {llama_layers} layers; HunyuanVideoPipeline takes "
                         "hidden_states[-3], which needs at least 2")
    llama_length = crop + max_length
    n_tokens = (f // tcfg.patch_size_t) * (h // tcfg.patch_size) * (w // tcfg.patch_size)
    head_dim = tcfg.attention_head_dim
    out_frames = decoded_frames(f, vcfg)
    tiles = TilingConfig()
    shapes = decoder_tile_shapes(f, h, w, tiles, spatial, temporal, bool(tiling))

    _, llama_assets, llama_tok = parts.tokenizer(
        LLAMA_TOKENIZER_FILES, ("tokenizer.json", ("vocab.json", "merges.txt")), name="tokenizer")
    _, clip_assets, clip_tok = parts.tokenizer(CLIP_TOKENIZER_FILES, (("vocab.json", "merges.txt"), "tokenizer.json"),
                                               name="tokenizer_2", required=False)

    mask = np.zeros((batch, llama_length), np.int32)
    mask[:, : max(1, llama_length // 2)] = 1
    tmask = np.zeros((batch, max_length), np.float32)
    tmask[:, : max(1, max_length // 2)] = 1
    cos, sin = rope_cos_sin(tcfg, f, h, w)
    graphs = [
        (GraphSpec("text_encoder",
                   (TensorSpec("input_ids", (batch, llama_length), "int32"),
                    TensorSpec("attention_mask", (batch, llama_length), "int32")),
                   (TensorSpec("hidden_states", (batch, llama_length, text_dim)),),
                   dummy_overrides={"input_ids": np.ones((batch, llama_length), np.int32), "attention_mask": mask}),
         lambda: Encode(parts.load("text_encoder", hidden_state_index=-3, max_positions=llama_length))),
        (GraphSpec("text_encoder_2", (TensorSpec("input_ids", (batch, CLIP_MAX_LENGTH), "int32"),),
                   (TensorSpec("pooled_projections", (batch, pooled_dim)),)),
         lambda: ClipPooled(parts.load("text_encoder_2"))),
        (GraphSpec("transformer",
                   (TensorSpec("hidden_states", (batch, latent, f, h, w)), TensorSpec("timestep", (1,)),
                    TensorSpec("encoder_hidden_states", (batch, max_length, text_dim)),
                    TensorSpec("encoder_attention_mask", (batch, max_length)),
                    TensorSpec("pooled_projections", (batch, pooled_dim)), TensorSpec("guidance", (batch,)),
                    TensorSpec("rope_cos", (n_tokens, head_dim)), TensorSpec("rope_sin", (n_tokens, head_dim))),
                   (TensorSpec("noise_pred", (batch, latent, f, h, w)),),
                   dummy_overrides={"timestep": [500.0], "encoder_attention_mask": tmask,
                                    "guidance": guidance_input(6.0, batch), "rope_cos": cos, "rope_sin": sin}),
         lambda: TransformerStep(parts.load("transformer"))),
    ]
    for t, th, tw in shapes:
        graphs.append((GraphSpec(decoder_graph_name(t, th, tw), (TensorSpec("latents", (batch, latent, t, th, tw)),),
                                 (TensorSpec("frames", (batch, vcfg.out_channels, decoded_frames(t, vcfg),
                                                        th * spatial, tw * spatial)),)),
                       lambda: VaeDecodeTile(parts.load("vae"))))
    relax_tolerance(graphs, dtype)

    manifest = {
        "pipeline": pipeline,
        "dtype": dtype,
        "shapes": {"batch": batch, "num_frames": frames, "height": height, "width": width,
                   "max_sequence_length": max_length},
        "latent_shape": [latent, f, h, w],  # one sample's latents, axes named by latent_layout
        "latent_layout": "CFHW",
        "latent_frames": f,
        "output_frames": out_frames,
        "vae_scale_factor_spatial": spatial,
        "vae_scale_factor_temporal": temporal,
        "vae_scaling_factor": float(vcfg.scaling_factor),
        "text_encoder": {"hidden_size": text_dim, "length": llama_length, "max_crop_start": crop},
        "text_encoder_2": {"hidden_size": pooled_dim, "length": CLIP_MAX_LENGTH},
        "vae_decoders": {decoder_graph_name(*s): list(s) for s in shapes},
        "vae_spatial_tiling": bool(tiling) and any((th, tw) != (h, w) for _, th, tw in shapes),
        "vae_tiling": asdict(tiles),
        "scheduler": scheduler,
        "tokenizer": llama_tok,
        "tokenizer_2": clip_tok,
        "components": raw,
        "assets": {**llama_assets, **clip_assets},
    }
    return graphs, manifest


# ----------------------------------------------------------------------------- generated snapshots
# export/tiny.py format. Both tokenizers are generated: a small Llama-3-style one (its special tokens and the
# prompt template's words) in tokenizer/ and a CLIP BPE one in tokenizer_2/; the encoders keep the real
# vocab sizes, so any id they emit is valid.
_TOKENIZERS = {"tokenizer": "generated-llama", "tokenizer_2": "generated"}
_SHAPES = {"frames": 9, "decode_chunk_size": None}
TINY_MODELS = {
    # diffusers' tests/pipelines/hunyuan_video dummy components, with 3 Llama layers (hidden_states[-3] is
    # then a decoder layer's output) and the transformer at patch_size 2
    "tiny-hunyuan-video": {
        "base": "hunyuan-video",
        "configs": {
            "transformer/config.json": {"in_channels": 4, "out_channels": 4, "num_attention_heads": 2,
                                        "attention_head_dim": 10, "num_layers": 1, "num_single_layers": 1,
                                        "num_refiner_layers": 1, "text_embed_dim": 16, "pooled_projection_dim": 8,
                                        "rope_axes_dim": [2, 4, 4]},
            "vae/config.json": {"latent_channels": 4, "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1,
                                "norm_num_groups": 4},
            "text_encoder/config.json": {"hidden_size": 16, "intermediate_size": 37, "num_attention_heads": 4,
                                         "num_key_value_heads": 2, "num_hidden_layers": 3, "head_dim": 4,
                                         "torch_dtype": "float32"},
            "text_encoder_2/config.json": {"hidden_size": 8, "intermediate_size": 37, "num_attention_heads": 4,
                                           "num_hidden_layers": 2, "projection_dim": 32, "torch_dtype": "float32"},
        },
        "components": ("transformer", "vae", "text_encoder", "text_encoder_2"),
        "tokenizer": _TOKENIZERS,
        "shapes": dict(_SHAPES),
    },
    # HunyuanVideo's real widths and heads (transformer 24 x 128 heads, Llama 4096 wide with 32/8 heads,
    # CLIP-L 768, the real VAE) with less depth, for memory: 1 dual-stream and 1 single-stream block of
    # 20 + 40, 3 of the Llama's 32 layers (hidden_states[-3] needs 2; its 128320 x 4096 embedding table
    # alone is 0.53 B parameters) and 2 of CLIP's 12.
    "small-hunyuan-video": {
        "base": "hunyuan-video",
        "configs": {
            "transformer/config.json": {"num_layers": 1, "num_single_layers": 1},
            "text_encoder/config.json": {"num_hidden_layers": 3, "torch_dtype": "float32"},
            "text_encoder_2/config.json": {"num_hidden_layers": 2, "torch_dtype": "float32"},
        },
        "components": ("transformer", "vae", "text_encoder", "text_encoder_2"),
        "tokenizer": _TOKENIZERS,
        "shapes": dict(_SHAPES),
        "note": "HunyuanVideo's real widths and heads (transformer 24x128 heads, Llama 4096 wide with 32/8 heads, "
                "CLIP-L 768, the real VAE) with random weights; the transformer keeps 1 of its 20 dual-stream and 1 "
                "of its 40 single-stream blocks, the Llama 3 of its 32 layers and CLIP 2 of its 12, for memory.",
    },
}
