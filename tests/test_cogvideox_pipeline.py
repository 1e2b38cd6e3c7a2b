"""CogVideoX end to end: export tiny snapshots, run the exported T2V / I2V / V2V pipelines and
compare with diffusers (same latents=, same noise stream), with both CogVideoX schedulers and at two
frame counts (one and two VAE latent-frame batches)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline_suite import PipelineSuite, SuiteCase
from tiny import rel_l2
from tiny_cogvideox import HEIGHT, MAX_LENGTH, WIDTH, cogvideox_pipeline, shared_noise

from video_aot.export.run import export_model
from video_aot.runtime import ShapeMismatch, load_pipeline

T2V_FRAMES = (8, 17)  # 2 latent frames (1 decode batch) and 5 latent frames (2 decode batches, 2 encode batches)
I2V_FRAMES = 17
PROMPT, NEGATIVE = "a panda plays guitar", "blue car"


@pytest.fixture(scope="session")
def snapshots(tmp_path_factory):
    out = {}
    for kind in ("t2v", "i2v"):
        folder = tmp_path_factory.mktemp(f"cogvideox-{kind}")
        overrides = {"sample_frames": I2V_FRAMES} if kind == "i2v" else {}
        pipe = cogvideox_pipeline(kind, transformer_overrides=overrides)
        pipe.save_pretrained(folder)
        out[kind] = (folder, pipe)
    return out


@pytest.fixture(scope="session")
def exports(snapshots, tmp_path_factory):
    root = tmp_path_factory.mktemp("cogvideox-exports")
    out = {}
    # the 17-frame T2V and the I2V exports also hold the tile graphs of enable_tiling() (the tiled tests
    # use them; tiling stays off until asked, so the other tests run the whole-frame graphs); the
    # 8-frame one has none (the refusal test)
    for frames in T2V_FRAMES:
        out[("t2v", frames)] = export_model(str(snapshots["t2v"][0]), str(root / f"t2v-{frames}"), frames=frames,
                                            height=HEIGHT, width=WIDTH, log=lambda *a: None, with_video_encoder=True,
                                            tiling=frames == 17 or None, onnx=frames == T2V_FRAMES[0])
    out[("i2v", I2V_FRAMES)] = export_model(str(snapshots["i2v"][0]), str(root / "i2v"), frames=I2V_FRAMES,
                                            height=HEIGHT, width=WIDTH, log=lambda *a: None, tiling=True, onnx=False)
    return out


def _reference(kind, snapshots, scheduler):
    """The diffusers pipeline of ``kind`` over the saved components, with the asked scheduler."""
    from diffusers import (CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXImageToVideoPipeline,
                           CogVideoXPipeline, CogVideoXVideoToVideoPipeline)

    base = snapshots["i2v" if kind == "i2v" else "t2v"][1]
    cls = {"t2v": CogVideoXPipeline, "i2v": CogVideoXImageToVideoPipeline, "v2v": CogVideoXVideoToVideoPipeline}[kind]
    sched_cls = CogVideoXDDIMScheduler if scheduler == "ddim" else CogVideoXDPMScheduler
    pipe = cls(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, transformer=base.transformer,
               scheduler=sched_cls.from_config(base.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(frames, channels=4, seed=3):
    lf = (frames - 1) // 4 + 1
    return np.random.default_rng(seed).standard_normal((1, lf, channels, HEIGHT // 4, WIDTH // 4)).astype(np.float32)


def _video(frames, seed=5):
    return (np.random.default_rng(seed).random((frames, HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)


COMMON = dict(height=HEIGHT, width=WIDTH, num_inference_steps=3, output_type="np", max_sequence_length=MAX_LENGTH)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
@pytest.mark.parametrize("frames", T2V_FRAMES)
def test_t2v_matches_diffusers(snapshots, exports, monkeypatch, frames, scheduler):
    ref = _reference("t2v", snapshots, scheduler)
    ours = load_pipeline(exports[("t2v", frames)], backend="mindspore")
    latents = _latents(frames)
    kwargs = dict(COMMON, prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=frames, guidance_scale=5.0,
                  use_dynamic_cfg=scheduler == "dpm")
    shared_noise(monkeypatch, seed=11)
    expected = ref(latents=torch.tensor(latents), **kwargs).frames
    got = ours(latents=latents, seed=11, scheduler=scheduler, **kwargs).frames
    assert got.shape == np.asarray(expected).shape
    err = np.abs(got - np.asarray(expected)).max()
    print("t2v", frames, scheduler, got.shape, err)
    assert err <= 1e-3, err


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_i2v_matches_diffusers(snapshots, exports, monkeypatch, scheduler):
    from PIL import Image

    ref = _reference("i2v", snapshots, scheduler)
    ours = load_pipeline(exports[("i2v", I2V_FRAMES)], backend="mindspore")
    image = Image.fromarray(_video(1, seed=9)[0])
    latents = _latents(I2V_FRAMES)
    kwargs = dict(COMMON, prompt=PROMPT, num_frames=I2V_FRAMES, guidance_scale=4.0)
    shared_noise(monkeypatch, seed=12)
    expected = ref(image=image, latents=torch.tensor(latents), **kwargs).frames
    got = ours(image, latents=latents, seed=12, scheduler=scheduler, **kwargs).frames
    err = np.abs(got - np.asarray(expected)).max()
    print("i2v", scheduler, got.shape, err)
    assert got.shape == np.asarray(expected).shape and err <= 1e-3, err


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
@pytest.mark.parametrize("frames", T2V_FRAMES)
def test_v2v_matches_diffusers(snapshots, exports, monkeypatch, frames, scheduler):
    """The video is encoded (1 or 2 VAE encoder batches), noised and denoised: no latents= given."""
    from PIL import Image

    ref = _reference("v2v", snapshots, scheduler)
    ours = load_pipeline(exports[("t2v", frames)], backend="mindspore", pipeline="video2video")
    video = _video(frames)
    kwargs = dict(COMMON, prompt=PROMPT, guidance_scale=3.0, strength=0.7, num_inference_steps=4)
    shared_noise(monkeypatch, seed=13)
    expected = ref(video=[Image.fromarray(f) for f in video], **kwargs).frames
    got = ours(video=video, seed=13, scheduler=scheduler, **kwargs).frames
    err = np.abs(got - np.asarray(expected)).max()
    print("v2v", frames, scheduler, got.shape, err)
    assert got.shape == np.asarray(expected).shape and err <= 1e-3, err


def test_v2v_step_callback_counts_from_the_first_step_run(snapshots, exports, monkeypatch):
    """diffusers numbers callback_on_step_end's i over the steps left after strength (0 first): a callback
    acting at i == 0 acts on the first step run, as in diffusers."""
    from PIL import Image

    frames = T2V_FRAMES[0]
    ref = _reference("v2v", snapshots, "dpm")
    ours = load_pipeline(exports[("t2v", frames)], backend="mindspore", pipeline="video2video")
    video = _video(frames)
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append(i)
        return {"latents": kwargs["latents"] * 0.5} if i == 0 else {}

    kwargs = dict(COMMON, prompt=PROMPT, guidance_scale=3.0, strength=0.8, num_inference_steps=4,
                  callback_on_step_end=callback)
    shared_noise(monkeypatch, seed=14)
    expected = np.asarray(ref(video=[Image.fromarray(f) for f in video], **kwargs).frames)
    ref_steps, seen[:] = list(seen), []
    got = ours(video=video, seed=14, scheduler="dpm", **kwargs).frames
    assert seen == ref_steps == [0, 1, 2]  # 4 steps at strength 0.8: the last 3 run
    err = np.abs(got - expected).max()
    print("v2v callback", err)
    assert err <= 1e-3, err


def test_tiled_encode_to_another_latent_size_is_refused(tiled_export):
    """diffusers' tiled encode of this 24x40 video stitches latents of another size than the export
    denoises (diffusers' pipeline then fails on them too): V2V with tiling on says so and names
    disable_tiling(); untiled it runs."""
    pipe = load_pipeline(tiled_export, backend="mindspore", pipeline="video2video")
    axes = pipe.manifest.latent_axes()
    video = _video(17)
    pipe.enable_tiling()
    moments = pipe.encode_moments(np.zeros((1, 3, 17, HEIGHT, WIDTH), np.float32))
    assert moments.shape[3:] != (axes["H"], axes["W"])  # else this test checks nothing
    with pytest.raises(ShapeMismatch, match="disable_tiling"):
        pipe(video=video, prompt=PROMPT, strength=0.7, **dict(COMMON, num_inference_steps=2))
    pipe.disable_tiling()
    assert pipe(video=video, prompt=PROMPT, strength=0.7, **dict(COMMON, num_inference_steps=2)).frames.shape[1] == 17


def test_cogvideox_1_5_t2v_pads_latent_frames_like_diffusers(tmp_path, monkeypatch):
    """CogVideoX 1.5 (patch_size_t=2): 9 frames give 3 latent frames, padded to 4 for the transformer;
    the padding frame is dropped before decoding, as diffusers does."""
    pipe = cogvideox_pipeline("t2v-rotary", transformer_overrides=dict(patch_size_t=2, patch_bias=False,
                                                                       sample_height=8, sample_width=12))
    pipe.save_pretrained(tmp_path / "snap")
    out = export_model(str(tmp_path / "snap"), str(tmp_path / "e"), frames=9, height=HEIGHT, width=WIDTH,
                       log=lambda *a: None, onnx=False)
    ours = load_pipeline(out, backend="mindspore")
    assert ours.manifest["model_latent_frames"] == 4 and ours.manifest["additional_frames"] == 1
    latents = np.random.default_rng(8).standard_normal((1, 4, 4, HEIGHT // 4, WIDTH // 4)).astype(np.float32)
    kwargs = dict(COMMON, prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=9, guidance_scale=5.0)
    shared_noise(monkeypatch, seed=14)
    expected = np.asarray(pipe(latents=torch.tensor(latents), **kwargs).frames)
    got = ours(latents=latents, seed=14, **kwargs).frames
    err = np.abs(got - expected).max()
    print("1.5 t2v", got.shape, err)
    assert got.shape == expected.shape and err <= 1e-3, err


def test_t2v_batch_of_two_prompts_matches_diffusers(snapshots, tmp_path):
    _, ref = snapshots["t2v"]
    out = export_model(str(snapshots["t2v"][0]), str(tmp_path / "e"), frames=8, height=HEIGHT, width=WIDTH, batch=2,
                       log=lambda *a: None, onnx=False)
    ours = load_pipeline(out, backend="mindspore")
    latents = np.random.default_rng(6).standard_normal((2, 2, 4, HEIGHT // 4, WIDTH // 4)).astype(np.float32)
    kwargs = dict(COMMON, prompt=[PROMPT, "a red car"], negative_prompt=[NEGATIVE, "cat"], num_frames=8,
                  guidance_scale=5.0)
    expected = np.asarray(ref(latents=torch.tensor(latents), **kwargs).frames)
    got = ours(latents=latents, **kwargs).frames
    assert got.shape == expected.shape == (2, 8, HEIGHT, WIDTH, 3)
    assert np.abs(got - expected).max() <= 1e-3


def test_bad_inputs_get_clear_errors(exports):
    from PIL import Image

    t2v = load_pipeline(exports[("t2v", 17)], backend="mindspore")
    kwargs = dict(prompt=PROMPT, num_inference_steps=1, max_sequence_length=MAX_LENGTH)
    with pytest.raises(ShapeMismatch, match="built for 5 latent frames \\(num_frames 17 to 20"):
        t2v(num_frames=25, **kwargs)
    t2v.check_frames(20)  # 20 frames -> 5 latent frames: the same static shape, as diffusers computes it
    with pytest.raises(ShapeMismatch, match="height=32"):
        t2v(height=32, **kwargs)
    with pytest.raises(ShapeMismatch, match="max_sequence_length=226"):
        t2v(prompt=PROMPT, num_inference_steps=1, max_sequence_length=226)
    with pytest.raises(ShapeMismatch, match="unexpected latents shape"):
        t2v(latents=np.zeros((1, 4, 4, 6, 10), np.float32), **kwargs)
    v2v = load_pipeline(exports[("t2v", 17)], backend="mindspore", pipeline="video2video")
    with pytest.raises(ShapeMismatch, match="has 16 frames but this export was built for num_frames=17"):
        v2v(video=_video(16), **kwargs)
    with pytest.raises(ShapeMismatch, match="resize=True"):
        v2v(video=np.zeros((17, 32, 40, 3), np.uint8), **kwargs)
    i2v = load_pipeline(exports[("i2v", I2V_FRAMES)], backend="mindspore")
    with pytest.raises(ShapeMismatch, match="the image is 48x24 \\(WxH\\) but this export was built for 40x24"):
        i2v(Image.new("RGB", (48, 24)), **kwargs)
    with pytest.raises(ValueError, match="built from a CogVideoXPipeline snapshot"):
        load_pipeline(exports[("t2v", 17)], backend="mindspore", pipeline="image2video")


def test_exported_decoder_graph_is_one_batch_with_caches(exports):
    """The decoder graph takes one latent-frame batch plus every conv cache and returns the frames
    plus the new caches: its inputs do not depend on the number of frames."""
    shapes = {}
    for frames in T2V_FRAMES:
        manifest = json.loads((exports[("t2v", frames)] / "manifest.json").read_text())
        graphs = manifest["graphs"]
        shapes[frames] = graphs.get("vae_decoder", graphs["vae_decoder_first"])
        assert manifest["output_frames"] == frames
    nxt = shapes[17]
    caches = [t for t in nxt["inputs"] if t["name"].startswith("cache.")]
    assert [t["shape"] for t in caches] == [t["shape"] for t in nxt["outputs"][1:]]
    assert nxt["inputs"][0]["shape"] == [1, 4, 2, 6, 10]


@pytest.fixture(scope="module")
def tiled_export(exports):
    assert load_pipeline(exports[("t2v", 17)], backend="mindspore").manifest["tiling"]
    return exports[("t2v", 17)]


def test_tiled_decode_matches_diffusers(snapshots, tiled_export):
    """enable_tiling(): diffusers' default tiles (here 3x5 latents, overlapping, edge tiles smaller),
    each decoded over two latent-frame batches with its own caches, then blended."""
    _, ref = snapshots["t2v"]
    pipe = load_pipeline(tiled_export, backend="mindspore")
    tiling = pipe.manifest["tiling"]
    assert sorted({(t["h"], t["w"]) for t in tiling["tiles"]}) == [(2, 2), (2, 5), (3, 2), (3, 5)]
    z = np.random.default_rng(4).standard_normal((1, 5, 4, HEIGHT // 4, WIDTH // 4)).astype(np.float32)
    pipe.enable_tiling()
    got = pipe.decode_latents(z)
    scaling = ref.vae.config.scaling_factor
    ref.vae.enable_tiling()
    try:
        with torch.no_grad():
            expected = ref.vae.decode(torch.tensor(z).permute(0, 2, 1, 3, 4) / scaling).sample.numpy()
    finally:
        ref.vae.disable_tiling()
    pipe.disable_tiling()
    untiled = pipe.decode_latents(z)
    # diffusers' crop-and-stitch makes this tiled video 28 rows tall (10 + 10 + 8) where the untiled one has 24
    assert got.shape == expected.shape == (1, 3, 17, 28, 40) and untiled.shape == (1, 3, 17, 24, 40)
    err = rel_l2(got, expected)
    print("tiled decode", err)
    assert err <= 1e-4, err


def test_tiled_encode_matches_diffusers(snapshots, tiled_export):
    """enable_tiling() also tiles encoding (V2V, I2V): diffusers' 12x20-pixel tiles of this 24x40
    video (edge tiles 4 and 8 wide), each over three frame batches with its own caches, blended in
    latent units."""
    _, ref = snapshots["t2v"]
    pipe = load_pipeline(tiled_export, backend="mindspore")
    tiling = pipe.manifest["encode_tiling"]
    assert sorted({(t["h"], t["w"]) for t in tiling["tiles"]}) == [(4, 8), (4, 20), (12, 8), (12, 20)]
    video = np.random.default_rng(5).uniform(-1, 1, (1, 3, 17, HEIGHT, WIDTH)).astype(np.float32)
    pipe.enable_tiling()
    got = pipe.encode_moments(video)
    ref.vae.enable_tiling()
    try:
        with torch.no_grad():
            expected = ref.vae.encode(torch.tensor(video)).latent_dist.parameters.numpy()
    finally:
        ref.vae.disable_tiling()
    pipe.disable_tiling()
    untiled = pipe.encode_moments(video)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    rows, cols = min(got.shape[3], untiled.shape[3]), min(got.shape[4], untiled.shape[4])
    # tiled coding is not the same function: each tile sees only its own pixels
    assert got.shape != untiled.shape or float(np.abs(got[..., :rows, :cols] - untiled[..., :rows, :cols]).max()) > 1e-3
    err = rel_l2(got, expected)
    print("tiled encode", err)
    assert err <= 1e-4, err


def test_tiled_image_encode_matches_diffusers(snapshots, exports):
    """I2V encodes its one image frame through the same tiles when tiling is on."""
    _, ref = snapshots["i2v"]
    pipe = load_pipeline(exports[("i2v", I2V_FRAMES)], backend="mindspore")
    image = np.random.default_rng(3).uniform(-1, 1, (1, 3, 1, HEIGHT, WIDTH)).astype(np.float32)
    pipe.enable_tiling()
    got = pipe.encode_moments(image)
    ref.vae.enable_tiling()
    try:
        with torch.no_grad():
            expected = ref.vae.encode(torch.tensor(image)).latent_dist.parameters.numpy()
    finally:
        ref.vae.disable_tiling()
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert rel_l2(got, expected) <= 1e-4


def test_request_schema_over_a_service(exports):
    pipe = load_pipeline(exports[("i2v", I2V_FRAMES)], backend="mindspore")
    schema = pipe.request_schema()
    assert schema["scheduler"]["enum"] == ["ddim", "dpm"] and schema["scheduler"]["default"] == "ddim"
    assert schema["image"]["required"] and schema["prompt"]["required"]
    assert schema["num_frames"]["enum"] == [I2V_FRAMES]
    request = pipe.validate_request({**pipe.example_request(), "max_sequence_length": MAX_LENGTH})
    assert request["num_inference_steps"] == 1


def test_generate_video_cli_all_three_modes(exports, tmp_path):
    from PIL import Image

    from video_aot.runtime.cli import main
    from video_aot.runtime.video_io import write_video

    t2v, i2v = str(exports[("t2v", 17)]), str(exports[("i2v", I2V_FRAMES)])
    Image.fromarray(_video(1)[0]).save(tmp_path / "in.png")
    write_video(tmp_path / "in.mp4", _video(17), fps=8)
    common = ["--prompt", PROMPT, "--steps", "2", "--seed", "1", "--backend", "mindspore"]
    assert main([t2v, "--out", str(tmp_path / "t2v.gif"), "--scheduler", "dpm", *common]) == 0
    assert main([i2v, "--out", str(tmp_path / "i2v.gif"), "--image", str(tmp_path / "in.png"), *common]) == 0
    assert main([t2v, "--out", str(tmp_path / "v2v.gif"), "--video", str(tmp_path / "in.mp4"), "--strength", "0.5",
                 *common]) == 0
    assert main([t2v, "--out", str(tmp_path / "x.gif"), "--num-frames", "25", *common]) == 2  # not exported
    for name in ("t2v", "i2v", "v2v"):
        assert (tmp_path / f"{name}.gif").stat().st_size > 0


def test_generate_video_cli_tiling(tiled_export, exports, tmp_path):
    from video_aot.runtime.cli import main

    common = ["--prompt", PROMPT, "--steps", "1", "--seed", "1", "--backend", "mindspore", "--tiling"]
    assert main([str(tiled_export), "--out", str(tmp_path / "tiled.gif"), *common]) == 0
    assert (tmp_path / "tiled.gif").stat().st_size > 0
    assert main([str(exports[("t2v", 8)]), "--out", str(tmp_path / "x.gif"), *common]) == 2  # exported without tiles


def test_fp16_export_matches_diffusers_within_half_precision(snapshots, tmp_path, monkeypatch):
    """An fp16 export computes in fp16 (T5's wo in fp32, norms, softmax, rotary and GELU in fp32)
    with float32 graph inputs and outputs; T2V over two decode batches (the caches cross a batch in
    fp16) and V2V over two encode batches stay within half-precision rounding of diffusers' fp32."""
    from PIL import Image

    folder, _ = snapshots["t2v"]
    out = export_model(str(folder), str(tmp_path / "e"), frames=17, height=HEIGHT, width=WIDTH, dtype="fp16",
                       with_video_encoder=True, log=lambda *a: None, onnx=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "fp16" and manifest["graphs"]["vae_decoder"]["tolerance"] == 2e-2
    t2v = load_pipeline(out, backend="mindspore")
    latents = _latents(17)
    kwargs = dict(COMMON, prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=17, guidance_scale=5.0)
    expected = np.asarray(_reference("t2v", snapshots, "ddim")(latents=torch.tensor(latents), **kwargs).frames)
    got = t2v(latents=latents, **kwargs).frames
    err = np.abs(got - expected).max()
    print("fp16 t2v", err)
    assert got.dtype == np.float32 and got.shape == expected.shape and err <= 2e-2, err

    v2v = load_pipeline(out, backend="mindspore", pipeline="video2video")
    video = _video(17)
    kwargs = dict(COMMON, prompt=PROMPT, guidance_scale=3.0, strength=0.7)
    shared_noise(monkeypatch, seed=15)
    expected = np.asarray(_reference("v2v", snapshots, "ddim")(video=[Image.fromarray(f) for f in video],
                                                                **kwargs).frames)
    got = v2v(video=video, seed=15, **kwargs).frames
    err = np.abs(got - expected).max()
    print("fp16 v2v", err)
    assert got.shape == expected.shape and err <= 2e-2, err


def test_bf16_i2v_export_is_built_and_refused_on_the_cpu(snapshots, tmp_path):
    """bf16 (CogVideoX-5B's own dtype, for Ascend) traces every I2V graph; MindSpore 2.7.1 has no bf16
    CPU kernels, so loading it here is refused with a clear error."""
    from video_aot.runtime import ExportInvalid

    out = export_model(str(snapshots["i2v"][0]), str(tmp_path / "e"), frames=I2V_FRAMES, height=HEIGHT,
                       width=WIDTH, dtype="bf16", log=lambda *a: None, onnx=False)
    assert json.loads((out / "manifest.json").read_text())["dtype"] == "bf16"
    with pytest.raises(ExportInvalid, match="bf16 .*Ascend"):
        load_pipeline(out, backend="mindspore")


# ----------------------------------------------------------------------------- the shared pipeline suite
@pytest.fixture(scope="module")
def case(snapshots, exports):
    frames = T2V_FRAMES[0]
    inputs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=2, guidance_scale=5.0,
                  scheduler="ddim")

    def reference(inputs, latents):
        kwargs = {k: v for k, v in inputs.items() if k != "scheduler"}
        return _reference("t2v", snapshots, "ddim")(**kwargs, height=HEIGHT, width=WIDTH, num_frames=frames,
                                                    max_sequence_length=MAX_LENGTH, output_type="np",
                                                    latents=torch.tensor(latents)).frames

    return SuiteCase(pipe=load_pipeline(exports[("t2v", frames)], backend="mindspore"),
                     export_dir=str(exports[("t2v", frames)]), inputs=inputs, reference=reference,
                     cli_args=["--prompt", PROMPT, "--steps", "1", "--seed", "0"])


class TestSuite(PipelineSuite):
    pass
