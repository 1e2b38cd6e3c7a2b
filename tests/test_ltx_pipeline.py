"""LTX-Video end to end: export tiny snapshots (diffusers' own dummy LTX components, perturbed, eval
mode), run the exported LTXPipeline / LTXImageToVideoPipeline and compare frames with diffusers
given the same packed latents and the same noise stream (VAE posterior sample, initial noise, decode
noise and the decoder's injected noise maps). The scheduler is LTX-Video's own FlowMatchEuler config
(dynamic shift from the latent sequence length, shift_terminal 0.1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_suite import PipelineSuite, SuiteCase
from tiny import perturb

from video_aot.export.run import export_model
from video_aot.runtime import ExportInvalid, ShapeMismatch, load_pipeline

WORDS = "a cat dog runs on the beach sunset red blue car city night panda guitar plays".split()
MAX_LENGTH = 16
PROMPT, NEGATIVE = "a panda plays guitar on the beach", "blue car"
# diffusers tests/pipelines/ltx/test_ltx.py get_dummy_components (the tokenizer and T5 are generated
# here: no download; T5 32 wide as hf-internal-testing/tiny-random-t5)
TRANSFORMER = dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
                   attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=32)
VAE_090 = dict(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
               decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
               decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
               decoder_spatio_temporal_scaling=(True, True, False, False),
               decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
               upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
               encoder_causal=True, decoder_causal=False)
# diffusers tests/models/autoencoders/test_models_autoencoder_ltx_video.py, 0.9.1 class: decoder timestep
# conditioning, injected noise, residual upsamplers with channel reduction
VAE_091 = dict(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
               decoder_block_out_channels=(16, 32, 64), layers_per_block=(1, 1, 1, 1),
               decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
               decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(True, True, True, False),
               upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True,
               patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False)
T5 = dict(vocab_size=80, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
          relative_attention_max_distance=16, feed_forward_proj="gated-gelu")
SCHEDULER = {  # Lightricks/LTX-Video scheduler_config.json
    "base_image_seq_len": 1024, "base_shift": 0.95, "invert_sigmas": False, "max_image_seq_len": 4096,
    "max_shift": 2.05, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.1, "use_beta_sigmas": False,
    "use_dynamic_shifting": True, "use_exponential_sigmas": False, "use_karras_sigmas": False,
}
COMMON = dict(num_inference_steps=2, output_type="np", max_sequence_length=MAX_LENGTH)
T2V_SHAPES = ((9, 32, 32), (17, 32, 32), (9, 32, 64))  # two frame counts, one non-square size
# vae.enable_tiling() arguments small enough to cut the tiny latents into tiles in space (one axis each, to keep
# the graph count at 4) and, with use_framewise_decoding, in time; the two exports below carry their graphs.
# 0.9.0 (x4 / x4), 17 frames at 32x32 -> latents 5 x 8 x 8: temporal tiles of 4 and 2 latent frames (every 3,
# blended over 3 frames), rows of 4 and 2 latent pixels (every 3, blended over 4 pixels)
TILES_090 = dict(tile_sample_min_height=16, tile_sample_stride_height=12, tile_sample_min_width=32,
                 tile_sample_stride_width=32, tile_sample_min_num_frames=15, tile_sample_stride_num_frames=12)
# 0.9.1 (x8 / x8), 17 frames at 32x32 -> latents 3 x 4 x 4: temporal tiles of 2, 2 and 1 latent frames (every 1,
# the second blended over 7 frames; the last decodes to the one frame diffusers drops), columns of 2 and 1
# latent pixels (every 1, blended over 8 pixels)
TILES_091 = dict(tile_sample_min_height=32, tile_sample_stride_height=32, tile_sample_min_width=16,
                 tile_sample_stride_width=8, tile_sample_min_num_frames=15, tile_sample_stride_num_frames=8)


def ltx_pipeline(vae_config, seed=0):
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from video_aot.export.tiny import t5_tokenizer

    torch.manual_seed(seed)
    text_encoder = perturb(T5EncoderModel(T5Config(**T5)).eval(), seed, scale=0.05)
    torch.manual_seed(seed + 1)
    transformer = perturb(LTXVideoTransformer3DModel(**TRANSFORMER).eval(), seed + 1, scale=0.05)
    torch.manual_seed(seed + 2)
    vae = perturb(AutoencoderKLLTXVideo(**vae_config).eval(), seed + 2, scale=0.05)
    with torch.no_grad():  # the checkpoint's latent statistics, off their 0 / 1 defaults
        vae.latents_mean.copy_(torch.linspace(-0.3, 0.3, vae.latents_mean.numel()))
        vae.latents_std.copy_(torch.linspace(0.7, 1.4, vae.latents_std.numel()))
    pipe = LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=text_encoder,
                       tokenizer=t5_tokenizer(WORDS, MAX_LENGTH), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def shared_noise(monkeypatch, seed):
    """diffusers draws every random tensor from the numpy stream the exported pipeline uses with
    seed=``seed``, in the same order: randn_tensor (initial latents, posterior sample, decode noise)
    and the torch.randn maps of the LTX VAE's noise-injecting resnets."""
    import diffusers.models.autoencoders.autoencoder_kl_ltx as ltx_vae_mod
    import diffusers.models.autoencoders.vae as vae_mod
    import diffusers.pipelines.ltx.pipeline_ltx as t2v_mod
    import diffusers.pipelines.ltx.pipeline_ltx_image2video as i2v_mod

    stream = np.random.default_rng(seed)

    def draw(shape):
        return torch.from_numpy(stream.standard_normal(tuple(shape), dtype=np.float32))

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return draw(shape)

    class TorchWithSharedRandn:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def randn(*size, generator=None, device=None, dtype=None, **kwargs):
            shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
            return draw(shape)

    for mod in (vae_mod, t2v_mod, i2v_mod):
        monkeypatch.setattr(mod, "randn_tensor", randn_tensor)
    monkeypatch.setattr(ltx_vae_mod, "torch", TorchWithSharedRandn())


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    out = {}
    for kind, vae in (("090", VAE_090), ("091", VAE_091)):
        folder = tmp_path_factory.mktemp(f"ltx-{kind}")
        pipe = ltx_pipeline(vae)
        pipe.save_pretrained(folder)
        out[kind] = (folder, pipe)
    return out


@pytest.fixture(scope="module")
def exports(snapshots, tmp_path_factory):
    root = tmp_path_factory.mktemp("ltx-exports")
    out = {}
    quiet = dict(log=lambda *a: None, max_sequence_length=MAX_LENGTH)
    for frames, height, width in T2V_SHAPES:
        tiled = dict(tiling="spatial+framewise", **TILES_090) if frames == 17 else {}  # untiled calls work too
        out[("t2v", frames, height, width)] = export_model(
            str(snapshots["090"][0]), str(root / f"t2v-{frames}-{height}x{width}"), frames=frames, height=height,
            width=width, **tiled, **quiet, onnx=(frames, height, width) == T2V_SHAPES[0])
    out["i2v"] = export_model(str(snapshots["090"][0]), str(root / "i2v"), frames=9, height=32, width=32,
                              image_to_video=True, **quiet, onnx=False)
    out["batch2"] = export_model(str(snapshots["090"][0]), str(root / "batch2"), frames=9, height=32, width=32,
                                 batch=2, **quiet, onnx=False)
    out["091"] = export_model(str(snapshots["091"][0]), str(root / "091"), frames=17, height=32, width=32,
                              tiling="spatial+framewise", **TILES_091, **quiet, onnx=False)
    return out


def _packed_latents(frames, height, width, ratio=4, channels=8, seed=3):
    seq = ((frames - 1) // ratio + 1) * (height // ratio) * (width // ratio)
    return np.random.default_rng(seed).standard_normal((1, seq, channels)).astype(np.float32)


def _image(height=32, width=32, seed=9):
    from PIL import Image

    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def _compare(name, got, expected):
    expected = np.asarray(expected)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    err = float(np.abs(got - expected).max())
    print(name, got.shape, "max abs", err)
    assert err <= 1e-3, err


@pytest.mark.parametrize("shape", T2V_SHAPES, ids=lambda s: f"{s[0]}f-{s[1]}x{s[2]}")
def test_t2v_matches_diffusers(snapshots, exports, monkeypatch, shape):
    frames, height, width = shape
    _, ref = snapshots["090"]
    ours = load_pipeline(exports[("t2v",) + shape], backend="mindspore")
    latents = _packed_latents(frames, height, width)
    # the 17-frame case also rescales the guided prediction (guidance_rescale) and uses another frame rate
    extra = dict(guidance_rescale=0.7, frame_rate=12) if frames == 17 else {}
    kwargs = dict(COMMON, prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=frames, height=height, width=width,
                  guidance_scale=3.0, **extra)
    shared_noise(monkeypatch, seed=11)
    expected = ref(latents=torch.tensor(latents), **kwargs).frames
    got = ours(latents=latents, seed=11, **kwargs).frames
    assert got.shape == (1, frames, height, width, 3)
    _compare(f"t2v {shape} {extra}", got, expected)


def test_i2v_matches_diffusers(snapshots, exports, monkeypatch):
    """No latents=: the image is encoded (posterior sample from the shared stream), normalised and
    held in the first latent frame; the other frames start from the stream's noise."""
    from diffusers import LTXImageToVideoPipeline

    _, base = snapshots["090"]
    ref = LTXImageToVideoPipeline(**base.components)
    ref.set_progress_bar_config(disable=True)
    ours = load_pipeline(exports["i2v"], backend="mindspore", pipeline="image2video")
    kwargs = dict(COMMON, prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=9, height=32, width=32,
                  guidance_scale=3.0, num_inference_steps=3)
    shared_noise(monkeypatch, seed=12)
    expected = ref(image=_image(), **kwargs).frames
    got = ours(_image(), seed=12, **kwargs).frames
    _compare("i2v", got, expected)


def test_t2v_on_the_image_to_video_export_matches_diffusers(snapshots, exports, monkeypatch):
    """An image_to_video export's step graph takes per-token timesteps; LTXPipeline feeds every token
    the step's timestep there, which is diffusers' text-to-video step."""
    _, ref = snapshots["090"]
    ours = load_pipeline(exports["i2v"], backend="mindspore", pipeline="text2video")
    latents = _packed_latents(9, 32, 32, seed=4)
    kwargs = dict(COMMON, prompt=PROMPT, num_frames=9, height=32, width=32, guidance_scale=1.0)  # no CFG
    shared_noise(monkeypatch, seed=15)
    expected = ref(latents=torch.tensor(latents), **kwargs).frames
    got = ours(latents=latents, seed=15, **kwargs).frames
    _compare("t2v on the i2v export, no cfg", got, expected)


def test_t2v_batch_of_two_prompts_matches_diffusers(snapshots, exports, monkeypatch):
    """Two prompts of different lengths (each row its own text mask) and two negative prompts."""
    _, ref = snapshots["090"]
    ours = load_pipeline(exports["batch2"], backend="mindspore")
    latents = np.concatenate([_packed_latents(9, 32, 32, seed=5), _packed_latents(9, 32, 32, seed=6)])
    kwargs = dict(COMMON, prompt=[PROMPT, "a red car"], negative_prompt=[NEGATIVE, "night"], num_frames=9, height=32,
                  width=32, guidance_scale=3.0)
    shared_noise(monkeypatch, seed=16)
    expected = ref(latents=torch.tensor(latents), **kwargs).frames
    got = ours(latents=latents, seed=16, **kwargs).frames
    assert got.shape == (2, 9, 32, 32, 3)
    _compare("t2v batch 2", got, expected)


def test_091_vae_timestep_conditioning_and_noise_matches_diffusers(snapshots, exports, monkeypatch):
    """0.9.1-style VAE: decode_timestep 0.05, decode_noise_scale 0.025 (the decode noise and every
    injected map from the shared stream)."""
    _, ref = snapshots["091"]
    ours = load_pipeline(exports["091"], backend="mindspore")
    assert ours.manifest["vae_timestep_conditioning"] and len(ours.manifest["decoder_noise"]) == 6
    latents = _packed_latents(17, 32, 32, ratio=8)
    kwargs = dict(COMMON, prompt=PROMPT, num_frames=17, height=32, width=32, guidance_scale=3.0,
                  decode_timestep=0.05, decode_noise_scale=0.025)
    shared_noise(monkeypatch, seed=13)
    expected = ref(latents=torch.tensor(latents), **kwargs).frames
    got = ours(latents=latents, seed=13, **kwargs).frames
    _compare("0.9.1 vae", got, expected)


@pytest.mark.parametrize("kind", ["090", "091"])
def test_tiled_decode_matches_diffusers(snapshots, exports, monkeypatch, kind):
    """vae.enable_tiling(<small tiles>) with vae.use_framewise_decoding = True: the latents decode in
    temporal tiles, each in spatial tiles (one graph per tile shape), blended as diffusers'
    _temporal_tiled_decode / tiled_decode; 0.9.1 also mixes the decode noise (sliced with the latents)
    and draws each tile's injected maps in diffusers' order."""
    from video_aot.runtime.vae import decode_tile_shapes

    _, ref = snapshots[kind]
    tiles, frames, ratio = (TILES_090, 17, 4) if kind == "090" else (TILES_091, 17, 8)
    ours = load_pipeline(exports[("t2v", 17, 32, 32) if kind == "090" else "091"], backend="mindspore")
    m = ours.manifest
    assert m["vae_tiling_mode"] == "spatial+framewise" and m["export_options"]["tile_sample_min_height"] == \
        tiles["tile_sample_min_height"]
    shapes = decode_tile_shapes(*m["latent_grid"], m["vae_tiling"], ratio, ratio, True, True)
    assert len({s[0] for s in shapes}) == 2 and len({s[1:] for s in shapes}) == 2 and len(m["vae_decoders"]) == 5
    latents = _packed_latents(frames, 32, 32, ratio=ratio, seed=7)
    extra = dict(decode_timestep=0.05, decode_noise_scale=0.025) if kind == "091" else {}
    kwargs = dict(COMMON, prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=frames, height=32, width=32,
                  guidance_scale=3.0, **extra)
    ref.vae.enable_tiling(**tiles)
    ref.vae.use_framewise_decoding = True
    try:
        shared_noise(monkeypatch, seed=21)
        expected = np.asarray(ref(latents=torch.tensor(latents), **kwargs).frames)
    finally:
        ref.vae.disable_tiling()
        ref.vae.use_framewise_decoding = False
    ours.enable_tiling(**tiles)
    ours.enable_framewise_decoding()
    got = ours(latents=latents, seed=21, **kwargs).frames
    calls = len(ours.timings["vae_decode"])
    _compare(f"tiled decode {kind} ({calls} tile calls)", got, expected)
    assert calls == (6 if kind == "090" else 12)  # 2 temporal tiles x 3 rows / 3 x 4 columns
    # one switch alone needs tiles this export has no graphs for: refused before denoising
    ours.disable_tiling()
    with pytest.raises(ExportInvalid, match="framewise tiled decoding .* re-export with tiling='framewise'"):
        ours(latents=latents, seed=21, **kwargs)


def test_tiling_requests_the_export_cannot_serve_are_refused(exports):
    pipe = load_pipeline(exports[("t2v", 9, 32, 32)], backend="mindspore")
    assert pipe.manifest["vae_tiling_mode"] is None and list(pipe.manifest["vae_decoders"]) == ["vae_decoder"]
    pipe.enable_tiling()  # 32x32 is inside one of diffusers' default 512-pixel tiles: decoded whole, as diffusers
    with pytest.raises(ValueError, match="tiles were exported for .*tile_sample_min_width.: 512.*re-export"):
        pipe.enable_tiling(tile_sample_min_width=16)
    tiled = load_pipeline(exports[("t2v", 17, 32, 32)], backend="mindspore")
    with pytest.raises(ValueError, match="tile_sample_stride_height.: 12.*not .*8"):
        tiled.enable_tiling(tile_sample_stride_height=8)
    from video_aot.export.ltx import tile_config

    with pytest.raises(ValueError, match="only apply to an export with tiling="):
        tile_config(None, {"tile_sample_min_width": 64}, 32, 8)
    with pytest.raises(ValueError, match="choose one of spatial, framewise, spatial"):
        tile_config("both", {}, 32, 8)
    with pytest.raises(ValueError, match="tile_sample_stride_width=600 is larger"):
        tile_config(True, {"tile_sample_stride_width": 600}, 32, 8)
    with pytest.raises(ValueError, match="less than one latent step"):
        tile_config("framewise", {"tile_sample_stride_num_frames": 4}, 32, 8)


def test_generate_video_tiling_flags(exports, tmp_path, capsys):
    """generate-video --tiling --framewise-decoding turn on both switches the export has tile graphs for;
    one alone needs tiles it has none for, and is refused before anything is written."""
    from video_aot.runtime.cli import main

    export = str(exports[("t2v", 17, 32, 32)])
    common = ["--prompt", "a cat", "--steps", "2", "--seed", "1", "--backend", "mindspore"]
    assert main([export, "--out", str(tmp_path / "t.gif"), "--tiling", "--framewise-decoding", *common]) == 0
    assert (tmp_path / "t.gif").stat().st_size > 0
    assert main([export, "--out", str(tmp_path / "f.gif"), "--framewise-decoding", *common]) == 2
    assert "re-export with tiling=" in capsys.readouterr().err and not (tmp_path / "f.gif").exists()


def test_shapes_not_exported_are_refused(exports):
    pipe = load_pipeline(exports[("t2v", 9, 32, 32)], backend="mindspore")
    kwargs = dict(prompt=PROMPT, num_inference_steps=2)
    with pytest.raises(ShapeMismatch, match=r"built for 3 latent frames \(num_frames 9 to 12"):
        pipe(num_frames=17, **kwargs)
    pipe.check_frames(12)  # 12 frames -> 3 latent frames: the same static shape, as diffusers computes it
    with pytest.raises(ShapeMismatch, match="height=32, width=32.*width=64"):
        pipe(width=64, **kwargs)
    with pytest.raises(ValueError, match="divisible by 32"):
        pipe(height=40, **kwargs)
    with pytest.raises(ShapeMismatch, match="unexpected latents shape"):
        pipe(latents=np.zeros((1, 10, 8), np.float32), **kwargs)
    with pytest.raises(ValueError, match="at least 2 steps"):
        pipe(prompt=PROMPT, num_inference_steps=1)
    with pytest.raises(ExportInvalid, match="image_to_video=True"):
        load_pipeline(exports[("t2v", 9, 32, 32)], backend="mindspore", pipeline="image2video")
    from video_aot.export.ltx import check_request_shapes

    with pytest.raises(ValueError, match="divisible by 32"):  # at export time too
        check_request_shapes(9, 48, 32, 1, 32, 8, 1, 1)


def test_presets_plan_the_full_size_graphs():
    """The real configs: 161 frames at 512x704 -> 21 x 16 x 22 latent tokens; the 0.9.1 decoder takes
    decode_timestep, decode_noise_scale, the decode noise and the injected maps."""
    for preset, conditioned in (("ltx-video-0.9.0", False), ("ltx-video-0.9.1", True), ("ltx-video-0.9.5", True)):
        manifest = export_model(preset, "unused", frames=161, height=512, width=704, random_weights=True,
                                dry_run=True, log=lambda *a: None)
        graphs = manifest["graphs"]
        assert manifest["latent_shape"] == [21 * 16 * 22, 128]
        step = {t["name"]: t["shape"] for t in graphs["transformer"]["inputs"]}
        assert step["hidden_states"] == [1, 7392, 128] and step["rope_cos"] == [7392, 2048]
        assert step["encoder_hidden_states"] == [2, 128, 4096]
        dec = [t["name"] for t in graphs["vae_decoder"]["inputs"]]
        assert ("decode_noise" in dec) == conditioned
        assert graphs["vae_decoder"]["outputs"][0]["shape"] == [1, 3, 161, 512, 704]


def test_image_to_video_cli_and_request_validation(exports, tmp_path):  # T2V: the shared suite
    from video_aot.runtime.cli import main

    common = ["--prompt", PROMPT, "--num-inference-steps", "2", "--seed", "1", "--backend", "mindspore",
              "--max-sequence-length", str(MAX_LENGTH)]
    _image().save(tmp_path / "in.png")
    assert main([str(exports["i2v"]), "--out", str(tmp_path / "i2v.gif"), "--pipeline", "image2video", "--image",
                 str(tmp_path / "in.png"), *common]) == 0

    for export, name in ((exports[("t2v", 9, 32, 32)], None), (exports["i2v"], "image2video")):
        pipe = load_pipeline(export, backend="mindspore", pipeline=name)
        request = pipe.validate_request(pipe.example_request())
        assert request["num_inference_steps"] == 2  # one step with shift_terminal is 0 / 0 (NaN in diffusers)
        schema = pipe.request_schema()
        assert schema["height"]["enum"] == [32] and schema["max_sequence_length"]["enum"] == [MAX_LENGTH]
        with pytest.raises(ValueError, match="num_frames"):
            pipe.validate_request({**pipe.example_request(), "num_frames": 17})
        with pytest.raises(ValueError, match="num_inference_steps"):
            pipe.validate_request({**pipe.example_request(), "num_inference_steps": 1})


# ----------------------------------------------------------------------------- the shared pipeline suite
@pytest.fixture(scope="module")
def case(snapshots, exports):
    frames, height, width = T2V_SHAPES[0]
    _, ref = snapshots["090"]
    inputs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=3.0, num_inference_steps=2,
                  max_sequence_length=MAX_LENGTH)

    def diffusers_frames(inputs, latents):
        # latents= leaves no noise draw before decoding (0.9.0's decoder takes no decode noise)
        return ref(**inputs, latents=torch.tensor(latents), num_frames=frames, height=height, width=width,
                   output_type="np").frames

    return SuiteCase(pipe=load_pipeline(exports[("t2v",) + T2V_SHAPES[0]], backend="mindspore"),
                     export_dir=str(exports[("t2v",) + T2V_SHAPES[0]]), inputs=inputs, reference=diffusers_frames,
                     latents_shape=_packed_latents(frames, height, width).shape,
                     cli_args=["--prompt", PROMPT, "--steps", "2", "--seed", "0",
                               "--max-sequence-length", str(MAX_LENGTH)], callback_inputs=("latents", "prompt_embeds"))


class TestSuite(PipelineSuite):
    """latents= parity (packed latents), generate-video, an unexported frame count, requests."""
