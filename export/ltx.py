"""LTX-Video export (LTXPipeline, LTXImageToVideoPipeline; Lightricks/LTX-Video 0.9.0, 0.9.1, 0.9.5):
which graphs, with which static shapes, built from which snapshot components.

Graphs (B = batch, L = max_sequence_length (128), D = T5 width, S = latent tokens
(F x h x w / patches), C = packed channels, I = the transformer's inner dim, F/h/w = latent grid,
N/H/W = pixels):
  text_encoder   input_ids[B,L] int32                      -> prompt_embeds[B,L,D]
                 (diffusers' LTX pipelines run T5 without its attention mask; the mask goes to
                 the transformer's cross-attention)
  transformer    hidden_states[B,S,C] encoder_hidden_states[2B,L,D] encoder_attention_mask[2B,L]
                 timestep[1] (T2V) or [B,S] (I2V: t * (1 - conditioning_mask), per token)
                 rope_cos[S,I] rope_sin[S,I] guidance_scale[1]
                                                            -> noise_pred[B,S,C], noise_pred_text[B,S,C]
                 one denoising step; the CFG pair [negative; prompt] runs as one batch of 2B and is
                 combined in the graph (noise_pred_text is returned for guidance_rescale, which the
                 runtime applies in numpy as diffusers' rescale_noise_cfg). The rotary tables are
                 inputs: the runtime computes them from frame_rate (ltx_rotary_cos_sin).
  vae_decoder    latents[B,C',F,h,w] (normalised, as the sampler leaves them)
                 (+ timestep-conditioned VAEs: timestep[B] decode_noise_scale[B] decode_noise[B,C',F,h,w])
                 (+ noise-injecting decoders: one [H', W'] map per draw, decoder_noise_specs)
                                                            -> frames[B,3,N,H,W] in [-1, 1]
                 denormalisation (latents_mean/std, scaling_factor), the pipelines' decode-noise
                 mixing and the whole latent video in one call (diffusers' default: no tiling, no
                 framewise decoding). Every noise tensor is an input, drawn by the runtime.
  vae_decoder_<T>_<th>x<tw>  the same inputs for one latent tile [B,C',T,th,tw] (tiling= exports):
                 one graph per distinct tile of vae.enable_tiling() (spatial tiles, tile_sample_min_*
                 / tile_sample_stride_* height and width) and/or vae.use_framewise_decoding (temporal
                 tiles of tile_sample_min_num_frames every tile_sample_stride_num_frames), diffusers'
                 defaults 512/448 pixels and 16/8 frames unless the export options say otherwise. The
                 runtime mixes nothing across tiles: it slices the latents and the decode noise, draws
                 each tile's injected maps and blends the decoded tiles as diffusers does.
  vae_encoder    video[1,3,1,H,W] noise[1,C',1,h,w]        -> latents[1,C',1,h,w]
                 (image-to-video) the posterior sample mean + std * noise, normalised as
                 LTXImageToVideoPipeline.prepare_latents does (scaling_factor 1); one image per call,
                 as diffusers encodes them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from mindspore import nn, ops

from video_aot.models.loading import config_from_dict
from video_aot.models.ltx import LTXVideoTransformerConfig
from video_aot.models.ltx_vae import AutoencoderKLLTXVideoConfig, decode_input_specs

from video_aot.runtime.vae import decode_tile_shapes

from .components import Components
from .graphs import GraphSpec, TensorSpec, guided, relax_tolerance, t5_text_encoder

PIPELINES = ("LTXPipeline", "LTXImageToVideoPipeline")
MAX_SEQUENCE_LENGTH = 128  # diffusers' LTX pipelines' default
# AutoencoderKLLTXVideo's tile sizes (what enable_tiling() keeps for the arguments it is not given)
TILE_DEFAULTS = {"tile_sample_min_height": 512, "tile_sample_min_width": 512, "tile_sample_min_num_frames": 16,
                 "tile_sample_stride_height": 448, "tile_sample_stride_width": 448, "tile_sample_stride_num_frames": 8}
# the VAE switches (use_tiling, use_framewise_decoding) a tiling= export has tile graphs for: "spatial" is
# vae.enable_tiling(), "framewise" vae.use_framewise_decoding = True, "spatial+framewise" both at once
# (temporal tiles each decoded in spatial tiles); True means "spatial". Untiled decoding always works.
TILING_MODES = {"spatial": (True, False), "framewise": (False, True), "spatial+framewise": (True, True)}


# ----------------------------------------------------------------------------- wrapper cells
class TransformerStep(nn.Cell):
    """One CFG-folded step: [negative; prompt] as a batch of 2B, guidance combined in the graph.
    ``per_token``: the timestep is [B, S] (image-to-video) instead of one value."""

    def __init__(self, transformer, per_token: bool):
        super().__init__()
        self.transformer = transformer
        self.per_token = per_token

    def construct(self, hidden_states, encoder_hidden_states, encoder_attention_mask, timestep, rope_cos, rope_sin,
                  guidance_scale):
        # hidden_states: [B, S, C]; encoder_hidden_states: [2B, L, D]; timestep: [1] or [B, S]
        b = hidden_states.shape[0]
        x = ops.cat((hidden_states, hidden_states), 0)
        if self.per_token:
            t = ops.cat((timestep, timestep), 0)  # [2B, S]
        else:
            t = ops.broadcast_to(timestep, (2 * b,))
        noise = self.transformer(x, encoder_hidden_states, t, encoder_attention_mask, rope_cos, rope_sin)
        return guided(noise, b, guidance_scale), noise[b:]


class VaeDecode(nn.Cell):
    """Normalised latents -> frames: LTXPipeline._denormalize_latents, then vae.decode (the
    decode-noise mixing first for timestep-conditioned VAEs)."""

    def __init__(self, vae, scaling_factor: float, conditioned: bool):
        super().__init__()
        self.vae = vae
        self.scaling_factor = scaling_factor
        self.conditioned = conditioned

    def _denormalize(self, latents):
        # latents: [B, C, F, h, w]
        c = latents.shape[1]
        mean = self.vae.latents_mean.reshape(1, c, 1, 1, 1)
        std = self.vae.latents_std.reshape(1, c, 1, 1, 1)
        return latents * std / self.scaling_factor + mean

    def construct(self, latents, *rest):
        z = self._denormalize(latents)
        if self.conditioned:
            return self.vae.decode(z, rest[0], rest[1], rest[2], rest[3:])
        return self.vae.decode(z, None, None, None, rest)


class VaeEncodeImage(nn.Cell):
    """One image as a 1-frame video -> the normalised posterior sample (diffusers' retrieve_latents
    with the generator, then _normalize_latents without scaling_factor)."""

    def __init__(self, vae, latent_channels: int):
        super().__init__()
        self.vae = vae
        self.latent_channels = latent_channels

    def construct(self, video, noise):
        # video: [1, 3, 1, H, W] in [-1, 1]; noise: [1, C, 1, h, w]
        moments = self.vae.encode(video)
        c = self.latent_channels
        mean, logvar = moments[:, :c], moments[:, c:]
        std = ops.exp(0.5 * ops.clamp(logvar, -30.0, 20.0))
        sample = mean + std * noise
        lm = self.vae.latents_mean.reshape(1, c, 1, 1, 1)
        ls = self.vae.latents_std.reshape(1, c, 1, 1, 1)
        return (sample - lm) * 1.0 / ls


# ----------------------------------------------------------------------------- shape arithmetic
def check_request_shapes(frames: int, height: int, width: int, batch: int, spatial: int, temporal: int,
                         patch_size: int, patch_size_t: int):
    """diffusers' check_inputs (height and width divisible by 32) plus what the static graphs need;
    returns (latent frames, latent height, latent width)."""
    if batch < 1 or frames < 1:
        raise ValueError(f"batch ({batch}) and frames ({frames}) must be positive")
    if height % 32 or width % 32 or height <= 0 or width <= 0:
        raise ValueError(f"`height` and `width` have to be divisible by 32 but are {height} and {width} "
                         "(LTXPipeline.check_inputs); e.g. 512x704, 480x704, 32x32")
    if height % spatial or width % spatial:
        raise ValueError(f"`height` and `width` must be multiples of the VAE's spatial compression {spatial}; got "
                         f"{height}x{width}")
    f = (frames - 1) // temporal + 1
    h, w = height // spatial, width // spatial
    if h % patch_size or w % patch_size or f % patch_size_t:
        raise ValueError(f"the latent grid {f}x{h}x{w} is not a multiple of the transformer's patch sizes "
                         f"(patch_size_t={patch_size_t}, patch_size={patch_size})")
    return f, h, w


def tile_config(tiling, sizes: dict, spatial: int, temporal: int):
    """(tiling mode or None, diffusers' six tile sizes) for the export options ``tiling`` and
    ``tile_sample_*``; sizes left at None keep AutoencoderKLLTXVideo's defaults."""
    if tiling is True:
        tiling = "spatial"
    if tiling in (None, False):
        given = sorted(k for k, v in sizes.items() if v is not None)
        if given:
            raise ValueError(f"{', '.join(given)} only apply to an export with tiling= "
                             f"(one of {', '.join(TILING_MODES)})")
        return None, dict(TILE_DEFAULTS)
    if tiling not in TILING_MODES:
        raise ValueError(f"tiling={tiling!r}; choose one of {', '.join(TILING_MODES)} (True means 'spatial', "
                         "diffusers' vae.enable_tiling(); 'framewise' is vae.use_framewise_decoding = True)")
    tiles = {k: (v if sizes.get(k) is None else sizes[k]) for k, v in TILE_DEFAULTS.items()}
    for k, v in tiles.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be a positive integer (pixels or frames), got {v!r}")
    for axis, ratio in (("height", spatial), ("width", spatial), ("num_frames", temporal)):
        tile, stride = tiles[f"tile_sample_min_{axis}"], tiles[f"tile_sample_stride_{axis}"]
        if stride > tile:
            raise ValueError(f"tile_sample_stride_{axis}={stride} is larger than tile_sample_min_{axis}={tile}: the "
                             "tiles would leave gaps")
        if stride < ratio:
            raise ValueError(f"tile_sample_stride_{axis}={stride} is less than one latent step (the VAE compresses "
                             f"{axis} by {ratio}); diffusers' tile loop would not advance")
    return tiling, tiles


def decoder_graph_name(t: int, th: int, tw: int) -> str:
    return f"vae_decoder_{t}_{th}x{tw}"


def decoded_frames(vcfg: AutoencoderKLLTXVideoConfig, latent_frames: int) -> int:
    """Frames the decoder gives for ``latent_frames`` (each temporal upsampler doubles and drops one)."""
    return (latent_frames - 1) * vcfg.temporal_ratio + 1 if vcfg.patch_size_t == 1 else \
        latent_frames * vcfg.temporal_ratio


# ----------------------------------------------------------------------------- plan
def plan(snapshot: Path, weights: Path | None, frames: int, height: int, width: int, batch: int = 1,
         dtype: str = "fp32", decode_chunk_size: int | None = None, variant: str | None = None,
         max_sequence_length: int | None = None, image_to_video: bool | None = None, tiling: bool | str | None = None,
         tile_sample_min_height: int | None = None, tile_sample_min_width: int | None = None,
         tile_sample_min_num_frames: int | None = None, tile_sample_stride_height: int | None = None,
         tile_sample_stride_width: int | None = None, tile_sample_stride_num_frames: int | None = None):
    """(graphs, manifest fields) for an LTX-Video export. ``frames`` is diffusers' ``num_frames``.
    ``max_sequence_length``: the static text length (diffusers' default 128). ``image_to_video``
    adds the VAE encoder and the per-token-timestep transformer so that the export serves
    LTXImageToVideoPipeline (default: for an LTXImageToVideoPipeline snapshot; the published
    Lightricks/LTX-Video snapshot names LTXPipeline, so pass image_to_video=True for I2V). An
    image-to-video export serves text-to-video too (every token at the step's timestep).
    ``tiling``: add the decoder graphs of diffusers' tiled decode: "spatial" (or True) for
    vae.enable_tiling(), "framewise" for vae.use_framewise_decoding, "spatial+framewise" for both
    at once; ``tile_sample_*`` are enable_tiling()'s arguments (pixels and frames; default 512/448
    and 16/8). The runtime's enable_tiling() / enable_framewise_decoding() then decode tile by tile."""
    comp = Components(Path(snapshot), None if weights is None else Path(weights), variant, dtype)
    pipeline = comp.index()["_class_name"]
    if pipeline not in PIPELINES:
        raise ValueError(f"{snapshot}: model_index.json names {pipeline}; the ltx family exports {PIPELINES}")
    if decode_chunk_size is not None:
        raise ValueError("LTX-Video decodes the whole latent video in one graph (diffusers' default, no framewise "
                         "decoding); --decode-chunk-size does not apply to this family")
    i2v = pipeline == "LTXImageToVideoPipeline" if image_to_video is None else bool(image_to_video)
    max_length = MAX_SEQUENCE_LENGTH if max_sequence_length is None else int(max_sequence_length)
    if max_length < 1:
        raise ValueError(f"max_sequence_length must be positive, got {max_length}")
    raw = {name: comp.config(name) for name in ("transformer", "vae", "text_encoder")}
    scheduler = comp.scheduler()
    tcfg = config_from_dict(LTXVideoTransformerConfig, raw["transformer"], "transformer/config.json")
    vcfg = config_from_dict(AutoencoderKLLTXVideoConfig, raw["vae"], "vae/config.json")
    text_dim = raw["text_encoder"].get("d_model", 4096)
    if text_dim != tcfg.caption_channels:
        raise ValueError(f"text encoder d_model {text_dim} must equal the transformer's caption_channels "
                         f"{tcfg.caption_channels}")
    spatial, temporal = vcfg.spatial_ratio, vcfg.temporal_ratio
    p, pt = tcfg.patch_size, tcfg.patch_size_t
    f, h, w = check_request_shapes(frames, height, width, batch, spatial, temporal, p, pt)
    latent = vcfg.latent_channels
    packed = latent * pt * p * p
    if tcfg.in_channels != packed:
        raise ValueError(f"transformer in_channels {tcfg.in_channels} must be the VAE's latent_channels {latent} "
                         f"x patch volume {pt * p * p}")
    seq = (f // pt) * (h // p) * (w // p)
    inner = tcfg.inner_dim
    out_frames = decoded_frames(vcfg, f)

    # the text encoder graph; its tokenizer is copied into the export so that it is self-contained
    text_graph, text_fields = t5_text_encoder(comp, batch, max_length, text_dim)

    step_inputs = (TensorSpec("hidden_states", (batch, seq, packed)),
                   TensorSpec("encoder_hidden_states", (2 * batch, max_length, text_dim)),
                   TensorSpec("encoder_attention_mask", (2 * batch, max_length)),
                   TensorSpec("timestep", (batch, seq) if i2v else (1,)),
                   TensorSpec("rope_cos", (seq, inner)), TensorSpec("rope_sin", (seq, inner)),
                   TensorSpec("guidance_scale", (1,)))
    out = TensorSpec("noise_pred", (batch, seq, tcfg.output_channels))
    graphs = [
        text_graph,
        (GraphSpec("transformer", step_inputs, (out, TensorSpec("noise_pred_text", out.shape)),
                   dummy_overrides={"timestep": np.full((batch, seq) if i2v else (1,), 500.0),
                                    "encoder_attention_mask": np.ones((2 * batch, max_length)),
                                    "guidance_scale": [3.0]}),
         lambda: TransformerStep(comp.load("transformer"), i2v)),
    ]
    conditioned = bool(vcfg.timestep_conditioning)
    dec_inputs = tuple(TensorSpec(name, shape) for name, shape in decode_input_specs(vcfg, batch, f, h, w))
    dec_overrides = {"timestep": np.full((batch,), 0.05), "decode_noise_scale": np.full((batch,), 0.025)} \
        if conditioned else {}
    graphs.append((GraphSpec("vae_decoder", dec_inputs, (TensorSpec("frames", (batch, 3, out_frames, height, width)),),
                             dummy_overrides=dec_overrides),
                   lambda: VaeDecode(comp.load("vae"), float(vcfg.scaling_factor), conditioned)))
    # the tiles of each VAE switch state the export serves, one graph per shape (the whole video's is vae_decoder)
    mode, tiles = tile_config(tiling, {"tile_sample_min_height": tile_sample_min_height,
                                       "tile_sample_min_width": tile_sample_min_width,
                                       "tile_sample_min_num_frames": tile_sample_min_num_frames,
                                       "tile_sample_stride_height": tile_sample_stride_height,
                                       "tile_sample_stride_width": tile_sample_stride_width,
                                       "tile_sample_stride_num_frames": tile_sample_stride_num_frames},
                              spatial, temporal)
    decoders = {"vae_decoder": [f, h, w]}
    if mode is not None:
        for t, th, tw in decode_tile_shapes(f, h, w, tiles, spatial, temporal, *TILING_MODES[mode]):
            if (t, th, tw) != (f, h, w):
                decoders[decoder_graph_name(t, th, tw)] = [t, th, tw]
    for name, (t, th, tw) in decoders.items():
        if name == "vae_decoder":
            continue
        graphs.append((GraphSpec(name, tuple(TensorSpec(n, shape) for n, shape in decode_input_specs(vcfg, batch, t,
                                                                                                       th, tw)),
                                 (TensorSpec("frames", (batch, 3, decoded_frames(vcfg, t), th * spatial,
                                                        tw * spatial)),),
                                 dummy_overrides=dec_overrides),
                       lambda: VaeDecode(comp.load("vae"), float(vcfg.scaling_factor), conditioned)))
    if i2v:
        graphs.append((GraphSpec("vae_encoder", (TensorSpec("video", (1, 3, 1, height, width)),
                                                 TensorSpec("noise", (1, latent, 1, h, w))),
                                 (TensorSpec("latents", (1, latent, 1, h, w)),)),
                       lambda: VaeEncodeImage(comp.load("vae"), latent)))
    relax_tolerance(graphs, dtype)

    manifest = {
        "pipeline": pipeline,
        "dtype": dtype,
        "shapes": {"batch": batch, "num_frames": frames, "height": height, "width": width,
                   "max_sequence_length": max_length},
        "latent_shape": [seq, packed],  # one sample's packed latents, as diffusers' latents= takes them
        "latent_layout": "SC",
        "latent_grid": [f, h, w],  # latent frames, height, width (before patching)
        "latent_channels": latent,
        "output_frames": out_frames,
        "image_to_video": i2v,
        "patch_size": p,
        "patch_size_t": pt,
        "vae_spatial_compression_ratio": spatial,
        "vae_temporal_compression_ratio": temporal,
        "vae_timestep_conditioning": conditioned,
        "decoder_noise": [{"name": s.name, "shape": list(s.shape)} for s in dec_inputs
                          if s.name not in ("latents", "timestep", "decode_noise_scale", "decode_noise")],
        "vae_decoders": decoders,  # graph -> the latent tile [frames, height, width] it decodes
        "vae_tiling": tiles,  # diffusers' tile_sample_min_* / tile_sample_stride_* the tile graphs were cut for
        "vae_tiling_mode": mode,  # None: no tile graphs
        "scheduler": scheduler,
        **text_fields,
        "components": raw,
    }
    return graphs, manifest


# ----------------------------------------------------------------------------- generated snapshots
# bench-model's small tier: LTX-Video's real widths and heads (transformer 32 heads x 64 = 2048 wide,
# caption 4096; T5-XXL 4096 wide, 64 heads; the VAE's real channels) with less depth, for memory: the
# transformer keeps 2 of its 28 blocks, T5 1 of its 24 layers and every VAE decoder block (and the mid
# block) 1 resnet layer. MindSpore 2.7.1's compiled CPU graphs held 2-3x their weights at run time before
# broadcasts were expanded at export (the CogVideoX small tier's exported process, with 2 T5 layers, peaked
# at 12.4 GB then), and 0.9.1's real decoder
# alone is 0.75 B parameters (its 1024-wide mid block 8 layers deep).
_LTX_SMALL = {
    "transformer/config.json": {"num_layers": 2},
    "text_encoder/config.json": {"num_layers": 1, "torch_dtype": "float32"},
}
# len(decoder_layers_per_block) of each preset
_LTX_DECODER_BLOCKS = {"ltx-video-0.9.0": 5, "ltx-video-0.9.1": 4, "ltx-video-0.9.5": 4}
_LTX_TINY = {
    "transformer/config.json": {"num_attention_heads": 4, "attention_head_dim": 8, "cross_attention_dim": 32,
                                "num_layers": 1, "caption_channels": 32},
    "text_encoder/config.json": {"d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4,
                                 "torch_dtype": "float32"},
}
TINY_MODELS = {}
for _preset in ("ltx-video-0.9.0", "ltx-video-0.9.1", "ltx-video-0.9.5"):
    TINY_MODELS[f"small-{_preset}"] = {
        "base": _preset,
        "configs": {**_LTX_SMALL,
                    "vae/config.json": {"decoder_layers_per_block": [1] * _LTX_DECODER_BLOCKS[_preset]}},
        "components": ("transformer", "vae", "text_encoder"),
        "tokenizer": "generated-t5",
        "shapes": {"frames": 9, "height": 64, "width": 64, "decode_chunk_size": None},
        "note": "LTX-Video's real widths and heads (transformer 32x64 = 2048 wide, caption 4096; T5-XXL 4096 wide, "
                "64 heads; the VAE's real channels, decoder 256/512/1024) with random weights; the transformer keeps "
                "2 of its 28 blocks, T5 1 of its 24 layers, and each VAE decoder block and the mid block 1 resnet "
                "layer (0.9.1: 5/6/7/8), for memory: MindSpore 2.7.1's compiled CPU graphs held 2-3x their weights "
                "(before broadcasts were expanded at export) and the real 0.9.1 decoder alone is 0.75 B parameters.",
    }
TINY_MODELS["small-ltx-video"] = dict(TINY_MODELS["small-ltx-video-0.9.1"])
