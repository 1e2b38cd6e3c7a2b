"""export-model's per-component dtype plan (--dtype transformer=bf16,text_encoder=fp16,...): parsing and its
errors, a preset's dtype_plan as the default, each graph's dtype in the manifest, and plan_from_manifest
replaying it. Dry runs only (no network is built); the traced mixed-dtype exports are in
test_hunyuan_video_pipeline.py."""
from __future__ import annotations

import json

import pytest

from video_aot.export.components import component_of, parse_dtype
from video_aot.export.run import export_model, plan_from_manifest
from video_aot.export.sources import presets

HUNYUAN = dict(frames=61, height=320, width=512)


def _dry(model, **kwargs):
    shapes = HUNYUAN if model == "hunyuan-video" else {"frames": 14, "height": 576, "width": 1024}
    return export_model(model, "unused", **{**shapes, **kwargs}, random_weights=True, dry_run=True,
                        log=lambda *a: None)


def _graph_dtypes(manifest) -> dict:
    return {name: graph["dtype"] for name, graph in manifest["graphs"].items()}


def test_parse_dtype_takes_one_dtype_or_a_per_component_plan():
    assert parse_dtype("fp16") == "fp16" and parse_dtype("bfloat16") == "bf16"
    assert parse_dtype("transformer=bfloat16, text_encoder=float16,vae=fp16") == {
        "transformer": "bf16", "text_encoder": "fp16", "vae": "fp16"}
    assert parse_dtype({"vae": "float32"}) == {"vae": "fp32"}


@pytest.mark.parametrize("spec,message", [
    ("fp8", r"unsupported dtype 'fp8'; choose one of \('fp32', 'fp16', 'bf16'\)"),
    ("transformer=fp8", r"unsupported dtype 'fp8' for component 'transformer'; choose one of"),
    ("transformer,vae=fp16", r"'transformer' is not COMPONENT=DTYPE"),
    ("=fp16", r"'=fp16' is not COMPONENT=DTYPE"),
    ("vae=", r"'vae=' is not COMPONENT=DTYPE"),
    ("vae=fp16,vae=fp32", r"names component 'vae' twice"),
])
def test_bad_dtype_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_dtype(spec)
    with pytest.raises(ValueError, match=message):  # before anything is resolved or planned
        _dry("hunyuan-video", dtype=spec)


def test_components_no_graph_is_traced_from_are_refused_with_the_valid_names():
    with pytest.raises(ValueError, match=r"--dtype names \['unet'\], which no graph of this HunyuanVideoPipeline "
                                         r"export is traced from; its components are \['text_encoder', "
                                         r"'text_encoder_2', 'transformer', 'vae'\]"):
        _dry("hunyuan-video", dtype="transformer=fp16,unet=fp16")
    # AnimateDiff's motion adapter is traced into the unet graph: its dtype is the unet's
    with pytest.raises(ValueError, match=r"\['motion_adapter'\].*components are \['text_encoder', 'unet', 'vae'\]"):
        export_model("animatediff-v1-5-2", "unused", frames=16, height=512, width=512, dtype="motion_adapter=fp16",
                     random_weights=True, dry_run=True, log=lambda *a: None)


def test_graphs_belong_to_the_component_their_name_starts_with():
    components = ("text_encoder", "text_encoder_2", "transformer", "unet", "vae")
    assert component_of("text_encoder_2", components) == "text_encoder_2"
    assert component_of("text_encoder", components) == "text_encoder"
    assert component_of("vae_decoder_5_40x64", components) == "vae"
    assert component_of("unet_frame", components) == "unet"
    assert component_of("vaegan", components) is None


def test_the_preset_dtype_plan_is_the_default_and_is_replayed():
    """HunyuanVideo's preset.json dtype_plan (transformer bf16, text encoders and VAE fp16) applies when no
    --dtype is given: each graph records its component's dtype, and plan_from_manifest rebuilds the same."""
    manifest = _dry("hunyuan-video")
    plan = presets()["hunyuan-video"]["dtype_plan"]
    assert manifest["dtype"] == "mixed" and manifest["dtype_plan"] == plan
    assert manifest["export_options"]["dtype"] == plan
    assert _graph_dtypes(manifest) == {"text_encoder": "fp16", "text_encoder_2": "fp16", "transformer": "bf16",
                                       "vae_decoder_1_40x64": "fp16", "vae_decoder_4_40x64": "fp16",
                                       "vae_decoder_5_40x64": "fp16"}
    replayed = {spec.name: spec.dtype for spec, _ in plan_from_manifest(manifest)}
    assert replayed == _graph_dtypes(manifest)
    # half-precision graphs are validated with the half-precision tolerance; inputs and outputs stay float32
    for graph in manifest["graphs"].values():
        assert graph["tolerance"] == 2e-2
        assert {t["dtype"] for t in graph["inputs"] + graph["outputs"]} <= {"float32", "int32"}


def test_an_explicit_dtype_replaces_the_preset_plan():
    fp32 = _dry("hunyuan-video", dtype="fp32")
    assert fp32["dtype"] == "fp32" and set(_graph_dtypes(fp32).values()) == {"fp32"}
    assert fp32["export_options"]["dtype"] == "fp32"
    partial = _dry("hunyuan-video", dtype="transformer=float16")  # the components not named stay fp32
    assert partial["dtype_plan"] == {"text_encoder": "fp32", "text_encoder_2": "fp32", "transformer": "fp16",
                                     "vae": "fp32"}
    assert partial["graphs"]["transformer"]["tolerance"] == 2e-2
    assert partial["graphs"]["text_encoder"]["tolerance"] == 1e-4


def test_any_family_takes_a_per_component_plan():
    """SVD (no preset plan): the unet in bf16, the VAE in fp16, the image encoder left at fp32."""
    manifest = _dry("svd", dtype="unet=bf16,vae=fp16")
    assert manifest["dtype"] == "mixed"
    assert _graph_dtypes(manifest) == {"image_encoder": "fp32", "unet": "bf16", "vae_encoder": "fp16",
                                       "vae_decoder": "fp16"}
    assert manifest["graphs"]["image_encoder"]["tolerance"] == 1e-4
    assert {spec.name: spec.dtype for spec, _ in plan_from_manifest(manifest)} == _graph_dtypes(manifest)
    assert _dry("svd")["dtype_plan"] == {"image_encoder": "fp32", "unet": "fp32", "vae": "fp32"}


def test_cli_takes_a_per_component_dtype_and_reports_bad_ones(capsys):
    from video_aot.export.cli import main

    args = ["hunyuan-video", "--frames", "61", "--height", "320", "--width", "512", "--out", "unused",
            "--random-weights", "--dry-run"]
    assert main(args + ["--dtype", "transformer=bfloat16,text_encoder=float16"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dtype_plan"] == {"text_encoder": "fp16", "text_encoder_2": "fp32", "transformer": "bf16",
                                     "vae": "fp32"}
    assert main(args + ["--dtype", "transformer=bf16,text_encoder=fp8"]) == 2
    err = capsys.readouterr().err
    assert "export-model: error: unsupported dtype 'fp8' for component 'text_encoder'" in err
    assert main(args + ["--dtype", "transformer=bf16,unet=fp16"]) == 2
    assert "components are ['text_encoder', 'text_encoder_2', 'transformer', 'vae']" in capsys.readouterr().err


def test_manifest_graph_dtypes_and_float32_outputs():
    """Each graph's dtype from its manifest entry (older manifests: the export's one dtype); a bound graph
    returns its declared output dtypes whatever the backend hands back."""
    import numpy as np

    from video_aot.runtime.manifest import BoundGraph, GraphEntry, Manifest, TensorSpec

    def graph(**extra):
        return {"file": "g.mindir", "inputs": [{"name": "x", "shape": [2], "dtype": "float32"}],
                "outputs": [{"name": "y", "shape": [2], "dtype": "float32"}], **extra}

    raw = {"format_version": 2, "family": "svd", "pipeline": "StableVideoDiffusionPipeline", "shapes": {},
           "files": {}, "dtype": "mixed", "graphs": {"unet": graph(dtype="bf16"), "vae_decoder": graph(dtype="fp16")}}
    manifest = Manifest(raw)
    assert manifest.graph_dtype("unet") == "bf16" and manifest.graph_dtype("vae_decoder") == "fp16"
    old = Manifest({**raw, "dtype": "fp16", "graphs": {"unet": graph()}})  # written before per-graph dtypes
    assert old.graph_dtype("unet") == "fp16"
    entry = GraphEntry("g", "g.mindir", ("g.mindir",), (TensorSpec("x", (2,)),), (TensorSpec("y", (2,)),))
    out = BoundGraph(entry, lambda x: (x.astype(np.float16) * 2,))(x=[1.5, 2.0])[0]
    assert out.dtype == np.float32 and out.tolist() == [3.0, 4.0]
