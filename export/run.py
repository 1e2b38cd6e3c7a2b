"""export_model(): snapshot or preset -> family plan -> traced graphs + manifest."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

from video_aot.runtime.families import family_for_pipeline

from .components import component_of, graph_dtype, network_components, parse_dtype
from .sources import Source, presets, resolve
from .writer import export_key, write_export



def _weights_fingerprint(folder: Optional[Path]) -> list:
    if folder is None:
        return ["random"]
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, int(p.stat().st_mtime))
        for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json")
    )


def _dtype_plan(dtype, source: Source):
    """(``dtype`` parsed: one dtype name or {component: dtype}, where it came from). None takes the
    preset's dtype_plan (preset.json) when it has one, else fp32."""
    if dtype is None:
        meta = presets().get(source.preset) if source.preset else None
        if meta and meta.get("dtype_plan"):
            where = f"preset {source.preset}'s dtype_plan"
            try:
                return parse_dtype(meta["dtype_plan"]), where
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        return "fp32", "--dtype"
    return parse_dtype(dtype), "--dtype"


def _graph_dtypes(graphs, dtype, components: tuple, plan_dtype, pipeline: str, where: str) -> dict:
    """{component: dtype} of the components the export's graphs are traced from; a plan that names a
    component no graph comes from is refused, and so is a family plan that did not record each graph's
    dtype (graphs.relax_tolerance)."""
    used = {}
    for spec, _ in graphs:
        component = component_of(spec.name, components)
        expected = graph_dtype(spec.name, plan_dtype)
        if spec.dtype != expected:
            raise RuntimeError(f"the {pipeline} plan left graph {spec.name} at dtype {spec.dtype}, its component's is "
                               f"{expected}: the family plan must call graphs.relax_tolerance(graphs, dtype)")
        if component is not None:
            used[component] = expected
    if isinstance(dtype, dict):
        unknown = sorted(set(dtype) - set(used))
        if unknown:
            raise ValueError(f"{where} names {unknown}, which no graph of this {pipeline} export is traced from; its "
                             f"components are {sorted(used)}")
    return dict(sorted(used.items()))


def export_model(model: str, out: str, frames: int, height: int, width: int, batch: int = 1, dtype=None,
                 decode_chunk_size: Optional[int] = None, weights: Optional[str] = None, random_weights: bool = False,
                 force: bool = False, variant: Optional[str] = None, validate: bool = False, log=print,
                 dry_run: bool = False, onnx: bool = True, expand_broadcasts: bool = True, **options):
    """``options``: family-specific export options passed to the family's plan (e.g. the t2v
    family's ``forward_chunking="1:1"``); options left at None are not passed. ``onnx`` (the default):
    also write an ONNX file next to each MindIR graph the ONNX exporter can take (export/onnx.py); an
    export with one for every graph runs on onnxruntime on the CPU by default. ``onnx=False`` writes the
    MindIR graphs alone (for Ascend, where MindIR is what runs), in about half the time.
    ``expand_broadcasts``: write each MindIR with its broadcasting elementwise ops' inputs expanded
    (export/writer.trace_graph; the same values in far less memory on MindSpore's CPU runtime).

    ``dtype``: one dtype for every graph ("fp32", "fp16", "bf16"), or a per-component plan
    ("transformer=bf16,text_encoder=fp16,vae=fp16", or a dict); components a plan does not name are fp32.
    None takes the preset's dtype_plan when it has one, else fp32. Each graph is traced with its
    component's weights in that dtype; its inputs and outputs stay float32/int32."""
    import mindspore as ms

    if dtype is not None:
        parse_dtype(dtype)  # a malformed --dtype is refused before anything is resolved
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    source: Source = resolve(model, weights, random_weights)
    dtype, where = _dtype_plan(dtype, source)
    components = network_components(source.snapshot)
    # a plan names every network component (fp32 where not given); what no graph uses is refused below
    plan_dtype = dtype if isinstance(dtype, str) else {c: dtype.get(c, "fp32") for c in components}
    spec = family_for_pipeline(source.pipeline)
    options = {k: v for k, v in options.items() if v is not None}
    accepted = inspect.signature(spec.plan).parameters
    wrong = sorted(k for k in options if k not in accepted)
    if wrong:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in wrong)} does not apply to "
                         f"{source.pipeline} exports (family {spec.name})")
    export_options = {"frames": frames, "height": height, "width": width, "batch": batch, "dtype": plan_dtype,
                      "decode_chunk_size": decode_chunk_size, "variant": variant, **options}
    graphs, manifest = spec.plan(source.snapshot, source.weights, **export_options)
    dtype_plan = _graph_dtypes(graphs, dtype, components, plan_dtype, source.pipeline, where)
    if isinstance(dtype, dict):
        export_options["dtype"] = dtype_plan  # the plan as applied, which plan_from_manifest replays
    dtypes = {graph.dtype for graph, _ in graphs}
    manifest = {"family": spec.name, **manifest, "dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
                "dtype_plan": dtype_plan}
    manifest["source"] = {
        "model": model, "snapshot": str(source.snapshot), "preset": source.preset, "repo_id": source.repo_id,
        "weights": str(source.weights) if source.weights else "random", "variant": variant,
    }
    manifest["export_options"] = export_options  # plan_from_manifest() replays exactly this plan
    manifest["broadcasts_expanded"] = bool(expand_broadcasts)
    manifest["export_key"] = export_key({
        "manifest": {k: v for k, v in manifest.items()},
        "graphs": [(s.name, s.to_json()) for s, _ in graphs],
        "weights": _weights_fingerprint(source.weights),
        "mindspore": ms.__version__,
        **({"onnx": True} if onnx else {}),  # an --onnx export is not the same artifacts as a MindIR-only one
    })
    if dry_run:  # what would be written, without building or tracing any network
        return {**manifest, "graphs": {spec.name: spec.to_json() for spec, _ in graphs}}
    return write_export(out, graphs, manifest, force=force, validate=validate, log=log, onnx=onnx,
                        expand_broadcasts=expand_broadcasts)


def plan_from_manifest(manifest) -> list:
    """The (GraphSpec, cell factory) list an export was traced from, rebuilt from its manifest's
    source and export options (benchmarks run these cells eagerly; a re-export replays them)."""
    source = manifest["source"]
    weights = None if source.get("weights") in (None, "random") else Path(source["weights"])
    graphs, _ = family_for_pipeline(manifest["pipeline"]).plan(Path(source["snapshot"]), weights,
                                                              **manifest["export_options"])
    return graphs
