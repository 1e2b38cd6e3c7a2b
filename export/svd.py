"""Stable Video Diffusion export: which graphs, with which static shapes, built from which
snapshot components.

Graphs (B = batch, F = frames, C = latent channels, h/w = latent size, K = decode chunk):
  image_encoder  pixel_values[B,3,S,S]                         -> image_embeds[B,D]
  vae_encoder    image[B,3,H,W]                                 -> latents[B,C,h,w]   (latent_dist.mode())
  unet           sample[B,F,C,h,w] timestep[1] image_latents[2B,C,h,w]
                 encoder_hidden_states[2B,1,D] added_time_ids[2B,3] guidance_scale[B,F]
                                                                -> noise_pred[B,F,C,h,w]
                 one denoising step; the classifier-free-guidance pair runs as one batch of 2B
                 (unconditional first) and is combined inside the graph with the per-frame scale.
  vae_decoder    latents[K,C,h,w]                               -> frames[K,3,H,W]   (1/scaling_factor inside)
  vae_decoder_tail  the same for the last (B*F mod K) frames, when K does not divide B*F
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mindspore import nn, ops

from video_aot.models.loading import read_json

from .components import Components
from .graphs import (
    GraphSpec, TensorSpec, check_decode_chunk_size, check_pixel_size, guided, image_encoder, relax_tolerance,
    vae_decoder_graphs,
)


class UNetStep(nn.Cell):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def construct(self, sample, timestep, image_latents, encoder_hidden_states, added_time_ids, guidance_scale):
        # sample: [B, F, C, h, w] (already scaled by the scheduler); image_latents: [2B, C, h, w]
        b, f, c, hgt, wid = sample.shape
        x = ops.cat((sample, sample), 0)  # [2B, F, C, h, w]
        cond = ops.broadcast_to(image_latents[:, None], (2 * b, f, c, hgt, wid))
        noise = self.unet(ops.cat((x, cond), 2), timestep, encoder_hidden_states, added_time_ids)
        return guided(noise, b, guidance_scale[:, :, None, None, None])


class VaeEncode(nn.Cell):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def construct(self, image):
        return self.vae.encode_mean(image)


@dataclass(frozen=True)
class Shapes:
    batch: int
    num_frames: int
    height: int
    width: int
    decode_chunk_size: int


def plan(snapshot: Path, weights: Path | None, frames: int, height: int, width: int, batch: int = 1,
         dtype: str = "fp32", decode_chunk_size: int | None = None, variant: str | None = None):
    """(graphs, manifest fields) for an SVD export. ``weights=None`` exports random weights."""
    comps = Components(snapshot, weights, variant, dtype)
    configs = {name: comps.config(name) for name in ("unet", "vae", "image_encoder")}
    scheduler = comps.scheduler()
    feature_extractor = read_json(snapshot / "feature_extractor" / "preprocessor_config.json")
    vae_cfg, unet_cfg, enc_cfg = configs["vae"], configs["unet"], configs["image_encoder"]
    scale = 2 ** (len(vae_cfg.get("block_out_channels", (64,))) - 1)
    if frames < 1 or batch < 1:
        raise ValueError(f"frames ({frames}) and batch ({batch}) must be positive")
    check_pixel_size(height, width, scale)
    total = batch * frames
    chunk = check_decode_chunk_size(decode_chunk_size, total, default=frames)  # diffusers: num_frames
    latent = vae_cfg.get("latent_channels", 4)
    if unet_cfg.get("in_channels", 8) != 2 * latent:
        raise ValueError(f"unet in_channels {unet_cfg.get('in_channels')} must be twice the VAE latent_channels {latent}")
    h, w = height // scale, width // scale
    size = enc_cfg.get("image_size", 224)
    if size != 224:
        raise ValueError(f"image_encoder image_size is {size}; StableVideoDiffusionPipeline always resizes to 224")
    embed = enc_cfg.get("projection_dim", 512)
    cross = unet_cfg.get("cross_attention_dim", 1024)
    if isinstance(cross, (list, tuple)) or cross != embed:
        raise ValueError(f"unet cross_attention_dim {cross} must equal the image encoder projection_dim {embed}")

    scaling = float(vae_cfg.get("scaling_factor", 0.18215))
    graphs = [
        image_encoder(comps, batch, size, embed),
        (GraphSpec("vae_encoder", (TensorSpec("image", (batch, 3, height, width)),),
                   (TensorSpec("latents", (batch, latent, h, w)),)),
         lambda: VaeEncode(comps.load("vae"))),
        (GraphSpec("unet", (
            TensorSpec("sample", (batch, frames, latent, h, w)),
            TensorSpec("timestep", (1,)),
            TensorSpec("image_latents", (2 * batch, latent, h, w)),
            TensorSpec("encoder_hidden_states", (2 * batch, 1, embed)),
            TensorSpec("added_time_ids", (2 * batch, 3)),
            TensorSpec("guidance_scale", (batch, frames)),
        ), (TensorSpec("noise_pred", (batch, frames, latent, h, w)),)),
         lambda: UNetStep(comps.load("unet", num_frames=frames))),
    ]
    # the temporal decoder mixes the frames of a chunk: built for each chunk length
    graphs += vae_decoder_graphs(comps, chunk, total, (latent, h, w), (height, width), scaling, temporal=True)
    relax_tolerance(graphs, dtype)

    manifest = {
        "pipeline": "StableVideoDiffusionPipeline",
        "dtype": dtype,
        "shapes": {"batch": batch, "num_frames": frames, "height": height, "width": width,
                   "decode_chunk_size": chunk},
        "latent_shape": [frames, latent, h, w],  # one sample's latents, axes named by latent_layout
        "latent_layout": "FCHW",
        "vae_scale_factor": scale,
        "vae_scaling_factor": scaling,
        "scheduler": scheduler,
        "feature_extractor": feature_extractor,
        "components": configs,
    }
    return graphs, manifest
