"""Text2Video-Zero (diffusers' TextToVideoZeroPipeline on a Stable Diffusion 1.x UNet): which graphs,
with which static shapes, built from which snapshot components.

Graphs (F = video_length, C = latent channels, h/w = latent size, K = VAE decode chunk, N = token
length (77), L = text encoder layers, D = text hidden size = UNet cross_attention_dim):
  text_encoder   input_ids[1,N] int32 (+ attention_mask[1,N] when the config sets use_attention_mask)
                                                   -> prompt_embeds[1,L+1,N,D]
                 export/graphs.py ClipTextEncode; the pipeline reads index 0 (last_hidden_state).
  unet_video     sample[F,C,h,w] timestep[1] encoder_hidden_states[2,N,D] guidance_scale[1]
                                                   -> noise_pred[F,C,h,w]
                 one denoising step: a UNet batch of 2F ([uncond x F, cond x F]; the graph repeats each
                 embedding F times as diffusers does) where every self-attention takes its keys and values
                 from frame 0 of its half (models/unet2d.py cross_frame_attention_frames), and the
                 classifier-free-guidance pair is combined inside the graph. It serves every phase:
                 - the last one, all frames together;
                 - the first two (the first frame alone). diffusers runs the plain UNet there on a batch of
                   2 (CrossFrameAttnProcessor groups it into video_length 1). Frame 0 of this graph is that
                   plain UNet on frame 0 whatever the other frames hold: its self-attention reads only its
                   own keys and values, and no other layer mixes frames. So the runtime passes the first
                   frame repeated F times and keeps frame 0. One graph holds the UNet's weights once; a
                   separate first-frame graph held them twice (benchmarks/NOTES.md, "Text2Video-Zero: one
                   UNet graph"), for about (F-1)/F of a frame step more compute in those phases.
  vae_decoder    latents[K,C,h,w]                  -> frames[K,3,H,W]   (1/scaling_factor inside)
  vae_decoder_tail  the same for the last (F mod K) frames, when K does not divide F

diffusers runs one prompt per call (num_videos_per_prompt must be 1; a list of prompts would share the
cross-frame attention groups between prompts), so the export has batch 1. Guidance must be on
(guidance_scale > 1): diffusers' __call__ concatenates the negative embeddings, which are None
without guidance.
"""
from __future__ import annotations

from pathlib import Path

from mindspore import nn, ops

from .components import Components
from .graphs import (
    GraphSpec, TensorSpec, check_cross_attention, check_decode_chunk_size, check_pixel_size,
    check_unet_channels, clip_text_encoder, guided, relax_tolerance, vae_decoder_graphs,
)


# ----------------------------------------------------------------------------- wrapper cells
class VideoStep(nn.Cell):
    """One step of every phase: F frames, CFG pair as a UNet batch of 2F with cross-frame attention."""

    def __init__(self, unet, frames: int):
        super().__init__()
        self.unet = unet
        self.frames = frames

    def construct(self, sample, timestep, encoder_hidden_states, guidance_scale):
        # sample: [F, C, h, w]; encoder_hidden_states: [2, N, D] -> [2F, N, D] (uncond x F, cond x F)
        f = self.frames
        _, n, d = encoder_hidden_states.shape
        context = ops.broadcast_to(encoder_hidden_states[:, None], (2, f, n, d)).reshape(2 * f, n, d)
        noise = self.unet(ops.cat((sample, sample), 0), timestep, context)  # [2F, C, h, w]
        return guided(noise, f, guidance_scale)


# ----------------------------------------------------------------------------- plan
def plan(snapshot: Path, weights: Path | None, frames: int, height: int, width: int, batch: int = 1,
         dtype: str = "fp32", decode_chunk_size: int | None = None, variant: str | None = None):
    """(graphs, manifest fields) for a TextToVideoZeroPipeline export; ``frames`` is video_length.
    ``decode_chunk_size`` defaults to all frames (diffusers decodes the video in one VAE call; the 2-D
    VAE decodes frames independently, so the chunk changes memory, not the frames)."""
    from video_aot.models.unet2d import cross_frame_video_length

    comps = Components(snapshot, weights, variant, dtype)
    index = comps.index()
    pipeline = index["_class_name"]
    configs = {name: comps.config(name) for name in ("unet", "vae", "text_encoder")}
    scheduler = comps.scheduler()
    unet_cfg, vae_cfg, text_cfg = configs["unet"], configs["vae"], configs["text_encoder"]

    # request shapes, checked as diffusers' __call__ / check_inputs do
    if batch != 1:
        raise ValueError(f"TextToVideoZeroPipeline generates one video per call (batch {batch} was asked): "
                         "diffusers asserts num_videos_per_prompt == 1, and a list of prompts would share the "
                         "cross-frame attention groups between prompts. Export with batch 1.")
    if frames < 1:
        raise ValueError(f"video_length must be positive (diffusers asserts video_length > 0), got {frames}")
    scale = 2 ** (len(vae_cfg.get("block_out_channels", (64,))) - 1)
    check_pixel_size(height, width, scale)
    chunk = check_decode_chunk_size(decode_chunk_size, frames, default=frames)  # diffusers decodes all at once

    # component compatibility
    latent = vae_cfg.get("latent_channels", 4)
    check_unet_channels(unet_cfg, latent)
    hidden = text_cfg.get("hidden_size", 512)
    check_cross_attention(unet_cfg, hidden, default=1280)

    # the text encoder graph; its tokenizer is copied into the export so that it is self-contained
    text_graph, text_fields = clip_text_encoder(comps, 1, required="tokenizer" in index)
    max_length = text_fields["text_encoder"]["max_length"]

    h, w = height // scale, width // scale
    scaling = float(vae_cfg.get("scaling_factor", 0.18215))
    video_frames = cross_frame_video_length(2 * frames)  # diffusers' CrossFrameAttnProcessor(batch_size=2)

    step = GraphSpec("unet_video", (
        TensorSpec("sample", (frames, latent, h, w)),
        TensorSpec("timestep", (1,)),
        TensorSpec("encoder_hidden_states", (2, max_length, hidden)),
        TensorSpec("guidance_scale", (1,)),
    ), (TensorSpec("noise_pred", (frames, latent, h, w)),),
        dummy_overrides={"timestep": [500.0], "guidance_scale": [7.5]})
    graphs = [
        text_graph,
        (step, lambda: VideoStep(comps.load("unet", cross_frame_attention_frames=video_frames), frames)),
    ]
    graphs += vae_decoder_graphs(comps, chunk, frames, (latent, h, w), (height, width), scaling)
    relax_tolerance(graphs, dtype)

    manifest = {
        "pipeline": pipeline,
        "dtype": dtype,
        "shapes": {"batch": 1, "video_length": frames, "height": height, "width": width,
                   "decode_chunk_size": chunk},
        "latent_shape": [frames, latent, h, w],  # the video's latents as diffusers returns them (output "latent")
        "latent_layout": "FCHW",
        "vae_scale_factor": scale,
        "vae_scaling_factor": scaling,
        "scheduler": scheduler,
        **text_fields,
        "components": configs,
    }
    return graphs, manifest


# ----------------------------------------------------------------------------- generated models
TINY_MODELS = {
    "tiny-text2video-zero": {
        "base": "text2video-zero",
        "configs": {
            "unet/config.json": {"block_out_channels": [32, 64], "attention_head_dim": 8, "cross_attention_dim": 32,
                                 "layers_per_block": 1, "sample_size": 8,
                                 "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                                 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]},
            "vae/config.json": {"block_out_channels": [32, 64], "layers_per_block": 1, "sample_size": 64,
                                "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]},
            "text_encoder/config.json": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                                         "num_hidden_layers": 2, "projection_dim": 32, "torch_dtype": "float32"},
        },
        "components": ("unet", "vae", "text_encoder"),
        "tokenizer": "generated",
    },
    # The benchmarks' `small` tier: Stable Diffusion 1.5's UNet and VAE whole (0.86 B + 0.08 B) and the CLIP
    # text tower at its real width with 4 of its 12 layers.
    "small-text2video-zero": {
        "base": "text2video-zero",
        "configs": {"text_encoder/config.json": {"num_hidden_layers": 4, "torch_dtype": "float32"}},
        "components": ("unet", "vae", "text_encoder"),
        "tokenizer": "generated",
        "note": "Stable Diffusion 1.5's UNet and VAE at full size with random weights; the CLIP text tower keeps "
                "4 of its 12 layers.",
    },
    # The benchmarks' `full` tier: Stable Diffusion 1.5 whole (UNet, VAE, CLIP ViT-L text tower), random weights
    "full-text2video-zero": {
        "base": "text2video-zero",
        "configs": {"text_encoder/config.json": {"torch_dtype": "float32"}},
        "components": ("unet", "vae", "text_encoder"),
        "tokenizer": "generated",
    },
}
