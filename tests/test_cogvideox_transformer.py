"""CogVideoXTransformer3DModel (2B sincos, 5B rotary, 5B-I2V learned pos-emb, 1.5 patch_size_t)
against diffusers, on tiny random-weight configs saved with save_pretrained."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tiny import perturb, rel_l2

import mindspore as ms
from video_aot.models.cogvideox import CogVideoXTransformerConfig, rotary_positional_embeddings
from video_aot.models.loading import load_network

BASE = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=12, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=7)
VARIANTS = {
    # name: (config overrides, latent (frames, height, width))
    "2b": (dict(), (3, 6, 10)),
    "2b-train-shape": (dict(), (3, 8, 8)),
    "5b": (dict(use_rotary_positional_embeddings=True), (3, 6, 10)),
    "5b-i2v": (dict(use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True, in_channels=8),
               (3, 8, 8)),
    "5b-i2v-other-frames": (dict(use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True,
                                 in_channels=8), (2, 8, 8)),
    # timestep_activation_fn is read by the time (and ofs) embedding MLPs
    "2b-gelu-timestep": (dict(timestep_activation_fn="gelu", freq_shift=1, flip_sin_to_cos=False), (3, 6, 10)),
    "1.5": (dict(use_rotary_positional_embeddings=True, patch_size_t=2, ofs_embed_dim=8, patch_bias=False,
                 sample_width=12, sample_height=10), (4, 6, 8)),
}


def tiny_transformer(seed=0, **overrides):
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return perturb(CogVideoXTransformer3DModel(**{**BASE, **overrides}).eval(), seed, scale=0.05)


def diffusers_rotary(model, frames, height, width):
    from diffusers import CogVideoXPipeline

    stub = SimpleNamespace(transformer=model, vae_scale_factor_spatial=8)
    return CogVideoXPipeline._prepare_rotary_positional_embeddings(stub, height * 8, width * 8, frames, "cpu")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_transformer_matches_diffusers(tmp_path, name):
    overrides, (f, h, w) = VARIANTS[name]
    ref = tiny_transformer(**overrides)
    ref.save_pretrained(tmp_path)
    cell, config = load_network(tmp_path, latent_frames=f, latent_height=h, latent_width=w)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, f, config.in_channels, h, w)).astype(np.float32)
    ctx = rng.standard_normal((2, BASE["max_text_seq_length"], BASE["text_embed_dim"])).astype(np.float32)
    t = np.array([999.0, 321.0], np.float32)
    args = [ms.Tensor(x), ms.Tensor(ctx), ms.Tensor(t)]
    kwargs = {}
    rotary = None
    if config.use_rotary_positional_embeddings:
        rotary = diffusers_rotary(ref, f, h, w)
        cos, sin = rotary_positional_embeddings(config, f, h, w)
        assert rel_l2(cos, rotary[0].numpy()) < 1e-6 and rel_l2(sin, rotary[1].numpy()) < 1e-6
        kwargs.update(rotary_cos=ms.Tensor(cos), rotary_sin=ms.Tensor(sin))
    ofs = None
    if config.ofs_embed_dim:
        ofs = torch.full((1,), 2.0)
        kwargs["ofs"] = ms.Tensor(np.array([2.0], np.float32))
    ours = cell(*args, **kwargs).asnumpy()
    with torch.no_grad():
        expected = ref(torch.tensor(x), torch.tensor(ctx), torch.tensor(t), ofs=ofs, image_rotary_emb=rotary,
                       return_dict=False)[0].numpy()
    assert ours.shape == expected.shape
    err = rel_l2(ours, expected)
    print(name, err)
    assert err <= 1e-4, err


def test_transformer_config_errors():
    with pytest.raises(ValueError, match="rotary"):
        CogVideoXTransformerConfig(use_learned_positional_embeddings=True)
    with pytest.raises(ValueError, match="patch_size_t"):
        CogVideoXTransformerConfig(patch_size_t=2)
    config = CogVideoXTransformerConfig(**{**BASE, "use_rotary_positional_embeddings": True,
                                           "use_learned_positional_embeddings": True})
    from video_aot.models.cogvideox import CogVideoXTransformer3DModel

    with pytest.raises(ValueError, match="training size"):
        CogVideoXTransformer3DModel(config, 3, 6, 10)


@pytest.mark.parametrize("dim,shift", [(1920, 0), (3072, 0), (320, 1)])
def test_timestep_frequencies_match_diffusers(dim, shift):
    # CogVideoX embeds t up to 999 on inner_dim channels: numpy's float32 exp missed torch's by 1-2 ulp on
    # about a fifth of the frequencies (1.2e-4 in the embedding); the float64-rounded exp is within 6e-5
    from diffusers.models.embeddings import get_timestep_embedding

    from video_aot.models.layers import timestep_frequencies

    t = np.array([999.0, 500.0, 1.0], np.float32)
    angles = t[:, None] * timestep_frequencies(dim, shift)[None]
    ours = np.concatenate([np.cos(angles), np.sin(angles)], -1)
    expected = get_timestep_embedding(torch.tensor(t), dim, flip_sin_to_cos=True, downscale_freq_shift=shift).numpy()
    assert np.abs(ours - expected).max() < 7e-5
