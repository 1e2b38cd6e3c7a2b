"""Mochi-1 end to end: export a tiny MochiPipeline snapshot (diffusers' dummy components, weights
perturbed, pos_frequencies too), run the exported pipeline and compare its frames with diffusers'
MochiPipeline given the same latents; genmo's scheduler config (inverted linear-quadratic sigmas)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_suite import PipelineSuite, SuiteCase
from tiny import perturb

from video_aot.export.run import export_model
from video_aot.runtime import ShapeMismatch, load_pipeline

# diffusers tests/pipelines/mochi/test_mochi.py get_dummy_components
TRANSFORMER = dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
                   in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
                   activation_fn="swiglu", max_sequence_length=16)
VAE = dict(latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
           decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1))
# a small T5 in place of hf-internal-testing/tiny-random-t5 (no download): d_model = text_embed_dim
T5 = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
          relative_attention_max_distance=20, feed_forward_proj="gated-gelu")
# genmo/mochi-1-preview's scheduler (diffusers' dummy uses the class defaults, without invert_sigmas)
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, invert_sigmas=True, max_image_seq_len=4096, max_shift=1.15,
                 num_train_timesteps=1000, shift=1.0, shift_terminal=None, use_dynamic_shifting=False)
FRAMES, HEIGHT, WIDTH, MAX_LENGTH = 13, 16, 32, 16  # 3 latent frames of 2x4 (non-square), 13 decoded frames
PROMPT = "a cat on the beach at night"  # 8 of 16 tokens: a padded mask
COMMON = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=2, output_type="np",
              max_sequence_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The diffusers pipeline (force_zeros_for_empty_prompt=True, as genmo's original) and its snapshot."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from video_aot.export.tiny import t5_tokenizer

    torch.manual_seed(0)
    transformer = MochiTransformer3DModel(**TRANSFORMER)
    transformer.pos_frequencies.data.zero_()  # the dummy's zero frequencies, then perturbed like every weight
    transformer = perturb(transformer, 0, scale=0.1).eval()
    torch.manual_seed(1)
    vae = perturb(AutoencoderKLMochi(**VAE), 1, scale=0.05).eval()
    torch.manual_seed(2)
    text_encoder = perturb(T5EncoderModel(T5Config(**T5)).eval(), 2, scale=0.05)
    pipe = MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=text_encoder,
                         tokenizer=t5_tokenizer(model_max_length=MAX_LENGTH), transformer=transformer,
                         force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("mochi-snapshot")
    pipe.save_pretrained(folder)
    return pipe, folder


@pytest.fixture(scope="module")
def exported(reference, tmp_path_factory):
    _, folder = reference
    return export_model(str(folder), str(tmp_path_factory.mktemp("mochi-export") / "e"), frames=FRAMES, height=HEIGHT,
                        width=WIDTH, max_sequence_length=MAX_LENGTH, log=lambda *a: None, onnx=True)


@pytest.fixture(scope="module")
def ours(exported):
    return load_pipeline(exported, backend="mindspore")


def _latents(seed=3):
    return np.random.default_rng(seed).standard_normal((1, 12, 3, HEIGHT // 8, WIDTH // 8)).astype(np.float32)


def _compare(reference, ours, force_zeros=True, **kwargs):
    pipe, _ = reference
    latents = _latents()
    pipe.register_to_config(force_zeros_for_empty_prompt=force_zeros)
    ours.force_zeros_for_empty_prompt = force_zeros
    try:
        expected = np.asarray(pipe(latents=torch.tensor(latents), **COMMON, **kwargs).frames)
    finally:
        pipe.register_to_config(force_zeros_for_empty_prompt=True)
    got = ours(latents=latents, **COMMON, **kwargs).frames
    assert got.shape == expected.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
    return float(np.abs(got - expected).max()), got


@pytest.mark.parametrize("case", [
    dict(negative_prompt="", guidance_scale=4.5),  # zero ids and an all-zero mask for the negative half
    dict(negative_prompt="blue car at night", guidance_scale=4.5),
    dict(negative_prompt="", guidance_scale=4.5, force_zeros=False),  # "" tokenized: "</s>" then padding
    dict(guidance_scale=1.0),  # no CFG: diffusers runs the prompt alone; the 2B graph takes it twice
], ids=["empty-negative-zeroed", "negative", "empty-negative-tokenized", "no-cfg"])
def test_matches_diffusers(reference, ours, case):
    err, got = _compare(reference, ours, prompt=PROMPT, **case)
    print("mochi", case, "max abs", err)
    assert err <= 1e-3, err
    assert got.std() > 1e-3  # a real video, not a constant


def test_callback_replaces_latents_and_prompt_embeds_like_diffusers(reference, ours):
    """callback_on_step_end sees diffusers' tensors ([negative, prompt] embeddings after CFG) and may
    replace the latents and the prompt embeddings."""
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append(sorted(kwargs))
        out = dict(kwargs)
        out["prompt_embeds"] = kwargs["prompt_embeds"] * 0.5
        if i == 0:
            out["latents"] = kwargs["latents"] * 0.9
        return out

    err, _ = _compare(reference, ours, prompt=PROMPT, negative_prompt="cat", guidance_scale=3.0,
                      callback_on_step_end=callback,
                      callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds"])
    assert seen[0] == ["latents", "negative_prompt_embeds", "prompt_embeds"]
    print("mochi callback max abs", err)
    assert err <= 1e-3, err


def test_given_embeddings_and_latent_output(reference, ours):
    """prompt_embeds / prompt_attention_mask given directly; output_type='latent' returns the
    sampler's latents [B, C, F, h, w] (not de-normalised)."""
    pipe, _ = reference
    rng = np.random.default_rng(7)
    embeds = rng.standard_normal((2, 1, MAX_LENGTH, 32)).astype(np.float32)
    masks = np.zeros((2, 1, MAX_LENGTH), np.int64)
    masks[0, :, :5] = 1
    masks[1, :, :9] = 1
    kwargs = dict(COMMON, output_type="latent", guidance_scale=4.5)
    expected = pipe(prompt_embeds=torch.tensor(embeds[0]), prompt_attention_mask=torch.tensor(masks[0]),
                    negative_prompt_embeds=torch.tensor(embeds[1]),
                    negative_prompt_attention_mask=torch.tensor(masks[1]), latents=torch.tensor(_latents()),
                    **kwargs).frames.numpy()
    got = ours(prompt_embeds=embeds[0], prompt_attention_mask=masks[0], negative_prompt_embeds=embeds[1],
               negative_prompt_attention_mask=masks[1], latents=_latents(), **kwargs).frames
    assert got.shape == expected.shape == (1, 12, 3, HEIGHT // 8, WIDTH // 8)
    err = float(np.abs(got - expected).max())
    print("mochi latents max abs", err)
    assert err <= 1e-4, err


def test_other_shapes_are_refused_listing_the_exported_ones(ours):
    kwargs = dict(prompt=PROMPT, num_inference_steps=2, max_sequence_length=MAX_LENGTH)
    with pytest.raises(ShapeMismatch, match=r"built for 3 latent frames \(num_frames 13 to 18\).*num_frames=13, "
                                            r"height=16, width=32"):
        ours(num_frames=19, **kwargs)
    ours.check_frames(18)  # 18 frames -> 3 latent frames: the same static shape, as diffusers computes it
    with pytest.raises(ShapeMismatch, match="height=16, width=32.*asks for height=32"):
        ours(height=32, **kwargs)
    with pytest.raises(ShapeMismatch, match="max_sequence_length=256"):
        ours(prompt=PROMPT, num_inference_steps=2, max_sequence_length=256)
    with pytest.raises(ShapeMismatch, match="asks for batch=2"):
        ours(num_videos_per_prompt=2, **kwargs)
    with pytest.raises(ShapeMismatch, match="unexpected latents shape"):
        ours(latents=np.zeros((1, 12, 2, 2, 4), np.float32), **kwargs)
    with pytest.raises(ValueError, match="Only one of `timesteps` or `sigmas`"):
        ours(timesteps=[900, 500], **kwargs)
    with pytest.raises(ValueError, match="at least 2 steps"):
        ours(**{**kwargs, "num_inference_steps": 1})
    with pytest.raises(ValueError, match="attention_kwargs"):
        ours(attention_kwargs={"scale": 0.5}, **kwargs)
    with pytest.raises(ValueError, match="does not support custom sigmas"):
        ours(scheduler="euler", **kwargs)


def test_export_refuses_sizes_the_transformer_cannot_patchify(reference, tmp_path):
    _, folder = reference
    with pytest.raises(ValueError, match="multiples of 16"):
        export_model(str(folder), str(tmp_path / "e"), frames=FRAMES, height=24, width=32, log=lambda *a: None,
                     dry_run=True)


def test_validate_request_and_generate_a_gif(exported, ours, tmp_path):
    from video_aot.runtime.cli import main
    from video_aot.runtime.request import RequestInvalid

    request = ours.validate_request(ours.example_request())
    assert request["num_inference_steps"] == 2
    schema = ours.request_schema()
    assert schema["num_frames"]["enum"] == [FRAMES] and schema["max_sequence_length"]["enum"] == [MAX_LENGTH]
    assert schema["scheduler"]["enum"] == ["flow_euler"]
    with pytest.raises(RequestInvalid, match="num_inference_steps"):
        ours.validate_request({**ours.example_request(), "num_inference_steps": 1})
    with pytest.raises(RequestInvalid, match="height"):
        ours.validate_request({**ours.example_request(), "height": 32})
    common = ["--prompt", PROMPT, "--negative-prompt", "", "--steps", "2", "--seed", "1", "--backend", "mindspore"]
    assert main([str(exported), "--out", str(tmp_path / "v.gif"), *common]) == 0  # (the suite writes an mp4)
    assert (tmp_path / "v.gif").stat().st_size > 0


def test_the_compared_switches_change_the_video(ours):
    """The parity cases above can fail: zeroing the empty negative prompt and the guidance scale
    each change the frames well beyond the tolerance."""
    kwargs = dict(COMMON, prompt=PROMPT, negative_prompt="", latents=_latents())
    ours.force_zeros_for_empty_prompt = True
    zeroed = ours(guidance_scale=4.5, **kwargs).frames
    ours.force_zeros_for_empty_prompt = False
    try:
        tokenized = ours(guidance_scale=4.5, **kwargs).frames
    finally:
        ours.force_zeros_for_empty_prompt = True
    unguided = ours(guidance_scale=1.0, **kwargs).frames
    assert np.abs(zeroed - tokenized).max() > 1e-2
    assert np.abs(zeroed - unguided).max() > 1e-2


def test_batch_of_two_matches_diffusers(reference, tmp_path):
    """A batch-2 export: two prompts (diffusers zeroes the whole batch when the LAST prompt is "" under
    force_zeros_for_empty_prompt), and one prompt with num_videos_per_prompt=2."""
    pipe, folder = reference
    out = export_model(str(folder), str(tmp_path / "e"), frames=FRAMES, height=HEIGHT, width=WIDTH, batch=2,
                       max_sequence_length=MAX_LENGTH, log=lambda *a: None, onnx=False)
    ours = load_pipeline(out, backend="mindspore")
    latents = np.random.default_rng(5).standard_normal((2, 12, 3, HEIGHT // 8, WIDTH // 8)).astype(np.float32)
    for case in (dict(prompt=[PROMPT, "red car city"], negative_prompt=["dog", ""]),
                 dict(prompt="a dog at night", negative_prompt="blue sky", num_videos_per_prompt=2)):
        expected = np.asarray(pipe(latents=torch.tensor(latents), **COMMON, **case).frames)
        got = ours(latents=latents, **COMMON, **case).frames
        err = float(np.abs(got - expected).max())
        print("mochi batch 2", case, err)
        assert got.shape == expected.shape == (2, FRAMES, HEIGHT, WIDTH, 3) and err <= 1e-3, err


# ----------------------------------------------------------------------------- the shared pipeline suite
@pytest.fixture(scope="module")
def case(reference, exported, ours):
    pipe, _ = reference
    inputs = dict(prompt=PROMPT, negative_prompt="blue car at night", guidance_scale=4.5, num_inference_steps=2)

    def diffusers_frames(inputs, latents):
        kwargs = {**COMMON, **inputs}
        return pipe(**kwargs, latents=torch.tensor(latents)).frames

    return SuiteCase(pipe=ours, export_dir=str(exported), inputs=inputs, reference=diffusers_frames,
                     cli_args=["--prompt", PROMPT, "--steps", "2", "--seed", "0"],
                     callback_inputs=("latents", "prompt_embeds"))


class TestSuite(PipelineSuite):
    """latents= parity with a negative prompt, generate-video, an unexported frame count, requests."""
