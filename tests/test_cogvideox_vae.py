"""AutoencoderKLCogVideoX: decode and encode over several frame batches, with the conv caches
carried explicitly between calls, against diffusers' vae.decode / vae.encode."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny import perturb, rel_l2

import mindspore as ms
from video_aot.models.cogvideox_vae import (
    NUM_LATENT_FRAMES_BATCH_SIZE, NUM_SAMPLE_FRAMES_BATCH_SIZE, AutoencoderKLCogVideoXConfig, decoded_frames,
    encoded_frames, frame_batches,
)
from video_aot.models.loading import load_network

TINY_VAE = dict(block_out_channels=(8, 16, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4,
                temporal_compression_ratio=4, down_block_types=("CogVideoXDownBlock3D",) * 3,
                up_block_types=("CogVideoXUpBlock3D",) * 3, sample_height=32, sample_width=40)


def tiny_vae(seed=0, **overrides):
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    return perturb(AutoencoderKLCogVideoX(**{**TINY_VAE, **overrides}).eval(), seed, scale=0.05)


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cogvideox-vae")
    ref = tiny_vae()
    ref.save_pretrained(folder)
    cell, config = load_network(folder)
    return ref, cell, config


def run_batched(net, x, batch_size):
    """The runtime's loop: frame batches as diffusers splits them, caches carried explicitly."""
    caches = None
    outs = []
    for start, end in frame_batches(x.shape[2], batch_size):
        out, caches = net(ms.Tensor(x[:, :, start:end]), caches)
        outs.append(out.asnumpy())
    return np.concatenate(outs, 2)


def test_frame_arithmetic_matches_diffusers():
    config = AutoencoderKLCogVideoXConfig()
    assert decoded_frames(13, config) == 49 and decoded_frames(2, config) == 8 and decoded_frames(1, config) == 1
    assert encoded_frames(49, config) == 13 and encoded_frames(1, config) == 1 and encoded_frames(8, config) == 2
    assert frame_batches(13, 2) == [(0, 3), (3, 5), (5, 7), (7, 9), (9, 11), (11, 13)]
    assert frame_batches(1, 2) == [(0, 1)]


@pytest.mark.parametrize("latent_frames", [5, 2])
def test_decode_matches_diffusers(vae, latent_frames):
    ref, cell, config = vae
    z = np.random.default_rng(latent_frames).standard_normal((1, 4, latent_frames, 6, 5)).astype(np.float32)
    ours = run_batched(cell.decoder, z, NUM_LATENT_FRAMES_BATCH_SIZE)
    with torch.no_grad():
        expected = ref.decode(torch.tensor(z)).sample.numpy()
    assert ours.shape == expected.shape == (1, 3, decoded_frames(latent_frames, config), 24, 20)
    err = rel_l2(ours, expected)
    print("decode", latent_frames, err)
    assert err <= 1e-4, err


@pytest.mark.parametrize("frames", [17, 1])
def test_encode_matches_diffusers(vae, frames):
    ref, cell, config = vae
    x = np.random.default_rng(frames).uniform(-1, 1, (1, 3, frames, 24, 20)).astype(np.float32)
    ours = run_batched(cell.encoder, x, NUM_SAMPLE_FRAMES_BATCH_SIZE)
    with torch.no_grad():
        expected = ref.encode(torch.tensor(x)).latent_dist.parameters.numpy()
    assert ours.shape == expected.shape and ours.shape[2] == encoded_frames(frames, config)
    err = rel_l2(ours, expected)
    print("encode", frames, err)
    assert err <= 1e-4, err


def test_cache_specs_match_the_network(vae):
    _, cell, _ = vae
    z = np.zeros((1, 4, 3, 6, 5), np.float32)
    _, caches = cell.decoder(ms.Tensor(z), None)
    assert [tuple(c.shape) for c in caches] == [s for _, s in cell.decoder.cache_specs(1, 6, 5)]
    x = np.zeros((1, 3, 9, 24, 20), np.float32)
    _, caches = cell.encoder(ms.Tensor(x), None)
    assert [tuple(c.shape) for c in caches] == [s for _, s in cell.encoder.cache_specs(1, 24, 20)]
