"""Parity of the SD 1.x UNet2DConditionModel (plain and with Text2Video-Zero's cross-frame
attention) and of AnimateDiff's UNetMotionModel with diffusers (tiny random configs, fp32,
GRAPH_MODE). Each model is built in torch, saved with ``save_pretrained`` and loaded back through
``load_network`` (UNet2DConditionModel, UNetMotionModel folders) or ``load_unet_motion`` (a
UNet2DConditionModel folder + a MotionAdapter folder, as AnimateDiffPipeline snapshots ship them)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import mindspore as ms

from tiny import rel_l2
from tiny_animatediff import animatediff_unet, motion_adapter, unet2d

from video_aot.models.animatediff import UNetMotionModel, load_unet_motion, map_motion_adapter_weights
from video_aot.models.loading import LoadError, load_config, load_network
from video_aot.models.unet2d import cross_frame_video_length

TOL = 1e-4
T = np.array([321.0], np.float32)
T_MOTION = np.array([400.0], np.float32)


def _run(cell, *arrays):
    return cell(*(ms.Tensor(a) for a in arrays)).asnumpy()


def _compare(name, out, ref):
    assert out.shape == ref.shape
    err = rel_l2(out, ref)
    print(f"{name} rel L2 vs diffusers: {err:.2e}")
    assert err < TOL


# ----------------------------------------------------------------------------- UNet2DConditionModel
def test_unet2d_matches_diffusers(tmp_path):
    model = unet2d(0)  # conv proj_in/proj_out (use_linear_projection False), 8 heads
    model.save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    context = rng.standard_normal((2, 7, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(sample), torch.tensor(321), torch.from_numpy(context)).sample.numpy()
    cell, config = load_network(tmp_path)
    assert config.use_linear_projection is False
    _compare("unet2d", _run(cell, sample, T, context), ref)


def test_unet2d_cross_frame_attention_linear_projection_matches_text2video_zero(tmp_path):
    """Text2Video-Zero's UNet: diffusers' CrossFrameAttnProcessor(batch_size=2) on every attention
    processor, a batch of 2 x F frames. The config also covers use_linear_projection, a per-block
    attention_head_dim, two transformer layers in a level, non-default time-embedding fields and a
    6x5 latent (forwards the upsample size); one compile serves both."""
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor,
    )

    model = unet2d(1, use_linear_projection=True, attention_head_dim=(2, 4), layers_per_block=1,
                   transformer_layers_per_block=(1, 2), flip_sin_to_cos=False, freq_shift=1, upcast_attention=True,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    model.save_pretrained(tmp_path)
    f = 3
    n = 2 * f  # [uncond frames, cond frames] under classifier-free guidance
    rng = np.random.default_rng(2)
    sample = rng.standard_normal((n, 4, 6, 5)).astype(np.float32)
    context = rng.standard_normal((n, 5, 32)).astype(np.float32)
    with torch.no_grad():
        plain = model(torch.from_numpy(sample), torch.tensor(500), torch.from_numpy(context)).sample.numpy()
        model.set_attn_processor(CrossFrameAttnProcessor(batch_size=2))  # as TextToVideoZeroPipeline does
        ref = model(torch.from_numpy(sample), torch.tensor(500), torch.from_numpy(context)).sample.numpy()
    assert rel_l2(plain, ref) > 1e-2  # cross-frame attention changes the output: the comparison can fail
    assert cross_frame_video_length(n) == f
    cell, config = load_network(tmp_path, cross_frame_attention_frames=cross_frame_video_length(n))
    assert config.use_linear_projection and config.heads() == (2, 4)
    out = _run(cell, sample, np.array([500.0], np.float32), context)
    _compare("unet2d cross-frame attention, linear projection", out, ref)


def test_unet2d_config_errors_teach(tmp_path):
    model = unet2d(0, layers_per_block=1)
    model.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    for key, value, pattern in (
        ("down_block_types", ["SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
         "SimpleCrossAttnDownBlock2D.*supported"),
        ("class_embed_type", "timestep", "class_embed_type='timestep' is not supported; supported: None"),
        ("addition_embed_type", "text_time", "addition_embed_type='text_time' is not supported"),
        ("only_cross_attention", True, "only_cross_attention=True.*supported: False"),
    ):
        (tmp_path / "config.json").write_text(json.dumps({**raw, key: value}))
        with pytest.raises(LoadError, match=pattern):
            load_config(tmp_path)
    # diffusers reads mid_block_only_cross_attention for UNetMidBlock2DSimpleCrossAttn only: no effect here
    (tmp_path / "config.json").write_text(json.dumps({**raw, "mid_block_only_cross_attention": True}))
    assert load_config(tmp_path)[1].mid_block_only_cross_attention is True


# ----------------------------------------------------------------------------- UNetMotionModel
@pytest.fixture(scope="module")
def motion_inputs():
    b, f = 1, 3
    rng = np.random.default_rng(3)
    sample = rng.standard_normal((b, 4, f, 8, 8)).astype(np.float32)
    context = rng.standard_normal((b * f, 5, 8)).astype(np.float32)  # per-frame embeddings
    return sample, context, f


def _motion_reference(unet, adapter, sample, context):
    from diffusers import UNetMotionModel as TorchUNetMotionModel

    model = TorchUNetMotionModel.from_unet2d(unet, adapter).eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(sample), torch.tensor(400), torch.from_numpy(context)).sample.numpy()
    return model, ref


def test_unet_motion_saved_folder_matches_diffusers(tmp_path, motion_inputs):
    # layout (a) with a mid-block motion module (v1-5-2 style); layout (b) of the same pair builds the
    # same config and loads exactly the same weights, so it needs no second compile
    sample, context, f = motion_inputs
    unet = animatediff_unet(4, layers_per_block=1)
    adapter = motion_adapter(5, use_motion_mid_block=True, motion_layers_per_block=1)
    unet.save_pretrained(tmp_path / "unet")
    adapter.save_pretrained(tmp_path / "motion_adapter")
    model, ref = _motion_reference(unet, adapter, sample, context)
    model.save_pretrained(tmp_path / "unet_motion")
    cell, config = load_network(tmp_path / "unet_motion", num_frames=f)
    assert isinstance(cell, UNetMotionModel) and cell.mid_block.motion_modules is not None
    _compare("UNetMotionModel (saved folder, mid-block motion)", _run(cell, sample, T_MOTION, context), ref)
    cell_b, config_b = load_unet_motion(tmp_path / "unet", tmp_path / "motion_adapter", num_frames=f)
    assert config_b == config
    params = dict(cell.parameters_and_names())
    params_b = dict(cell_b.parameters_and_names())
    assert sorted(params) == sorted(params_b)
    for name, param in params.items():
        np.testing.assert_array_equal(param.asnumpy(), params_b[name].asnumpy(), err_msg=name)


def test_unet_motion_from_unet_and_adapter_matches_diffusers(tmp_path, motion_inputs):
    # layout (b) without a mid-block motion module (v1-5-3 style), one layer per block
    sample, context, f = motion_inputs
    unet = animatediff_unet(6, layers_per_block=1)
    adapter = motion_adapter(7, use_motion_mid_block=False, motion_layers_per_block=1)
    unet.save_pretrained(tmp_path / "unet")
    adapter.save_pretrained(tmp_path / "motion_adapter")
    model, ref = _motion_reference(unet, adapter, sample, context)
    cell, config = load_unet_motion(tmp_path / "unet", tmp_path / "motion_adapter", num_frames=f)
    assert config.use_motion_mid_block is False and cell.mid_block.motion_modules is None
    assert config.num_attention_heads == model.config.num_attention_heads
    _compare("UNetMotionModel (unet + adapter, no mid-block motion)", _run(cell, sample, T_MOTION, context), ref)


def test_unet_motion_per_layer_temporal_depths_match_diffusers(tmp_path, motion_inputs):
    """temporal_transformer_layers_per_block with per-layer tuples (diffusers then needs the up blocks'
    depths in reverse_temporal_transformer_layers_per_block, each up block having one layer more)."""
    from diffusers import UNetMotionModel as TorchUNetMotionModel

    from tiny import perturb

    sample, context, f = motion_inputs
    torch.manual_seed(8)
    model = perturb(TorchUNetMotionModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=2, cross_attention_dim=8,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), num_attention_heads=4,
        motion_num_attention_heads=4, motion_max_seq_length=8, use_motion_mid_block=False,
        temporal_transformer_layers_per_block=((2,), 1), reverse_temporal_transformer_layers_per_block=((1, 2), 1),
    ).eval(), 8, scale=0.05)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        ref = model(torch.from_numpy(sample), torch.tensor(400), torch.from_numpy(context)).sample.numpy()
    cell, config = load_network(tmp_path, num_frames=f)
    assert config.temporal_layers("down") == ((2,), (1,)) and config.temporal_layers("up") == ((1, 2), (1, 1))
    _compare("UNetMotionModel (per-layer temporal depths)", _run(cell, sample, T_MOTION, context), ref)
    # per-layer depths without the reversed ones: diffusers refuses them, and so do we
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "reverse_temporal_transformer_layers_per_block": None}))
    with pytest.raises(LoadError, match="Must provide 'reverse_temporal_transformer_layers_per_block"):
        load_config(tmp_path)


def test_unet_motion_refuses_more_frames_than_max_seq_length(tmp_path):
    unet = animatediff_unet(0, layers_per_block=1)
    adapter = motion_adapter(0, motion_layers_per_block=1)
    unet.save_pretrained(tmp_path / "unet")
    adapter.save_pretrained(tmp_path / "motion_adapter")
    with pytest.raises(ValueError, match="num_frames=9 exceeds .*motion_max_seq_length=8"):
        load_unet_motion(tmp_path / "unet", tmp_path / "motion_adapter", random_weights=True, num_frames=9)
    cell, _ = load_unet_motion(tmp_path / "unet", tmp_path / "motion_adapter", random_weights=True, num_frames=8)
    assert isinstance(cell, UNetMotionModel) and cell.num_frames == 8
    # a sample with another frame count would be regrouped into 8-frame videos: refused
    with pytest.raises(ValueError, match="sample has 4 frames but this network was built for num_frames=8"):
        _run(cell, np.zeros((2, 4, 4, 8, 8), np.float32), T_MOTION, np.zeros((8, 5, 8), np.float32))
    # an adapter that does not fit the UNet
    motion_adapter(0, motion_layers_per_block=2).save_pretrained(tmp_path / "other")
    with pytest.raises(LoadError, match="different number of layers per block"):
        load_unet_motion(tmp_path / "unet", tmp_path / "other", random_weights=True, num_frames=2)


def test_map_motion_adapter_weights_refuses_non_motion_keys():
    value = np.zeros(1)
    assert map_motion_adapter_weights("mid_block.motion_modules.0.proj_in.weight", value)[0][0] == \
        "mid_block.motion_modules.0.proj_in.weight"
    with pytest.raises(LoadError, match="conv_in.weight.*not a motion module"):
        map_motion_adapter_weights("conv_in.weight", value)
