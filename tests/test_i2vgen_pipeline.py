"""I2VGen-XL end to end: a tiny diffusers I2VGenXLPipeline (diffusers' own dummy components from
tests/pipelines/i2vgen_xl/test_i2vgenxl.py, weights perturbed, eval mode; a locally generated CLIP
tokenizer) is saved, exported twice and run through the exported graphs, against diffusers with the
same latents= and the same VAE-posterior / DDIM noise (diffusers' randn_tensor is swapped for draws
from a numpy generator seeded like the runtime's, in the same order).

Exports (the dummy VAE has one level, so latents are the image size):
  "a": 2 frames at 24x40 (HxW, non-square): the UNet's context pool averages uneven bins on the width
       (40 -> 32) and repeats rows on the height (24 -> 32); decode_chunk_size 1 (diffusers' default).
  "b": batch 2, 3 frames at 32x32: the pool is the identity; decode chunk 4 over 6 frames, so a tail graph
       decodes the last 2. Run with two prompts and two images, and with one prompt and
       num_videos_per_prompt=2 (diffusers repeats the prompt and image embeddings per prompt but tiles the
       image latents).

diffusers 0.42's clip_skip path reads ``text_encoder.text_model.final_layer_norm``, which transformers
5's CLIPTextModel no longer has; the reference gets that attribute pointing at the same layer norm, so
diffusers' own encode_prompt runs with its default clip_skip=1."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline_suite import PipelineSuite, SuiteCase
from tiny import perturb, rel_l2

from video_aot.export.run import export_model
from video_aot.runtime import ShapeMismatch, load_pipeline

MAX_ABS = 1e-3  # on [0, 1] frames
SHAPES = {
    # name: (frames, height, width, decode_chunk_size, batch)
    "a": (2, 24, 40, None, 1),
    "b": (3, 32, 32, 4, 2),
}
PROMPT, NEGATIVE = "a red fox running in the snow", "blurry low quality"


def _reference(folder):
    """diffusers' get_dummy_components for I2VGen-XL, perturbed, with a generated tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline
    from diffusers.models.unets import I2VGenXLUNet
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    from video_aot.export.tiny import write_clip_tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder / "_tokenizer_src")))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    torch.manual_seed(0)
    unet = I2VGenXLUNet(block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
                        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=4,
                        attention_head_dim=4, num_attention_heads=None, norm_num_groups=2)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D"], latent_channels=4, sample_size=32, norm_num_groups=2)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=4, intermediate_size=16, layer_norm_eps=1e-05, num_attention_heads=2, num_hidden_layers=2,
        vocab_size=len(tokenizer), hidden_act="gelu", projection_dim=32))
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=16, patch_size=1))
    for i, module in enumerate((unet, vae, text_encoder, image_encoder)):
        perturb(module, seed=i, scale=0.05).eval()
    pipe = I2VGenXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
                            feature_extractor=CLIPImageProcessor(crop_size=32, size=32), unet=unet,
                            scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder / "snapshot")
    # diffusers' clip_skip path (its default clip_skip=1) reads text_encoder.text_model.final_layer_norm
    object.__setattr__(text_encoder, "text_model", SimpleNamespace(final_layer_norm=text_encoder.final_layer_norm))
    return folder / "snapshot", pipe


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return _reference(tmp_path_factory.mktemp("i2vgen"))


@pytest.fixture(scope="module")
def exports(snapshot, tmp_path_factory):
    folder, _ = snapshot
    root = tmp_path_factory.mktemp("i2vgen-exports")
    return {name: export_model(str(folder), str(root / name), frames=frames, height=height, width=width,
                               decode_chunk_size=chunk, batch=batch, log=lambda *a: None, onnx=name == "a")
            for name, (frames, height, width, chunk, batch) in SHAPES.items()}


@pytest.fixture(scope="module")
def pipelines(exports):
    return {name: load_pipeline(path, backend="mindspore") for name, path in exports.items()}


def _image(seed=0, size=(52, 37)):
    """A (W, H) = 52x37 RGB image: neither the exported size nor its aspect, so the BOX resize and the
    centre crop do work."""
    from PIL import Image

    return Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _latents(name, seed=1):
    frames, height, width, _, batch = SHAPES[name]
    return np.random.default_rng(seed).standard_normal((batch, 4, frames, height, width)).astype(np.float32)


def _numpy_noise(monkeypatch, seed):
    """diffusers' randn_tensor (the VAE posterior sample, DDIM's eta noise) -> float32 standard normals
    from np.random.default_rng(seed), drawn in call order as the runtime draws them."""
    import diffusers.models.autoencoders.vae as vae_mod
    import diffusers.schedulers.scheduling_ddim as ddim_mod

    rng = np.random.default_rng(seed)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)).to(dtype or torch.float32)

    for mod in (vae_mod, ddim_mod):
        monkeypatch.setattr(mod, "randn_tensor", randn_tensor)


CASES = {
    # id: (export, prompts, images, negative_prompt, num_videos_per_prompt, steps, guidance, eta, target_fps, clip_skip)
    "non-square-negative": ("a", PROMPT, 0, NEGATIVE, 1, 2, 6.0, 0.0, 16, 1),
    "32x32-two-prompts-eta-tail-chunk": ("b", [PROMPT, "a blue sky over the sea"], [0, 1], [NEGATIVE, "ugly"], 1, 2,
                                         9.0, 0.6, 8, 1),
    "32x32-two-videos-per-prompt": ("b", [PROMPT], [2], None, 2, 2, 7.0, 0.0, 16, 1),
    "guidance-off-clip-skip-none": ("a", PROMPT, 0, None, 1, 1, 1.0, 0.0, 24, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_i2vgen_matches_diffusers(snapshot, pipelines, monkeypatch, case):
    name, prompt, seeds, negative, per_prompt, steps, guidance, eta, fps, clip_skip = CASES[case]
    _, ref = snapshot
    frames, height, width, chunk, batch = SHAPES[name]
    latents = _latents(name)
    image = [_image(s) for s in seeds] if isinstance(seeds, list) else _image(seeds)
    kwargs = dict(negative_prompt=negative, num_videos_per_prompt=per_prompt, num_inference_steps=steps,
                  guidance_scale=guidance, eta=eta, target_fps=fps, clip_skip=clip_skip, output_type="np")
    ours = pipelines[name](prompt, image, latents=latents, seed=7, **kwargs).frames
    _numpy_noise(monkeypatch, 7)
    expected = ref(prompt, image, height=height, width=width, num_frames=frames, latents=torch.from_numpy(latents),
                   decode_chunk_size=chunk or 1, **kwargs).frames
    assert ours.shape == expected.shape == (batch, frames, height, width, 3)
    err = float(np.abs(ours - expected).max())
    print(f"i2vgen {case}: max abs {err:.2e}, rel L2 {rel_l2(ours, expected):.2e}")
    assert err <= MAX_ABS


def test_image_preprocessing_matches_diffusers(snapshot, pipelines):
    """The CLIP input (crop to width x width, BILINEAR to the crop size, CLIP normalisation) and the VAE
    input (crop to width x height, 2x - 1), each against diffusers' own helpers and feature extractor."""
    from diffusers.pipelines.deprecated.i2vgen_xl.pipeline_i2vgen_xl import _center_crop_wide, _resize_bilinear

    from video_aot.runtime.i2vgen import clip_pixels, vae_pixels

    _, ref = snapshot
    pipe = pipelines["a"]
    image = _image(3, size=(61, 90))
    ours = clip_pixels([image], 40, pipe.manifest["feature_extractor"])
    cropped = _resize_bilinear(_center_crop_wide(image, (40, 40)), (32, 32))
    tensor = ref.video_processor.numpy_to_pt(ref.video_processor.pil_to_numpy(cropped))
    expected = ref.feature_extractor(images=tensor, do_normalize=True, do_center_crop=False, do_resize=False,
                                     do_rescale=False, return_tensors="pt").pixel_values.numpy()
    assert ours.shape == expected.shape == (1, 3, 32, 32)
    assert np.abs(ours - expected).max() < 1e-5
    expected = ref.video_processor.preprocess(_center_crop_wide(image, (40, 24))).numpy()
    assert np.array_equal(vae_pixels([image], 40, 24), expected)


def test_text_encoder_graph_serves_every_clip_skip(snapshot, pipelines):
    _, ref = snapshot
    ids = ref.tokenizer(["a cat on the sea"], padding="max_length", max_length=77, truncation=True,
                        return_tensors="np").input_ids.astype(np.int32)
    graph = pipelines["a"].graphs["text_encoder"](ids)[0]  # [1, L+1, 77, D]
    with torch.no_grad():
        out = ref.text_encoder(torch.from_numpy(ids.astype(np.int64)), output_hidden_states=True)
        for k in range(len(out.hidden_states)):
            expected = ref.text_encoder.final_layer_norm(out.hidden_states[-(k + 1)]).numpy()
            assert rel_l2(graph[:, k], expected) < 1e-4, k
    assert rel_l2(graph[:, 0], out.last_hidden_state.numpy()) < 1e-4


def test_refused_shapes_list_the_export(pipelines):
    pipe = pipelines["a"]
    with pytest.raises(ShapeMismatch, match="built for .*num_frames=2.*the request asks for num_frames=5"):
        pipe(PROMPT, _image(), num_frames=5, num_inference_steps=1)
    with pytest.raises(ShapeMismatch, match="height=32"):
        pipe(PROMPT, _image(), height=32, width=32, num_inference_steps=1)
    with pytest.raises(ShapeMismatch, match="unexpected latents shape"):
        pipe(PROMPT, _image(), latents=np.zeros((1, 4, 2, 8, 8), np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match="one image per prompt"):
        pipe([PROMPT, PROMPT], _image(), num_inference_steps=1)
    with pytest.raises(ValueError, match="`image` is required"):
        pipe(PROMPT, num_inference_steps=1)
    with pytest.raises(ValueError, match="cross_attention_kwargs"):
        pipe(PROMPT, _image(), cross_attention_kwargs={"scale": 0.5}, num_inference_steps=1)
    with pytest.raises(ShapeMismatch, match="batch=2.*the request asks for batch=1"):
        pipelines["b"](PROMPT, _image(), num_inference_steps=1)  # one prompt, one video per prompt


def test_export_refuses_bad_sizes(snapshot, tmp_path):
    folder, _ = snapshot
    with pytest.raises(ValueError, match="divisible by 8"):
        export_model(str(folder), str(tmp_path / "x"), frames=2, height=20, width=40, log=lambda *a: None,
                     dry_run=True)
    manifest = export_model(str(folder), str(tmp_path / "y"), frames=16, height=32, width=32, dry_run=True,
                            log=lambda *a: None)
    assert manifest["family"] == "i2vgen" and manifest["shapes"]["decode_chunk_size"] == 1
    assert "vae_decoder_tail" not in manifest["graphs"]


def test_request_validation_and_generate_video(exports, pipelines, tmp_path):
    from video_aot.runtime.cli import main

    pipe = pipelines["a"]
    schema = pipe.request_schema()
    assert schema["image"]["required"] and schema["prompt"]["required"]
    assert schema["num_frames"]["enum"] == [2] and schema["height"]["enum"] == [24]
    request = pipe.validate_request(pipe.example_request())
    assert request["num_inference_steps"] == 1 and request["image"].shape == (24, 40, 3)
    with pytest.raises(ValueError, match="target_fps"):
        pipe.validate_request({**pipe.example_request(), "target_fps": 500})

    _image(5).save(tmp_path / "in.png")
    common = ["--prompt", PROMPT, "--steps", "1", "--seed", "1", "--backend", "mindspore"]
    assert main([str(exports["a"]), "--out", str(tmp_path / "out.gif"), "--image", str(tmp_path / "in.png"),
                 "--negative-prompt", NEGATIVE, "--target-fps", "8", *common]) == 0
    assert (tmp_path / "out.gif").stat().st_size > 0


def test_manifest_declares_the_step_graph(exports):
    manifest = json.loads((exports["b"] / "manifest.json").read_text())
    unet = {t["name"]: t["shape"] for t in manifest["graphs"]["unet"]["inputs"]}
    assert unet == {"sample": [2, 4, 3, 32, 32], "timestep": [1], "fps": [1], "image_latents": [2, 4, 3, 32, 32],
                    "image_embeddings": [4, 1, 4], "encoder_hidden_states": [4, 77, 4], "guidance_scale": [1]}
    assert manifest["graphs"]["vae_decoder"]["inputs"][0]["shape"] == [4, 4, 32, 32]
    assert manifest["graphs"]["vae_decoder_tail"]["inputs"][0]["shape"] == [2, 4, 32, 32]
    assert manifest["graphs"]["vae_encoder"]["inputs"][0]["shape"] == [1, 3, 32, 32]  # one image per call


def test_preset_plans_the_full_size_graphs_and_its_scheduler_matches_diffusers():
    """The i2vgen-xl preset (real configs) at diffusers' defaults, 16 frames at 704x1280 (88x160 latents,
    so the context pool averages uneven bins), planned without building a network; its DDIM config
    (v-prediction, cosine betas rescaled to zero terminal SNR) gives diffusers' timesteps and steps."""
    from diffusers import DDIMScheduler

    from video_aot.runtime.schedulers import make_scheduler

    manifest = export_model("i2vgen-xl", "unused", frames=16, height=704, width=1280, random_weights=True,
                            dry_run=True, log=lambda *a: None)
    assert manifest["pipeline"] == "I2VGenXLPipeline" and manifest["family"] == "i2vgen"
    unet = {t["name"]: t["shape"] for t in manifest["graphs"]["unet"]["inputs"]}
    assert unet["sample"] == [1, 4, 16, 88, 160] and unet["encoder_hidden_states"] == [2, 77, 1024]
    assert unet["image_embeddings"] == [2, 1, 1024]
    assert manifest["graphs"]["text_encoder"]["outputs"][0]["shape"] == [1, 25, 77, 1024]  # 24 layers + embeddings
    assert manifest["graphs"]["image_encoder"]["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert manifest["shapes"]["decode_chunk_size"] == 1 and "vae_decoder_tail" not in manifest["graphs"]

    config = manifest["scheduler"]
    sched = make_scheduler(config)
    plan = sched.set_timesteps(50)
    ref = DDIMScheduler.from_config(config)
    ref.set_timesteps(50)
    assert np.array_equal(np.asarray(plan.timesteps), ref.timesteps.numpy())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    out = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    for i in (0, 25, 49):
        ours, _ = sched.step(plan, i, x, out, None)
        theirs = ref.step(torch.from_numpy(out), ref.timesteps[i], torch.from_numpy(x)).prev_sample.numpy()
        assert rel_l2(ours, theirs) < 1e-5, i


# ----------------------------------------------------------------------------- the shared pipeline suite
@pytest.fixture(scope="module")
def case(snapshot, exports, pipelines, tmp_path_factory):
    _, ref = snapshot
    frames, height, width, chunk, _ = SHAPES["a"]
    path = tmp_path_factory.mktemp("i2vgen-suite") / "in.png"
    _image(3).save(path)
    inputs = dict(prompt=PROMPT, image=_image(3), negative_prompt=NEGATIVE, num_inference_steps=2, guidance_scale=6.0,
                  seed=5)

    def diffusers_frames(inputs, latents):
        kwargs = {k: v for k, v in inputs.items() if k != "seed"}
        with pytest.MonkeyPatch.context() as patch:  # the same posterior-sample noise as ours (seed 5)
            _numpy_noise(patch, inputs["seed"])
            return ref(**kwargs, height=height, width=width, num_frames=frames, latents=torch.from_numpy(latents),
                       decode_chunk_size=chunk or 1, output_type="np").frames

    return SuiteCase(pipe=pipelines["a"], export_dir=str(exports["a"]), inputs=inputs, reference=diffusers_frames,
                     cli_args=["--prompt", PROMPT, "--image", str(path), "--steps", "1", "--seed", "0"],
                     callback_inputs=None)  # I2VGenXLPipeline takes no step callback


class TestSuite(PipelineSuite):
    """latents= parity (same posterior noise), generate-video, an unexported frame count, requests."""
