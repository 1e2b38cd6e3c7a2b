"""export_model(): snapshot or preset -> family plan -> traced graphs + manifest."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

from video_aot.models.loading import check_dtype

from video_aot.runtime.families import family_for_pipeline

from .sources import Source, resolve
from .writer import export_key, write_export



def _weights_fingerprint(folder: Optional[Path]) -> list:
    if folder is None:
        return ["random"]
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, int(p.stat().st_mtime))
        for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json")
    )


def export_model(model: str, out: str, frames: int, height: int, width: int, batch: int = 1, dtype: str = "fp32",
                 decode_chunk_size: Optional[int] = None, weights: Optional[str] = None, random_weights: bool = False,
                 force: bool = False, variant: Optional[str] = None, validate: bool = False, log=print,
                 dry_run: bool = False, onnx: bool = False, **options):
    """``options``: family-specific export options passed to the family's plan (e.g. the t2v
    family's ``forward_chunking="1:1"``); options left at None are not passed. ``onnx``: also write
    an ONNX file next to each MindIR graph the ONNX exporter can take (export/onnx.py)."""
    import mindspore as ms

    check_dtype(dtype)
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    source: Source = resolve(model, weights, random_weights)
    spec = family_for_pipeline(source.pipeline)
    options = {k: v for k, v in options.items() if v is not None}
    accepted = inspect.signature(spec.plan).parameters
    wrong = sorted(k for k in options if k not in accepted)
    if wrong:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in wrong)} does not apply to "
                         f"{source.pipeline} exports (family {spec.name})")
    export_options = {"frames": frames, "height": height, "width": width, "batch": batch, "dtype": dtype,
                      "decode_chunk_size": decode_chunk_size, "variant": variant, **options}
    graphs, manifest = spec.plan(source.snapshot, source.weights, **export_options)
    manifest = {"family": spec.name, **manifest}
    manifest["source"] = {
        "model": model, "snapshot": str(source.snapshot), "preset": source.preset, "repo_id": source.repo_id,
        "weights": str(source.weights) if source.weights else "random", "variant": variant,
    }
    manifest["export_options"] = export_options  # plan_from_manifest() replays exactly this plan
    manifest["export_key"] = export_key({
        "manifest": {k: v for k, v in manifest.items()},
        "graphs": [(s.name, s.to_json()) for s, _ in graphs],
        "weights": _weights_fingerprint(source.weights),
        "mindspore": ms.__version__,
        **({"onnx": True} if onnx else {}),  # an --onnx export is not the same artifacts as a MindIR-only one
    })
    if dry_run:  # what would be written, without building or tracing any network
        return {**manifest, "graphs": {spec.name: spec.to_json() for spec, _ in graphs}}
    return write_export(out, graphs, manifest, force=force, validate=validate, log=log, onnx=onnx)


def plan_from_manifest(manifest) -> list:
    """The (GraphSpec, cell factory) list an export was traced from, rebuilt from its manifest's
    source and export options (benchmarks run these cells eagerly; a re-export replays them)."""
    source = manifest["source"]
    weights = None if source.get("weights") in (None, "random") else Path(source["weights"])
    graphs, _ = family_for_pipeline(manifest["pipeline"]).plan(Path(source["snapshot"]), weights,
                                                              **manifest["export_options"])
    return graphs
