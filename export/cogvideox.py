"""CogVideoX export (CogVideoXPipeline, CogVideoXImageToVideoPipeline, CogVideoXVideoToVideoPipeline):
which graphs, with which static shapes, built from which snapshot components.

Graphs (B = batch, L = max_sequence_length (226), D = T5 width, F = latent frames the
transformer sees, C = latent channels, h/w = latent size, H/W = pixels):
  text_encoder       input_ids[B,L] int32                       -> prompt_embeds[B,L,D]
  transformer        sample[B,F,C,h,w] (image_latents[B,F,C,h,w] for I2V)
                     encoder_hidden_states[2B,L,D] timestep[1] guidance_scale[1]
                                                                 -> noise_pred[B,F,C,h,w]
                     one denoising step; the CFG pair runs as one batch of 2B (unconditional first)
                     and is combined in the graph; rotary tables and the I2V "ofs" are constants.
  vae_decoder_first  latents[B,C,n0,h,w]                        -> frames[B,3,N0,H,W], caches...
  vae_decoder        latents[B,C,2,h,w], caches...              -> frames[B,3,N,H,W], caches...
                     diffusers' latent-frame batches (2 frames; the first takes the remainder);
                     every causal conv's cache is an explicit input and output, 1/scaling_factor inside.
  vae_encoder_first  video[B,3,m0,H,W]                          -> moments[B,2C,k0,h,w], caches...
  vae_encoder        video[B,3,8,H,W], caches...                -> moments[B,2C,2,h,w], caches...
                     (I2V: the first graph alone, on one frame; V2V: diffusers' 8-frame batches)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from mindspore import Tensor, nn, ops

from video_aot.models.cogvideox import CogVideoXTransformerConfig, rotary_positional_embeddings
from video_aot.models.cogvideox_vae import (
    NUM_LATENT_FRAMES_BATCH_SIZE, NUM_SAMPLE_FRAMES_BATCH_SIZE, AutoencoderKLCogVideoXConfig, decoder_cache_specs,
    downsampled_frames, encoder_cache_specs, frame_batches, upsampled_frames,
)
from video_aot.models.loading import config_from_dict

from .components import Components
from .graphs import (GraphSpec, TensorSpec, check_pixel_size, guided, relax_tolerance, spatial_tiling,
                     t5_text_encoder)


# ----------------------------------------------------------------------------- wrapper cells
class TransformerStep(nn.Cell):
    """One CFG-folded step: [uncond, cond] as a batch of 2B, guidance combined in the graph."""

    def __init__(self, transformer, rotary, ofs):
        super().__init__()
        self.transformer = transformer
        self.has_rotary = rotary is not None
        self.cos = Tensor(rotary[0]) if rotary is not None else None
        self.sin = Tensor(rotary[1]) if rotary is not None else None
        self.ofs = Tensor(np.array([ofs], np.float32)) if ofs is not None else None

    def denoise(self, x, encoder_hidden_states, timestep, guidance_scale):
        # x: [2B, F, C(+C), h, w] -> guided noise prediction [B, F, C, h, w]
        b = x.shape[0] // 2
        t = ops.broadcast_to(timestep, (2 * b,))
        noise = self.transformer(x, encoder_hidden_states, t, self.ofs, self.cos, self.sin)
        return guided(noise, b, guidance_scale)

    def construct(self, sample, encoder_hidden_states, timestep, guidance_scale):
        return self.denoise(ops.cat((sample, sample), 0), encoder_hidden_states, timestep, guidance_scale)


class TransformerStepI2V(TransformerStep):
    def construct(self, sample, image_latents, encoder_hidden_states, timestep, guidance_scale):
        x = ops.cat((sample, sample), 0)
        image = ops.cat((image_latents, image_latents), 0)
        return self.denoise(ops.cat((x, image), 2), encoder_hidden_states, timestep, guidance_scale)


class VaeDecodeFirst(nn.Cell):
    """The first latent-frame batch: no caches in (the causal convs repeat the first frame)."""

    def __init__(self, vae, scaling_factor: float, return_caches: bool):
        super().__init__()
        self.decoder = vae.decoder
        self.inv_scale = 1.0 / scaling_factor
        self.return_caches = return_caches

    def construct(self, latents):
        frames, caches = self.decoder(latents * self.inv_scale, None)
        if self.return_caches:
            return (frames,) + caches
        return frames


class VaeDecodeNext(nn.Cell):
    def __init__(self, vae, scaling_factor: float):
        super().__init__()
        self.decoder = vae.decoder
        self.inv_scale = 1.0 / scaling_factor

    def construct(self, latents, *caches):
        frames, new = self.decoder(latents * self.inv_scale, caches)
        return (frames,) + new


class VaeEncodeFirst(nn.Cell):
    def __init__(self, vae, return_caches: bool):
        super().__init__()
        self.encoder = vae.encoder
        self.return_caches = return_caches

    def construct(self, video):
        moments, caches = self.encoder(video, None)
        if self.return_caches:
            return (moments,) + caches
        return moments


class VaeEncodeNext(nn.Cell):
    def __init__(self, vae):
        super().__init__()
        self.encoder = vae.encoder

    def construct(self, video, *caches):
        moments, new = self.encoder(video, caches)
        return (moments,) + new


# ----------------------------------------------------------------------------- frame arithmetic
def latent_frame_layout(pipeline: str, num_frames: int, temporal: int, patch_size_t):
    """diffusers' latent-frame arithmetic for a pixel frame count: (latent frames the
    transformer sees, leading padding frames dropped before decoding, latent frames decoded)."""
    latent = (num_frames - 1) // temporal + 1
    if patch_size_t is None:
        return latent, 0, latent
    if pipeline == "CogVideoXImageToVideoPipeline":
        # the T2V-style padding first (num_frames += additional * temporal), then prepare_latents'
        # own `shape[1] + shape[1] % patch_size_t`
        additional = (patch_size_t - latent % patch_size_t) % patch_size_t
        padded = (num_frames + additional * temporal - 1) // temporal + 1
        padded = padded + padded % patch_size_t
        return padded, additional, padded - additional
    if pipeline == "CogVideoXVideoToVideoPipeline":
        if latent % patch_size_t:
            raise ValueError(f"The number of latent frames must be divisible by patch_size_t={patch_size_t} but "
                             f"{num_frames} frames give {latent} latent frames (diffusers refuses this too)")
        return latent, 0, latent
    additional = (patch_size_t - latent % patch_size_t) % patch_size_t
    return latent + additional, additional, latent


def tile_grid(config: AutoencoderKLCogVideoXConfig, h: int, w: int, mode: str) -> dict:
    """diffusers' ``enable_tiling()`` defaults and the tile grid of its ``tiled_decode`` (``mode``
    "decode": h x w latents, cut in latent units, blended and cropped in pixels) or ``tiled_encode``
    ("encode": h x w pixels, cut in pixels, blended and cropped in latent units)."""
    scale = config.spatial_scale
    sample_h, sample_w = config.sample_height // 2, config.sample_width // 2
    latent_h, latent_w = int(sample_h / scale), int(sample_w / scale)
    overlap_h, overlap_w = 1 / 6, 1 / 5
    if mode == "decode":
        (cut_h, cut_w), (out_h, out_w) = (latent_h, latent_w), (sample_h, sample_w)
    else:
        (cut_h, cut_w), (out_h, out_w) = (sample_h, sample_w), (latent_h, latent_w)
    step_h, step_w = int(cut_h * (1 - overlap_h)), int(cut_w * (1 - overlap_w))
    if step_h < 1 or step_w < 1:
        raise ValueError(f"VAE sample size {config.sample_height}x{config.sample_width} gives {mode} tiles of "
                         f"{cut_h}x{cut_w}, too small to tile")
    tiles = [{"i": i, "j": j, "h": min(cut_h, h - i), "w": min(cut_w, w - j)}
             for i in range(0, h, step_h) for j in range(0, w, step_w)]
    blend_h, blend_w = int(out_h * overlap_h), int(out_w * overlap_w)
    return {
        "tile_sample_min_height": sample_h, "tile_sample_min_width": sample_w,
        "tile_latent_min_height": latent_h, "tile_latent_min_width": latent_w,
        "blend_extent_height": blend_h, "blend_extent_width": blend_w,
        "row_limit_height": out_h - blend_h, "row_limit_width": out_w - blend_w,
        "rows": len(range(0, h, step_h)), "cols": len(range(0, w, step_w)), "tiles": tiles,
    }


def spatial_downsampled(config: AutoencoderKLCogVideoXConfig, size: int) -> int:
    """Rows (or columns) the encoder leaves of ``size`` pixels: each CogVideoXDownsample3D pads one
    on the far side, then convolves 3 wide with stride 2."""
    for _ in range(len(config.block_out_channels) - 1):
        size = (size - 2) // 2 + 1
    return size


def _batches_spec(num: int, size: int, per_batch) -> list:
    return [{"start": s, "end": e, "out": per_batch(e - s)} for s, e in frame_batches(num, size)]


# ----------------------------------------------------------------------------- plan
def plan(snapshot: Path, weights: Path | None, frames: int, height: int, width: int, batch: int = 1,
         dtype: str = "fp32", decode_chunk_size: int | None = None, variant: str | None = None,
         with_video_encoder: bool | None = None, tiling: bool | None = None):
    """(graphs, manifest fields) for a CogVideoX export. ``frames`` is diffusers' ``num_frames``.
    ``with_video_encoder`` adds the V2V encoder graphs to a text-to-video export (default: only for
    CogVideoXVideoToVideoPipeline snapshots), so one export also serves video-to-video.
    ``tiling`` adds the decoder (and, where the export encodes, encoder) graphs of diffusers' spatial
    tiles (``vae.enable_tiling()`` with its default tile sizes and overlaps), one pair per distinct
    tile shape; the runtime's ``enable_tiling()`` then codes tile by tile and blends as diffusers does."""
    comps = Components(snapshot, weights, variant, dtype)
    pipeline = comps.index()["_class_name"]
    if decode_chunk_size is not None:
        raise ValueError("CogVideoX decodes in diffusers' fixed latent-frame batches (2 latent frames, the first "
                         "taking the remainder); --decode-chunk-size does not apply to this family")
    raw = {name: comps.config(name) for name in ("transformer", "vae", "text_encoder")}
    scheduler = comps.scheduler()
    tcfg = config_from_dict(CogVideoXTransformerConfig, raw["transformer"], "transformer/config.json")
    vcfg = config_from_dict(AutoencoderKLCogVideoXConfig, raw["vae"], "vae/config.json")
    text_dim = raw["text_encoder"].get("d_model", 512)
    if frames < 1 or batch < 1:
        raise ValueError(f"frames ({frames}) and batch ({batch}) must be positive")
    scale = vcfg.spatial_scale
    check_pixel_size(height, width, scale)
    h, w = height // scale, width // scale
    if h % tcfg.patch_size or w % tcfg.patch_size:
        raise ValueError(f"latent size {h}x{w} ({height}x{width} pixels) is not a multiple of the transformer's "
                         f"patch_size {tcfg.patch_size}; use a size that is a multiple of {scale * tcfg.patch_size}")
    if text_dim != tcfg.text_embed_dim:
        raise ValueError(f"text encoder d_model {text_dim} must equal the transformer's text_embed_dim "
                         f"{tcfg.text_embed_dim}")
    i2v = pipeline == "CogVideoXImageToVideoPipeline"
    v2v = pipeline == "CogVideoXVideoToVideoPipeline"
    latent = vcfg.latent_channels
    expected_in = 2 * latent if i2v else latent
    if tcfg.in_channels != expected_in:
        raise ValueError(f"transformer in_channels {tcfg.in_channels} must be {expected_in} for {pipeline} "
                         f"(VAE latent_channels {latent}{', doubled for the image latents' if i2v else ''})")
    temporal = int(vcfg.temporal_compression_ratio)
    model_frames, additional, decode_frames = latent_frame_layout(pipeline, frames, temporal, tcfg.patch_size_t)
    if tcfg.use_learned_positional_embeddings and (h, w) != (tcfg.sample_height, tcfg.sample_width):
        raise ValueError(f"this transformer has learned positional embeddings (CogVideoX-5b-I2V) and only runs at "
                         f"{tcfg.sample_height * scale}x{tcfg.sample_width * scale} (HxW); asked for {height}x{width}")
    max_length = tcfg.max_text_seq_length
    levels = vcfg.temporal_levels
    with_encoder = v2v or i2v or bool(with_video_encoder)
    if with_video_encoder and i2v:
        raise ValueError("with_video_encoder applies to text/video-to-video snapshots; I2V exports encode images")
    video_encoder = v2v or bool(with_video_encoder)
    if video_encoder:
        encoded = sum(downsampled_frames(e - s, levels) for s, e in frame_batches(frames, NUM_SAMPLE_FRAMES_BATCH_SIZE))
        if encoded != model_frames:
            raise ValueError(f"a {frames}-frame video encodes to {encoded} latent frames in diffusers' 8-frame "
                             f"batches, but the pipeline's noise has {model_frames}; diffusers fails on this frame "
                             "count too.")

    rotary = None
    if tcfg.use_rotary_positional_embeddings:
        rotary = rotary_positional_embeddings(tcfg, model_frames, h, w)
    ofs = 2.0 if (tcfg.ofs_embed_dim and i2v) else None  # diffusers' I2V: latents.new_full((1,), 2.0)
    if tcfg.ofs_embed_dim and not i2v:
        raise ValueError("this transformer has ofs_embed_dim (a CogVideoX 1.5 I2V checkpoint) but the snapshot's "
                         f"pipeline is {pipeline}; only CogVideoXImageToVideoPipeline feeds the ofs embedding")

    def transformer_step():
        net = comps.load("transformer", latent_frames=model_frames, latent_height=h, latent_width=w)
        return TransformerStepI2V(net, rotary, ofs) if i2v else TransformerStep(net, rotary, ofs)

    out_channels = tcfg.output_channels
    step_inputs = [TensorSpec("sample", (batch, model_frames, latent, h, w))]
    if i2v:
        step_inputs.append(TensorSpec("image_latents", (batch, model_frames, latent, h, w)))
    step_inputs += [TensorSpec("encoder_hidden_states", (2 * batch, max_length, text_dim)),
                    TensorSpec("timestep", (1,)), TensorSpec("guidance_scale", (1,))]
    # the text encoder graph; its tokenizer is copied into the export so that it is self-contained
    text_graph, text_fields = t5_text_encoder(comps, batch, max_length, text_dim)
    graphs = [
        text_graph,
        (GraphSpec("transformer", tuple(step_inputs),
                   (TensorSpec("noise_pred", (batch, model_frames, out_channels, h, w)),),
                   dummy_overrides={"timestep": [500.0], "guidance_scale": [6.0]}),
         transformer_step),
    ]

    # VAE decoder: diffusers' latent-frame batches; first graph without cache inputs
    scaling = float(vcfg.scaling_factor)
    dec_batches = _batches_spec(decode_frames, NUM_LATENT_FRAMES_BATCH_SIZE, lambda n: upsampled_frames(n, levels))
    more = len(dec_batches) > 1

    def decoder_graphs(name, th, tw):
        """The first-batch graph (no cache inputs) and, when there are more batches, the graph that
        takes one 2-latent-frame batch plus the caches, for th x tw latents."""
        caches = tuple(TensorSpec(f"cache.{c}", shape) for c, shape in decoder_cache_specs(vcfg, batch, th, tw))
        first = dec_batches[0]
        graphs.append((GraphSpec(f"{name}_first", (TensorSpec("latents", (batch, latent, first["end"], th, tw)),),
                                 (TensorSpec("frames", (batch, 3, first["out"], th * scale, tw * scale)),)
                                 + (caches if more else ())),
                       lambda more=more: VaeDecodeFirst(comps.load("vae"), scaling, more)))
        if more:
            n = NUM_LATENT_FRAMES_BATCH_SIZE
            graphs.append((GraphSpec(name, (TensorSpec("latents", (batch, latent, n, th, tw)),) + caches,
                                     (TensorSpec("frames", (batch, 3, upsampled_frames(n, levels), th * scale,
                                                            tw * scale)),) + caches),
                           lambda: VaeDecodeNext(comps.load("vae"), scaling)))

    decoder_graphs("vae_decoder", h, w)
    tiling = spatial_tiling(tiling, "CogVideoX")
    tiles = None
    if tiling:
        tiles = tile_grid(vcfg, h, w, "decode")
        for th, tw in sorted({(t["h"], t["w"]) for t in tiles["tiles"]}):
            decoder_graphs(f"vae_decoder_tile_{th}x{tw}", th, tw)

    enc_batches = enc_tiles = None
    if with_encoder:
        video_frames = 1 if i2v else frames
        enc_batches = _batches_spec(video_frames, NUM_SAMPLE_FRAMES_BATCH_SIZE, lambda n: downsampled_frames(n, levels))
        more = len(enc_batches) > 1

        def encoder_graphs(name, th, tw):
            """The first-batch graph (no cache inputs) and, when there are more batches, the graph
            that takes one 8-frame batch plus the caches, for th x tw pixel frames."""
            lh, lw = spatial_downsampled(vcfg, th), spatial_downsampled(vcfg, tw)
            caches = tuple(TensorSpec(f"cache.{c}", shape) for c, shape in encoder_cache_specs(vcfg, batch, th, tw))
            first = enc_batches[0]
            graphs.append((GraphSpec(f"{name}_first", (TensorSpec("video", (batch, 3, first["end"], th, tw)),),
                                     (TensorSpec("moments", (batch, 2 * latent, first["out"], lh, lw)),)
                                     + (caches if more else ())),
                           lambda more=more: VaeEncodeFirst(comps.load("vae"), more)))
            if more:
                n = NUM_SAMPLE_FRAMES_BATCH_SIZE
                graphs.append((GraphSpec(name, (TensorSpec("video", (batch, 3, n, th, tw)),) + caches,
                                         (TensorSpec("moments", (batch, 2 * latent, downsampled_frames(n, levels),
                                                                 lh, lw)),) + caches),
                               lambda: VaeEncodeNext(comps.load("vae"))))

        encoder_graphs("vae_encoder", height, width)
        if tiling:
            enc_tiles = tile_grid(vcfg, height, width, "encode")
            for th, tw in sorted({(t["h"], t["w"]) for t in enc_tiles["tiles"]}):
                encoder_graphs(f"vae_encoder_tile_{th}x{tw}", th, tw)
    relax_tolerance(graphs, dtype)

    manifest = {
        "pipeline": pipeline,
        "dtype": dtype,
        "shapes": {"batch": batch, "num_frames": frames, "height": height, "width": width},
        "latent_frames": (frames - 1) // temporal + 1,  # diffusers' (num_frames - 1) // 4 + 1
        "model_latent_frames": model_frames,  # what the transformer sees (patch_size_t padding included)
        "additional_frames": additional,  # leading latent frames dropped before decoding
        "latent_shape": [model_frames, latent, h, w],  # one sample's latents, axes named by latent_layout
        "latent_layout": "FCHW",
        "output_frames": sum(b["out"] for b in dec_batches),
        "vae_scale_factor_spatial": scale,
        "vae_scale_factor_temporal": temporal,
        "vae_scaling_factor": scaling,
        "invert_scale_latents": bool(vcfg.invert_scale_latents),
        "patch_size_t": tcfg.patch_size_t,
        "decode_batches": dec_batches,
        "tiling": tiles,
        "encode_tiling": enc_tiles,
        "encode_batches": enc_batches,
        "video_encoder": video_encoder,
        "max_sequence_length": max_length,
        "scheduler": scheduler,
        **text_fields,
        "components": raw,
    }
    return graphs, manifest
