"""LTX-Video model layer against diffusers: LTXVideoTransformer3DModel (padded text mask, per-sample
and per-token timesteps), the numpy rotary tables, AutoencoderKLLTXVideo for the 0.9.0, 0.9.1 and 0.9.5
layouts (encode + decode, timestep conditioning, injected noise fed as inputs), and the pipelines'
pack / unpack / normalise helpers. Tiny configs from diffusers' own tests, perturbed weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny import perturb, rel_l2

import mindspore as ms
from video_aot.models.loading import load_network
from video_aot.models.ltx import LTXVideoTransformerConfig, ltx_rope_interpolation_scale, ltx_rotary_cos_sin
from video_aot.models.ltx_vae import (
    AutoencoderKLLTXVideoConfig, decode_input_specs, decoder_noise_specs, denormalize_latents, latent_dist_mean_std,
    normalize_latents, pack_latents, unpack_latents,
)

# diffusers tests/pipelines/ltx/test_ltx.py get_dummy_components
TRANSFORMER = dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
                   attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=32)
# diffusers tests/models/autoencoders/test_models_autoencoder_ltx_video.py (0.9.0 and 0.9.1 classes); the
# 0.9.0 one with channel changes (8 -> 16), as the real checkpoint, so that the resnet shortcut
# (norm3 + conv_shortcut), the down block conv_out and the up block conv_in take part
VAE_090 = dict(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 16, 16, 16),
               decoder_block_out_channels=(8, 16, 16, 16), layers_per_block=(1, 1, 1, 1, 1),
               decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
               decoder_spatio_temporal_scaling=(True, True, False, False),
               decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False,) * 4,
               upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
               encoder_causal=True, decoder_causal=False)
VAE_091 = dict(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
               decoder_block_out_channels=(16, 32, 64), layers_per_block=(1, 1, 1, 1),
               decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
               decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(True, True, True, False),
               upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True,
               patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False)
# the 0.9.5 layout (convert_ltx_to_diffusers.py) shrunk to one down block per space-to-depth type, patch 2
VAE_095 = dict(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(4, 8, 16, 32),
               down_block_types=("LTXVideo095DownBlock3D",) * 3, decoder_block_out_channels=(8, 16),
               layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1),
               spatio_temporal_scaling=(True, True, True), decoder_spatio_temporal_scaling=(True, True),
               decoder_inject_noise=(False, False, False), downsample_type=("spatial", "temporal", "spatiotemporal"),
               upsample_residual=(True, True), upsample_factor=(2, 2), timestep_conditioning=True,
               patch_size=2, patch_size_t=1, encoder_causal=True, decoder_causal=False,
               spatial_compression_ratio=8, temporal_compression_ratio=4)


def _save_and_load(module, folder):
    module.save_pretrained(folder)
    return load_network(folder)


# ----------------------------------------------------------------------------- transformer
@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(0)
    ref = perturb(LTXVideoTransformer3DModel(**TRANSFORMER).eval(), 0, scale=0.05)
    cell, config = _save_and_load(ref, tmp_path_factory.mktemp("ltx-transformer"))
    return ref, cell, config


FRAMES, HEIGHT, WIDTH = 3, 4, 6  # latent grid
FRAME_RATE = 25


def _rope_reference(model, frames=FRAMES, height=HEIGHT, width=WIDTH, scale=None, batch=2):
    dummy = torch.zeros(batch, frames * height * width, model.config.in_channels)
    scale = ltx_rope_interpolation_scale(FRAME_RATE) if scale is None else scale
    cos, sin = model.rope(dummy, frames, height, width, scale)
    return cos.numpy(), sin.numpy()


def test_rotary_matches_diffusers(transformer):
    ref, _, config = transformer
    assert config.inner_dim % 6 == 2  # the pad channels are exercised
    for grid, scale in (((FRAMES, HEIGHT, WIDTH), None), ((7, 16, 22), (8 / 24, 32, 32))):
        cos, sin = ltx_rotary_cos_sin(config, *grid, frame_rate=FRAME_RATE, rope_interpolation_scale=scale)
        ref_cos, ref_sin = _rope_reference(ref, *grid, scale=scale)
        assert cos.shape == ref_cos.shape[1:] and sin.shape == ref_sin.shape[1:]
        assert np.abs(cos - ref_cos[0]).max() < 1e-6 and np.abs(sin - ref_sin[0]).max() < 1e-6
        assert np.array_equal(ref_cos[0], ref_cos[1])  # batch-independent


def test_rotary_frequencies_other_widths():
    # inner_dim 36 (6 frequencies): numpy's float32 power of the theta missed torch's by an ulp on the
    # highest frequency, 3e-5 in cos/sin; the correctly rounded float64 power agrees
    from diffusers.models.transformers.transformer_ltx import LTXVideoRotaryPosEmbed

    for heads, head_dim in ((3, 12), (5, 8)):
        config = LTXVideoTransformerConfig(num_attention_heads=heads, attention_head_dim=head_dim,
                                           cross_attention_dim=heads * head_dim)
        f, h, w = 7, 16, 22
        cos, sin = ltx_rotary_cos_sin(config, f, h, w, frame_rate=FRAME_RATE)
        ref_cos, ref_sin = LTXVideoRotaryPosEmbed(config.inner_dim)(
            torch.zeros(1, f * h * w, 1), f, h, w, ltx_rope_interpolation_scale(FRAME_RATE))
        assert np.abs(cos - ref_cos[0].numpy()).max() < 1e-6 and np.abs(sin - ref_sin[0].numpy()).max() < 1e-6


@pytest.mark.parametrize("per_token", [False, True])
def test_transformer_matches_diffusers(transformer, per_token):
    ref, cell, config = transformer
    rng = np.random.default_rng(1)
    b, s, text_len = 2, FRAMES * HEIGHT * WIDTH, 7
    x = rng.standard_normal((b, s, config.in_channels)).astype(np.float32)
    ctx = rng.standard_normal((b, text_len, config.caption_channels)).astype(np.float32)
    mask = np.ones((b, text_len), np.float32)
    mask[0, 4:] = 0  # padded prompt
    mask[1, 6:] = 0
    if per_token:
        # LTXImageToVideoPipeline: t * (1 - conditioning_mask), the first latent frame's tokens at 0
        cond = np.zeros((b, s), np.float32)
        cond[:, :HEIGHT * WIDTH] = 1
        t = np.array([[700.0], [250.0]], np.float32) * (1 - cond)
    else:
        t = np.array([700.0, 250.0], np.float32)
    cos, sin = ltx_rotary_cos_sin(config, FRAMES, HEIGHT, WIDTH, frame_rate=FRAME_RATE)
    ours = cell(ms.Tensor(x), ms.Tensor(ctx), ms.Tensor(t), ms.Tensor(mask), ms.Tensor(cos), ms.Tensor(sin)).asnumpy()
    with torch.no_grad():
        expected = ref(hidden_states=torch.tensor(x), encoder_hidden_states=torch.tensor(ctx),
                       timestep=torch.tensor(t), encoder_attention_mask=torch.tensor(mask), num_frames=FRAMES,
                       height=HEIGHT, width=WIDTH, rope_interpolation_scale=ltx_rope_interpolation_scale(FRAME_RATE),
                       return_dict=False)[0].numpy()
        # the mask takes part: the same call without padding differs
        unmasked = ref(hidden_states=torch.tensor(x), encoder_hidden_states=torch.tensor(ctx),
                       timestep=torch.tensor(t), encoder_attention_mask=torch.ones(b, text_len), num_frames=FRAMES,
                       height=HEIGHT, width=WIDTH, rope_interpolation_scale=ltx_rope_interpolation_scale(FRAME_RATE),
                       return_dict=False)[0].numpy()
    assert rel_l2(unmasked, expected) > 1e-3
    assert ours.shape == expected.shape == (b, s, config.out_channels)
    err = rel_l2(ours, expected)
    print("transformer per_token" if per_token else "transformer", err)
    assert err <= 1e-4, err


def test_transformer_config_checks():
    with pytest.raises(ValueError, match="qk_norm"):
        LTXVideoTransformerConfig(**{**TRANSFORMER, "qk_norm": "rms_norm"})
    with pytest.raises(ValueError, match="cross_attention_dim"):
        LTXVideoTransformerConfig(**{**TRANSFORMER, "cross_attention_dim": 16})


# ----------------------------------------------------------------------------- pipeline helpers
def test_pack_unpack_normalise_match_the_pipeline():
    from diffusers import LTXPipeline

    rng = np.random.default_rng(2)
    lat = rng.standard_normal((2, 8, 3, 4, 6)).astype(np.float32)
    for p, pt in ((1, 1), (2, 1), (2, 3)):
        packed = pack_latents(lat, p, pt)
        expected = LTXPipeline._pack_latents(torch.tensor(lat), p, pt).numpy()
        assert np.array_equal(packed, expected)
        grid = (3 // pt, 4 // p, 6 // p)
        assert np.array_equal(unpack_latents(packed, *grid, p, pt),
                              LTXPipeline._unpack_latents(torch.tensor(packed), *grid, p, pt).numpy())
        assert np.array_equal(unpack_latents(packed, *grid, p, pt), lat)
    mean = rng.standard_normal(8).astype(np.float32)
    std = rng.uniform(0.5, 2.0, 8).astype(np.float32)
    for sf in (1.0, 0.7):
        ours = normalize_latents(lat, mean, std, sf)
        ref = LTXPipeline._normalize_latents(torch.tensor(lat), torch.tensor(mean), torch.tensor(std), sf).numpy()
        assert np.abs(ours - ref).max() <= 1e-6
        ours = denormalize_latents(lat, mean, std, sf)
        ref = LTXPipeline._denormalize_latents(torch.tensor(lat), torch.tensor(mean), torch.tensor(std), sf).numpy()
        assert np.abs(ours - ref).max() <= 1e-6


# ----------------------------------------------------------------------------- VAE
def _tiny_vae(config, seed):
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    vae = perturb(AutoencoderKLLTXVideo(**config).eval(), seed, scale=0.05)
    with torch.no_grad():  # non-trivial normalisation buffers, so that loading them is checked
        vae.latents_mean.copy_(torch.randn(vae.latents_mean.shape) * 0.1)
        vae.latents_std.copy_(torch.rand(vae.latents_std.shape) + 0.5)
    return vae


class _NoiseFeed:
    """Stands in for torch.randn inside diffusers' decoder: hands out the given maps in order and
    records the shapes asked for."""

    def __init__(self, maps):
        self.maps = list(maps)
        self.shapes = []
        self.real = torch.randn

    def __call__(self, *size, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        self.shapes.append(tuple(shape))
        value = self.maps.pop(0)
        assert tuple(value.shape) == tuple(shape), (value.shape, shape)
        return torch.tensor(value)


def _check_moments(vae, cell, x):
    ours = cell.encode(ms.Tensor(x)).asnumpy()
    with torch.no_grad():
        dist = vae.encode(torch.tensor(x)).latent_dist
    expected = dist.parameters.numpy()
    assert ours.shape == expected.shape
    mean, std = latent_dist_mean_std(ours)
    assert rel_l2(mean, dist.mean.numpy()) <= 1e-4 and rel_l2(std, dist.std.numpy()) <= 1e-4
    return rel_l2(ours, expected)


def test_vae_090_encode_decode(tmp_path):
    vae = _tiny_vae(VAE_090, 3)
    cell, config = _save_and_load(vae, tmp_path)
    assert cell.encoder.down_blocks[0].has_conv_out and cell.decoder.up_blocks[3].has_conv_in
    assert np.allclose(cell.latents_mean.asnumpy(), vae.latents_mean.numpy())
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (2, 3, 9, 16, 16)).astype(np.float32)
    err = _check_moments(vae, cell, x)
    print("vae 0.9.0 encode", err)
    assert err <= 1e-4, err
    z = rng.standard_normal((2, 8, 3, 4, 4)).astype(np.float32)
    assert decode_input_specs(config, 2, 3, 4, 4) == [("latents", z.shape)]
    ours = cell.decode(ms.Tensor(z)).asnumpy()
    with torch.no_grad():
        expected = vae.decode(torch.tensor(z)).sample.numpy()
    assert ours.shape == expected.shape == (2, 3, 9, 16, 16)
    err = rel_l2(ours, expected)
    print("vae 0.9.0 decode", err)
    assert err <= 1e-4, err


def test_vae_091_decode_with_timestep_and_noise(tmp_path, monkeypatch):
    vae = _tiny_vae(VAE_091, 4)
    cell, config = _save_and_load(vae, tmp_path)
    rng = np.random.default_rng(4)
    b, f, h, w = 2, 2, 3, 4
    z = rng.standard_normal((b, 8, f, h, w)).astype(np.float32)
    specs = decode_input_specs(config, b, f, h, w)
    names = [name for name, _ in specs]
    assert names[:4] == ["latents", "timestep", "decode_noise_scale", "decode_noise"]
    maps = [rng.standard_normal(shape).astype(np.float32) for _, shape in decoder_noise_specs(config, h, w)]
    assert len(maps) == 6 and [m.shape for m in maps] == [(6, 8)] * 2 + [(12, 16)] * 2 + [(24, 32)] * 2
    timestep = np.array([0.05, 0.025], np.float32)
    scale = np.array([0.025, 0.05], np.float32)
    decode_noise = rng.standard_normal(z.shape).astype(np.float32)
    ours = cell.decode(ms.Tensor(z), ms.Tensor(timestep), ms.Tensor(scale), ms.Tensor(decode_noise),
                       ms.mutable(tuple(ms.Tensor(m) for m in maps))).asnumpy()
    # diffusers: the pipeline's mixing, then vae.decode drawing the injected maps with torch.randn
    feed = _NoiseFeed(maps)
    monkeypatch.setattr(torch, "randn", feed)
    with torch.no_grad():
        s = torch.tensor(scale)[:, None, None, None, None]
        mixed = (1 - s) * torch.tensor(z) + s * torch.tensor(decode_noise)
        expected = vae.decode(mixed, torch.tensor(timestep)).sample.numpy()
    monkeypatch.setattr(torch, "randn", feed.real)
    assert not feed.maps and len(feed.shapes) == 6  # diffusers drew exactly the listed maps
    assert ours.shape == expected.shape == (b, 3, 8 * (f - 1) + 1, 8 * h, 8 * w)
    err = rel_l2(ours, expected)
    print("vae 0.9.1 decode", err)
    assert err <= 1e-4, err
    # the injected noise takes part
    other = [np.zeros_like(m) for m in maps]
    without = cell.decode(ms.Tensor(z), ms.Tensor(timestep), ms.Tensor(scale), ms.Tensor(decode_noise),
                          ms.mutable(tuple(ms.Tensor(m) for m in other))).asnumpy()
    assert rel_l2(without, expected) > 1e-4


def test_vae_095_encode_decode(tmp_path):
    vae = _tiny_vae(VAE_095, 5)
    cell, config = _save_and_load(vae, tmp_path)
    assert (config.spatial_ratio, config.temporal_ratio) == (vae.spatial_compression_ratio,
                                                             vae.temporal_compression_ratio)
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (1, 3, 9, 16, 24)).astype(np.float32)
    err = _check_moments(vae, cell, x)
    print("vae 0.9.5 encode", err)
    assert err <= 1e-4, err
    z = rng.standard_normal((1, 8, 3, 2, 3)).astype(np.float32)
    assert decoder_noise_specs(config, 2, 3) == []
    timestep = np.array([0.05], np.float32)
    ours = cell.decoder(ms.Tensor(z), ms.Tensor(timestep)).asnumpy()
    with torch.no_grad():
        expected = vae.decode(torch.tensor(z), torch.tensor(timestep)).sample.numpy()
    assert ours.shape == expected.shape == (1, 3, 9, 16, 24)
    err = rel_l2(ours, expected)
    print("vae 0.9.5 decode", err)
    assert err <= 1e-4, err
    # enable_tiling(<small tiles>) with use_framewise_decoding: runtime/vae.framewise_decode with diffusers' own
    # decoder as the tile function (our decoder on one tile is the decode above; eager MindSpore on 8 new tile
    # shapes would cost ~30 s) against diffusers' _temporal_tiled_decode / tiled_decode (latents 5 x 3 x 5:
    # temporal tiles of 4 and 2 latent frames, rows of 3 and 1, columns of 4 and 2, every overlap blended)
    from video_aot.runtime.vae import framewise_decode

    tiling = dict(tile_sample_min_height=24, tile_sample_min_width=32, tile_sample_min_num_frames=15,
                  tile_sample_stride_height=16, tile_sample_stride_width=32 - 8, tile_sample_stride_num_frames=12)
    z = rng.standard_normal((1, 8, 5, 3, 5)).astype(np.float32)
    shapes = []

    def decode_tile(tile):
        shapes.append(tile.shape[2:])
        with torch.no_grad():
            return vae.decoder(torch.tensor(tile), torch.tensor(timestep)).numpy()

    ours = framewise_decode(z, decode_tile, tiling, config.spatial_ratio, config.temporal_ratio, use_tiling=True,
                            use_framewise=True, drop_frame="last")
    vae.enable_tiling(**tiling)
    vae.use_framewise_decoding = True
    try:
        with torch.no_grad():
            expected = vae.decode(torch.tensor(z), torch.tensor(timestep)).sample.numpy()
    finally:
        vae.disable_tiling()
        vae.use_framewise_decoding = False
    assert sorted(set(shapes)) == [(2, 1, 2), (2, 1, 4), (2, 3, 2), (2, 3, 4), (4, 1, 2), (4, 1, 4), (4, 3, 2),
                                   (4, 3, 4)]
    assert ours.shape == expected.shape == (1, 3, 17, 24, 40)
    err = float(np.abs(ours - expected).max())
    print("vae 0.9.5 tiled decode (space and time) max abs", err)
    assert err <= 1e-5, err
    assert np.abs(ours - vae.decode(torch.tensor(z), torch.tensor(timestep)).sample.detach().numpy()).max() > 1e-3


def test_vae_config_checks():
    with pytest.raises(ValueError, match="down block"):
        AutoencoderKLLTXVideoConfig(down_block_types=("Nope",) * 4)
    with pytest.raises(ValueError, match="downsample_type"):
        AutoencoderKLLTXVideoConfig(**{**VAE_095, "downsample_type": ("spatial", "bogus", "spatial", "spatial")})
    # the real configs' ratios, as diffusers computes them
    assert (AutoencoderKLLTXVideoConfig().spatial_ratio, AutoencoderKLLTXVideoConfig().temporal_ratio) == (32, 8)
    # layouts diffusers builds but cannot run are refused by name: temporal patches (conv_in/conv_out are
    # sized by patch_size alone) and an LTXVideo095DownBlock3D that changes channels without a
    # space-to-depth downsampler (its "conv" downsampler and no downsampler keep the channels)
    from diffusers import AutoencoderKLLTXVideo

    with pytest.raises(ValueError, match="patch_size_t 2"):
        AutoencoderKLLTXVideoConfig(**{**VAE_090, "patch_size_t": 2})
    # a decoder conv_in resnet (channels change) that injects noise: its noise scales have the input's width
    noisy_conv_in = {**VAE_091, "upsample_factor": (1, 1, 1), "timestep_conditioning": False}
    with pytest.raises(ValueError, match=r"up block 1 changes channels \(64 -> 32\) .* injects noise"):
        AutoencoderKLLTXVideoConfig(**noisy_conv_in)
    with pytest.raises(RuntimeError), torch.no_grad():
        AutoencoderKLLTXVideo(**noisy_conv_in).decode(torch.zeros(1, 8, 2, 3, 4))
    for change in ({"downsample_type": ("conv", "spatial", "spatiotemporal")},
                   {"spatio_temporal_scaling": (True, False, True)}):
        with pytest.raises(ValueError, match=r"down block \d .* would change channels"):
            AutoencoderKLLTXVideoConfig(**{**VAE_095, **change})
        with pytest.raises(RuntimeError), torch.no_grad():
            AutoencoderKLLTXVideo(**{**VAE_095, **change}).encode(torch.zeros(1, 3, 9, 32, 48))


def test_vae_095_conv_and_missing_downsamplers_keep_channels(tmp_path):
    """LTXVideo095DownBlock3D with the "conv" downsampler and with none (spatio_temporal_scaling False),
    where the channels stay the same: encode and decode against diffusers."""
    config = {**VAE_095, "block_out_channels": (8, 8, 8, 16), "spatio_temporal_scaling": (True, False, True),
              "downsample_type": ("conv", "spatial", "spatiotemporal"), "spatial_compression_ratio": None,
              "temporal_compression_ratio": None}
    vae = _tiny_vae(config, 6)
    cell, config = _save_and_load(vae, tmp_path)
    assert (config.spatial_ratio, config.temporal_ratio) == (8, 4)
    rng = np.random.default_rng(6)
    err = _check_moments(vae, cell, rng.uniform(-1, 1, (1, 3, 9, 16, 24)).astype(np.float32))
    print("vae 0.9.5 conv / no downsampler encode", err)
    assert err <= 1e-4, err
    z = rng.standard_normal((1, 8, 3, 2, 3)).astype(np.float32)
    timestep = np.array([0.05], np.float32)
    ours = cell.decoder(ms.Tensor(z), ms.Tensor(timestep)).asnumpy()
    with torch.no_grad():
        expected = vae.decode(torch.tensor(z), torch.tensor(timestep)).sample.numpy()
    assert rel_l2(ours, expected) <= 1e-4
