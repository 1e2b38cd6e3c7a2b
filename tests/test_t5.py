"""T5 encoder (T5 v1.1: gated GELU, relative attention bias) against transformers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny import perturb, rel_l2

from video_aot.models.loading import load_network
from video_aot.models.t5 import T5Config, relative_position_buckets

TINY_T5 = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=3, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=20)


def tiny_t5(seed=0, **overrides):
    from transformers import T5Config as HFConfig, T5EncoderModel

    torch.manual_seed(seed)
    model = T5EncoderModel(HFConfig(**{**TINY_T5, "feed_forward_proj": "gated-gelu", **overrides}))
    return perturb(model.eval(), seed, scale=0.05)


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    for buckets, distance, length in ((32, 128, 300), (8, 20, 64)):
        rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
        expected = T5Attention._relative_position_bucket(rel, True, buckets, distance).numpy()
        assert np.array_equal(relative_position_buckets(length, length, buckets, distance), expected)


@pytest.mark.parametrize("proj", ["gated-gelu", "relu"])
def test_t5_encoder_matches_transformers(tmp_path, proj):
    ref = tiny_t5(feed_forward_proj=proj)
    ref.save_pretrained(tmp_path)
    cell, config = load_network(tmp_path, max_positions=64)
    assert config.feed_forward_proj == proj
    ids = np.random.default_rng(0).integers(0, TINY_T5["vocab_size"], (2, 37)).astype(np.int32)
    ours = cell(__import__("mindspore").Tensor(ids)).asnumpy()
    with torch.no_grad():
        expected = ref(torch.tensor(ids, dtype=torch.long)).last_hidden_state.numpy()
    err = rel_l2(ours, expected)
    assert err <= 1e-4, err


def test_tanh_and_tanh_gelu_match_torch():
    # T5 v1.1's gated-gelu is transformers' gelu_new (tanh approximation). MindSpore 2.7.1's CPU Tanh is
    # off by up to 1e-4 for 1 <= |x| < 9 (2e-5 relative over the whole encoder input range); layers.tanh
    # and layers.gelu(x, "tanh") avoid it
    import mindspore as ms
    from transformers.activations import NewGELUActivation

    from video_aot.models.layers import gelu, tanh

    x = (np.random.default_rng(0).standard_normal(20000) * 4).astype(np.float32)
    ours_tanh = tanh(ms.Tensor(x)).asnumpy()
    ours_gelu = gelu(ms.Tensor(x), "tanh").asnumpy()
    assert np.abs(ours_tanh - torch.tanh(torch.tensor(x)).numpy()).max() < 2e-6
    assert np.abs(ours_gelu - NewGELUActivation()(torch.tensor(x)).numpy()).max() < 4e-6


def test_t5_config_errors():
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gated-gelu-x")
    with pytest.raises(ValueError, match="not supported"):
        T5Config(feed_forward_proj="gated-mish")
    with pytest.raises(ValueError, match="contradicts"):
        T5Config(feed_forward_proj="gated-gelu", dense_act_fn="relu")


def test_fp16_keeps_wo_in_fp32_as_transformers_does(tmp_path):
    """An fp16 T5 keeps its ``wo`` projections in float32 (transformers' _keep_in_fp32_modules) and
    matches transformers' own fp16 model on the CPU within fp16 rounding; bf16 casts everything."""
    import mindspore as ms
    from transformers import T5EncoderModel

    ref = tiny_t5(seed=2)
    ref.save_pretrained(tmp_path)
    ids = np.random.default_rng(1).integers(0, TINY_T5["vocab_size"], (2, 19)).astype(np.int32)
    with torch.no_grad():
        expected32 = ref(torch.tensor(ids, dtype=torch.long)).last_hidden_state.numpy()
        half = T5EncoderModel.from_pretrained(tmp_path, dtype=torch.float16)
        expected16 = half(torch.tensor(ids, dtype=torch.long)).last_hidden_state.float().numpy()
    cell, _ = load_network(tmp_path, dtype="fp16", max_positions=64)
    dtypes = {name: p.dtype for name, p in cell.parameters_and_names()}
    assert dtypes["encoder.block.1.layer.1.DenseReluDense.wo.weight"] == ms.float32
    assert dtypes["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"] == ms.float16
    assert dtypes["encoder.block.1.layer.0.SelfAttention.o.weight"] == ms.float16
    ours = cell(ms.Tensor(ids)).asnumpy()
    assert ours.dtype == np.float32
    assert rel_l2(ours, expected16) <= 5e-3 and rel_l2(ours, expected32) <= 5e-3
    bf16, _ = load_network(tmp_path, dtype="bf16", max_positions=64)
    assert {p.dtype for p in bf16.get_parameters()} == {ms.bfloat16}
