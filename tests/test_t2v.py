"""Text-to-video and video-to-video (UNet3D family): exported graphs and the runtime pipelines
against diffusers' TextToVideoSDPipeline / VideoToVideoSDPipeline.

A tiny snapshot (with a CLIP BPE tokenizer written by the test) is exported twice per session:
"a" (3 frames, 16x24 non-square, VAE chunk 2 so a tail graph exists) and "b" (batch of 2
prompts, 2 frames, 16x16). Every comparison reuses those exports. "a" also holds the ONNX artifacts
(export-model --onnx), run end to end by the onnxruntime backend.

Noise: diffusers draws torch noise; the runtime draws numpy noise. Where diffusers draws noise
itself (DDIM eta > 0, the VAE posterior sample and the video-to-video noise) the tests swap
diffusers' ``randn_tensor`` for draws from a numpy generator seeded like the runtime's, in the
same order, so the two pipelines see identical noise."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from pipeline_suite import PipelineSuite, SuiteCase
from tiny import rel_l2
from tiny_t2v import t2v_pipeline

from video_aot.export.run import export_model
from video_aot.models.loading import LoadError
from video_aot.runtime import ShapeMismatch, load_pipeline

MAX_ABS = 1e-3  # on [0, 1] frames
SHAPES = {
    # name: (frames, height, width, decode_chunk_size, batch)
    "a": (3, 16, 24, 2, 1),
    "b": (2, 16, 16, None, 2),
}
DIFFUSERS_LOGGER = "diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_synth"


@pytest.fixture(scope="session")
def snapshot(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2v-snapshot")
    pipe = t2v_pipeline(folder)
    return folder, pipe


@pytest.fixture(scope="session")
def exports(snapshot, tmp_path_factory):
    folder, _ = snapshot
    root = tmp_path_factory.mktemp("t2v-exports")
    return {
        name: export_model(str(folder), str(root / name), frames=frames, height=height, width=width, batch=batch,
                           decode_chunk_size=chunk, log=lambda *a: None, onnx=name == "a")
        for name, (frames, height, width, chunk, batch) in SHAPES.items()
    }


@pytest.fixture(scope="session")
def pipelines(exports):
    return {name: load_pipeline(path, backend="mindspore") for name, path in exports.items()}


@pytest.fixture(scope="session")
def v2v(exports):
    return load_pipeline(exports["a"], backend="mindspore", pipeline="video2video")


def _latents(name, seed=0):
    frames, height, width, _, batch = SHAPES[name]
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 4, frames, height // 2, width // 2)).astype(np.float32)


def _scheduled(ref, scheduler):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    cls = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}[scheduler]
    ref.scheduler = cls.from_config(ref.scheduler.config)
    return ref


def _final_layer_norm(text_encoder):
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def _clip_skip_embeds(ref, prompt, clip_skip):
    """diffusers' encode_prompt for clip_skip >= 1: final_layer_norm(hidden_states[-(clip_skip + 1)])."""
    ids = ref.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        states = ref.text_encoder(ids, output_hidden_states=True).hidden_states
        return _final_layer_norm(ref.text_encoder)(states[-(clip_skip + 1)])


def _numpy_noise(monkeypatch, seed):
    """diffusers' randn_tensor -> float32 standard normals from np.random.default_rng(seed)."""
    import diffusers.models.autoencoders.vae as vae_mod
    import diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_synth_img2img as v2v_mod
    import diffusers.schedulers.scheduling_ddim as ddim_mod

    rng = np.random.default_rng(seed)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)).to(dtype or torch.float32)

    for mod in (vae_mod, v2v_mod, ddim_mod):
        monkeypatch.setattr(mod, "randn_tensor", randn_tensor)


# ----------------------------------------------------------------------------- text-to-video parity
CASES = {
    # id: (export, scheduler, steps, guidance, prompt, negative_prompt, clip_skip)
    "ddim-negative": ("a", "ddim", 3, 7.5, "a cat riding a horse on the beach", "blurry low quality", None),
    "dpm++-no-negative": ("a", "dpm++", 4, 9.0, "an astronaut surfing waves at night", None, None),
    "batch2-square-clip-skip": ("b", "ddim", 2, 6.0, ["a red horse", "a blue dog in the city"],
                                ["ugly", "watermark text"], 1),
    "guidance-off": ("a", "ddim", 2, 1.0, "a small river in the forest", "blurry", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_text_to_video_matches_diffusers(snapshot, pipelines, case):
    name, scheduler, steps, guidance, prompt, negative, clip_skip = CASES[case]
    _, ref = snapshot
    frames, height, width, _, _ = SHAPES[name]
    latents = _latents(name)
    ours = pipelines[name](prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                           latents=latents, clip_skip=clip_skip, scheduler=scheduler).frames
    text = {"prompt": prompt, "clip_skip": clip_skip}
    if clip_skip is not None:
        # diffusers 0.42's clip_skip path reads text_encoder.text_model, which transformers 5's
        # CLIPTextModel no longer has; give it the same embeddings computed with transformers
        text = {"prompt_embeds": _clip_skip_embeds(ref, prompt, clip_skip)}
    expected = _scheduled(ref, scheduler)(
        **text, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance, height=height,
        width=width, num_frames=frames, latents=torch.from_numpy(latents)).frames
    assert ours.shape == expected.shape == (SHAPES[name][4], frames, height, width, 3)
    assert ours.dtype == np.float32
    err = float(np.abs(ours - expected).max())
    print(f"t2v {case}: max abs {err:.2e}, rel L2 {rel_l2(ours, expected):.2e}")
    assert err <= MAX_ABS


def test_ddim_eta_noise_matches_diffusers(snapshot, pipelines, monkeypatch):
    _, ref = snapshot
    frames, height, width, _, _ = SHAPES["a"]
    latents = _latents("a", seed=3)
    ours = pipelines["a"]("a dog running", num_inference_steps=3, guidance_scale=5.0, eta=0.7, latents=latents,
                          seed=11, scheduler="ddim").frames
    _numpy_noise(monkeypatch, 11)
    expected = _scheduled(ref, "ddim")("a dog running", num_inference_steps=3, guidance_scale=5.0, eta=0.7,
                                       height=height, width=width, num_frames=frames,
                                       latents=torch.from_numpy(latents)).frames
    err = float(np.abs(ours - expected).max())
    print(f"t2v ddim eta=0.7: max abs {err:.2e}")
    assert err <= MAX_ABS


def test_text_encoder_graph_serves_every_clip_skip(snapshot, pipelines):
    _, ref = snapshot
    pipe = pipelines["a"]
    ids = ref.tokenizer(["a cat on the sea"], padding="max_length", max_length=77, truncation=True,
                        return_tensors="np").input_ids.astype(np.int32)
    graph = pipe.graphs["text_encoder"](ids)[0]  # [1, L+1, 77, D]
    with torch.no_grad():
        out = ref.text_encoder(torch.from_numpy(ids.astype(np.int64)), output_hidden_states=True)
        layers = len(out.hidden_states) - 1
        for k in range(layers + 1):
            expected = _final_layer_norm(ref.text_encoder)(out.hidden_states[-(k + 1)]).numpy()
            assert rel_l2(graph[:, k], expected) < 1e-4, k
        assert rel_l2(graph[:, 0], out.last_hidden_state.numpy()) < 1e-4


def test_long_prompt_is_truncated_like_diffusers(snapshot, pipelines, caplog):
    _, ref = snapshot
    frames, height, width, _, _ = SHAPES["a"]
    prompt = " ".join(["a big old horse riding in the city at night"] * 12)
    assert len(ref.tokenizer(prompt).input_ids) > 77
    latents = _latents("a", seed=5)

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    diffusers_logger = logging.getLogger(DIFFUSERS_LOGGER)
    diffusers_logger.addHandler(handler)
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()  # whatever another test left it at
    try:
        expected = ref(prompt, num_inference_steps=1, guidance_scale=3.0, height=height, width=width,
                       num_frames=frames, latents=torch.from_numpy(latents)).frames
    finally:
        diffusers_logger.removeHandler(handler)
        diffusers_logging.set_verbosity(verbosity)
    with caplog.at_level(logging.WARNING, logger="video_aot.runtime.t2v"):
        ours = pipelines["a"](prompt, num_inference_steps=1, guidance_scale=3.0, latents=latents,
                              scheduler="ddim").frames
    ours_msgs = [r.getMessage() for r in caplog.records
                 if r.name == "video_aot.runtime.t2v" and "truncated" in r.getMessage()]
    theirs = [r.getMessage() for r in records if "truncated" in r.getMessage()]
    assert theirs and ours_msgs == theirs, (ours_msgs, theirs)
    assert float(np.abs(ours - expected).max()) <= MAX_ABS


# ----------------------------------------------------------------------------- video-to-video parity
@pytest.mark.parametrize("strength,scheduler,negative", [(1.0, "ddim", None), (0.6, "ddim", "blurry"),
                                                         (0.5, "dpm++", None)])
def test_video_to_video_matches_diffusers(snapshot, v2v, monkeypatch, strength, scheduler, negative):
    from diffusers import VideoToVideoSDPipeline

    _, ref = snapshot
    frames, height, width, _, _ = SHAPES["a"]
    video = np.random.default_rng(7).random((frames, height, width, 3)).astype(np.float32)
    ours = v2v("a horse running on the beach", video=video, strength=strength, num_inference_steps=4,
               guidance_scale=8.0, negative_prompt=negative, seed=21, scheduler=scheduler).frames
    _numpy_noise(monkeypatch, 21)
    ref_v2v = VideoToVideoSDPipeline(**ref.components)
    ref_v2v.set_progress_bar_config(disable=True)
    expected = _scheduled(ref_v2v, scheduler)("a horse running on the beach", video=video, strength=strength,
                                              num_inference_steps=4, guidance_scale=8.0,
                                              negative_prompt=negative).frames
    assert ours.shape == expected.shape == (1, frames, height, width, 3)
    err = float(np.abs(ours - expected).max())
    print(f"v2v strength={strength} {scheduler}: max abs {err:.2e}")
    assert err <= MAX_ABS


# ----------------------------------------------------------------------------- export folder, runtime
def test_export_is_self_contained_and_serves_both_pipelines(exports, pipelines, v2v):
    manifest = json.loads((exports["a"] / "manifest.json").read_text())
    assert manifest["family"] == "t2v" and manifest["pipeline"] == "TextToVideoSDPipeline"
    assert "tokenizer/tokenizer_config.json" in manifest["files"]
    assert "tokenizer/tokenizer.json" in manifest["files"] or "tokenizer/vocab.json" in manifest["files"]
    assert set(manifest["graphs"]) == {"text_encoder", "unet", "vae_decoder", "vae_decoder_tail", "vae_encoder",
                                       "vae_encoder_tail"}
    assert manifest["scheduler"]["_class_name"] == "DDIMScheduler"
    assert type(pipelines["a"]).__name__ == "TextToVideoSDPipeline"
    assert type(v2v).__name__ == "VideoToVideoSDPipeline"
    for stage in ("text_encode", "unet", "denoise_step", "vae_decode"):
        assert pipelines["a"].timings[stage], stage
    assert v2v.timings["vae_encode"]


def test_output_types_seed_and_prompt_embeds(pipelines):
    pipe = pipelines["a"]
    uint8 = pipe("a cat", num_inference_steps=1, seed=4, output_type="uint8").frames
    again = pipe("a cat", num_inference_steps=1, seed=4, output_type="np").frames
    assert uint8.dtype == np.uint8 and uint8.shape == (1, 3, 16, 24, 3)
    assert np.array_equal(uint8, (again * 255).round().astype(np.uint8))
    pil = pipe("a cat", num_inference_steps=1, seed=4, output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 3 and pil[0][0].size == (24, 16)
    # prompt_embeds instead of a prompt give the same video
    embeds, negative = pipe.encode_prompt("a cat", True)
    same = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=1, seed=4).frames
    assert np.abs(same - again).max() == 0


def test_bad_inputs_get_clear_errors(pipelines, v2v):
    pipe = pipelines["a"]
    with pytest.raises(ShapeMismatch, match="num_frames=3"):
        pipe("a cat", num_frames=5, num_inference_steps=1)
    with pytest.raises(ValueError, match="either `prompt` or `prompt_embeds`"):
        pipe(num_inference_steps=1)
    with pytest.raises(ShapeMismatch, match="batch=1"):
        pipe(["a cat", "a dog"], num_inference_steps=1)
    video = np.zeros((3, 16, 24, 3), np.float32)
    for strength in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"strength should be in \(0.0, 1.0\]"):
            v2v("a cat", video=video, strength=strength, num_inference_steps=2)
    with pytest.raises(ShapeMismatch, match="5 frames but this export was built for num_frames=3"):
        v2v("a cat", video=np.zeros((5, 16, 24, 3), np.float32), num_inference_steps=2)
    with pytest.raises(ShapeMismatch, match="does not resize"):
        v2v("a cat", video=np.zeros((3, 16, 16, 3), np.float32), num_inference_steps=2)
    with pytest.raises(ValueError, match="does not take latents"):
        v2v("a cat", video=video, latents=np.zeros((1, 4, 3, 8, 12), np.float32))


def test_export_without_tokenizer(snapshot, exports, tmp_path):
    folder, _ = snapshot
    # a snapshot with weights but no tokenizer folder: refused before anything is traced
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(folder, broken, ignore=shutil.ignore_patterns("_tokenizer_src"))
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(LoadError, match="no usable tokenizer/ folder"):
        export_model(str(broken), str(tmp_path / "out"), frames=3, height=16, width=24, log=lambda *a: None, onnx=False)
    # an export without a tokenizer (random weights, say) asks for prompt_embeds
    pipe = load_pipeline(exports["a"], backend="mindspore")
    pipe.manifest["tokenizer"] = None
    with pytest.raises(ValueError, match="has no tokenizer.*prompt_embeds"):
        pipe("a cat", num_inference_steps=1)


def test_generate_video_cli_text_and_video(exports, tmp_path):
    from video_aot.runtime.cli import main
    from video_aot.runtime.video_io import read_video, write_video

    out = tmp_path / "t2v.mp4"
    assert main([str(exports["a"]), "--prompt", "a cat riding a horse", "--negative-prompt", "blurry",
                 "--steps", "2", "--seed", "1", "--out", str(out), "--backend", "mindspore"]) == 0
    frames, _ = read_video(out)
    assert frames.shape == (3, 16, 24, 3)
    out2 = tmp_path / "v2v.mp4"
    assert main([str(exports["a"]), "--prompt", "a dog", "--video", str(out), "--strength", "0.6",
                 "--steps", "3", "--seed", "2", "--out", str(out2), "--backend", "mindspore"]) == 0
    assert read_video(out2)[0].shape == (3, 16, 24, 3)
    five = tmp_path / "five.mp4"
    write_video(five, np.zeros((5, 16, 24, 3), np.uint8), fps=8)
    assert main([str(exports["a"]), "--prompt", "a dog", "--video", str(five), "--steps", "2",
                 "--out", str(tmp_path / "bad.mp4"), "--backend", "mindspore"]) == 2


# ----------------------------------------------------------------------------- the shared pipeline suite
@pytest.fixture(scope="module")
def case(snapshot, exports, pipelines):
    _, ref = snapshot
    frames, height, width, _, _ = SHAPES["a"]
    inputs = dict(prompt="a cat riding a horse", negative_prompt="blurry", num_inference_steps=2,
                  guidance_scale=7.5, scheduler="ddim")

    def reference(inputs, latents):
        kwargs = {k: v for k, v in inputs.items() if k != "scheduler"}
        return _scheduled(ref, "ddim")(**kwargs, height=height, width=width, num_frames=frames,
                                       latents=torch.from_numpy(latents)).frames

    return SuiteCase(pipe=pipelines["a"], export_dir=str(exports["a"]), inputs=inputs, reference=reference,
                     cli_args=["--prompt", "a cat", "--steps", "1", "--seed", "0"],
                     callback_inputs=None)  # diffusers' older callback(step, t, latents)


class TestSuite(PipelineSuite):
    pass
