"""Tiny CogVideoX pipelines (T5 text encoder + tokenizer, transformer, 3-D causal VAE, scheduler)
with random weights, built without any download: the T5 tokenizer is a unigram model written here."""
from __future__ import annotations

import numpy as np

from tiny import perturb

WORDS = "a cat dog runs on the beach sunset red blue car city night panda guitar plays".split()
T5 = dict(vocab_size=50, d_model=12, d_kv=4, d_ff=20, num_layers=2, num_heads=3, relative_attention_num_buckets=8,
          relative_attention_max_distance=16, feed_forward_proj="gated-gelu")
TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
                   text_embed_dim=12, num_layers=2, sample_width=10, sample_height=6, sample_frames=9, patch_size=2,
                   temporal_compression_ratio=4, max_text_seq_length=7)
VAE = dict(block_out_channels=(8, 16, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4,
           temporal_compression_ratio=4, down_block_types=("CogVideoXDownBlock3D",) * 3,
           up_block_types=("CogVideoXUpBlock3D",) * 3, sample_height=24, sample_width=40)
# the CogVideoX snapshots' scheduler settings
SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
                 rescale_betas_zero_snr=True, timestep_spacing="trailing", snr_shift_scale=1.0, clip_sample=False,
                 set_alpha_to_one=True, steps_offset=0)
HEIGHT, WIDTH = 24, 40  # VAE scale 4 -> 6x10 latents, 3x5 patches
MAX_LENGTH = TRANSFORMER["max_text_seq_length"]


def t5_tokenizer():
    from video_aot.export.tiny import t5_tokenizer as generated

    return generated(WORDS, MAX_LENGTH)


def cogvideox_pipeline(kind="t2v", seed=0, transformer_overrides=None, scheduler="ddim"):
    """kind: "t2v" (2B-style sincos), "t2v-rotary" (5B-style), "i2v" (5B-I2V: learned pos-emb, 2x in
    channels), "v2v" (the t2v components under CogVideoXVideoToVideoPipeline)."""
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXImageToVideoPipeline,
        CogVideoXPipeline, CogVideoXTransformer3DModel, CogVideoXVideoToVideoPipeline,
    )
    from transformers import T5Config, T5EncoderModel

    overrides = dict(transformer_overrides or {})
    if kind == "t2v-rotary":
        overrides.setdefault("use_rotary_positional_embeddings", True)
    if kind == "i2v":
        overrides.update(use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True, in_channels=8)
    torch.manual_seed(seed)
    text_encoder = perturb(T5EncoderModel(T5Config(**T5)).eval(), seed, scale=0.05)
    torch.manual_seed(seed + 1)
    transformer = perturb(CogVideoXTransformer3DModel(**{**TRANSFORMER, **overrides}).eval(), seed + 1, scale=0.05)
    torch.manual_seed(seed + 2)
    vae = perturb(AutoencoderKLCogVideoX(**VAE).eval(), seed + 2, scale=0.05)
    sched_cls = CogVideoXDDIMScheduler if scheduler == "ddim" else CogVideoXDPMScheduler
    cls = {"t2v": CogVideoXPipeline, "t2v-rotary": CogVideoXPipeline, "i2v": CogVideoXImageToVideoPipeline,
           "v2v": CogVideoXVideoToVideoPipeline}[kind]
    pipe = cls(tokenizer=t5_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer,
               scheduler=sched_cls(**SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def shared_noise(monkeypatch, seed):
    """Make diffusers draw every random tensor (VAE posterior sample, V2V noise, DPM step noise) from
    the numpy stream the exported pipeline uses with seed=``seed``, in the same order."""
    import torch
    import diffusers.models.autoencoders.vae as vae_mod
    import diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video as i2v_mod
    import diffusers.pipelines.cogvideo.pipeline_cogvideox_video2video as v2v_mod
    import diffusers.schedulers.scheduling_dpm_cogvideox as dpm_mod

    stream = np.random.default_rng(seed)

    def randn(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(stream.standard_normal(tuple(shape), dtype=np.float32))

    for mod in (vae_mod, i2v_mod, v2v_mod, dpm_mod):
        monkeypatch.setattr(mod, "randn_tensor", randn)
