"""What every export plan reads from a snapshot: component configs, networks with their weights
(or random weights), and the tokenizer that is copied into the export."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from video_aot.models.loading import DTYPES, LoadError, load_network, read_json
from video_aot.runtime.manifest import sha256_file

# the long spellings (torch's names) --dtype also takes; the manifest records the short ones (DTYPES)
DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def dtype_name(value, where: str = "") -> str:
    """One dtype name (fp32, fp16, bf16, or torch's float32, float16, bfloat16) in its short form."""
    if isinstance(value, str) and value.strip() in DTYPES:
        return value.strip()
    if isinstance(value, str) and value.strip() in DTYPE_ALIASES:
        return DTYPE_ALIASES[value.strip()]
    raise ValueError(f"unsupported dtype {value!r}{where}; choose one of {DTYPES} (or {tuple(DTYPE_ALIASES)})")


def parse_dtype(value):
    """export-model's ``--dtype``: one dtype for every graph (``"fp16"``), or a per-component plan,
    ``"transformer=bf16,text_encoder=fp16,vae=fp16"`` (or the same as a dict). Returns the dtype name,
    or {component: dtype name}. Malformed items, repeated components and unknown dtypes are refused;
    which component names are valid depends on the snapshot and its graphs (export_model checks them)."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, str) and "=" not in value:
        return dtype_name(value)
    elif isinstance(value, str):
        items = []
        for item in value.split(","):
            name, sep, dtype = item.partition("=")
            if not sep or not name.strip() or not dtype.strip():
                raise ValueError(f"--dtype {value!r}: {item.strip()!r} is not COMPONENT=DTYPE; give one dtype for "
                                 "every graph (e.g. fp16) or a comma-separated plan such as "
                                 "transformer=bf16,text_encoder=fp16,vae=fp16")
            items.append((name.strip(), dtype))
    else:
        raise ValueError(f"--dtype must be a dtype name or a COMPONENT=DTYPE plan, got {value!r}")
    if not items:
        raise ValueError("--dtype: the per-component plan is empty")
    plan = {}
    for name, dtype in items:
        if name in plan:
            raise ValueError(f"--dtype names component {name!r} twice")
        plan[name] = dtype_name(dtype, f" for component {name!r}")
    return plan


def network_components(snapshot: Path) -> tuple:
    """The model_index.json components that are networks (their folder holds a config.json)."""
    index = read_json(Path(snapshot) / "model_index.json")
    return tuple(sorted(k for k in index if not k.startswith("_") and (Path(snapshot) / k / "config.json").is_file()))


def component_of(graph: str, components) -> Optional[str]:
    """The component a graph is traced from: the longest component name that is the graph's name or
    its prefix before a ``_`` ("vae" for "vae_decoder_tail", "text_encoder_2" for "text_encoder_2",
    "unet" for "unet_frame"); None when no component matches."""
    matches = [c for c in components if graph == c or graph.startswith(c + "_")]
    return max(matches, key=len) if matches else None


def graph_dtype(graph: str, dtype) -> str:
    """The compute dtype of graph ``graph`` under ``dtype``: one dtype for every graph, or a plan
    {component: dtype} naming every network component of the snapshot."""
    if isinstance(dtype, str):
        return dtype
    component = component_of(graph, dtype)
    if component is None:
        raise ValueError(f"graph {graph!r} belongs to none of the dtype plan's components {sorted(dtype)}; name "
                         "the graph after its component (e.g. vae_decoder for vae)")
    return dtype[component]


@dataclass(frozen=True)
class Components:
    """A snapshot's components. ``weights=None`` builds every network with random weights (configs
    still come from ``snapshot``); otherwise weights come from ``weights/<component>``."""

    snapshot: Path
    weights: Optional[Path]
    variant: Optional[str] = None
    dtype: object = "fp32"  # one dtype for every network, or {component: dtype} (parse_dtype)

    def folder(self, name: str) -> Path:
        return (self.weights / name) if self.weights is not None else (self.snapshot / name)

    def index(self) -> dict:
        """model_index.json (its ``_class_name`` is the pipeline)."""
        return read_json(self.snapshot / "model_index.json")

    def config(self, name: str) -> dict:
        return read_json(self.snapshot / name / "config.json")

    def scheduler(self, name: str = "scheduler") -> dict:
        return read_json(self.snapshot / name / "scheduler_config.json")

    def dtype_of(self, name: str) -> str:
        """The dtype component ``name`` is loaded in (a plan that does not name it is refused, never
        defaulted here: export_model fills in every component)."""
        if isinstance(self.dtype, str):
            return self.dtype
        if name not in self.dtype:
            raise ValueError(f"the dtype plan {self.dtype} gives no dtype for component {name!r}")
        return self.dtype[name]

    def load(self, name: str, **build_kwargs):
        """The component's network with its weights loaded strictly, in its dtype (``dtype_of``);
        ``build_kwargs`` are export-time constants (a static frame count, say)."""
        cell, _ = load_network(self.folder(name), variant=self.variant, dtype=self.dtype_of(name),
                               random_weights=self.weights is None, **build_kwargs)
        return cell

    def tokenizer(self, files: tuple, usable: tuple, name: str = "tokenizer", required: bool = True):
        """Copy ``<name>/`` into the export so that it is self-contained: returns (folder, assets,
        entry) for the manifest, or (None, {}, None) when a random-weights export has no tokenizer. ``usable``: file
        names any one of which makes the folder a usable tokenizer (tuples mean all of them)."""
        folder = None
        for root in (self.weights, self.snapshot):
            candidate = None if root is None else Path(root) / name
            if candidate is not None and any(
                    all((candidate / f).is_file() for f in (u if isinstance(u, tuple) else (u,))) for u in usable):
                folder = candidate
                break
        if folder is None:
            if self.weights is not None and required:
                raise LoadError(
                    f"{self.weights}: the snapshot has no usable {name}/ folder (one of {list(usable)}); the export "
                    "copies it so prompts can be tokenized. Download the tokenizer files too (e.g. huggingface-cli "
                    f"download <repo> --include '{name}/*'), or export with --random-weights and pass prompt_embeds "
                    "at run time.")
            return None, {}, None
        assets, checksums = {}, {}
        for file in files:
            if (folder / file).is_file():
                assets[f"{name}/{file}"] = str(folder / file)
                checksums[file] = sha256_file(folder / file)
        return folder, assets, {"folder": name, "files": checksums}
