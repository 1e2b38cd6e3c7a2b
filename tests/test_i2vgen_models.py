"""Parity of the I2VGen-XL UNet with diffusers' I2VGenXLUNet (fp32, GRAPH_MODE), built from diffusers'
own tiny test config (tests/pipelines/i2vgen_xl/test_i2vgenxl.py, get_dummy_components) with perturbed
weights, saved with ``save_pretrained`` and loaded through ``load_network``. Two compiled networks cover
the checks: 2 frames at 45x27 (non-square, odd so the upsample size is forwarded, and a context pool with
uneven bins on the height and repeated inputs on the width) and 3 frames at 32x32 (the pool is the
identity). The adaptive pool is also compared directly with torch at several sizes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import mindspore as ms

from tiny import perturb, rel_l2

from video_aot.models.i2vgen import AdaptiveAvgPool2d, I2VGenXLUNetConfig
from video_aot.models.loading import LoadError, load_config, load_network

TOL = 1e-4
# diffusers tests/pipelines/i2vgen_xl/test_i2vgenxl.py get_dummy_components
TINY_UNET = dict(
    block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    cross_attention_dim=4, attention_head_dim=4, num_attention_heads=None, norm_num_groups=2,
)
TEXT_TOKENS = 77


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    from diffusers.models.unets import I2VGenXLUNet

    torch.manual_seed(0)
    model = perturb(I2VGenXLUNet(**TINY_UNET), seed=0).eval()
    folder = tmp_path_factory.mktemp("i2vgen_unet")
    model.save_pretrained(folder)
    return model, folder


def _inputs(seed, b, f, h, w, per_sample_timestep):
    rng = np.random.default_rng(seed)
    d = TINY_UNET["cross_attention_dim"]
    timestep = np.array([701.0, 33.0][:b] if per_sample_timestep else [417.0], np.float32)
    return dict(
        sample=rng.standard_normal((b, 4, f, h, w)).astype(np.float32),
        timestep=timestep,
        fps=np.array([16.0, 8.0][:b], np.float32),
        image_latents=rng.standard_normal((b, 4, f, h, w)).astype(np.float32),
        image_embeddings=rng.standard_normal((b, 1, d)).astype(np.float32),  # the pipeline's [B, 1, D]
        encoder_hidden_states=rng.standard_normal((b, TEXT_TOKENS, d)).astype(np.float32),
    )


def _compare(unet_dir, seed, b, f, h, w, per_sample_timestep):
    model, folder = unet_dir
    x = _inputs(seed, b, f, h, w, per_sample_timestep)
    with torch.no_grad():
        t = {k: torch.from_numpy(v) for k, v in x.items()}
        # diffusers' pipeline passes an integer timestep and fps
        t["timestep"] = t["timestep"].long() if per_sample_timestep else t["timestep"][0].long()
        t["fps"] = t["fps"].long()
        ref = model(**t).sample.numpy()
    cell, config = load_network(folder, num_frames=f)
    assert isinstance(config, I2VGenXLUNetConfig)
    out = cell(*(ms.Tensor(v) for v in x.values())).asnumpy()
    assert out.shape == ref.shape == (b, 4, f, h, w)
    err = rel_l2(out, ref)
    print(f"I2VGenXLUNet F={f} {h}x{w} rel L2 vs diffusers: {err:.2e}")
    assert err < TOL


def test_i2vgen_unet_two_frames_non_square_matches_diffusers(unet_dir):
    # 45x27: non-square; the context pool averages uneven bins over the height (45 -> 32) and repeats
    # inputs over the width (27 -> 32); 45 and 27 are odd, so the upsample size is forwarded
    _compare(unet_dir, 0, b=2, f=2, h=45, w=27, per_sample_timestep=False)


def test_i2vgen_unet_three_frames_32x32_matches_diffusers(unet_dir):
    # 32x32: the context pool is the identity; one timestep per sample
    _compare(unet_dir, 1, b=2, f=3, h=32, w=32, per_sample_timestep=True)


@pytest.mark.parametrize("size", [(32, 32), (40, 40), (45, 27), (20, 50), (7, 5)])
def test_adaptive_avg_pool_matches_torch(size):
    x = np.random.default_rng(2).standard_normal((2, 3) + size).astype(np.float32)
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (32, 32)).numpy()
    out = AdaptiveAvgPool2d(32)(ms.Tensor(x)).asnumpy()
    assert out.shape == ref.shape == (2, 3, 32, 32)
    assert np.abs(out - ref).max() < 1e-6 * max(1.0, np.abs(ref).max())


def test_i2vgen_config_errors_teach(unet_dir):
    _, folder = unet_dir
    cfg = json.loads((folder / "config.json").read_text())
    cfg["attention_head_dim"] = [4, 4]
    bad = folder.parent / "i2vgen_bad_config"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match="attention_head_dim"):
        load_config(bad)
