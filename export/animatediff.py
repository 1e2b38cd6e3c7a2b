"""AnimateDiff (diffusers' AnimateDiffPipeline and AnimateDiffVideoToVideoPipeline): an SD 1.x UNet
with motion modules (models/animatediff.py UNetMotionModel), CLIP text and an AutoencoderKL - which
graphs, with which static shapes, built from which snapshot components.

Two snapshot layouts export:
  (a) ``unet/`` is a saved UNetMotionModel (what AnimateDiffPipeline.save_pretrained writes);
  (b) ``unet/`` is the SD 1.5 base's UNet2DConditionModel and ``motion_adapter/`` a MotionAdapter
      (an SD 1.5 checkpoint plus guoyww/animatediff-motion-adapter-*, as the presets are laid out).

Graphs (B = batch of videos, F = frames <= motion_max_seq_length, C = latent channels, h/w = latent
size, K = VAE chunk, N = token length (77), L = text encoder layers, D = text hidden size):
  text_encoder   input_ids[B,N] int32 (+ attention_mask[B,N] when the config sets use_attention_mask)
                                                   -> prompt_embeds[B,L+1,N,D]
                 index k is diffusers' encode_prompt output for clip_skip=k (k = 0: last_hidden_state),
                 so clip_skip stays a call argument (export/graphs.py ClipTextEncode).
  unet           sample[B,C,F,h,w] timestep[1] encoder_hidden_states[2B*F,N,D] guidance_scale[1]
                                                   -> noise_pred[B,C,F,h,w]
                 one denoising step; the classifier-free-guidance pair is one batch of 2B videos
                 (unconditional first), combined inside the graph. The text embeddings are per frame
                 (diffusers repeat_interleaves them over the frames), which keeps the graph ready for
                 FreeNoise's per-frame prompts. Without guidance the runtime feeds the conditional half
                 twice with scale 1, which returns the conditional prediction exactly.
  vae_decoder    latents[K,C,h,w]                  -> frames[K,3,H,W]   (1/scaling_factor inside)
  vae_encoder    frames[K,3,H,W] in [-1, 1]        -> mean[K,C,h,w], std[K,C,h,w] (video-to-video; the
                 runtime draws latent_dist.sample with its own generator)
  vae_decoder_tail / vae_encoder_tail: the same for the last (B*F mod K) frames

One export serves both pipelines: load_pipeline(..., pipeline="video2video") picks the other one.
"""
from __future__ import annotations

from pathlib import Path

from .components import Components
from .graphs import (
    GraphSpec, TensorSpec, UNetCFGStep, check_cross_attention, check_decode_chunk_size, check_pixel_size,
    check_unet_channels, clip_text_encoder, relax_tolerance, vae_decoder_graphs, vae_encoder_graphs,
)

DEFAULT_MAX_SEQ = 32  # diffusers' MotionAdapter / UNetMotionModel default motion_max_seq_length


# ----------------------------------------------------------------------------- helpers
def motion_layout(comps: Components) -> tuple:
    """("unet_motion", unet config) for layout (a); ("unet_adapter", adapter config) for layout (b)."""
    unet_cfg = comps.config("unet")
    if unet_cfg.get("_class_name") == "UNetMotionModel":
        return "unet_motion", unet_cfg
    if not (comps.snapshot / "motion_adapter" / "config.json").is_file():
        raise ValueError(f"{comps.snapshot}: unet/ is a {unet_cfg.get('_class_name')!r}, not a UNetMotionModel, and "
                         "there is no motion_adapter/ folder; an AnimateDiff snapshot needs either a saved "
                         "UNetMotionModel in unet/ or an SD 1.x UNet2DConditionModel plus a MotionAdapter")
    return "unet_adapter", comps.config("motion_adapter")


def load_motion_unet(comps: Components, frames: int):
    from video_aot.models.animatediff import load_unet_motion

    kind, _ = motion_layout(comps)
    if kind == "unet_motion":
        return comps.load("unet", num_frames=frames)
    cell, _ = load_unet_motion(comps.folder("unet"), comps.folder("motion_adapter"), variant=comps.variant,
                               dtype=comps.dtype_of("unet"), random_weights=comps.weights is None, num_frames=frames)
    return cell


# ----------------------------------------------------------------------------- plan
def plan(snapshot: Path, weights: Path | None, frames: int, height: int, width: int, batch: int = 1,
         dtype: str = "fp32", decode_chunk_size: int | None = None, variant: str | None = None):
    """(graphs, manifest fields) for an AnimateDiffPipeline / AnimateDiffVideoToVideoPipeline export.
    ``decode_chunk_size`` (1 .. batch x frames) defaults to diffusers' 16, capped at batch x frames (the 2-D
    VAE decodes every frame on its own, so the chunk changes memory, not the frames)."""
    comps = Components(snapshot, weights, variant, dtype)
    index = comps.index()
    pipeline = index["_class_name"]
    configs = {name: comps.config(name) for name in ("unet", "vae", "text_encoder")}
    kind, motion_cfg = motion_layout(comps)
    if kind == "unet_adapter":
        configs["motion_adapter"] = motion_cfg
    max_seq = int(motion_cfg.get("motion_max_seq_length", DEFAULT_MAX_SEQ))
    scheduler = comps.scheduler()
    unet_cfg, vae_cfg, text_cfg = configs["unet"], configs["vae"], configs["text_encoder"]

    # request shapes, checked as diffusers' check_inputs does (plus what the motion modules allow)
    scale = 2 ** (len(vae_cfg.get("block_out_channels", (64,))) - 1)
    if frames < 1 or batch < 1:
        raise ValueError(f"frames ({frames}) and batch ({batch}) must be positive")
    if frames > max_seq:
        raise ValueError(f"num_frames={frames} exceeds the motion adapter's motion_max_seq_length={max_seq}: its "
                         f"positional embeddings cover at most {max_seq} frames; export 1..{max_seq} frames")
    check_pixel_size(height, width, scale)
    total = batch * frames
    chunk = check_decode_chunk_size(decode_chunk_size, total, default=16)  # diffusers' default 16

    # component compatibility
    latent = vae_cfg.get("latent_channels", 4)
    check_unet_channels(unet_cfg, latent)
    hidden = text_cfg.get("hidden_size", 512)
    check_cross_attention(unet_cfg, hidden, default=1280)

    # the text encoder graph; its tokenizer is copied into the export so that it is self-contained
    text_graph, text_fields = clip_text_encoder(comps, batch, required="tokenizer" in index)
    max_length = text_fields["text_encoder"]["max_length"]

    h, w = height // scale, width // scale
    scaling = float(vae_cfg.get("scaling_factor", 0.18215))

    # the unet step (graphs.UNetCFGStep): the text embeddings are per frame, [2B*F, N, D] (diffusers
    # repeat_interleaves them over the frames), which keeps the graph ready for FreeNoise's per-frame prompts
    graphs = [
        text_graph,
        (GraphSpec("unet", (
            TensorSpec("sample", (batch, latent, frames, h, w)),
            TensorSpec("timestep", (1,)),
            TensorSpec("encoder_hidden_states", (2 * batch * frames, max_length, hidden)),
            TensorSpec("guidance_scale", (1,)),
        ), (TensorSpec("noise_pred", (batch, latent, frames, h, w)),),
            dummy_overrides={"timestep": [500.0], "guidance_scale": [7.5]}),
         lambda: UNetCFGStep(load_motion_unet(comps, frames))),
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
        "motion_max_seq_length": max_seq,
        "motion_layout": kind,
        "scheduler": scheduler,
        **text_fields,
        "components": configs,
    }
    return graphs, manifest


# ----------------------------------------------------------------------------- generated models
# The generated snapshots save the UNet as a UNetMotionModel (layout (a)): the motion modules are part
# of the one unet/ component (the preset's motion_adapter/ config stays, unused).
# The AnimateDiff seed's DDIM (the preset's PNDMScheduler has no numpy port), so that they run as is.
_SEED_DDIM = {"_class_name": "DDIMScheduler", "clip_sample": False, "timestep_spacing": "linspace",
              "beta_schedule": "linear", "steps_offset": 1}
_MOTION_UNET = {"_class_name": "UNetMotionModel", "motion_max_seq_length": 32, "use_motion_mid_block": True,
                "motion_num_attention_heads": 8}
# model_index names the unet's class too, so that diffusers' from_pretrained (bench-model's torch baseline)
# builds a UNetMotionModel rather than the preset's UNet2DConditionModel, which refuses num_attention_heads
_MOTION_INDEX = {"unet": ["diffusers", "UNetMotionModel"]}
TINY_MODELS = {
    "tiny-animatediff": {
        "base": "animatediff-v1-5-2",
        "configs": {
            "unet/config.json": {**_MOTION_UNET, "block_out_channels": [32, 64], "layers_per_block": 1,
                                 "down_block_types": ["CrossAttnDownBlockMotion", "DownBlockMotion"],
                                 "up_block_types": ["UpBlockMotion", "CrossAttnUpBlockMotion"],
                                 "cross_attention_dim": 32, "num_attention_heads": 4,
                                 "motion_num_attention_heads": 4, "sample_size": 8},
            "vae/config.json": {"block_out_channels": [32, 64], "layers_per_block": 1, "sample_size": 64,
                                "down_block_types": ["DownEncoderBlock2D"] * 2,
                                "up_block_types": ["UpDecoderBlock2D"] * 2},
            "text_encoder/config.json": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                                         "num_hidden_layers": 2, "projection_dim": 32},
            "scheduler/scheduler_config.json": _SEED_DDIM,
            "model_index.json": _MOTION_INDEX,
        },
        "components": ("unet", "vae", "text_encoder"),
        "tokenizer": "generated",
    },
    # SD 1.5's real widths and heads (UNet 320/640/1280 with 8 heads, cross-attention 768, the motion
    # modules with 8 heads; the real SD VAE; CLIP ViT-L text width 768 with 12 heads) with less depth, for
    # memory: the UNet's fourth, attention-free 1280-wide level is dropped and the text tower keeps 4 of
    # its 12 layers.
    "small-animatediff": {
        "base": "animatediff-v1-5-2",
        "configs": {
            "unet/config.json": {**_MOTION_UNET, "block_out_channels": [320, 640, 1280],
                                 "down_block_types": ["CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion",
                                                      "DownBlockMotion"],
                                 "up_block_types": ["UpBlockMotion", "CrossAttnUpBlockMotion",
                                                    "CrossAttnUpBlockMotion"],
                                 "cross_attention_dim": 768, "num_attention_heads": 8},
            "text_encoder/config.json": {"num_hidden_layers": 4},
            "scheduler/scheduler_config.json": _SEED_DDIM,
            "model_index.json": _MOTION_INDEX,
        },
        "components": ("unet", "vae", "text_encoder"),
        "tokenizer": "generated",
        "note": "SD 1.5 + motion adapter v1-5-2 widths and heads with random weights; the UNet's fourth level "
                "(attention-free, 1280 wide) is dropped and the text tower keeps 4 of its 12 layers, for memory.",
    },
    # The benchmarks' `full` tier: SD 1.5's UNet whole (four levels, 2 layers per block) with the v1-5-2
    # motion modules, the real SD VAE and the whole CLIP ViT-L text tower, random weights (1.5 B parameters)
    "full-animatediff": {
        "base": "animatediff-v1-5-2",
        "configs": {
            "unet/config.json": {**_MOTION_UNET,
                                 "down_block_types": ["CrossAttnDownBlockMotion"] * 3 + ["DownBlockMotion"],
                                 "up_block_types": ["UpBlockMotion"] + ["CrossAttnUpBlockMotion"] * 3,
                                 "num_attention_heads": 8},
            "scheduler/scheduler_config.json": _SEED_DDIM,
            "model_index.json": _MOTION_INDEX,
        },
        "components": ("unet", "vae", "text_encoder"),
        "tokenizer": "generated",
    },
}
