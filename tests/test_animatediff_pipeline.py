"""AnimateDiff: the exported graphs and the runtime pipelines (AnimateDiffPipeline,
AnimateDiffVideoToVideoPipeline, FreeInit) against diffusers.

Two tiny snapshots, built from diffusers' AnimateDiff test components (tests/tiny_animatediff.py;
weights perturbed, eval mode) and exported once each:
  "mid"    AnimateDiffPipeline.save_pretrained: unet/ is a saved UNetMotionModel, the adapter has a
           motion mid block (v1-5-2 style); 3 frames, 16x24 (non-square), VAE chunk 2 (a tail graph).
  "no-mid" unet/ is the SD UNet2DConditionModel next to motion_adapter/ (the presets' layout) and the
           adapter has no mid block (v1-5-3 style); 2 frames, 16x16.

Noise: diffusers draws torch noise, the runtime numpy noise. Where diffusers draws noise itself (the
VAE posterior sample, the video-to-video noise, FreeInit's fresh noise) the tests swap diffusers'
``randn_tensor`` for draws from a numpy generator seeded like the runtime's, in the same order."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pipeline_suite import PipelineSuite, SuiteCase
from tiny import rel_l2
from tiny_animatediff import animatediff_unet, motion_adapter
from tiny_t2v import clip_text, clip_tokenizer, vae, write_clip_tokenizer

from video_aot.export.run import export_model
from video_aot.runtime import ShapeMismatch, load_pipeline

MAX_ABS = 1e-3  # on [0, 1] frames
SHAPES = {
    # name: (frames, height, width, decode_chunk_size)
    "mid": (3, 16, 24, 2),
    "no-mid": (2, 16, 16, None),
}
# the snapshot's scheduler: SD 1.5's DDIM-style config (scaled_linear, leading spacing)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon", num_train_timesteps=1000)
# the AnimateDiff seed's DDIMScheduler.from_pretrained(..., **SEED_DDIM)
SEED_DDIM = dict(clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1)
PROMPT = "a panda playing a guitar on a boat"


def _build(folder, seed, mid_block):
    from diffusers import AnimateDiffPipeline, DDIMScheduler

    tok_dir = write_clip_tokenizer(folder / "_tokenizer_src")
    tokenizer = clip_tokenizer(tok_dir)
    unet = animatediff_unet(seed, layers_per_block=1)  # one layer per block: half the compile time
    adapter = motion_adapter(seed + 1, use_motion_mid_block=mid_block, motion_layers_per_block=1)
    pipe = AnimateDiffPipeline(
        vae=vae(seed + 2), text_encoder=clip_text(tokenizer, seed + 3, hidden_size=8, num_attention_heads=4),
        tokenizer=tokenizer, unet=unet, motion_adapter=adapter, scheduler=DDIMScheduler(**SD15_SCHEDULER),
        feature_extractor=None, image_encoder=None)
    pipe.save_pretrained(folder)
    # the scheduler as a user loads it (the saved config lists every field, so a class swap with
    # from_config keeps e.g. timestep_spacing="leading", as the export's scheduler_config.json does)
    pipe.scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    pipe.set_progress_bar_config(disable=True)
    return pipe, unet


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    mid = tmp_path_factory.mktemp("ad-mid")
    ref_mid, _ = _build(mid, 0, True)
    no_mid = tmp_path_factory.mktemp("ad-no-mid")
    ref_no_mid, unet2d = _build(no_mid, 10, False)
    shutil.rmtree(no_mid / "unet")
    unet2d.save_pretrained(no_mid / "unet")  # layout (b): the SD UNet + motion_adapter/
    return {"mid": (mid, ref_mid), "no-mid": (no_mid, ref_no_mid)}


@pytest.fixture(scope="module")
def exports(snapshots, tmp_path_factory):
    root = tmp_path_factory.mktemp("ad-exports")
    return {
        name: export_model(str(snapshots[name][0]), str(root / name), frames=frames, height=height, width=width,
                           decode_chunk_size=chunk, log=lambda *a: None, onnx=name == "mid")  # the suite's case
        for name, (frames, height, width, chunk) in SHAPES.items()
    }


@pytest.fixture(scope="module")
def pipes(exports):
    return {name: load_pipeline(path, backend="mindspore") for name, path in exports.items()}


@pytest.fixture(scope="module")
def v2v(exports):
    return load_pipeline(exports["mid"], backend="mindspore", pipeline="video2video")


def _latents(name, seed=0):
    frames, height, width, _ = SHAPES[name]
    return np.random.default_rng(seed).standard_normal((1, 4, frames, height // 2, width // 2)).astype(np.float32)


def _scheduler(ref, scheduler):
    from diffusers import (
        DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
        LCMScheduler,
    )

    if scheduler == "seed-ddim":
        return DDIMScheduler.from_config(ref.scheduler.config, **SEED_DDIM)
    cls = {"dpm++": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
           "euler_a": EulerAncestralDiscreteScheduler, "lcm": LCMScheduler}[scheduler]
    return cls.from_config(ref.scheduler.config)


def _ours_scheduler(scheduler):
    if scheduler == "seed-ddim":
        return {"scheduler": "ddim", "scheduler_overrides": dict(SEED_DDIM)}
    return {"scheduler": scheduler}


def _numpy_noise(monkeypatch, seed):
    """diffusers' randn_tensor -> float32 standard normals from np.random.default_rng(seed)."""
    import diffusers.models.autoencoders.vae as vae_mod
    import diffusers.pipelines.animatediff.pipeline_animatediff_video2video as v2v_mod
    import diffusers.pipelines.free_init_utils as free_init_mod
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_mod
    import diffusers.schedulers.scheduling_lcm as lcm_mod

    rng = np.random.default_rng(seed)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)).to(dtype or torch.float32)

    for mod in (vae_mod, v2v_mod, free_init_mod, euler_a_mod, lcm_mod):
        monkeypatch.setattr(mod, "randn_tensor", randn_tensor)


def _reference(ref, scheduler):
    from diffusers import AnimateDiffPipeline

    pipe = AnimateDiffPipeline(**{**ref.components, "scheduler": _scheduler(ref, scheduler)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_frames_match(label, ours, expected):
    assert ours.shape == expected.shape
    err = float(np.abs(ours - expected).max())
    print(f"{label}: max abs {err:.2e}, rel L2 {rel_l2(ours, expected):.2e}")
    assert err <= MAX_ABS


# ----------------------------------------------------------------------------- text-to-video parity
CASES = {
    # id: (export, scheduler, steps, guidance, negative_prompt)
    "seed-ddim-negative": ("mid", "seed-ddim", 3, 7.5, "blurry, low quality"),
    "dpm++": ("mid", "dpm++", 3, 6.0, None),
    "euler": ("mid", "euler", 2, 7.5, "watermark"),
    "no-mid-block-seed-ddim": ("no-mid", "seed-ddim", 2, 7.5, None),
    # stochastic samplers: their step noise ([B, C, F, h, w], AnimateDiff steps on that layout) is injected
    "euler_a": ("no-mid", "euler_a", 2, 7.5, "blurry"),
    "lcm": ("no-mid", "lcm", 2, 1.0, None),  # guidance off: the graph's pair with scale 1
}


@pytest.mark.parametrize("case", list(CASES))
def test_text_to_video_matches_diffusers(snapshots, pipes, monkeypatch, case):
    name, scheduler, steps, guidance, negative = CASES[case]
    frames, height, width, _ = SHAPES[name]
    latents = _latents(name)
    ours = pipes[name](PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                       latents=latents, seed=31, output_type="np", **_ours_scheduler(scheduler)).frames
    _numpy_noise(monkeypatch, 31)
    ref = _reference(snapshots[name][1], scheduler)
    expected = ref(PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                   num_frames=frames, height=height, width=width, latents=torch.from_numpy(latents),
                   output_type="np").frames
    assert ours.shape == (1, frames, height, width, 3)
    assert_frames_match(f"animatediff t2v {case}", ours, expected)


# ----------------------------------------------------------------------------- video-to-video parity
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_video_to_video_matches_diffusers(snapshots, v2v, monkeypatch, strength):
    from diffusers import AnimateDiffVideoToVideoPipeline

    frames, height, width, _ = SHAPES["mid"]
    _, ref = snapshots["mid"]
    video = np.random.default_rng(7).random((frames, height, width, 3)).astype(np.float32)
    ours = v2v(video=video, prompt=PROMPT, strength=strength, num_inference_steps=4, guidance_scale=7.5,
               negative_prompt="blurry", seed=21, output_type="np", **_ours_scheduler("seed-ddim")).frames
    _numpy_noise(monkeypatch, 21)
    pipe = AnimateDiffVideoToVideoPipeline(**{**ref.components, "scheduler": _scheduler(ref, "seed-ddim")})
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(video=[video[i] for i in range(frames)], prompt=PROMPT, strength=strength, num_inference_steps=4,
                    guidance_scale=7.5, negative_prompt="blurry", height=height, width=width,
                    output_type="np").frames
    assert_frames_match(f"animatediff v2v strength={strength}", ours, expected)


def test_video_to_video_latents_and_enforce_inference_steps(snapshots, v2v, monkeypatch):
    from diffusers import AnimateDiffVideoToVideoPipeline

    frames, height, width, _ = SHAPES["mid"]
    _, ref = snapshots["mid"]
    pipe = AnimateDiffVideoToVideoPipeline(**{**ref.components, "scheduler": _scheduler(ref, "seed-ddim")})
    pipe.set_progress_bar_config(disable=True)
    latents = _latents("mid", seed=9)
    for enforce in (False, True):  # latents= used as given, or noised to the first of the last 2 of 4 steps
        ours = v2v(prompt=PROMPT, latents=latents, strength=0.5, num_inference_steps=2, guidance_scale=7.5,
                   enforce_inference_steps=enforce, seed=8, output_type="np", **_ours_scheduler("seed-ddim")).frames
        _numpy_noise(monkeypatch, 8)
        expected = pipe(prompt=PROMPT, latents=torch.from_numpy(latents), strength=0.5, num_inference_steps=2,
                        guidance_scale=7.5, enforce_inference_steps=enforce, height=height, width=width,
                        output_type="np").frames
        assert_frames_match(f"animatediff v2v latents= enforce_inference_steps={enforce}", ours, expected)


# ----------------------------------------------------------------------------- FreeInit parity
@pytest.mark.parametrize("fast,method", [(False, "butterworth"), (True, "gaussian")])
def test_free_init_matches_diffusers(snapshots, pipes, monkeypatch, fast, method):
    frames, height, width, _ = SHAPES["mid"]
    _, ref = snapshots["mid"]
    latents = _latents("mid", seed=4)
    options = dict(num_iters=2, use_fast_sampling=fast, method=method, order=4, spatial_stop_frequency=0.25,
                   temporal_stop_frequency=0.25)
    pipe = pipes["mid"]
    pipe.enable_free_init(**options)
    try:
        ours = pipe(PROMPT, num_inference_steps=3, guidance_scale=7.5, latents=latents, seed=5, output_type="np",
                    **_ours_scheduler("seed-ddim")).frames
    finally:
        pipe.disable_free_init()
    _numpy_noise(monkeypatch, 5)
    reference = _reference(ref, "seed-ddim")
    reference.enable_free_init(**options)
    expected = reference(PROMPT, num_inference_steps=3, guidance_scale=7.5, num_frames=frames, height=height,
                         width=width, latents=torch.from_numpy(latents), output_type="np").frames
    assert_frames_match(f"animatediff FreeInit fast={fast} {method}", ours, expected)
    # FreeInit changes the result (the comparison can fail)
    plain = pipe(PROMPT, num_inference_steps=3, guidance_scale=7.5, latents=latents, output_type="np",
                 **_ours_scheduler("seed-ddim")).frames
    assert float(np.abs(plain - ours).max()) > 1e-2


def test_free_init_on_a_schedule_without_the_last_training_timestep(snapshots, pipes, monkeypatch):
    """FreeInit noises each pass back to timestep 999. A "leading" DPM++ schedule does not hold it, and
    diffusers' DPM++ then takes its last step's noise level: so does the runtime. Euler cannot (diffusers
    fails with an IndexError); the runtime says what to change."""
    from diffusers import DPMSolverMultistepScheduler

    frames, height, width, _ = SHAPES["mid"]
    _, ref = snapshots["mid"]
    latents = _latents("mid", seed=6)
    options = dict(num_iters=2, use_fast_sampling=False, method="butterworth", order=4, spatial_stop_frequency=0.25,
                   temporal_stop_frequency=0.25)
    leading = {"timestep_spacing": "leading", "steps_offset": 1}
    pipe = pipes["mid"]
    pipe.enable_free_init(**options)
    try:
        ours = pipe(PROMPT, num_inference_steps=3, guidance_scale=7.5, latents=latents, seed=7, output_type="np",
                    scheduler="dpm++", scheduler_overrides=leading).frames
        with pytest.raises(ValueError, match="FreeInit noises each pass back to timestep 999"):
            pipe(PROMPT, num_inference_steps=3, latents=latents, seed=7, output_type="np", scheduler="euler",
                 scheduler_overrides=leading)
    finally:
        pipe.disable_free_init()
    _numpy_noise(monkeypatch, 7)
    reference = _reference(ref, "seed-ddim")
    reference.scheduler = DPMSolverMultistepScheduler.from_config(ref.scheduler.config, **leading)
    reference.enable_free_init(**options)
    expected = reference(PROMPT, num_inference_steps=3, guidance_scale=7.5, num_frames=frames, height=height,
                         width=width, latents=torch.from_numpy(latents), output_type="np").frames
    assert_frames_match("animatediff FreeInit dpm++ leading", ours, expected)


def test_video_to_video_names_the_steps_asked_for_when_strength_leaves_none(v2v):
    frames, height, width, _ = SHAPES["mid"]
    video = np.zeros((frames, height, width, 3), np.float32)
    with pytest.raises(ValueError, match="strength=0.1 with num_inference_steps=2 leaves no denoising step"):
        v2v(video=video, prompt=PROMPT, strength=0.1, num_inference_steps=2, output_type="np")


def test_video_to_video_free_init_matches_diffusers(snapshots, v2v, monkeypatch):
    """diffusers' V2V re-applies strength to each FreeInit pass's schedule; so does the runtime."""
    from diffusers import AnimateDiffVideoToVideoPipeline

    frames, height, width, _ = SHAPES["mid"]
    _, ref = snapshots["mid"]
    video = np.random.default_rng(12).random((frames, height, width, 3)).astype(np.float32)
    options = dict(num_iters=2, use_fast_sampling=False, method="ideal", spatial_stop_frequency=0.5,
                   temporal_stop_frequency=0.5)
    v2v.enable_free_init(**options)
    try:
        ours = v2v(video=video, prompt=PROMPT, strength=0.75, num_inference_steps=4, guidance_scale=7.5, seed=13,
                   output_type="np", **_ours_scheduler("seed-ddim")).frames
    finally:
        v2v.disable_free_init()
    _numpy_noise(monkeypatch, 13)
    pipe = AnimateDiffVideoToVideoPipeline(**{**ref.components, "scheduler": _scheduler(ref, "seed-ddim")})
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_free_init(**options)
    expected = pipe(video=[video[i] for i in range(frames)], prompt=PROMPT, strength=0.75, num_inference_steps=4,
                    guidance_scale=7.5, height=height, width=width, output_type="np").frames
    assert_frames_match("animatediff v2v FreeInit ideal", ours, expected)


def test_free_init_filters_match_diffusers():
    from diffusers.pipelines.free_init_utils import FreeInitMixin

    from video_aot.runtime.free_init import apply_freq_filter, freq_filter

    mixin = FreeInitMixin()
    shape = (1, 4, 5, 6, 7)
    rng = np.random.default_rng(0)
    x, noise = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    for method, ds, dt in (("butterworth", 0.25, 0.25), ("gaussian", 0.4, 0.2), ("ideal", 0.3, 0.5),
                           ("butterworth", 0.0, 0.25)):
        expected = mixin._get_free_init_freq_filter(shape, "cpu", method, 4, ds, dt).numpy()
        ours = freq_filter(shape, method, 4, ds, dt)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7, err_msg=method)
        mixed = mixin._apply_freq_filter(torch.from_numpy(x), torch.from_numpy(noise), torch.from_numpy(expected))
        np.testing.assert_allclose(apply_freq_filter(x, noise, ours), mixed.numpy(), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- export, limits, entry points
def test_export_layouts_and_manifest(exports, pipes, v2v):
    for name, layout in (("mid", "unet_motion"), ("no-mid", "unet_adapter")):
        manifest = json.loads((exports[name] / "manifest.json").read_text())
        assert manifest["family"] == "animatediff" and manifest["pipeline"] == "AnimateDiffPipeline"
        assert manifest["motion_layout"] == layout and manifest["motion_max_seq_length"] == 8
    manifest = json.loads((exports["mid"] / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"text_encoder", "unet", "vae_decoder", "vae_decoder_tail", "vae_encoder",
                                       "vae_encoder_tail"}
    assert manifest["graphs"]["unet"]["inputs"][2]["shape"] == [2 * 3, 77, 8]  # per-frame text embeddings
    assert type(pipes["mid"]).__name__ == "AnimateDiffPipeline"
    assert type(v2v).__name__ == "AnimateDiffVideoToVideoPipeline"


def test_num_frames_over_the_motion_limit_is_refused(snapshots, pipes, tmp_path):
    with pytest.raises(ValueError, match="num_frames=9 exceeds the motion adapter's motion_max_seq_length=8"):
        pipes["mid"](PROMPT, num_frames=9, num_inference_steps=1)
    with pytest.raises(ShapeMismatch, match="num_frames=3"):
        pipes["mid"](PROMPT, num_frames=4, num_inference_steps=1)
    with pytest.raises(ValueError, match="num_frames=9 exceeds the motion adapter's motion_max_seq_length=8"):
        export_model(str(snapshots["mid"][0]), str(tmp_path / "nine"), frames=9, height=16, width=16,
                     log=lambda *a: None, onnx=False)
    with pytest.raises(ValueError, match="decode_chunk_size must be an integer from 1 to 3"):
        export_model(str(snapshots["mid"][0]), str(tmp_path / "chunk"), frames=3, height=16, width=16,
                     decode_chunk_size=4, log=lambda *a: None, onnx=False)
    with pytest.raises(ShapeMismatch, match="decode_chunk_size=2"):
        pipes["mid"](PROMPT, decode_chunk_size=3, num_inference_steps=1)


def test_bad_inputs_get_clear_errors(pipes, v2v):
    pipe = pipes["mid"]
    with pytest.raises(ShapeMismatch, match="height=16"):
        pipe(PROMPT, height=24, num_inference_steps=1)
    with pytest.raises(ValueError, match="Only one of `video` or `latents`"):
        v2v(video=np.zeros((3, 16, 24, 3), np.float32), prompt=PROMPT, latents=_latents("mid"))
    with pytest.raises(ValueError, match="strength should in"):
        v2v(video=np.zeros((3, 16, 24, 3), np.float32), prompt=PROMPT, strength=1.5)
    with pytest.raises(ValueError, match="method 'box' is not supported"):
        pipe.enable_free_init(method="box")


def test_generate_video_video_to_video(exports, tmp_path):
    from video_aot.runtime.cli import main
    from video_aot.runtime.video_io import read_video, write_video

    source = tmp_path / "in.mp4"
    write_video(source, np.random.default_rng(3).integers(0, 255, (3, 16, 24, 3), dtype=np.uint8), fps=8)
    out = tmp_path / "ad-v2v.mp4"  # --video picks AnimateDiffVideoToVideoPipeline
    assert main([str(exports["mid"]), "--prompt", "a dog", "--video", str(source), "--strength", "0.6", "--steps", "2",
                 "--seed", "2", "--out", str(out), "--backend", "mindspore"]) == 0
    assert read_video(out)[0].shape == (3, 16, 24, 3)


# ----------------------------------------------------------------------------- the shared pipeline suite
@pytest.fixture(scope="module")
def case(snapshots, exports, pipes):
    _, ref = snapshots["mid"]
    frames, height, width, _ = SHAPES["mid"]
    inputs = dict(prompt=PROMPT, negative_prompt="blurry", num_inference_steps=2, guidance_scale=7.5,
                  **_ours_scheduler("seed-ddim"))

    def reference(inputs, latents):
        kwargs = {k: v for k, v in inputs.items() if k not in ("scheduler", "scheduler_overrides")}
        return _reference(ref, "seed-ddim")(**kwargs, num_frames=frames, height=height, width=width,
                                            latents=torch.from_numpy(latents), output_type="np").frames

    return SuiteCase(pipe=pipes["mid"], export_dir=str(exports["mid"]), inputs=inputs, reference=reference,
                     cli_args=["--prompt", "a cat", "--steps", "1", "--seed", "0"],
                     callback_inputs=("latents", "prompt_embeds"))


class TestSuite(PipelineSuite):
    """latents= parity (the seed's DDIM), generate-video, an unexported frame count, request validation."""
