"""Where an export's configs and weights come from: a diffusers snapshot folder, or a preset
(the real configs of a published checkpoint, kept in export/presets/) whose weights come from
--weights, the local huggingface_hub cache (never the network), or --random-weights."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class Source:
    snapshot: Path            # folder with model_index.json and the component configs
    weights: Optional[Path]   # folder with the component weights; None = random weights
    preset: Optional[str] = None
    repo_id: Optional[str] = None

    @property
    def pipeline(self) -> str:
        return json.loads((self.snapshot / "model_index.json").read_text())["_class_name"]


def presets() -> dict:
    """name -> preset description (presets/<name>/preset.json)."""
    out = {}
    for folder in sorted(PRESET_DIR.iterdir()) if PRESET_DIR.is_dir() else []:
        meta = folder / "preset.json"
        if meta.is_file():
            out[folder.name] = json.loads(meta.read_text())
    return out


def _cached_snapshot(repo_id: str) -> Optional[Path]:
    """The repo's snapshot in the local huggingface_hub cache, without touching the network."""
    try:
        from huggingface_hub import snapshot_download

        # the cache location is read now (huggingface_hub reads HF_HUB_CACHE only at import)
        cache_dir = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or None
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except Exception:  # not cached (LocalEntryNotFoundError) or no usable cache
        return None


def resolve(model: str, weights: Optional[str] = None, random_weights: bool = False) -> Source:
    path = Path(model)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path} is not a diffusers snapshot: model_index.json is missing")
        if random_weights:
            return Source(path.resolve(), None)
        return Source(path.resolve(), Path(weights).resolve() if weights else path.resolve())
    from .tiny import tiny_models, write_tiny_snapshot

    TINY = tiny_models()

    if model in TINY:  # generated locally: configs and weights in one snapshot
        folder = write_tiny_snapshot(model)
        return Source(folder, None if random_weights else folder, model, None)
    known = presets()
    if model not in known:
        raise ValueError(f"{model!r} is neither a snapshot folder nor a preset; presets: {sorted(known)}, "
                         f"generated tiny models: {sorted(TINY)}")
    meta = known[model]
    snapshot = PRESET_DIR / model
    if random_weights:
        return Source(snapshot, None, model, meta["repo_id"])
    if weights:
        folder = Path(weights)
        if not folder.is_dir():
            raise ValueError(f"--weights {folder} is not a folder")
        return Source(snapshot, folder.resolve(), model, meta["repo_id"])
    cached = _cached_snapshot(meta["repo_id"])
    if cached is not None:
        return Source(snapshot, cached, model, meta["repo_id"])
    raise ValueError(
        f"no weights for preset {model!r}: they are not in the local Hugging Face cache.\n"
        f"  Download them once where there is network access, e.g.\n"
        f"    huggingface-cli download {meta['repo_id']} --include '*.json' '*.safetensors'\n"
        f"  then pass --weights <that folder> (or copy the cache here). To export the real architecture with "
        f"random weights for benchmarking, pass --random-weights."
    )
