"""What every export plan reads from a snapshot: component configs, networks with their weights
(or random weights), and the tokenizer that is copied into the export."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from video_aot.models.loading import LoadError, load_network, read_json
from video_aot.runtime.manifest import sha256_file


@dataclass(frozen=True)
class Components:
    """A snapshot's components. ``weights=None`` builds every network with random weights (configs
    still come from ``snapshot``); otherwise weights come from ``weights/<component>``."""

    snapshot: Path
    weights: Optional[Path]
    variant: Optional[str] = None
    dtype: str = "fp32"

    def folder(self, name: str) -> Path:
        return (self.weights / name) if self.weights is not None else (self.snapshot / name)

    def index(self) -> dict:
        """model_index.json (its ``_class_name`` is the pipeline)."""
        return read_json(self.snapshot / "model_index.json")

    def config(self, name: str) -> dict:
        return read_json(self.snapshot / name / "config.json")

    def scheduler(self, name: str = "scheduler") -> dict:
        return read_json(self.snapshot / name / "scheduler_config.json")

    def load(self, name: str, **build_kwargs):
        """The component's network with its weights loaded strictly; ``build_kwargs`` are export-time
        constants (a static frame count, say)."""
        cell, _ = load_network(self.folder(name), variant=self.variant, dtype=self.dtype,
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
