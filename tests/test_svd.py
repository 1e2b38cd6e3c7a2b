"""Stable Video Diffusion: exported graphs and the runtime pipeline against diffusers.

Two tiny snapshots are exported once per session (odd frame counts, non-square sizes, a decode
chunk that does not divide the frame count); every comparison reuses those exports. Export "a" also
holds the ONNX artifacts (export-model --onnx), run end to end by the onnxruntime backend."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import mindspore as ms
from pipeline_suite import PipelineSuite, SuiteCase
from tiny import rel_l2, svd_snapshot

from video_aot.export.run import export_model
from video_aot.runtime import ExportInvalid, ShapeMismatch, load_pipeline

SHAPES = {
    # name: (frames, height, width, decode_chunk_size, batch)
    "a": (5, 32, 48, 2, 1),
    "b": (3, 40, 24, None, 1),
    "c": (2, 32, 32, None, 2),  # a batch of two: two images, or one with num_videos_per_prompt=2
}


@pytest.fixture(scope="session")
def snapshot(tmp_path_factory):
    folder = tmp_path_factory.mktemp("svd-snapshot")
    pipe = svd_snapshot(folder)
    return folder, pipe


@pytest.fixture(scope="session")
def exports(snapshot, tmp_path_factory):
    folder, _ = snapshot
    root = tmp_path_factory.mktemp("svd-exports")
    out = {}
    for name, (frames, height, width, chunk, batch) in SHAPES.items():
        out[name] = export_model(str(folder), str(root / name), frames=frames, height=height, width=width,
                                 batch=batch, decode_chunk_size=chunk, log=lambda *a: None, onnx=name == "a")
    return out


@pytest.fixture(scope="session")
def pipelines(exports):
    return {name: load_pipeline(path, backend="mindspore") for name, path in exports.items()}


def _image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((height, width, 3)) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- component parity
def test_unet_graph_matches_diffusers(snapshot, pipelines):
    _, ref = snapshot
    pipe = pipelines["a"]
    frames, height, width, _, batch = SHAPES["a"]
    rng = np.random.default_rng(1)
    h, w = height // 2, width // 2
    sample = rng.standard_normal((batch, frames, 4, h, w)).astype(np.float32)
    image_latents = rng.standard_normal((2 * batch, 4, h, w)).astype(np.float32)
    ctx = rng.standard_normal((2 * batch, 1, 32)).astype(np.float32)
    ids = np.array([[6, 127, 0.02]] * 2 * batch, np.float32)
    guidance = np.linspace(1.0, 3.0, frames, dtype=np.float32)[None].repeat(batch, 0)
    t = np.array([0.83], np.float32)
    ours = pipe.graphs["unet"](sample, t, image_latents, ctx, ids, guidance)[0]
    with torch.no_grad():
        x = torch.cat([torch.tensor(sample)] * 2)
        cond = torch.tensor(image_latents)[:, None].repeat(1, frames, 1, 1, 1)
        noise = ref.unet(torch.cat([x, cond], 2), torch.tensor(0.83), torch.tensor(ctx), torch.tensor(ids)).sample
        uncond, text = noise.chunk(2)
        expected = (uncond + torch.tensor(guidance)[:, :, None, None, None] * (text - uncond)).numpy()
    assert rel_l2(ours, expected) <= 1e-4


def test_vae_graphs_match_diffusers(snapshot, pipelines):
    _, ref = snapshot
    pipe = pipelines["a"]
    frames, height, width, chunk, _ = SHAPES["a"]
    rng = np.random.default_rng(2)
    image = rng.uniform(-1, 1, (1, 3, height, width)).astype(np.float32)
    with torch.no_grad():
        expected = ref.vae.encode(torch.tensor(image)).latent_dist.mode().numpy()
    assert rel_l2(pipe.graphs["vae_encoder"](image)[0], expected) <= 1e-4
    for graph, k in (("vae_decoder", chunk), ("vae_decoder_tail", frames % chunk)):
        z = rng.standard_normal((k, 4, height // 2, width // 2)).astype(np.float32)
        with torch.no_grad():
            expected = ref.vae.decode(torch.tensor(z) / ref.vae.config.scaling_factor, num_frames=k).sample.numpy()
        assert rel_l2(pipe.graphs[graph](z)[0], expected) <= 1e-4


def test_vae_decoder_refuses_latents_that_are_not_whole_chunks(snapshot):
    """The temporal decoder groups its rows by the num_frames it was built with (diffusers'
    decode(z, num_frames)); a row count that is not a multiple is refused by name, not a reshape error."""
    from video_aot.models.loading import load_network

    folder, _ = snapshot
    cell, _ = load_network(folder / "vae", num_frames=2)
    z = np.zeros((3, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="num_frames=2"):
        cell(ms.Tensor(z))


def test_image_encoder_graph_matches_transformers(snapshot, pipelines):
    _, ref = snapshot
    pixels = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = ref.image_encoder(torch.tensor(pixels)).image_embeds.numpy()
    assert rel_l2(pipelines["a"].graphs["image_encoder"](pixels)[0], expected) <= 1e-4


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("name,steps,guidance", [("a", 3, (1.0, 3.0)), ("b", 2, (2.0, 2.5)), ("b", 2, (0.5, 1.0))])
def test_pipeline_matches_diffusers(snapshot, pipelines, name, steps, guidance):
    _, ref = snapshot
    frames, height, width, chunk, batch = SHAPES[name]
    image = _image(height + 8, width - 8, seed=steps)  # a different size: both pipelines resize it
    latents = np.random.default_rng(4).standard_normal((batch, frames, 4, height // 2, width // 2)).astype(np.float32)
    kwargs = dict(height=height, width=width, num_frames=frames, num_inference_steps=steps,
                  min_guidance_scale=guidance[0], max_guidance_scale=guidance[1], fps=6, motion_bucket_id=100,
                  noise_aug_strength=0.0, output_type="np")
    from PIL import Image

    expected = ref(Image.fromarray(image), latents=torch.tensor(latents), decode_chunk_size=chunk, **kwargs).frames
    ours = pipelines[name](Image.fromarray(image), latents=latents, **kwargs).frames
    assert ours.shape == (batch, frames, height, width, 3) and ours.dtype == np.float32
    assert np.abs(ours - np.asarray(expected)).max() <= 1e-3


@pytest.mark.parametrize("images,per_image", [(1, 2), (2, 1)])
def test_batch_of_two_matches_diffusers(snapshot, pipelines, images, per_image):
    """A batch-2 export serves two images, or one image with num_videos_per_prompt=2 (its image graphs,
    exported for the whole batch, then get the one image filled out to the batch)."""
    from PIL import Image

    _, ref = snapshot
    frames, height, width, chunk, batch = SHAPES["c"]
    pictures = [Image.fromarray(_image(height, width, seed=10 + k)) for k in range(images)]
    latents = np.random.default_rng(5).standard_normal((batch, frames, 4, height // 2, width // 2)).astype(np.float32)
    kwargs = dict(height=height, width=width, num_frames=frames, num_inference_steps=2, min_guidance_scale=1.0,
                  max_guidance_scale=2.0, noise_aug_strength=0.0, num_videos_per_prompt=per_image,
                  output_type="np")
    expected = ref(pictures, latents=torch.tensor(latents), decode_chunk_size=frames, **kwargs).frames
    ours = pipelines["c"](pictures, latents=latents, **kwargs).frames
    assert ours.shape == (batch, frames, height, width, 3)
    assert np.abs(ours - np.asarray(expected)).max() <= 1e-3


def test_onnxruntime_refuses_graphs_without_onnx(exports, tmp_path):
    with pytest.raises(ExportInvalid, match="graph unet has no ONNX artifact .*exported with --no-onnx"):
        load_pipeline(exports["b"], backend="onnxruntime")
    # a graph the exporter could not take is named with the reason the export recorded
    copy = tmp_path / "export"
    shutil.copytree(exports["a"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["graphs"]["unet"]["onnx"]
    manifest["onnx_unavailable"]["unet"] = "MindSpore's ONNX exporter failed: no converter for Foo"
    (copy / "manifest.json").chmod(0o644)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportInvalid, match="graph unet has no ONNX artifact .*no converter for Foo"):
        load_pipeline(copy, backend="onnxruntime")
    load_pipeline(copy, backend="mindspore")  # the MindIR graphs still serve
    # no backend named: onnxruntime where every graph has its ONNX file, MindSpore otherwise
    assert load_pipeline(exports["a"]).backend.name == "onnxruntime"
    assert load_pipeline(exports["a"], expand_broadcasts=False).backend.name == "mindspore"
    assert load_pipeline(copy).backend.name != "onnxruntime"
    assert load_pipeline(exports["b"]).backend.name != "onnxruntime"


def test_graphs_load_largest_first(exports):
    """ms.load of a single-file MindIR briefly holds twice the graph it loads: the largest goes first so that
    transient does not stack on the graphs already loaded. self.graphs keeps the pipeline's own order."""
    from video_aot.runtime import backends

    inner = backends.make_backend("onnxruntime")  # cheap to load; the order is the pipeline's, not the backend's
    order = []

    class Recording:
        name, artifact = inner.name, inner.artifact

        def load(self, path):
            order.append(Path(path).stem)
            return inner.load(path)

    pipe = load_pipeline(exports["a"], backend=Recording())
    sizes = {name: pipe._graph_bytes(name) for name in order}
    assert order == sorted(sizes, key=sizes.get, reverse=True) and len(order) == len(pipe.graphs) >= 4
    assert order[0] == "unet" and list(pipe.graphs) == [n for n in pipe.graph_names if n in pipe.graphs]


def test_output_types_and_seed(pipelines):
    pipe = pipelines["b"]
    pipe.set_progress_bar_config(disable=True)
    frames, height, width, _, _ = SHAPES["b"]
    image = _image(height, width)
    a = pipe(image, num_inference_steps=1, seed=7, output_type="np").frames
    b = pipe(image, num_inference_steps=1, seed=7, output_type="uint8").frames
    c = pipe(image, num_inference_steps=1, seed=7, output_type="pil").frames
    assert b.dtype == np.uint8 and b.shape == a.shape
    assert len(c) == 1 and len(c[0]) == frames and c[0][0].size == (width, height)
    np.testing.assert_array_equal(b, (a * 255).round().astype(np.uint8))
    d = pipe(image, num_inference_steps=1, seed=8, output_type="np").frames
    assert np.abs(a - d).max() > 0  # the seed reaches the sampler


# ----------------------------------------------------------------------------- bad input
def test_wrong_size_lists_exported_shapes(pipelines):
    pipe = pipelines["a"]
    with pytest.raises(ShapeMismatch, match=r"num_frames=5, height=32, width=48.*height=64"):
        pipe(_image(32, 48), height=64, width=48, num_inference_steps=1)


def test_frame_count_not_exported(pipelines):
    with pytest.raises(ShapeMismatch, match=r"num_frames=7"):
        pipelines["a"](_image(32, 48), num_frames=7, num_inference_steps=1)


def test_batch_and_latents_mismatch(pipelines):
    with pytest.raises(ShapeMismatch, match="batch=2"):
        pipelines["a"]([_image(32, 48)] * 2, num_inference_steps=1)
    with pytest.raises(ShapeMismatch, match="latents shape"):
        pipelines["a"](_image(32, 48), latents=np.zeros((1, 4, 4, 16, 24), np.float32), num_inference_steps=1)


def test_bad_arguments_are_named(pipelines):
    pipe = pipelines["a"]
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(_image(32, 48), num_inference_steps=0)
    with pytest.raises(ValueError, match="output_type"):
        pipe(_image(32, 48), num_inference_steps=1, output_type="mp4")
    with pytest.raises(ValueError, match="scheduler|euler"):
        pipe(_image(32, 48), num_inference_steps=1, scheduler="nonsense")


def test_corrupted_mindir_is_refused(exports, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(exports["b"], copy)
    target = copy / "unet.mindir"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ExportInvalid, match="checksum mismatch for unet.mindir"):
        load_pipeline(copy, backend="mindspore")
    target.unlink()
    with pytest.raises(ExportInvalid, match="unet.mindir .*missing"):
        load_pipeline(copy, backend="mindspore")


def test_missing_weight_key_is_named(snapshot, tmp_path):
    from safetensors.numpy import load_file, save_file

    from video_aot.models.loading import LoadError

    folder, _ = snapshot
    copy = tmp_path / "snap"
    shutil.copytree(folder, copy)
    path = copy / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    del state["decoder.time_conv_out.weight"]
    save_file(state, str(path))
    out = tmp_path / "out"
    with pytest.raises(LoadError, match=r"missing keys \(1\): decoder.time_conv_out.weight"):
        export_model(str(copy), str(out), frames=3, height=32, width=32, log=lambda *a: None, onnx=False)
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_unsupported_family(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionPipeline.*not supported.*StableVideoDiffusionPipeline"):
        export_model(str(tmp_path), str(tmp_path / "out"), frames=3, height=32, width=32, onnx=False)


def test_interrupted_export_leaves_nothing(snapshot, exports, tmp_path, monkeypatch):
    import video_aot.export.writer as writer

    folder, _ = snapshot
    real = writer.trace_graph
    calls = []

    def failing(work, spec, cell, **kwargs):
        calls.append(spec.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(work, spec, cell, **kwargs)

    monkeypatch.setattr(writer, "trace_graph", failing)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        export_model(str(folder), str(out), frames=3, height=40, width=24, log=lambda *a: None, onnx=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # an interrupted --force export keeps the previous export intact
    existing = tmp_path / "existing"
    shutil.copytree(exports["b"], existing)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        export_model(str(folder), str(existing), frames=3, height=40, width=24, force=True, log=lambda *a: None,
                     onnx=False)
    load_pipeline(existing, backend="mindspore")  # still verifies


def test_existing_export_needs_force(snapshot, exports):
    folder, _ = snapshot
    frames, height, width, chunk, batch = SHAPES["b"]
    messages = []
    # same inputs: recognised as up to date, nothing re-traced
    export_model(str(folder), str(exports["b"]), frames=frames, height=height, width=width,
                 decode_chunk_size=chunk, log=messages.append, onnx=False)
    assert any("up to date" in m for m in messages)
    with pytest.raises(RuntimeError, match="--force"):
        export_model(str(folder), str(exports["b"]), frames=frames + 2, height=height, width=width,
                     log=lambda *a: None, onnx=False)


def test_manifest_contents(exports):
    manifest = json.loads((Path(exports["a"]) / "manifest.json").read_text())
    assert manifest["family"] == "svd" and manifest["pipeline"] == "StableVideoDiffusionPipeline"
    assert manifest["shapes"] == {"batch": 1, "num_frames": 5, "height": 32, "width": 48, "decode_chunk_size": 2}
    unet = manifest["graphs"]["unet"]
    assert [i["name"] for i in unet["inputs"]] == ["sample", "timestep", "image_latents", "encoder_hidden_states",
                                                   "added_time_ids", "guidance_scale"]
    assert unet["inputs"][0]["shape"] == [1, 5, 4, 16, 24]
    assert manifest["graphs"]["vae_decoder_tail"]["inputs"][0]["shape"] == [1, 4, 16, 24]
    assert set(manifest["files"]) == ({g["file"] for g in manifest["graphs"].values()} |
                                      {f for g in manifest["graphs"].values() for f in g["onnx"]["files"]})
    assert all(g["onnx"]["files"] == [g["onnx"]["file"], g["onnx"]["file"] + ".data"]
               for g in manifest["graphs"].values())  # each graph's weights as ONNX external data
    assert manifest["onnx_unavailable"] == {}  # every SVD graph has its ONNX file
    assert manifest["scheduler"]["_class_name"] == "EulerDiscreteScheduler"
    assert manifest["feature_extractor"]["image_mean"]
    assert manifest["mindspore_version"] == "2.7.1"


# ----------------------------------------------------------------------------- dtypes
def test_fp16_export_runs_within_a_loose_tolerance(snapshot, tmp_path_factory):
    """fp16 runs on this CPU (MindSpore has fp16 kernels), with fp16 rounding: 2e-2 relative."""
    folder, ref = snapshot
    out = export_model(str(folder), str(tmp_path_factory.mktemp("fp16") / "e"), frames=2, height=16, width=16,
                       dtype="fp16", log=lambda *a: None, onnx=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "fp16" and manifest["graphs"]["unet"]["tolerance"] == 2e-2
    pipe = load_pipeline(out, backend="mindspore")
    z = np.random.default_rng(5).standard_normal((2, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = ref.vae.decode(torch.tensor(z) / ref.vae.config.scaling_factor, num_frames=2).sample.numpy()
    assert rel_l2(pipe.graphs["vae_decoder"](z)[0], expected) <= 2e-2


def test_bf16_export_is_built_and_refused_on_the_cpu(snapshot, exports, tmp_path_factory):
    """bf16 (Ascend) can be exported and inspected here, not run: MindSpore has no bf16 CPU kernels."""
    folder, _ = snapshot
    frames, height, width, chunk, batch = SHAPES["b"]
    out = export_model(str(folder), str(tmp_path_factory.mktemp("bf16") / "e"), frames=frames, height=height,
                       width=width, decode_chunk_size=chunk, dtype="bf16", log=lambda *a: None, onnx=False)
    fp32_size = (Path(exports["b"]) / "unet.mindir").stat().st_size
    bf16_size = (out / "unet.mindir").stat().st_size
    assert 0.4 < bf16_size / fp32_size < 0.75  # the weights take 2 bytes instead of 4 (plus the graph itself)
    with pytest.raises(ExportInvalid, match="bf16 .*Ascend"):
        load_pipeline(out, backend="mindspore")


def test_generate_video_cli_writes_an_mp4(exports, tmp_path):
    from PIL import Image

    from video_aot.runtime.cli import main
    from video_aot.runtime.video_io import read_video

    frames, height, width, _, _ = SHAPES["b"]
    Image.fromarray(_image(height, width)).save(tmp_path / "in.png")
    out = tmp_path / "out.mp4"
    assert main([str(exports["b"]), "--image", str(tmp_path / "in.png"), "--out", str(out), "--steps", "1",
                 "--seed", "3", "--fps", "6", "--motion-bucket-id", "90"]) == 0
    video, fps = read_video(out)
    assert video.shape == (frames, height, width, 3) and fps == 6
    # a request that does not fit the export is a clear error, not a traceback
    assert main([str(exports["b"]), "--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "x.mp4")] +
                ["--decode-chunk-size", "2"]) == 2


def test_terminated_export_cli_leaves_nothing(snapshot, tmp_path):
    """SIGTERM during tracing: the CLI unwinds, removes its work folder and writes nothing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder, _ = snapshot
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "video_aot.export.cli", str(folder), "--frames", "2", "--height",
                             "16", "--width", "16", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "GLOG_v": "3"})
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".out.partial-*")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "nothing was written" in err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_stale_work_folders_of_killed_exports_are_removed(tmp_path):
    import os

    from video_aot.export.writer import remove_stale_partials

    dead = tmp_path / ".out.partial-999999999-abc"
    alive = tmp_path / f".out.partial-{os.getpid()}-def"
    dead.mkdir()
    alive.mkdir()
    remove_stale_partials(tmp_path / "out")
    assert not dead.exists() and alive.exists()


# ----------------------------------------------------------------------------- the shared pipeline suite
@pytest.fixture(scope="module")
def case(snapshot, exports, pipelines, tmp_path_factory):
    from PIL import Image

    _, ref = snapshot
    frames, height, width, chunk, _ = SHAPES["a"]
    image = Image.fromarray(_image(height, width, seed=2))
    path = tmp_path_factory.mktemp("svd-suite") / "in.png"
    image.save(path)
    inputs = dict(image=image, num_inference_steps=2, fps=6, motion_bucket_id=100, noise_aug_strength=0.0,
                  min_guidance_scale=1.5, max_guidance_scale=2.5)

    def reference(inputs, latents):
        return ref(**inputs, latents=torch.tensor(latents), height=height, width=width, num_frames=frames,
                   decode_chunk_size=chunk, output_type="np").frames

    return SuiteCase(pipe=pipelines["a"], export_dir=str(exports["a"]), inputs=inputs, reference=reference,
                     cli_args=["--image", str(path), "--steps", "1", "--seed", "0"])


class TestSuite(PipelineSuite):
    pass
