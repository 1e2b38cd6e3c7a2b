"""export-model's family-specific options from the command line: --tiling [MODE] and --option KEY=VALUE.
Dry runs of presets with random weights (nothing is built or traced)."""
from __future__ import annotations

import json

import pytest

from video_aot.export.cli import main, parse_options


def test_parse_options_reads_json_values_and_text():
    assert parse_options(["tile_sample_min_height=256", "image-to-video=true", "name=abc"]) == {
        "tile_sample_min_height": 256, "image_to_video": True, "name": "abc"}


@pytest.mark.parametrize("items,message", [
    (["tile_sample_min_height"], "expected KEY=VALUE"),
    (["=3"], "expected KEY=VALUE"),
    (["a=1", "a=2"], "given twice"),
    (["tiling=true"], "use --tiling"),
])
def test_bad_options_are_refused(items, message):
    with pytest.raises(ValueError, match=message):
        parse_options(items, reserved={"tiling"})


def _dry(model, capsys, *args):
    rc = main([model, "--frames", "17", "--height", "128", "--width", "160", "--out", "unused", "--random-weights",
               "--dry-run", *args])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 else None), out.err


def test_ltx_tiling_mode_and_tile_sizes_from_the_command_line(capsys):
    rc, manifest, err = _dry("ltx-video-0.9.1", capsys, "--tiling", "spatial+framewise",
                             "--option", "tile_sample_min_height=64", "--option", "tile_sample_stride_height=32")
    assert rc == 0, err
    options = manifest["export_options"]
    assert options["tiling"] == "spatial+framewise"
    assert (options["tile_sample_min_height"], options["tile_sample_stride_height"]) == (64, 32)
    assert [name for name in manifest["graphs"] if name.startswith("vae_decoder_")]  # the tile graphs
    rc, plain, _ = _dry("ltx-video-0.9.1", capsys)
    assert rc == 0 and not [name for name in plain["graphs"] if name.startswith("vae_decoder_")]
    rc, manifest, err = _dry("ltx-video-0.9.1", capsys, "--tiling")  # no MODE: diffusers' vae.enable_tiling()
    assert rc == 0 and manifest["export_options"]["tiling"] in (True, "spatial"), err


def test_modes_and_options_a_family_does_not_take_are_refused(capsys):
    rc, _, err = _dry("cogvideox-2b", capsys, "--tiling", "framewise")
    assert rc == 2 and "tiling='framewise' does not apply to CogVideoX" in err
    rc, _, err = _dry("ltx-video-0.9.1", capsys, "--tiling", "sideways")
    assert rc == 2 and "tiling='sideways'" in err
    with pytest.raises(SystemExit):  # a name export-model has its own flag for
        main(["svd-xt", "--frames", "4", "--height", "64", "--width", "64", "--out", "x", "--option", "dtype=fp16"])
    assert "use --dtype" in capsys.readouterr().err
    rc, _, err = _dry("svd-xt", capsys, "--option", "tile_sample_min_height=64")
    assert rc == 2 and "--tile-sample-min-height does not apply" in err


@pytest.mark.parametrize("flags,onnx", [((), True), (("--onnx",), True), (("--no-onnx",), False)])
def test_onnx_artifacts_are_written_unless_no_onnx(flags, onnx, monkeypatch, tmp_path):
    """ONNX is the CPU's default runtime, so export-model writes it unless told --no-onnx; the Python
    API has the same default."""
    import inspect

    from video_aot.export import run

    seen = {}
    monkeypatch.setattr(run, "export_model", lambda *a, **kw: seen.update(kw) or str(tmp_path))
    main(["svd-xt", "--frames", "4", "--height", "64", "--width", "64", "--out", str(tmp_path), *flags])
    assert seen["onnx"] is onnx
    monkeypatch.undo()
    assert inspect.signature(run.export_model).parameters["onnx"].default is True
