"""HunyuanVideo networks against diffusers / transformers on tiny random-weight configs saved with
save_pretrained: the Llama text encoder's hidden_states[-3] (and [-1]) with a padding mask, the
HunyuanVideoTransformer3DModel with per-sample text masks, the 3D RoPE tables, the
AutoencoderKLHunyuanVideo decoder (one tile) and encoder, and the numpy tiling loops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny import perturb, rel_l2

import mindspore as ms
from video_aot.models.loading import load_network

# diffusers tests/pipelines/hunyuan_video/test_hunyuan_video.py get_dummy_components, with 3 Llama
# layers (so that hidden_states[-3] is a decoder layer's output, not the embeddings) and 2 key-value
# heads (grouped-query attention, as the real 32/8-head encoder)
TINY_LLAMA = dict(bos_token_id=0, eos_token_id=2, hidden_size=16, intermediate_size=37, layer_norm_eps=1e-05,
                  num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3, pad_token_id=1, vocab_size=1000,
                  hidden_act="gelu", projection_dim=32)
# the dummy transformer, but 2 dual-stream, 2 single-stream and 2 refiner layers and patch_size 2
# (the real model's), so that the unpatchify permutation is exercised
TINY_TRANSFORMER = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
                        num_single_layers=2, num_refiner_layers=2, patch_size=2, patch_size_t=1, guidance_embeds=True,
                        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4))
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
                temporal_compression_ratio=4, mid_block_add_attention=True)


def prefix_mask(valid, length):
    return (np.arange(length)[None, :] < np.asarray(valid)[:, None]).astype(np.float32)


# ----------------------------------------------------------------------------- Llama
def test_llama_hidden_states_with_padding_mask(tmp_path):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    ref = perturb(LlamaModel(LlamaConfig(**TINY_LLAMA)).eval(), 0, scale=0.05)
    ref.save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    length = 12
    ids = rng.integers(0, TINY_LLAMA["vocab_size"], (2, length)).astype(np.int32)
    mask = prefix_mask([5, 12], length).astype(np.int32)  # right padding, as the Llama tokenizer pads
    with torch.no_grad():
        hidden = ref(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                     output_hidden_states=True).hidden_states
        unmasked = ref(torch.tensor(ids, dtype=torch.long), output_hidden_states=True).hidden_states
    assert len(hidden) == 4
    # with right padding the mask changes only the padded rows (causal attention already hides the
    # pads from the valid rows); hidden_states[-3] is a layer's output, not the embeddings
    assert rel_l2(unmasked[-3][0, :5], hidden[-3][0, :5]) < 1e-6  # causal: valid rows never see the right pads
    assert rel_l2(unmasked[-3][0, 5:], hidden[-3][0, 5:]) > 1e-2  # padded rows do differ
    assert rel_l2(hidden[-3].numpy(), hidden[0].numpy()) > 1e-2
    errs = {}
    for index in (-3, -1):  # HunyuanVideoPipeline's default; the normed last layer
        cell, _ = load_network(tmp_path, hidden_state_index=index, max_positions=32)
        ours = cell(ms.Tensor(ids), ms.Tensor(mask)).asnumpy()
        assert ours.shape == (2, length, 16)
        errs[index] = rel_l2(ours, hidden[index].numpy())
    print("llama rel L2", errs)
    assert max(errs.values()) <= 1e-4, errs


@pytest.mark.parametrize("scaling", [
    None,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    # dynamic NTK: transformers' initial frequencies (sequences up to max_position_embeddings)
    {"rope_type": "dynamic", "factor": 1.3},
])
def test_llama_rotary_frequencies_match_transformers(scaling):
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from video_aot.models.llama import LlamaConfig, rope_inv_freq
    from video_aot.models.loading import config_from_dict

    # head_dim 128, theta 500000: the real encoder's rotary setting
    raw = dict(hidden_size=512, num_attention_heads=4, rope_theta=500000.0, rope_scaling=scaling,
               max_position_embeddings=256)
    hf = HFLlamaConfig(**raw)
    if scaling is None:
        expected = LlamaRotaryEmbedding.compute_default_rope_parameters(hf)[0].numpy()
    else:
        expected = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")[0].numpy()
    # the legacy fields (HunyuanVideo's snapshot) and transformers 5's rope_parameters both load
    for config in (config_from_dict(LlamaConfig, raw), config_from_dict(LlamaConfig, hf.to_dict())):
        # float32 rounding: torch's and numpy's pow differ by an ulp here and there (a few ulp after
        # llama3's smoothing); angles over a few hundred positions move by < 1e-4 rad
        assert np.allclose(rope_inv_freq(config), expected, rtol=1e-6, atol=0), scaling


# ----------------------------------------------------------------------------- transformer
def test_rope_cos_sin_match_diffusers():
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed

    from video_aot.models.hunyuan_video import HunyuanVideoTransformerConfig, rope_cos_sin

    config = HunyuanVideoTransformerConfig()  # (16, 56, 56), theta 256, patch (1, 2, 2)
    f, h, w = 16, 40, 64  # 61 frames of 320x512, HunyuanVideoPipeline's example
    cos, sin = rope_cos_sin(config, f, h, w)
    ref_cos, ref_sin = HunyuanVideoRotaryPosEmbed(2, 1, list(config.rope_axes_dim), 256.0)(torch.zeros(1, 16, f, h, w))
    assert cos.shape == sin.shape == (f * h * w // 4, 128)
    err = max(np.abs(cos - ref_cos.numpy()).max(), np.abs(sin - ref_sin.numpy()).max())
    print("rope max abs diff", err)
    assert err <= 1e-5, err  # the angles reach 39 rad: a 1-ulp frequency difference shows as ~4e-6


def test_guidance_input_rounds_as_the_pipeline():
    from video_aot.models.hunyuan_video import guidance_input

    for dtype, torch_dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        for scale in (6.0, 4.5, 7.3):
            expected = (torch.tensor([scale] * 2, dtype=torch_dtype) * 1000.0).float().numpy()
            assert np.array_equal(guidance_input(scale, 2, dtype), expected), (dtype, scale)


def _transformer_inputs(config, seed, valid_lengths, timesteps, length, f=3, h=4, w=6):
    """Random transformer inputs (x, t, ctx, mask, pooled, guidance, cos, sin) for a batch of
    len(valid_lengths) samples whose text masks keep that many tokens each."""
    from video_aot.models.hunyuan_video import guidance_input, rope_cos_sin

    rng = np.random.default_rng(seed)
    b = len(valid_lengths)
    x = rng.standard_normal((b, config.in_channels, f, h, w)).astype(np.float32)
    ctx = rng.standard_normal((b, length, 16)).astype(np.float32)
    pooled = rng.standard_normal((b, 8)).astype(np.float32)
    cos, sin = rope_cos_sin(config, f, h, w)
    return (x, np.array(timesteps, np.float32), ctx, prefix_mask(valid_lengths, length), pooled,
            guidance_input(6.0, b), cos, sin)


def _reference_output(ref, inputs):
    with torch.no_grad():
        return ref(*[torch.tensor(a) for a in inputs[:6]], return_dict=False)[0].numpy()


def test_transformer_matches_diffusers_with_text_masks(tmp_path):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    ref = perturb(HunyuanVideoTransformer3DModel(**TINY_TRANSFORMER), 0, scale=0.1).eval()
    ref.save_pretrained(tmp_path)
    cell, config = load_network(tmp_path)
    b, length, f, h, w = 3, 8, 3, 4, 6
    inputs = _transformer_inputs(config, 1, [3, 8, 1], [999.0, 500.0, 17.0], length, f, h, w)
    x, t, ctx, mask, pooled, guidance, cos, sin = inputs
    ours = cell(*[ms.Tensor(a) for a in inputs]).asnumpy()
    expected = _reference_output(ref, inputs)
    with torch.no_grad():
        # the mask must matter: changing padded tokens leaves the output alone, unmasking changes it
        junk = ctx.copy()
        junk[0, 3:] = 5.0
        args = (torch.tensor(x[:1]), torch.tensor(t[:1]))
        tail = (torch.tensor(pooled[:1]), torch.tensor(guidance[:1]))
        same = ref(*args, torch.tensor(junk[:1]), torch.tensor(mask[:1]), *tail, return_dict=False)[0].numpy()
        unmasked = ref(*args, torch.tensor(junk[:1]), torch.ones(1, length), *tail, return_dict=False)[0].numpy()
    assert ours.shape == expected.shape == (b, 4, f, h, w)
    assert rel_l2(same, expected[:1]) < 1e-5
    assert rel_l2(unmasked, expected[:1]) > 1e-2
    errs = [rel_l2(ours[i], expected[i]) for i in range(b)]
    # the attention over one head at a time (the memory-saving build) gives the same output
    chunked, _ = load_network(tmp_path, attention_heads_per_chunk=1)
    ours_chunked = chunked(*[ms.Tensor(a) for a in inputs]).asnumpy()
    errs += [rel_l2(ours_chunked[i], expected[i]) for i in range(b)]
    print("transformer rel L2 per sample (all heads, then one head per chunk)", errs)
    # ~1e-5: the guidance (6000) sinusoid amplifies 1-ulp frequency differences (sinusoid_frequencies)
    assert max(errs) <= 1e-4, errs


@pytest.mark.parametrize("overrides", [
    # HunyuanVideo-I2V (16 channels): the first latent frame's tokens are modulated by the t=0 embedding
    dict(image_condition_type="token_replace", guidance_embeds=False),
    # HunyuanVideo-I2V-33ch: image latents and mask concatenated to the input, the T2V network
    dict(image_condition_type="latent_concat", in_channels=9),
])
def test_i2v_transformer_matches_diffusers(tmp_path, overrides):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    ref = perturb(HunyuanVideoTransformer3DModel(**{**TINY_TRANSFORMER, **overrides}), 0, scale=0.1).eval()
    ref.save_pretrained(tmp_path)
    cell, config = load_network(tmp_path)
    inputs = _transformer_inputs(config, 2, [4, 6], [999.0, 300.0], length=6)
    ours = cell(*[ms.Tensor(a) for a in inputs]).asnumpy()
    err = rel_l2(ours, _reference_output(ref, inputs))
    assert err <= 1e-4, err


# ----------------------------------------------------------------------------- VAE
@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(0)
    ref = perturb(AutoencoderKLHunyuanVideo(**TINY_VAE), 0, scale=0.05).eval()
    folder = tmp_path_factory.mktemp("hunyuan-vae")
    ref.save_pretrained(folder)
    cell, config = load_network(folder)
    return ref, cell, config


def test_vae_decode_one_tile_matches_diffusers(vae):
    from video_aot.models.hunyuan_video_vae import decoded_frames

    ref, cell, config = vae
    z = np.random.default_rng(2).standard_normal((1, 4, 3, 2, 3)).astype(np.float32)
    ours = cell(ms.Tensor(z)).asnumpy()
    ref.use_framewise_decoding = False  # one tile: no temporal tiling (tiling is off by default)
    try:
        with torch.no_grad():
            expected = ref.decode(torch.tensor(z)).sample.numpy()
    finally:
        ref.use_framewise_decoding = True
    assert ours.shape == expected.shape == (1, 3, decoded_frames(3, config), 16, 24)
    err = rel_l2(ours, expected)
    print("vae decode rel L2", err)
    assert err <= 1e-4, err


def test_vae_encoder_matches_diffusers(vae):
    from video_aot.models.hunyuan_video_vae import HunyuanVideoVaeEncoder

    ref, cell, _ = vae
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 5, 16, 16)).astype(np.float32)
    ours = HunyuanVideoVaeEncoder(cell)(ms.Tensor(x)).asnumpy()
    with torch.no_grad():
        expected = ref.encode(torch.tensor(x)).latent_dist.parameters.numpy()
    assert ours.shape == expected.shape == (1, 8, 2, 2, 2)
    err = rel_l2(ours, expected)
    print("vae encoder rel L2", err)
    assert err <= 1e-4, err


def test_tiling_loops_match_diffusers(vae):
    """The runtime's temporal (framewise, diffusers' default) and spatial tiling loops (runtime/vae.py),
    around diffusers' own decoder as the tile function, against diffusers' decode."""
    from dataclasses import asdict

    from video_aot.models.hunyuan_video_vae import TilingConfig
    from video_aot.runtime.vae import framewise_decode, temporal_tile_starts

    ref, _, config = vae

    def decode_tile(tile):
        with torch.no_grad():
            return ref.decoder(ref.post_quant_conv(torch.tensor(tile))).numpy()

    rng = np.random.default_rng(4)
    z = rng.standard_normal((1, 4, 7, 2, 2)).astype(np.float32)  # 7 latent frames: tiles of 5, 4, 1
    assert [end - start for start, end in temporal_tile_starts(7, 16, 12, 4)] == [5, 4, 1]
    ours = framewise_decode(z, decode_tile, asdict(TilingConfig()), config.spatial_compression_ratio,
                            config.temporal_compression_ratio)
    with torch.no_grad():
        expected = ref.decode(torch.tensor(z)).sample.numpy()
    assert ours.shape == expected.shape == (1, 3, 25, 16, 16)
    assert rel_l2(ours, expected) <= 1e-6
    # spatial tiles of 4x4 latents every 2 (diffusers' pipeline test uses 96/64 pixels), framewise too
    tiling = TilingConfig(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=16,
                          tile_sample_stride_width=16)
    z = rng.standard_normal((1, 4, 5, 4, 5)).astype(np.float32)
    ours = framewise_decode(z, decode_tile, asdict(tiling), config.spatial_compression_ratio,
                            config.temporal_compression_ratio, use_tiling=True)
    ref.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=16,
                      tile_sample_stride_width=16)
    try:
        with torch.no_grad():
            expected = ref.decode(torch.tensor(z)).sample.numpy()
            untiled = decode_tile(z)
    finally:
        ref.disable_tiling()
    assert ours.shape == expected.shape == (1, 3, 17, 32, 40)
    assert rel_l2(untiled, expected) > 1e-3  # the tiles do change the result
    assert rel_l2(ours, expected) <= 1e-6
