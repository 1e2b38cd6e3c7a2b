"""The one loader: safetensors variants (fp16, bf16), sharded indexes, strictness, configs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tiny import rel_l2, svd_vae

from video_aot.models.loading import LoadError, load_config, load_network, load_state_dict, read_weights


@pytest.fixture(scope="module")
def vae():
    return svd_vae(seed=5)


def _reference_state(module):
    return {k: v.detach().float().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("variant,dtype", [(None, torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_variants_read_exactly(vae, tmp_path, variant, dtype):
    model = svd_vae(seed=5).to(dtype)
    model.save_pretrained(tmp_path, variant=variant)
    state = read_weights(tmp_path, variant)
    expected = _reference_state(model)
    assert set(state) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key].astype(np.float32), value)


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_sharded_index(tmp_path, variant):
    model = svd_vae(seed=6)
    if variant:
        model = model.half()
    model.save_pretrained(tmp_path, variant=variant, max_shard_size="200KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert list(tmp_path.glob("*.index*.json"))
    state = read_weights(tmp_path, variant)
    expected = _reference_state(model)
    assert set(state) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key].astype(np.float32), value)


def test_missing_variant_lists_what_exists(tmp_path):
    svd_vae(seed=7).half().save_pretrained(tmp_path, variant="fp16")
    with pytest.raises(LoadError, match=r"variant \(none\).*Variants present: \['fp16'\]"):
        read_weights(tmp_path)


def test_pickled_weights_are_never_loaded(tmp_path):
    svd_vae(seed=7).save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(LoadError, match="pickled weights .*never loaded"):
        read_weights(tmp_path)


def test_strict_load_names_bad_keys(vae, tmp_path):
    vae.save_pretrained(tmp_path)
    spec, config = load_config(tmp_path)
    cell = spec.build(config)
    state = read_weights(tmp_path)
    state["decoder.extra.weight"] = np.zeros(3, np.float32)
    state["encoder.conv_in.weight"] = np.zeros((1, 1, 3, 3), np.float32)
    del state["quant_conv.bias"]
    with pytest.raises(LoadError) as err:
        load_state_dict(cell, state, source="vae")
    text = str(err.value)
    assert "missing keys (1): quant_conv.bias" in text
    assert "unexpected keys (1): decoder.extra.weight" in text
    assert "encoder.conv_in.weight: checkpoint (1, 1, 3, 3)" in text


def test_fp16_checkpoint_into_fp32_network_matches(tmp_path):
    import mindspore as ms

    model = svd_vae(seed=8)
    model.half().save_pretrained(tmp_path, variant="fp16")
    cell, _ = load_network(tmp_path, variant="fp16", dtype="fp32", num_frames=2)
    z = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)
    with torch.no_grad():
        expected = model.float().decode(torch.tensor(z), num_frames=2).sample.numpy()
    assert rel_l2(cell(ms.Tensor(z)).asnumpy(), expected) <= 1e-4


def test_unsupported_config_value_is_an_error(tmp_path):
    from diffusers import UNetSpatioTemporalConditionModel

    from tiny import SVD_UNET

    UNetSpatioTemporalConditionModel(**SVD_UNET).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["down_block_types"] = ["CrossAttnDownBlock2D", "DownBlockSpatioTemporal"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="CrossAttnDownBlock2D.*not supported"):
        load_config(tmp_path)
    config["_class_name"] = "UNetNoSuchModel"  # (UNetMotionModel is supported since AnimateDiff)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="'UNetNoSuchModel' is not supported; supported: .*UNetSpatioTemporal"):
        load_config(tmp_path)


# ----------------------------------------------------------------------------- damaged files (issue 16.4)
def _small_safetensors(folder):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "diffusion_pytorch_model.safetensors"
    save_file({"a.weight": np.arange(64, dtype=np.float32).reshape(8, 8), "b.bias": np.ones(8, np.float32)}, str(path))
    return path


def test_truncated_file_names_the_file(tmp_path):
    path = _small_safetensors(tmp_path / "unet")
    assert set(read_weights(tmp_path / "unet")) == {"a.weight", "b.bias"}
    data = path.read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 5):
        path.write_bytes(data[:cut])
        with pytest.raises(LoadError, match=r"unet/diffusion_pytorch_model\.safetensors: .*(truncated|incomplete)"):
            read_weights(tmp_path / "unet")


def test_header_length_beyond_the_file_is_refused_before_reading(tmp_path):
    """A header length of 2**62 was read as asked: MemoryError."""
    import struct

    path = _small_safetensors(tmp_path / "vae")
    path.write_bytes(struct.pack("<Q", 2**62) + b'{"a": 1}')
    with pytest.raises(LoadError, match=r"vae/diffusion_pytorch_model\.safetensors: .*header claims 4611686018427387904"):
        read_weights(tmp_path / "vae")
    path.write_bytes(struct.pack("<Q", 8) + b"not json")
    with pytest.raises(LoadError, match=r"diffusion_pytorch_model\.safetensors: .*header is no JSON"):
        read_weights(tmp_path / "vae")


def test_damaged_offsets_name_the_file(tmp_path):
    """A header the safetensors library itself refuses (SafetensorError, a traceback before)."""
    import struct

    path = _small_safetensors(tmp_path / "te")
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    header["b.bias"]["data_offsets"] = [0, 32]  # overlaps a.weight
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])
    with pytest.raises(LoadError, match=r"te/diffusion_pytorch_model\.safetensors: damaged"):
        read_weights(tmp_path / "te")
