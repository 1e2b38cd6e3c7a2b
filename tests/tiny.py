"""Tiny diffusers/transformers models and snapshots for the tests (no downloads)."""
from __future__ import annotations

import numpy as np


def perturb(module, seed: int = 0, scale: float = 0.1):
    """Give every parameter a random offset so that zero/one-initialised layers (norm affines,
    biases, mix factors) take part in the comparison."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module


def rel_l2(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


SVD_UNET = dict(
    block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    cross_attention_dim=32, num_attention_heads=8, projection_class_embeddings_input_dim=96,
    addition_time_embed_dim=32,
)
SVD_VAE = dict(
    block_out_channels=[32, 64], in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], latent_channels=4,
)


def svd_unet(seed=0, **overrides):
    import torch
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(seed)
    return perturb(UNetSpatioTemporalConditionModel(**{**SVD_UNET, **overrides}).eval(), seed)


def svd_vae(seed=0, **overrides):
    import torch
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(seed)
    return perturb(AutoencoderKLTemporalDecoder(**{**SVD_VAE, **overrides}).eval(), seed)


SVD_SCHEDULER = dict(
    beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, interpolation_type="linear",
    num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
    timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
)


def clip_vision(seed=0, projection_dim=32, hidden_act="gelu"):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, projection_dim=projection_dim, num_hidden_layers=2,
                              num_attention_heads=4, image_size=224, patch_size=32, intermediate_size=37,
                              hidden_act=hidden_act)
    return perturb(CLIPVisionModelWithProjection(config).eval(), seed, scale=0.02)


def svd_pipeline(seed=0, unet_overrides=None, vae_overrides=None):
    """A tiny diffusers StableVideoDiffusionPipeline with random (perturbed) weights."""
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessor

    unet = svd_unet(seed, **(unet_overrides or {}))
    vae = svd_vae(seed + 1, **(vae_overrides or {}))
    encoder = clip_vision(seed + 2, projection_dim=unet.config.cross_attention_dim)
    extractor = CLIPImageProcessor(crop_size=224, size=224)
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER)
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler,
                                        feature_extractor=extractor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def svd_snapshot(folder, seed=0, **kwargs):
    pipe = svd_pipeline(seed, **kwargs)
    pipe.save_pretrained(folder)
    return pipe
