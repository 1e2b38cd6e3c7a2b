"""I2VGen-XL (ali-vilab/i2vgen-xl, diffusers' I2VGenXLPipeline): which graphs, with which static
shapes, built from which snapshot components.

Graphs (B = batch of videos, F = frames, C = latent channels, h/w = latent size, K = VAE decode chunk,
N = token length (77), L = text encoder layers, D = text hidden size = UNet cross_attention_dim,
S = the feature extractor's crop size = the image tower's image_size, E = image projection_dim):
  text_encoder   input_ids[1,N] int32 (+ attention_mask[1,N] when the config sets use_attention_mask)
                                                   -> prompt_embeds[1,L+1,N,D]
                 index k is diffusers' encode_prompt output for clip_skip=k (k = 0: last_hidden_state),
                 so clip_skip stays a call argument (the pipeline's default is 1: the penultimate layer).
                 One prompt per call: the runtime encodes the prompts and negative prompts row by row.
  image_encoder  pixel_values[1,3,S,S]             -> image_embeds[1,E]   (one image per call)
  vae_encoder    image[1,3,H,W] in [-1, 1]         -> mean[1,C,h,w], std[1,C,h,w]
                 latent_dist's moments; the runtime draws the sample with its own generator (diffusers
                 samples it without one).
  unet           sample[B,C,F,h,w] timestep[1] fps[1] image_latents[B,4,F,h,w]
                 image_embeddings[2B,1,E] encoder_hidden_states[2B,N,D] guidance_scale[1]
                                                   -> noise_pred[B,C,F,h,w]
                 one denoising step; the classifier-free-guidance pair runs as one batch of 2B
                 (unconditional first: zero image embedding, negative prompt; both halves see the same
                 image latents) and is combined inside the graph. With guidance off the runtime feeds the
                 conditional half twice and guidance 1, which returns the conditional prediction exactly.
  vae_decoder    latents[K,C,h,w]                  -> frames[K,3,H,W]   (1/scaling_factor inside)
  vae_decoder_tail  the same for the last (B*F mod K) frames, when K does not divide B*F
"""
from __future__ import annotations

from pathlib import Path

from mindspore import nn, ops

from video_aot.models.loading import read_json

from .components import Components
from .graphs import (
    GraphSpec, TensorSpec, check_decode_chunk_size, check_pixel_size, check_unet_channels, clip_text_encoder, guided,
    image_encoder, relax_tolerance, vae_decoder_graphs, vae_encoder_graphs,
)

# the image stem of I2VGenXLUNet always takes 4-channel image latents (diffusers' own constant)
IMAGE_LATENT_CHANNELS = 4


# ----------------------------------------------------------------------------- wrapper cells
class UNetStep(nn.Cell):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def construct(self, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states,
                  guidance_scale):
        # sample: [B, C, F, h, w] (already scaled by the scheduler); image_latents: [B, 4, F, h, w] (the same
        # for both halves); image_embeddings: [2B, 1, E] and encoder_hidden_states: [2B, N, D], unconditional
        # first; timestep, fps, guidance_scale: [1]
        b = sample.shape[0]
        noise = self.unet(ops.cat((sample, sample), 0), timestep, fps, ops.cat((image_latents, image_latents), 0),
                          image_embeddings, encoder_hidden_states)
        return guided(noise, b, guidance_scale)


# ----------------------------------------------------------------------------- plan
def plan(snapshot: Path, weights: Path | None, frames: int, height: int, width: int, batch: int = 1,
         dtype: str = "fp32", decode_chunk_size: int | None = None, variant: str | None = None):
    """(graphs, manifest fields) for an I2VGenXLPipeline export. ``batch`` counts videos (prompts x
    num_videos_per_prompt). ``decode_chunk_size`` defaults to diffusers' 1 (frame by frame; the 2-D
    VAE decodes each frame independently, so the chunk changes memory, not the frames)."""
    comps = Components(snapshot, weights, variant, dtype)
    index = comps.index()
    pipeline = index["_class_name"]
    configs = {name: comps.config(name) for name in ("unet", "vae", "text_encoder", "image_encoder")}
    scheduler = comps.scheduler()
    feature_extractor = read_json(snapshot / "feature_extractor" / "preprocessor_config.json")
    unet_cfg, vae_cfg, text_cfg, enc_cfg = (configs[k] for k in ("unet", "vae", "text_encoder", "image_encoder"))

    # request shapes, checked as diffusers' check_inputs does (plus what a static graph needs)
    scale = 2 ** (len(vae_cfg.get("block_out_channels", (64,))) - 1)
    if frames < 1 or batch < 1:
        raise ValueError(f"frames ({frames}) and batch ({batch}) must be positive")
    check_pixel_size(height, width, scale)
    total = batch * frames
    chunk = check_decode_chunk_size(decode_chunk_size, total, default=1)  # diffusers' default: 1

    # component compatibility
    latent = vae_cfg.get("latent_channels", 4)
    check_unet_channels(unet_cfg, latent)
    if latent != IMAGE_LATENT_CHANNELS:
        raise ValueError(f"I2VGenXLUNet's image stem takes {IMAGE_LATENT_CHANNELS}-channel image latents, but the "
                         f"VAE has latent_channels {latent}")
    cross = unet_cfg.get("cross_attention_dim", 1024)
    hidden = text_cfg.get("hidden_size", 512)
    embed = enc_cfg.get("projection_dim", 512)
    if cross != hidden or cross != embed:
        raise ValueError(f"unet cross_attention_dim {cross} must equal the text encoder hidden_size {hidden} and "
                         f"the image encoder projection_dim {embed}")
    crop = feature_extractor.get("crop_size", {"height": 224, "width": 224})
    crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
    size = enc_cfg.get("image_size", 224)
    if crop != (size, size):
        raise ValueError(f"feature_extractor crop_size {crop[1]}x{crop[0]} (WxH) differs from the image encoder's "
                         f"image_size {size}: diffusers resizes the CLIP image to the crop size, and CLIP's "
                         "position embeddings only fit image_size")

    # the text encoder graph; its tokenizer is copied into the export so that it is self-contained
    text_graph, text_fields = clip_text_encoder(comps, 1, required="tokenizer" in index)
    max_length = text_fields["text_encoder"]["max_length"]

    h, w = height // scale, width // scale
    scaling = float(vae_cfg.get("scaling_factor", 0.18215))

    graphs = [
        text_graph,
        image_encoder(comps, 1, size, embed),
        *vae_encoder_graphs(comps, 1, 1, (latent, h, w), (height, width), input_name="image"),
        (GraphSpec("unet", (
            TensorSpec("sample", (batch, latent, frames, h, w)),
            TensorSpec("timestep", (1,)),
            TensorSpec("fps", (1,)),
            TensorSpec("image_latents", (batch, IMAGE_LATENT_CHANNELS, frames, h, w)),
            TensorSpec("image_embeddings", (2 * batch, 1, embed)),
            TensorSpec("encoder_hidden_states", (2 * batch, max_length, hidden)),
            TensorSpec("guidance_scale", (1,)),
        ), (TensorSpec("noise_pred", (batch, latent, frames, h, w)),),
            dummy_overrides={"timestep": [500.0], "fps": [16.0], "guidance_scale": [9.0]}),
         lambda: UNetStep(comps.load("unet", num_frames=frames))),
    ]
    graphs += vae_decoder_graphs(comps, chunk, total, (latent, h, w), (height, width), scaling)
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
        "feature_extractor": feature_extractor,
        "image_size": size,
        **text_fields,
        "components": configs,
    }
    return graphs, manifest


# ----------------------------------------------------------------------------- generated models
TINY_MODELS = {
    "tiny-i2vgen-xl": {
        "base": "i2vgen-xl",
        "configs": {
            "unet/config.json": {"block_out_channels": [32, 32, 64, 64], "attention_head_dim": 8,
                                 "cross_attention_dim": 32, "layers_per_block": 1, "sample_size": 8},
            "vae/config.json": {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "sample_size": 64},
            "text_encoder/config.json": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                                         "num_hidden_layers": 2, "projection_dim": 32, "torch_dtype": "float32"},
            "image_encoder/config.json": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                                          "num_hidden_layers": 2, "patch_size": 32, "projection_dim": 32,
                                          "torch_dtype": "float32"},
        },
        "components": ("unet", "vae", "text_encoder", "image_encoder"),
        "tokenizer": "generated",
    },
    # I2VGen-XL's real widths and heads (UNet 320/640/1280 with attention_head_dim 64, cross-attention 1024;
    # the real SD 2.x VAE; OpenCLIP-H text width 1024 with 16 heads; CLIP ViT-H/14 image width 1280 with
    # 16 heads) with less depth, for memory (see export/tiny.py small-svd-xt): the UNet's fourth,
    # attention-free 1280-wide level is dropped, the text tower keeps 4 of its 24 layers and the image
    # tower 4 of its 32.
    "small-i2vgen-xl": {
        "base": "i2vgen-xl",
        "configs": {
            "unet/config.json": {
                "block_out_channels": [320, 640, 1280],
                "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
                "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
            },
            "text_encoder/config.json": {"num_hidden_layers": 4, "torch_dtype": "float32"},
            "image_encoder/config.json": {"num_hidden_layers": 4, "torch_dtype": "float32"},
        },
        "components": ("unet", "vae", "text_encoder", "image_encoder"),
        "tokenizer": "generated",
        "note": "I2VGen-XL's real widths and heads with random weights; the UNet's fourth level (attention-free, "
                "1280 wide) is dropped, the text tower keeps 4 of its 24 layers and the image tower 4 of its 32, "
                "for memory.",
    },
    # The benchmarks' `full` tier: I2VGen-XL's real architecture (four UNet levels, the whole text and image
    # towers), random weights (2.5 B parameters)
    "full-i2vgen-xl": {
        "base": "i2vgen-xl",
        "configs": {"text_encoder/config.json": {"torch_dtype": "float32"},
                    "image_encoder/config.json": {"torch_dtype": "float32"}},
        "components": ("unet", "vae", "text_encoder", "image_encoder"),
        "tokenizer": "generated",
    },
}
