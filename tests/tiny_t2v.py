"""Tiny ModelScope-style text-to-video models and snapshots for the tests (no downloads): a
UNet3DConditionModel, an AutoencoderKL, a CLIP text tower and a CLIP BPE tokenizer whose vocab
and merges are generated locally (export/tiny.py write_clip_tokenizer)."""
from __future__ import annotations

import shutil
from pathlib import Path

from tiny import perturb

UNET3D = dict(
    block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
)
VAE = dict(
    block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32, sample_size=32,
)
TEXT = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77,
    projection_dim=16, hidden_act="gelu",
)
DDIM = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
    steps_offset=1, prediction_type="epsilon", num_train_timesteps=1000,
)


def unet3d(seed=0, **overrides):
    import torch
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    return perturb(UNet3DConditionModel(**{**UNET3D, **overrides}).eval(), seed, scale=0.05)


def vae(seed=0, **overrides):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return perturb(AutoencoderKL(**{**VAE, **overrides}).eval(), seed, scale=0.05)


# ----------------------------------------------------------------------------- tokenizer
def write_clip_tokenizer(folder, model_max_length: int = 77) -> Path:
    """A small CLIP BPE tokenizer (vocab.json + merges.txt) generated locally, no download."""
    from video_aot.export.tiny import write_clip_tokenizer as write

    return write(folder, model_max_length=model_max_length)


def clip_tokenizer(folder):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def clip_text(tokenizer, seed=0, **overrides):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            **{**TEXT, **overrides})
    return perturb(CLIPTextModel(config).eval(), seed, scale=0.02)


def t2v_pipeline(folder, seed=0, unet_overrides=None, vae_overrides=None, text_overrides=None, pipeline="t2v"):
    """A tiny diffusers TextToVideoSDPipeline (or VideoToVideoSDPipeline) with perturbed random
    weights and a locally written tokenizer, saved with save_pretrained into ``folder``."""
    from diffusers import DDIMScheduler, TextToVideoSDPipeline, VideoToVideoSDPipeline

    tok_dir = write_clip_tokenizer(Path(folder) / "_tokenizer_src")
    tokenizer = clip_tokenizer(tok_dir)
    unet = unet3d(seed, **(unet_overrides or {}))
    autoencoder = vae(seed + 1, **(vae_overrides or {}))
    text = clip_text(tokenizer, seed + 2, **{"hidden_size": unet.config.cross_attention_dim, **(text_overrides or {})})
    cls = TextToVideoSDPipeline if pipeline == "t2v" else VideoToVideoSDPipeline
    pipe = cls(vae=autoencoder, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(**DDIM))
    pipe.save_pretrained(folder)
    # the published scheduler_config.json (no timestep_spacing: diffusers fills in each scheduler's
    # own default, which matters when a user swaps DDIM for DPM-Solver++ with from_config)
    from video_aot.export.sources import PRESET_DIR

    shutil.copyfile(PRESET_DIR / "modelscope-t2v" / "scheduler" / "scheduler_config.json",
                    Path(folder) / "scheduler" / "scheduler_config.json")
    pipe = cls.from_pretrained(folder)  # as a user loads it
    pipe.set_progress_bar_config(disable=True)
    return pipe
