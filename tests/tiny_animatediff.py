"""Tiny SD 1.x UNets and AnimateDiff motion adapters for the tests (no downloads)."""
from __future__ import annotations

from tiny import perturb

# diffusers' tiny Stable Diffusion test UNet (tests/pipelines/stable_diffusion get_dummy_components)
SD_UNET = dict(
    block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
)
# diffusers' tiny AnimateDiff test pair (tests/pipelines/animatediff get_dummy_components), with a
# small motion_max_seq_length so that the frame limit is cheap to test
AD_UNET = dict(
    block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=8, norm_num_groups=2,
)
AD_ADAPTER = dict(
    block_out_channels=(32, 64), motion_layers_per_block=2, motion_norm_num_groups=2, motion_num_attention_heads=4,
    motion_max_seq_length=8,
)


def unet2d(seed=0, **overrides):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return perturb(UNet2DConditionModel(**{**SD_UNET, **overrides}).eval(), seed, scale=0.05)


def motion_adapter(seed=0, **overrides):
    import torch
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    return perturb(MotionAdapter(**{**AD_ADAPTER, **overrides}).eval(), seed, scale=0.05)


def animatediff_unet(seed=0, **overrides):
    return unet2d(seed, **{**AD_UNET, **overrides})
