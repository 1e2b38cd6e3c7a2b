"""Mochi-1 networks against diffusers / transformers on tiny random-weight configs saved with
save_pretrained: MochiTransformer3DModel with per-sample text masks, the AutoencoderKLMochi decoder
(and encoder), and the T5 encoder with an attention mask."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny import perturb, rel_l2

import mindspore as ms
from video_aot.models.loading import load_network

# diffusers tests/pipelines/mochi/test_mochi.py get_dummy_components, but pooled_projection_dim 24
# (not 16 = inner_dim) so that the two stream widths differ as in the real model (3072 / 1536)
TINY_TRANSFORMER = dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                        pooled_projection_dim=24, in_channels=12, out_channels=None, qk_norm="rms_norm",
                        text_embed_dim=32, time_embed_dim=4, activation_fn="swiglu", max_sequence_length=16)
# diffusers tests/models/autoencoders/test_models_autoencoder_mochi.py
TINY_VAE = dict(in_channels=15, out_channels=3, latent_channels=4, encoder_block_out_channels=(32, 32, 32, 32),
                decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1), act_fn="silu",
                scaling_factor=1)
TINY_T5 = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu")


def prefix_mask(valid, length):
    return (np.arange(length)[None, :] < np.asarray(valid)[:, None]).astype(np.float32)


def test_transformer_matches_diffusers_with_text_masks(tmp_path):
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(0)
    ref = MochiTransformer3DModel(**TINY_TRANSFORMER)
    # the dummy config zeroes pos_frequencies (rotary off); perturbing gives it real angles
    ref.pos_frequencies.data.zero_()
    ref = perturb(ref, 0, scale=0.1).eval()
    ref.save_pretrained(tmp_path)
    f, h, w = 2, 4, 6
    cell, config = load_network(tmp_path, latent_frames=f, latent_height=h, latent_width=w)
    assert config.pooled_projection_dim == 24
    rng = np.random.default_rng(1)
    length = 8
    # 3 of 8 tokens, all 8, none (MochiPipeline's zeroed empty negative prompt)
    mask = prefix_mask([3, 8, 0], length)
    x = rng.standard_normal((3, 12, f, h, w)).astype(np.float32)
    ctx = rng.standard_normal((3, length, 32)).astype(np.float32)
    t = np.array([999.0, 500.0, 17.0], np.float32)
    ours = cell(ms.Tensor(x), ms.Tensor(ctx), ms.Tensor(t), ms.Tensor(mask)).asnumpy()
    with torch.no_grad():
        expected = ref(torch.tensor(x), torch.tensor(ctx), torch.tensor(t), torch.tensor(mask).bool(),
                       return_dict=False)[0].numpy()
        # the mask must matter: padded tokens changed -> the same output (they are masked out)
        ctx_junk = ctx.copy()
        ctx_junk[0, 3:] = 5.0
        junk = ref(torch.tensor(x[:1]), torch.tensor(ctx_junk[:1]), torch.tensor(t[:1]),
                   torch.tensor(mask[:1]).bool(), return_dict=False)[0].numpy()
    assert ours.shape == expected.shape == (3, 12, f, h, w)
    assert rel_l2(junk, expected[:1]) < 1e-5
    errs = [rel_l2(ours[i], expected[i]) for i in range(3)]
    print("transformer rel L2 per sample", errs)
    assert max(errs) <= 1e-4, errs


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    from diffusers import AutoencoderKLMochi

    torch.manual_seed(0)
    ref = perturb(AutoencoderKLMochi(**TINY_VAE), 0, scale=0.05).eval()
    folder = tmp_path_factory.mktemp("mochi-vae")
    ref.save_pretrained(folder)
    cell, config = load_network(folder)
    return ref, cell, config


def test_vae_decode_matches_diffusers(vae):
    from video_aot.models.mochi_vae import decoded_frames, denormalize_latents

    ref, cell, config = vae
    z = np.random.default_rng(2).standard_normal((1, 4, 2, 2, 3)).astype(np.float32)
    ours = cell(ms.Tensor(z)).asnumpy()
    with torch.no_grad():
        expected = ref.decode(torch.tensor(z), return_dict=False)[0].numpy()
    assert ours.shape == expected.shape == (1, 3, decoded_frames(2, config), 16, 24)
    err = rel_l2(ours, expected)
    print("vae decode rel L2", err)
    assert err <= 1e-4, err
    # MochiPipeline's de-normalisation (12 default channels)
    from video_aot.models.mochi_vae import AutoencoderKLMochiConfig

    full = AutoencoderKLMochiConfig(scaling_factor=0.5)
    lat = np.random.default_rng(3).standard_normal((1, 12, 2, 2, 2)).astype(np.float32)
    mean = torch.tensor(full.latents_mean).view(1, 12, 1, 1, 1).float()
    std = torch.tensor(full.latents_std).view(1, 12, 1, 1, 1).float()
    expected_lat = (torch.tensor(lat) * std / full.scaling_factor + mean).numpy()
    assert np.allclose(denormalize_latents(lat, full), expected_lat, rtol=1e-6, atol=1e-7)


def test_vae_encoder_matches_diffusers(vae):
    from video_aot.models.mochi_vae import MochiVaeEncoder

    ref, cell, _ = vae
    x = np.random.default_rng(4).uniform(-1, 1, (1, 3, 7, 16, 16)).astype(np.float32)
    ours = MochiVaeEncoder(cell)(ms.Tensor(x)).asnumpy()
    with torch.no_grad():
        expected = ref.encoder(torch.tensor(x))[0].numpy()
    assert ours.shape == expected.shape == (1, 8, 2, 2, 2)
    err = rel_l2(ours, expected)
    print("vae encoder rel L2", err)
    assert err <= 1e-4, err


def test_t5_with_attention_mask_matches_transformers(tmp_path):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    ref = perturb(T5EncoderModel(T5Config(**TINY_T5)).eval(), 0, scale=0.05)
    ref.save_pretrained(tmp_path)
    cell, _ = load_network(tmp_path, max_positions=32)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, TINY_T5["vocab_size"], (2, 16)).astype(np.int32)
    mask = prefix_mask([5, 16], 16).astype(np.int32)
    ours = cell(ms.Tensor(ids), ms.Tensor(mask)).asnumpy()
    with torch.no_grad():
        expected = ref(torch.tensor(ids, dtype=torch.long),
                       attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()
        unmasked = ref(torch.tensor(ids, dtype=torch.long)).last_hidden_state.numpy()
    assert rel_l2(unmasked[0], expected[0]) > 1e-2  # the mask changes the short prompt's embeddings
    err = rel_l2(ours, expected)
    print("t5 masked rel L2", err)
    assert err <= 1e-4, err
