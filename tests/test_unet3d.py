"""Component parity of the UNet3D family's networks with diffusers (tiny random configs, fp32,
GRAPH_MODE): UNet3DConditionModel (with forward chunking, an odd latent size and non-default
config values) and AutoencoderKL encode / decode. Each model is built in torch, saved with
``save_pretrained`` and loaded back through ``video_aot.models.loading.load_network``.
The default tiny configs are also compared end to end, through the exported graphs, in
tests/test_t2v.py; here the configs differ so that more code paths are covered."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import mindspore as ms

from tiny import rel_l2
from tiny_t2v import unet3d, vae

from video_aot.models.loading import LoadError, load_config, load_network

TOL = 1e-4


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    # layers_per_block 1, mid_block_scale_factor and downsample_padding off their defaults
    model = unet3d(3, layers_per_block=1, mid_block_scale_factor=1.5, norm_eps=1e-6, attention_head_dim=4)
    folder = tmp_path_factory.mktemp("unet3d")
    model.save_pretrained(folder)
    return model, folder


def test_unet3d_with_forward_chunking_matches_diffusers(unet_dir):
    model, folder = unet_dir
    b, f, h, w = 2, 2, 5, 6  # 5x6 is not a multiple of 2**num_upsamplers: forwards the upsample size
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((b, 4, f, h, w)).astype(np.float32)
    context = rng.standard_normal((b, 7, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(sample), torch.tensor(321), torch.from_numpy(context)).sample.numpy()
        model.enable_forward_chunking(chunk_size=2, dim=0)
        ref_chunked = model(torch.from_numpy(sample), torch.tensor(321), torch.from_numpy(context)).sample.numpy()
        model.disable_forward_chunking()
    cell, config = load_network(folder, num_frames=f)
    assert config.mid_block_scale_factor == 1.5
    cell.enable_forward_chunking(chunk_size=2, dim=0)  # batch chunks: 2B*F, 2B*h*w rows all even
    out = cell(ms.Tensor(sample), ms.Tensor(np.array([321.0], np.float32)), ms.Tensor(context)).asnumpy()
    assert out.shape == ref.shape == (b, 4, f, h, w)
    err = rel_l2(out, ref)
    print(f"unet3d (chunked) rel L2 vs diffusers: {err:.2e} (diffusers chunked vs not: {rel_l2(ref_chunked, ref):.1e})")
    assert err < TOL
    assert rel_l2(out, ref_chunked) < TOL


def test_forward_chunking_rejects_bad_values(unet_dir):
    _, folder = unet_dir
    cell, _ = load_network(folder, random_weights=True, num_frames=2)
    with pytest.raises(ValueError, match="dim` to either 0 or 1"):
        cell.enable_forward_chunking(1, dim=2)


def test_unet3d_refuses_a_frame_count_it_was_not_built_for(unet_dir):
    """The temporal layers group the [B*F] rows by the built num_frames: a 1 x 4-frame sample on a
    2-frame network would run as two 2-frame videos (rel L2 0.36 from diffusers) without the check."""
    _, folder = unet_dir
    cell, _ = load_network(folder, random_weights=True, num_frames=2)
    sample = np.zeros((1, 4, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="sample has 4 frames but this network was built for num_frames=2"):
        cell(ms.Tensor(sample), ms.Tensor(np.array([1.0], np.float32)), ms.Tensor(np.zeros((1, 3, 32), np.float32)))


def test_unet3d_config_errors_teach(tmp_path):
    import json

    model = unet3d(0)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["down_block_types"] = ["CrossAttnDownBlock2D", "DownBlock3D"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match="CrossAttnDownBlock2D.*supported"):
        load_config(tmp_path)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    # three levels, two resnets per level, no quant convs
    model = vae(5, block_out_channels=(32, 32, 64), layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                use_quant_conv=False, use_post_quant_conv=True, scaling_factor=0.13)
    folder = tmp_path_factory.mktemp("autoencoder_kl")
    model.save_pretrained(folder)
    return model, folder


def test_autoencoder_kl_encode_decode_match_diffusers(vae_dir):
    model, folder = vae_dir
    cell, config = load_network(folder)
    assert config.scale_factor == 4 and config.scaling_factor == 0.13
    rng = np.random.default_rng(1)
    image = rng.uniform(-1, 1, (2, 3, 24, 16)).astype(np.float32)
    latents = rng.standard_normal((3, 4, 6, 4)).astype(np.float32)
    with torch.no_grad():
        dist = model.encode(torch.from_numpy(image)).latent_dist
        ref_mean, ref_std = dist.mean.numpy(), dist.std.numpy()
        ref_dec = model.decode(torch.from_numpy(latents)).sample.numpy()

    class Encode(ms.nn.Cell):
        def __init__(self, vae_cell):
            super().__init__()
            self.vae = vae_cell

        def construct(self, x):
            return self.vae.encode_moments(x)

    mean, std = (t.asnumpy() for t in Encode(cell)(ms.Tensor(image)))
    dec = cell(ms.Tensor(latents)).asnumpy()
    errors = {"mean": rel_l2(mean, ref_mean), "std": rel_l2(std, ref_std), "decode": rel_l2(dec, ref_dec)}
    print("AutoencoderKL rel L2 vs diffusers:", {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) < TOL


def test_autoencoder_kl_loads_deprecated_attention_names(vae_dir, tmp_path):
    """Older VAE checkpoints name the mid-block attention query/key/value/proj_attn (diffusers'
    AttentionBlock); diffusers renames them on load, and so does our loader."""
    import shutil

    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    model, folder = vae_dir
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    new = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in load_file(folder / "diffusion_pytorch_model.safetensors").items():
        for name, old in new.items():
            if ".mid_block.attentions." in key and f".{name}." in key:
                key = key.replace(f".{name}.", f".{old}.")
        state[key] = value
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in state
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    latents = np.random.default_rng(2).standard_normal((1, 4, 6, 4)).astype(np.float32)
    with torch.no_grad():
        expected = AutoencoderKL.from_pretrained(tmp_path).decode(torch.from_numpy(latents)).sample.numpy()
        assert rel_l2(expected, model.decode(torch.from_numpy(latents)).sample.numpy()) < 1e-6
    cell, _ = load_network(tmp_path)
    assert rel_l2(cell(ms.Tensor(latents)).asnumpy(), expected) < TOL


def test_autoencoder_kl_swish_is_silu(tmp_path):
    # diffusers' get_activation("swish") is SiLU; the encoder refused the name before
    model = vae(6, act_fn="swish")
    model.save_pretrained(tmp_path)
    cell, _ = load_network(tmp_path)
    image = np.random.default_rng(3).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(image)).latent_dist.mean.numpy()
    assert rel_l2(cell.encode_moments(ms.Tensor(image))[0].asnumpy(), expected) < TOL
