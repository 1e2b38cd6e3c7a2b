"""export/writer.py: --force replaces an earlier export and never deletes anything else."""
from __future__ import annotations

import json

import pytest

from video_aot.export.writer import ExportError, write_export


MANIFEST = {"export_key": "k", "family": "svd", "pipeline": "StableVideoDiffusionPipeline", "shapes": {}}


def _quiet(*_):
    pass


def _fake_export(folder, extra=()):
    folder.mkdir()
    (folder / "unet.mindir").write_bytes(b"graph")
    (folder / "manifest.json").write_text(json.dumps({"graphs": {"unet": {"file": "unet.mindir"}},
                                                      "files": {"unet.mindir": "0" * 64}}))
    for name in extra:
        (folder / name).write_text("user data")
    return folder


def test_force_refuses_a_folder_that_is_not_an_export(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    with pytest.raises(ExportError, match="not an export folder.*never deletes"):
        write_export(folder, [], MANIFEST, force=True, log=_quiet)
    assert (folder / "notes.txt").read_text() == "x"


def test_force_refuses_an_export_holding_user_files(tmp_path):
    folder = _fake_export(tmp_path / "e", extra=("notes.txt",))
    with pytest.raises(ExportError, match="notes.txt.*--force would delete"):
        write_export(folder, [], MANIFEST, force=True, log=_quiet)
    assert (folder / "notes.txt").exists() and (folder / "unet.mindir").exists()


def test_force_refuses_a_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("keep me")
    with pytest.raises(ExportError, match="not a folder"):
        write_export(target, [], MANIFEST, force=True, log=_quiet)
    assert target.read_text() == "keep me"


def test_force_replaces_an_earlier_export_and_an_empty_folder(tmp_path):
    folder = _fake_export(tmp_path / "e")
    write_export(folder, [], MANIFEST, force=True, log=_quiet)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["export_key"] == "k" and not (folder / "unet.mindir").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_export(empty, [], MANIFEST, force=True, log=_quiet)
    assert (empty / "manifest.json").is_file()


def test_a_stop_swallowed_during_a_trace_still_stops_the_export(tmp_path, monkeypatch):
    """export-model's SIGTERM handler raises KeyboardInterrupt and records the request. Should the
    exception be swallowed where it is raised (MindSpore calling back into Python while it compiles), the
    writer stops after that graph and moves nothing into place."""
    from video_aot.export import cli, writer
    from video_aot.export.graphs import GraphSpec
    from video_aot.runtime.manifest import TensorSpec

    monkeypatch.setattr(writer, "_stop_requested", [])

    def trace_swallowing_the_signal(work, spec, cell, **_):
        try:
            cli._raise_interrupt(15, None)
        except KeyboardInterrupt:
            pass  # what a swallowing callback does
        (work / f"{spec.name}.mindir").write_bytes(b"graph")
        return {"file": f"{spec.name}.mindir", "files": [f"{spec.name}.mindir"]}

    monkeypatch.setattr(writer, "trace_graph", trace_swallowing_the_signal)
    traced = []
    graphs = [(GraphSpec(name, (TensorSpec("x", (1,)),), (TensorSpec("y", (1,)),)), lambda n=name: traced.append(n))
              for name in ("first", "second")]
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt, match="stopped by signal 15"):
        write_export(out, graphs, MANIFEST, log=_quiet)
    assert traced == ["first"]  # stopped after the graph during which the signal came
    assert list(tmp_path.iterdir()) == []  # no export, no work folder
