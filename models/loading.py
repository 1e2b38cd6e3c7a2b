"""The one loader for every family: config.json -> frozen config dataclass -> network,
safetensors (fp32/fp16/bf16, variants, sharded indexes) -> strict weight load.

A family module registers each network it provides with :func:`register`, keyed by the
class name the checkpoint's config names (``_class_name`` for diffusers components,
``architectures[0]`` for transformers ones).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import re
import struct
from pathlib import Path
from typing import Callable, Optional

import numpy as np

logger = logging.getLogger(__name__)

DTYPES = ("fp32", "fp16", "bf16")
# every other models/<name>.py may register networks; they are imported on first use, so a new
# family adds its model files and nothing here
_NOT_FAMILY_MODULES = {"__init__", "layers", "loading"}


class LoadError(ValueError):
    """A checkpoint that cannot be loaded as asked (missing files, keys, shapes, values)."""


# ----------------------------------------------------------------------------- configs
def _freeze(value):
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in value.items())
    return value


# keys that transformers writes into every config.json and that no network depends on
GENERIC_CONFIG_KEYS = {
    "architectures", "torch_dtype", "dtype", "transformers_version", "model_type", "return_dict",
    "output_hidden_states", "output_attentions", "use_return_dict", "torchscript", "id2label", "label2id",
    "problem_type", "tie_word_embeddings", "is_encoder_decoder", "chunk_size_feed_forward", "name_or_path",
    "tokenizer_class", "prefix", "bos_token_id", "pad_token_id", "eos_token_id", "sep_token_id",
    "decoder_start_token_id", "task_specific_params", "finetuning_task", "pruned_heads", "cross_attention_hidden_size",
    "add_cross_attention", "is_decoder", "tf_legacy_loss", "use_bfloat16", "output_scores", "gradient_checkpointing",
    # training-only settings: no effect on inference
    "dropout", "attention_dropout", "initializer_range", "initializer_factor", "dropout_rate",
}


def config_from_dict(config_cls, raw: dict, source: str = "config"):
    """Build a frozen config dataclass. Keys starting with ``_`` are metadata. Keys the
    dataclass does not know are reported (as diffusers does) and ignored; values are
    checked by the dataclass' own ``__post_init__``."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(k for k in raw if k not in names and not k.startswith("_") and k not in GENERIC_CONFIG_KEYS)
    if unknown:
        logger.warning("%s: ignoring config keys %s not used by %s", source, unknown, config_cls.__name__)
    values = {k: _freeze(v) for k, v in raw.items() if k in names}
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as err:
        raise LoadError(f"{source}: {err}") from err


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"missing {path.name} in {path.parent}")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# ----------------------------------------------------------------------------- safetensors
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _safetensors_header(path: Path) -> tuple[int, dict]:
    """(header length, header) of a .safetensors file, checked against the file's size before
    anything is read: a damaged file gives a LoadError naming it, not a MemoryError."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size < 8:
            raise LoadError(f"{path}: not a safetensors file ({size} bytes; the format starts with an 8-byte "
                            "header length). The download or copy is probably incomplete.")
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > size - 8:
            raise LoadError(f"{path}: damaged or not a safetensors file: its header claims {header_len} bytes "
                            f"but the file has {size - 8} after the length field. The download or copy is "
                            "probably incomplete.")
        try:
            header = json.loads(fh.read(header_len))
        except (ValueError, UnicodeDecodeError) as err:
            raise LoadError(f"{path}: damaged or not a safetensors file: its header is no JSON ({err})") from None
    if not isinstance(header, dict):
        raise LoadError(f"{path}: damaged or not a safetensors file: its header is no JSON object")
    header.pop("__metadata__", None)
    end = 0
    for key, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and "dtype" in info):
            raise LoadError(f"{path}: damaged safetensors header: entry {key!r} has no dtype or data_offsets")
        end = max(end, offsets[1])
    if 8 + header_len + end > size:
        raise LoadError(f"{path}: truncated safetensors file: its tensors need {8 + header_len + end} bytes, "
                        f"the file has {size}. The download or copy is probably incomplete.")
    return header_len, header


def _read_safetensors_file(path: Path) -> dict:
    """All tensors of one .safetensors file as numpy arrays. bf16 (which numpy lacks) is widened
    exactly to float32; everything else goes through the safetensors library."""
    from safetensors import SafetensorError, safe_open

    header_len, header = _safetensors_header(path)
    bf16 = {k for k, v in header.items() if v["dtype"] == "BF16"}
    out = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                if key not in bf16:
                    out[key] = f.get_tensor(key)
    except SafetensorError as err:
        raise LoadError(f"{path}: damaged safetensors file: {err}") from None
    if bf16:
        raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
        for key in bf16:
            begin, end = header[key]["data_offsets"]
            halves = np.frombuffer(raw[begin:end].tobytes(), dtype="<u2").astype(np.uint32) << 16
            out[key] = halves.view(np.float32).reshape(header[key]["shape"])
    return out


def _weight_files(component_dir: Path, variant: Optional[str]) -> list[Path]:
    files = sorted(p.name for p in component_dir.iterdir() if p.is_file())
    stems = ("diffusion_pytorch_model", "model")
    tag = f".{variant}" if variant else ""
    singles = [f for f in files if any(f == f"{s}{tag}.safetensors" for s in stems)]
    if singles:
        return [component_dir / singles[0]]
    # sharded: an index json (diffusers writes NAME.safetensors.index[.variant].json, older
    # releases NAME.safetensors.variant.index.json); its weight_map names the shards.
    def is_index(f):
        if not (f.endswith(".json") and ".safetensors" in f and ".index" in f):
            return False
        parts = set(f.split(".")[1:-1]) - {"safetensors", "index"}
        return parts == ({variant} if variant else set())

    indexes = [f for f in files if is_index(f)]
    if indexes:
        index = read_json(component_dir / indexes[0])
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [s for s in shards if not (component_dir / s).is_file()]
        if missing:
            raise LoadError(f"{component_dir}: index {indexes[0]} names missing shard files {missing}")
        return [component_dir / s for s in shards]
    variants = sorted({m.group(1) for f in files for m in [re.match(r"^(?:diffusion_pytorch_model|model)\.(\w+)\.safetensors$", f)] if m})
    pickled = [f for f in files if f.endswith((".bin", ".pt", ".ckpt", ".pth"))]
    hint = f" Variants present: {variants}." if variants else ""
    if pickled:
        hint += f" Found pickled weights {pickled}, which are never loaded; convert them to safetensors."
    raise LoadError(f"{component_dir}: no safetensors weights for variant {variant or '(none)'}.{hint}")


def read_weights(component_dir, variant: Optional[str] = None) -> dict:
    """The component's state dict (name -> numpy array), from one file or all shards."""
    component_dir = Path(component_dir)
    state = {}
    for path in _weight_files(component_dir, variant):
        part = _read_safetensors_file(path)
        dup = set(part) & set(state)
        if dup:
            raise LoadError(f"{path}: keys appear in more than one shard: {sorted(dup)[:5]}")
        state.update(part)
    return state


# ----------------------------------------------------------------------------- strict load
def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {DTYPES}")
    return dtype


def _ms_dtype(dtype: str):
    import mindspore as ms

    check_dtype(dtype)
    return {"fp32": ms.float32, "fp16": ms.float16, "bf16": ms.bfloat16}[dtype]


def load_state_dict(cell, state: dict, dtype: str = "fp32", source: str = "checkpoint", keep_fp32: tuple = ()):
    """Copy ``state`` into ``cell`` strictly: every parameter must be present with its exact
    shape and no key may be left over. Floating parameters take ``dtype`` (but see ``keep_fp32``)."""
    import mindspore as ms
    from .layers import checkpoint_shape, parameters_by_name

    params = parameters_by_name(cell)
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {checkpoint_shape(params[k])}"
        for k in set(params) & set(state) if tuple(state[k].shape) != checkpoint_shape(params[k])
    )
    if missing or unexpected or wrong:
        lines = [f"{source}: weights do not match the network built from its config"]
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        raise LoadError("\n".join(lines))
    set_dtype(cell, dtype, keep_fp32)
    for name, param in params.items():
        value = np.asarray(state[name]).reshape(tuple(param.shape))
        if np.issubdtype(value.dtype, np.floating):
            param.set_data(ms.Tensor(value.astype(np.float32), dtype=param.dtype))
        else:
            param.set_data(ms.Tensor(value))


def kept_in_fp32(name: str, dtype: str, keep_fp32: tuple = ()) -> bool:
    """transformers' ``_keep_in_fp32_modules``: in an fp16 model (not bf16) the parameters of the
    named submodules stay float32 (T5's ``wo``, whose outputs overflow fp16)."""
    return dtype == "fp16" and any(part in keep_fp32 for part in name.split(".")[:-1])


def set_dtype(cell, dtype: str, keep_fp32: tuple = ()):
    """Give every floating parameter the compute dtype (used for random-weight exports too), but for
    the submodules ``keep_fp32`` names in an fp16 network (see :func:`kept_in_fp32`)."""
    import mindspore as ms
    from .layers import parameters_by_name

    for name, param in parameters_by_name(cell).items():
        target = _ms_dtype("fp32" if kept_in_fp32(name, dtype, keep_fp32) else dtype)
        if param.dtype in (ms.float32, ms.float16, ms.bfloat16) and param.dtype != target:
            # converted on the host from float32 numpy: an asynchronous device-side cast racing the
            # parameter's dtype change segfaulted a bf16 export now and then
            data = ms.Tensor(param.data.astype(ms.float32).asnumpy(), dtype=target)
            param.set_dtype(target)
            param.set_data(data)


# ----------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    class_name: str
    config_cls: type
    build: Callable  # config -> nn.Cell
    map_weights: Optional[Callable] = None  # (key, value) -> [(key, value), ...]
    keep_fp32: tuple = ()  # submodule names whose parameters stay float32 in an fp16 network


NETWORKS: dict[str, NetworkSpec] = {}


def register(class_name: str, config_cls, build, map_weights=None, keep_fp32: tuple = ()):
    spec = NetworkSpec(class_name, config_cls, build, map_weights, tuple(keep_fp32))
    if class_name in NETWORKS and NETWORKS[class_name].build is not build:
        raise RuntimeError(f"network class {class_name!r} is registered twice "
                           f"({NETWORKS[class_name].build.__module__} and {build.__module__})")
    NETWORKS[class_name] = spec


def family_modules() -> list:
    """The models/<name>.py modules that may register networks (all but the shared ones)."""
    import pkgutil

    package = importlib.import_module(__package__)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                  if m.name not in _NOT_FAMILY_MODULES and not m.name.startswith("_"))


_IMPORT_ERRORS: dict = {}


def _ensure_registered():
    # a module that fails to import does not hide the others' networks; its error is reported when
    # a class is not found (load_config)
    for name in family_modules():
        if name in _IMPORT_ERRORS:
            continue
        try:
            importlib.import_module(f"{__package__}.{name}")
        except Exception as err:  # noqa: BLE001 - reported with the missing class
            _IMPORT_ERRORS[name] = f"{type(err).__name__}: {err}"
            logger.warning("models/%s.py failed to import: %s", name, _IMPORT_ERRORS[name])


def component_class(raw: dict) -> str:
    if "_class_name" in raw:
        return raw["_class_name"]
    if raw.get("architectures"):
        return raw["architectures"][0]
    raise LoadError("config.json names no class (_class_name or architectures)")


def load_config(component_dir):
    """(NetworkSpec, config) for a snapshot component folder."""
    _ensure_registered()
    component_dir = Path(component_dir)
    raw = read_json(component_dir / "config.json")
    cls = component_class(raw)
    if cls not in NETWORKS:
        broken = "".join(f"; models/{m}.py failed to import ({e})" for m, e in _IMPORT_ERRORS.items())
        raise LoadError(f"{component_dir}: network class {cls!r} is not supported; supported: {sorted(NETWORKS)}"
                        + broken)
    spec = NETWORKS[cls]
    return spec, config_from_dict(spec.config_cls, raw, source=str(component_dir / "config.json"))


def build_network(class_name: str, config, **build_kwargs):
    _ensure_registered()
    return NETWORKS[class_name].build(config, **build_kwargs)


def load_network(component_dir, variant: Optional[str] = None, dtype: str = "fp32", random_weights: bool = False,
                 **build_kwargs):
    """Build the network a component folder describes and load its weights strictly.
    ``build_kwargs`` are export-time constants (a static frame count, say). Returns ``(cell, config)``."""
    spec, config = load_config(component_dir)
    cell = spec.build(config, **build_kwargs)
    if random_weights:
        set_dtype(cell, dtype, spec.keep_fp32)
        return cell, config
    state = read_weights(component_dir, variant)
    if spec.map_weights is not None:
        state = dict(kv for key, value in state.items() for kv in spec.map_weights(key, value))
    load_state_dict(cell, state, dtype=dtype, source=str(component_dir), keep_fp32=spec.keep_fp32)
    return cell, config

