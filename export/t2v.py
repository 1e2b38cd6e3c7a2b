"""Text-to-video and video-to-video with the UNet3D family (ModelScope T2V 1.7B, zeroscope v2):
which graphs, with which static shapes, built from which snapshot components.

Graphs (B = batch, F = frames, C = latent channels, h/w = latent size, K = VAE chunk, N = token
length (the tokenizer's model_max_length, 77), L = text encoder layers, D = its hidden size):
  text_encoder   input_ids[B,N] int32 (+ attention_mask[B,N] int32 when the text encoder's config
                 sets use_attention_mask)  -> prompt_embeds[B,L+1,N,D]
                 prompt_embeds[:, k] is diffusers' encode_prompt output for clip_skip=k (k = 0 is
                 clip_skip=None: last_hidden_state), so clip_skip stays a call-time argument.
  unet           sample[B,C,F,h,w] timestep[1] encoder_hidden_states[2B,N,D] guidance_scale[1]
                                                     -> noise_pred[B,C,F,h,w]
                 one denoising step; the classifier-free-guidance pair runs as one batch of 2B
                 (unconditional first) and is combined inside the graph. With guidance off the
                 runtime feeds the prompt embeddings twice and guidance 1, which returns the
                 conditional prediction exactly.
  vae_decoder    latents[K,C,h,w]                    -> frames[K,3,H,W]   (1/scaling_factor inside)
  vae_encoder    frames[K,3,H,W] in [-1, 1]          -> mean[K,C,h,w], std[K,C,h,w]
                 (latent_dist's moments; the runtime draws the sample with its own generator)
  vae_decoder_tail / vae_encoder_tail: the same for the last (B*F mod K) frames

One export serves both TextToVideoSDPipeline and VideoToVideoSDPipeline: the manifest's
``pipeline`` names the snapshot's class, and load_pipeline(..., pipeline="video2video") picks
the other one.
"""
from __future__ import annotations

from pathlib import Path

from .components import Components
from .graphs import (
    GraphSpec, TensorSpec, UNetCFGStep, check_cross_attention, check_decode_chunk_size, check_pixel_size,
    check_unet_channels, clip_text_encoder, relax_tolerance, vae_decoder_graphs, vae_encoder_graphs,
)


# ----------------------------------------------------------------------------- helpers
def parse_forward_chunking(value):
    """None / "none" -> None; "SIZE" or "SIZE:DIM" or (size, dim) or {"chunk_size", "dim"} ->
    {"chunk_size": int, "dim": 0 or 1} (diffusers' unet.enable_forward_chunking(chunk_size, dim))."""
    if value is None or value == "none":
        return None
    if isinstance(value, dict):
        size, dim = value.get("chunk_size"), value.get("dim", 0)
    elif isinstance(value, (tuple, list)):
        size, dim = (tuple(value) + (0,))[:2]
    else:
        text = str(value)
        size, _, dim = text.partition(":")
        try:
            size, dim = int(size), int(dim or 0)
        except ValueError:
            raise ValueError(f"forward chunking {value!r}: expected CHUNK_SIZE or CHUNK_SIZE:DIM "
                             "(e.g. 1:1 = diffusers' enable_forward_chunking(chunk_size=1, dim=1)), or none") from None
    if not isinstance(size, int) or size < 1 or dim not in (0, 1):
        raise ValueError(f"forward chunking {value!r}: chunk_size must be a positive int and dim 0 (batch) "
                         "or 1 (sequence)")
    return {"chunk_size": size, "dim": dim}


# ----------------------------------------------------------------------------- plan
def plan(snapshot: Path, weights: Path | None, frames: int, height: int, width: int, batch: int = 1,
         dtype: str = "fp32", decode_chunk_size: int | None = None, variant: str | None = None,
         forward_chunking=None):
    """(graphs, manifest fields) for a TextToVideoSD / VideoToVideoSD export. ``weights=None``
    exports random weights (no tokenizer needed: pass prompt_embeds at run time, or export from a
    snapshot that has tokenizer/)."""
    comps = Components(snapshot, weights, variant, dtype)
    index = comps.index()
    pipeline = index["_class_name"]
    configs = {name: comps.config(name) for name in ("unet", "vae", "text_encoder")}
    scheduler = comps.scheduler()
    unet_cfg, vae_cfg, text_cfg = configs["unet"], configs["vae"], configs["text_encoder"]
    scale = 2 ** (len(vae_cfg.get("block_out_channels", (64,))) - 1)
    if frames < 1 or batch < 1:
        raise ValueError(f"frames ({frames}) and batch ({batch}) must be positive")
    check_pixel_size(height, width, scale)
    total = batch * frames
    chunk = check_decode_chunk_size(decode_chunk_size, total, default=total)  # diffusers decodes all at once
    latent = vae_cfg.get("latent_channels", 4)
    check_unet_channels(unet_cfg, latent)
    hidden = text_cfg.get("hidden_size", 512)
    check_cross_attention(unet_cfg, hidden, default=1024)
    chunking = parse_forward_chunking(forward_chunking)

    # the text encoder graph; its tokenizer is copied into the export so that it is self-contained
    text_graph, text_fields = clip_text_encoder(comps, batch, required="tokenizer" in index)
    max_length = text_fields["text_encoder"]["max_length"]

    h, w = height // scale, width // scale
    scaling = float(vae_cfg.get("scaling_factor", 0.18215))

    def unet_step():
        unet = comps.load("unet", num_frames=frames)
        if chunking is not None:
            unet.enable_forward_chunking(chunking["chunk_size"], chunking["dim"])
        return UNetCFGStep(unet)

    graphs = [
        text_graph,
        (GraphSpec("unet", (
            TensorSpec("sample", (batch, latent, frames, h, w)),
            TensorSpec("timestep", (1,)),
            TensorSpec("encoder_hidden_states", (2 * batch, max_length, hidden)),
            TensorSpec("guidance_scale", (1,)),
        ), (TensorSpec("noise_pred", (batch, latent, frames, h, w)),),
            dummy_overrides={"timestep": [500.0], "guidance_scale": [7.5]}),
         unet_step),
    ]
    graphs += vae_decoder_graphs(comps, chunk, total, (latent, h, w), (height, width), scaling)
    graphs += vae_encoder_graphs(comps, chunk, total, (latent, h, w), (height, width))
    relax_tolerance(graphs, dtype)

    manifest = {
        "pipeline": pipeline,
        "dtype": dtype,
        "shapes": {"batch": batch, "num_frames": frames, "height": height, "width": width,
                   "decode_chunk_size": chunk},
        "latent_shape": [latent, frames, h, w],  # one sample's latents, axes named by latent_layout
        "latent_layout": "CFHW",
        "vae_scale_factor": scale,
        "vae_scaling_factor": scaling,
        "scheduler": scheduler,
        **text_fields,
        "forward_chunking": chunking,
        "components": configs,
    }
    return graphs, manifest
