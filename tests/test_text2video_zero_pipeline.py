"""Text2Video-Zero end to end: a tiny diffusers TextToVideoZeroPipeline (SD-style UNet2DConditionModel,
AutoencoderKL and CLIP text tower, weights perturbed, eval mode; a locally generated CLIP tokenizer) is
saved, exported twice and run through the exported graphs, against diffusers with the same latents= and
the same injected noise: diffusers' ``randn_tensor`` (the forward_loop re-noising and DDIM's eta noise)
is swapped for draws from a numpy generator seeded like the runtime's, in the same order.

diffusers' own tests have no dummy components for this pipeline (its tests are slow, full-size) and the
Stable Diffusion dummy UNet (block_out_channels (4, 8) with 8 heads) has a block whose channels are not a
multiple of its head count, which models/unet2d.py refuses; so the UNet keeps the SD dummy's layout
(DownBlock2D + CrossAttnDownBlock2D, one layer per block, cross-attention 32) with widths 32/64.

Exports: "a" video_length 3 at 32x48 (HxW, non-square), "b" video_length 4 at 32x32 with VAE decode chunk 3
(so a tail graph decodes the last frame). Both run 5 DDIM steps with t0/t1 inside the run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_suite import PipelineSuite, SuiteCase
from tiny import perturb

from video_aot.export.run import export_model
from video_aot.runtime import ShapeMismatch, load_pipeline

MAX_ABS = 1e-3  # on [0, 1] frames
SHAPES = {
    # name: (video_length, height, width, decode_chunk_size)
    "a": (3, 32, 48, None),
    "b": (4, 32, 32, 3),
}
ZERO_MODULE = "diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero"


def _reference(folder):
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoZeroPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from video_aot.export.tiny import write_clip_tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder / "_tokenizer_src")))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, norm_num_groups=4)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=37,
                                        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=3,
                                        vocab_size=len(tokenizer)))
    unet, vae, text = (perturb(m.eval(), seed, scale=0.05) for seed, m in enumerate((unet, vae, text)))
    pipe = TextToVideoZeroPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2v-zero-snapshot")
    return folder, _reference(folder)


@pytest.fixture(scope="module")
def exports(snapshot, tmp_path_factory):
    folder, _ = snapshot
    root = tmp_path_factory.mktemp("t2v-zero-exports")
    return {name: export_model(str(folder), str(root / name), frames=frames, height=height, width=width,
                               decode_chunk_size=chunk, log=lambda *a: None, onnx=name == "a")
            for name, (frames, height, width, chunk) in SHAPES.items()}


@pytest.fixture(scope="module")
def pipelines(exports):
    return {name: load_pipeline(path, backend="mindspore") for name, path in exports.items()}


def _shared_noise(monkeypatch, seed):
    """diffusers' randn_tensor (forward_loop, DDIM eta noise) -> float32 normals from default_rng(seed)."""
    import importlib

    rng = np.random.default_rng(seed)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))

    for name in (ZERO_MODULE, "diffusers.schedulers.scheduling_ddim"):
        monkeypatch.setattr(importlib.import_module(name), "randn_tensor", randn_tensor)


CASES = {
    # id: (export, t0, t1, eta, strength_x, strength_y, negative_prompt, frame_ids, guidance)
    "len3-t0_1-t1_3": ("a", 1, 3, 0.0, 12, 12, None, None, 7.5),
    "len4-t0_0-t1_2-eta-frame-ids": ("b", 0, 2, 0.6, 5, -9, "blurry, low quality", [0, 2, 3, 5], 4.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_diffusers(case, snapshot, pipelines, monkeypatch):
    _, ref = snapshot
    name, t0, t1, eta, sx, sy, negative, frame_ids, guidance = CASES[case]
    frames, height, width, _ = SHAPES[name]
    seed = 7
    latents = np.random.default_rng(3).standard_normal((1, 4, height // 2, width // 2)).astype(np.float32)
    kwargs = dict(prompt="a panda surfing on a wave", video_length=frames, height=height, width=width,
                  num_inference_steps=5, guidance_scale=guidance, negative_prompt=negative, eta=eta,
                  motion_field_strength_x=sx, motion_field_strength_y=sy, t0=t0, t1=t1, frame_ids=frame_ids)
    steps_seen = []
    ours = pipelines[name](**kwargs, latents=latents, seed=seed, output_type="np",
                           callback=lambda i, t, x: steps_seen.append((i, int(t), x.shape)))
    _shared_noise(monkeypatch, seed)
    expected_steps = []
    theirs = ref(**kwargs, latents=torch.from_numpy(latents),
                 callback=lambda i, t, x: expected_steps.append((i, int(t), tuple(x.shape)))).images
    assert ours.images.shape == theirs.shape == (frames, height, width, 3)
    assert ours.frames.shape == (1, frames, height, width, 3)
    err = float(np.abs(ours.images - theirs).max())
    print(f"{case}: frames max abs {err:.2e}")
    assert err <= MAX_ABS, f"{case}: frames max abs {err:.2e}"
    assert steps_seen == expected_steps
    # the frames differ from each other (motion and cross-frame attention act)
    assert float(np.abs(theirs[1:] - theirs[:1]).max()) > 10 * MAX_ABS
    if name == "a":  # the comparison sees the cross-frame attention: diffusers with plain attention is far off
        import importlib

        from diffusers.models.attention_processor import AttnProcessor2_0

        monkeypatch.setattr(importlib.import_module(ZERO_MODULE), "CrossFrameAttnProcessor2_0",
                            lambda batch_size=2: AttnProcessor2_0())
        _shared_noise(monkeypatch, seed)
        plain = ref(**kwargs, latents=torch.from_numpy(latents)).images
        assert float(np.abs(ours.images - plain).max()) > 10 * MAX_ABS


def test_first_frame_step_is_the_plain_unet(snapshot, pipelines):
    """Phases 1-2 run frame 0 of the cross-frame graph: it must be diffusers' UNet on the frame alone (a batch
    of 2, which CrossFrameAttnProcessor groups into video_length 1), whatever the other frames hold."""
    _, ref = snapshot
    pipe = pipelines["a"]
    frames = SHAPES["a"][0]
    entry = pipe.manifest.graph_entries["unet_video"]
    _, channels, h, w = entry.inputs[0].shape
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, channels, h, w), dtype=np.float32)
    context = rng.standard_normal(tuple(entry.inputs[2].shape), dtype=np.float32)
    guidance = 6.0
    with torch.no_grad():
        noise = ref.unet(torch.tensor(np.concatenate([x, x])), 500, encoder_hidden_states=torch.tensor(context)).sample
    noise = noise.numpy()
    expected = noise[:1] + guidance * (noise[1:] - noise[:1])
    others = rng.standard_normal((frames - 1, channels, h, w), dtype=np.float32)
    for rest in (np.repeat(x, frames - 1, axis=0), others):
        got = pipe.graphs["unet_video"](sample=np.concatenate([x, rest]), timestep=np.array([500.0], np.float32),
                                        encoder_hidden_states=context,
                                        guidance_scale=np.array([guidance], np.float32))[0][:1]
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), np.abs(got - expected).max()


def test_latent_output_matches_diffusers(snapshot, pipelines, monkeypatch):
    _, ref = snapshot
    frames, height, width, _ = SHAPES["b"]
    latents = np.random.default_rng(5).standard_normal((1, 4, height // 2, width // 2)).astype(np.float32)
    kwargs = dict(prompt="a red car", num_inference_steps=5, t0=2, t1=3, eta=1.0)
    ours = pipelines["b"](**kwargs, latents=latents, seed=11, output_type="latent").images
    _shared_noise(monkeypatch, 11)
    theirs = ref(**kwargs, video_length=frames, height=height, width=width, latents=torch.from_numpy(latents),
                 output_type="latent").images.numpy()
    assert ours.shape == theirs.shape == (frames, 4, height // 2, width // 2)
    rel = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
    print(f"latent rel L2 {rel:.2e}")
    assert rel <= 1e-4, rel


def test_motion_field_warp_matches_torch():
    """create_motion_field_and_warp_latents bit for bit, down- and up-sampling the 512x512 flow, with
    reflections off every edge."""
    import importlib

    from video_aot.runtime.text2video_zero import create_motion_field_and_warp_latents

    ref = importlib.import_module(ZERO_MODULE)
    rng = np.random.default_rng(0)
    for (h, w), (sx, sy) in [((16, 24), (12, 12)), ((5, 3), (-40, 300)), ((600, 520), (0.5, -2.25))]:
        lat = rng.standard_normal((3, 2, h, w)).astype(np.float32)
        expected = ref.create_motion_field_and_warp_latents(sx, sy, [1, 2, 7], torch.from_numpy(lat)).numpy()
        np.testing.assert_array_equal(create_motion_field_and_warp_latents(sx, sy, [1, 2, 7], lat), expected)


def test_refusals(pipelines):
    pipe = pipelines["a"]
    with pytest.raises(ValueError, match=r"num_inference_steps \(3\) must exceed t1 \(3\)"):
        pipe("a cat", num_inference_steps=3, t0=1, t1=3)
    with pytest.raises(ValueError, match=r"num_inference_steps \(50\) must exceed t1 \(47\)|must exceed t1"):
        pipe("a cat", num_inference_steps=20)  # diffusers' defaults t0=44, t1=47 need 48 steps
    with pytest.raises(ValueError, match="t0 .* must be smaller than t1"):
        pipe("a cat", num_inference_steps=5, t0=2, t1=2)
    with pytest.raises(ShapeMismatch, match="video_length=3.*video_length=5"):
        pipe("a cat", video_length=5, num_inference_steps=5, t0=1, t1=2)
    with pytest.raises(ValueError, match="guidance_scale must be > 1"):
        pipe("a cat", num_inference_steps=5, t0=1, t1=2, guidance_scale=1.0)
    with pytest.raises(ValueError, match="num_videos_per_prompt must be 1"):
        pipe("a cat", num_inference_steps=5, t0=1, t1=2, num_videos_per_prompt=2)
    with pytest.raises(ShapeMismatch, match="frame_ids has 2 entries"):
        pipe("a cat", num_inference_steps=5, t0=1, t1=2, frame_ids=[0, 1])
    with pytest.raises(ValueError, match=r"scheduler 'dpm\+\+' is not supported.*'ddim'"):
        pipe("a cat", num_inference_steps=5, t0=1, t1=2, scheduler="dpm++")
    with pytest.raises(ShapeMismatch, match="batch=1.*batch=2"):  # one prompt per call, as diffusers' batch 1
        pipe(["a cat", "a dog"], num_inference_steps=5, t0=1, t1=2)
    assert pipe._frame_ids("0, 2,4", 3) == [0, 2, 4]  # --frame-ids on the command line


def test_generate_video_cli_refuses_the_t1_rule(exports, tmp_path):
    """The t1 rule reaches the command line as an error message, not a traceback (the suite below
    writes a video)."""
    from video_aot.runtime.cli import main

    assert main([str(exports["a"]), "--prompt", "a cat", "--steps", "3", "--out", str(tmp_path / "bad.mp4"),
                 "--backend", "mindspore"]) == 2


def test_server_request_validation(pipelines):
    from video_aot.runtime.request import RequestInvalid

    pipe = pipelines["b"]
    request = pipe.example_request()
    kwargs = pipe.validate_request(request)
    assert kwargs["num_inference_steps"] > kwargs["t1"]
    out = pipe(**kwargs, seed=0, output_type="uint8")
    assert out.frames[0].dtype == np.uint8 and out.frames[0].shape == (4, 32, 32, 3)
    with pytest.raises(RequestInvalid, match="video_length"):
        pipe.validate_request({**request, "video_length": 5})
    with pytest.raises(ValueError, match="must exceed t1"):
        pipe.validate_request({**request, "num_inference_steps": 2, "t1": 2, "t0": 1})


def test_preset_plans_the_sd15_graphs(snapshot):
    """The preset names the class diffusers writes for a saved TextToVideoZeroPipeline, its configs are
    accepted by our networks, and it plans the full-size graphs (dry run: nothing built)."""
    import json

    from video_aot.export.sources import PRESET_DIR
    from video_aot.models.loading import load_config

    folder, _ = snapshot
    saved = json.loads((folder / "model_index.json").read_text())["_class_name"]
    preset = PRESET_DIR / "text2video-zero"
    assert json.loads((preset / "model_index.json").read_text())["_class_name"] == saved == "TextToVideoZeroPipeline"
    for component in ("unet", "vae", "text_encoder"):
        load_config(preset / component)
    manifest = export_model("text2video-zero", "unused", frames=8, height=512, width=512, random_weights=True,
                            dry_run=True, log=lambda *a: None)
    assert manifest["family"] == "text2video_zero" and manifest["pipeline"] == "TextToVideoZeroPipeline"
    assert manifest["shapes"] == {"batch": 1, "video_length": 8, "height": 512, "width": 512, "decode_chunk_size": 8}
    graphs = manifest["graphs"]
    assert "unet_frame" not in graphs  # the first frame runs through unet_video: the UNet's weights once
    assert graphs["unet_video"]["inputs"][0]["shape"] == [8, 4, 64, 64]
    assert graphs["unet_video"]["inputs"][2]["shape"] == [2, 77, 768]
    assert graphs["text_encoder"]["outputs"][0]["shape"] == [1, 13, 77, 768]
    assert manifest["scheduler"]["_class_name"] == "DDIMScheduler"
    with pytest.raises(ValueError, match="one video per call"):
        export_model("text2video-zero", "unused", frames=8, height=512, width=512, batch=2, random_weights=True,
                     dry_run=True, log=lambda *a: None)


def test_an_export_with_the_old_first_frame_graph_is_refused(exports, tmp_path):
    """Exports written before the first frame ran through unet_video had a graph unet_frame; the runtime
    no longer reads them and says to export again, before loading any graph."""
    import json
    import shutil

    from video_aot.runtime.manifest import ExportInvalid

    old = tmp_path / "old-export"
    shutil.copytree(exports["b"], old)
    raw = json.loads((old / "manifest.json").read_text())
    raw["graphs"]["unet_frame"] = raw["graphs"]["unet_video"]
    (old / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ExportInvalid, match="unet_frame.*export the model again"):
        load_pipeline(str(old), backend="mindspore")


# ----------------------------------------------------------------------------- the shared pipeline suite
@pytest.fixture(scope="module")
def case(snapshot, exports, pipelines):
    """TextToVideoZeroPipeline returns diffusers' ``images`` [F, H, W, 3] (one video) and takes
    ``video_length``; its latents are one frame's [1, C, h, w], and the forward loop draws noise."""
    _, ref = snapshot
    frames, height, width, _ = SHAPES["a"]
    inputs = dict(prompt="a panda surfing on a wave", num_inference_steps=5, t0=1, t1=3, seed=7)

    def diffusers_frames(inputs, latents):
        kwargs = {k: v for k, v in inputs.items() if k != "seed"}
        with pytest.MonkeyPatch.context() as patch:
            _shared_noise(patch, inputs["seed"])
            return ref(**kwargs, video_length=frames, height=height, width=width,
                       latents=torch.from_numpy(latents)).images[None]

    return SuiteCase(pipe=pipelines["a"], export_dir=str(exports["a"]), inputs=inputs, reference=diffusers_frames,
                     latents_shape=(1, 4, height // 2, width // 2), callback_inputs=None, frames_argument="video_length",
                     cli_args=["--prompt", "a cat", "--steps", "3", "--t0", "0", "--t1", "1", "--seed", "0"])


class TestSuite(PipelineSuite):
    """latents= parity (same forward-loop noise), generate-video, an unexported video_length, requests."""
