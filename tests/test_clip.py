"""Parity of models/clip.py with transformers' CLIP towers (tiny random configs, fp32, GRAPH_MODE).

Each tiny model is built in torch from a config, saved with ``save_pretrained`` (the real
snapshot layout) and loaded back through ``video_aot.models.loading.load_network``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ms = pytest.importorskip("mindspore")

import video_aot.models.clip  # noqa: E402,F401  (registers the CLIP classes)
from video_aot.models.clip import CLIPPromptEncoder  # noqa: E402
from video_aot.models.loading import LoadError, load_config, load_network  # noqa: E402

TOL = 1e-4  # relative L2, fp32
VOCAB, BOS, EOS, PAD = 1000, 998, 999, 1
SEQ = 77


@pytest.fixture(scope="module", autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")


def rel_l2(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def np_out(t):
    return t.asnumpy() if isinstance(t, ms.Tensor) else t.detach().numpy()


# ----------------------------------------------------------------------------- tiny checkpoints
def vision_config(**kw):
    base = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                image_size=224, patch_size=32, projection_dim=16)
    base.update(kw)
    return transformers.CLIPVisionConfig(**base)


def text_config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                max_position_embeddings=SEQ, projection_dim=16, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    base.update(kw)
    return transformers.CLIPTextConfig(**base)


_CACHE = {}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """saved(class_name, **config) -> (torch model in eval mode, snapshot folder); built once per module."""

    def make(class_name, **kw):
        key = (class_name, tuple(sorted(kw.items())))
        if key not in _CACHE:
            torch.manual_seed(0)
            config = vision_config(**kw) if "Vision" in class_name else text_config(**kw)
            model = getattr(transformers, class_name)(config).eval()
            folder = tmp_path_factory.mktemp(class_name)
            model.save_pretrained(folder)
            _CACHE[key] = (model, folder)
        return _CACHE[key]

    return make


_LOADED = {}


def loaded(folder):
    """load_network(folder), one cell per folder so GRAPH_MODE compiles each signature once."""
    if folder not in _LOADED:
        _LOADED[folder] = load_network(folder)[0]
    return _LOADED[folder]


def token_ids(batch=2, seed=1, eos_at=(9, 30), pad=EOS):
    """CLIP tokenizer layout: BOS, words, EOS, then padding (SD tokenizers pad with EOS)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(2, VOCAB - 2, (batch, SEQ)).astype(np.int64)
    ids[:, 0] = BOS
    for row, pos in enumerate(eos_at[:batch]):
        ids[row, pos] = EOS
        ids[row, pos + 1:] = pad
    return ids


def right_padding_mask(eos_at=(9, 30)):
    mask = np.zeros((len(eos_at), SEQ), np.int64)
    for row, pos in enumerate(eos_at):
        mask[row, : pos + 1] = 1
    return mask


# ----------------------------------------------------------------------------- vision
@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_vision_with_projection(saved, hidden_act):
    model, folder = saved("CLIPVisionModelWithProjection", hidden_act=hidden_act)
    cell = loaded(folder)
    assert cell.config.hidden_act == hidden_act and cell.config.image_size == 224
    pixels = np.random.RandomState(0).randn(2, 3, 224, 224).astype(np.float32)
    out = cell(ms.Tensor(pixels))
    with torch.no_grad():
        ref = model(torch.from_numpy(pixels)).image_embeds
    assert out.shape == (2, 16)
    assert rel_l2(np_out(out), np_out(ref)) <= TOL


def test_vision_rejects_other_image_size(saved):
    _, folder = saved("CLIPVisionModelWithProjection", hidden_act="quick_gelu")
    cell, _ = load_network(folder)
    with pytest.raises((ValueError, RuntimeError), match="doesn't match the model"):
        cell(ms.Tensor(np.zeros((1, 3, 192, 192), np.float32)))


def test_vision_fp16_variant(tmp_path):
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(vision_config()).eval()
    model.half().save_pretrained(tmp_path, variant="fp16")
    model.float()  # the reference: the fp16-rounded weights, computed in fp32
    with pytest.raises(LoadError, match="fp16"):
        load_network(tmp_path)  # no plain weights: the error names the variants present
    cell, _ = load_network(tmp_path, variant="fp16")
    pixels = np.random.RandomState(0).randn(1, 3, 224, 224).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(pixels)).image_embeds
    assert rel_l2(np_out(cell(ms.Tensor(pixels))), np_out(ref)) <= TOL


def test_missing_key_names_it(saved, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, folder = saved("CLIPVisionModelWithProjection", hidden_act="quick_gelu")
    state = load_file(str(folder / "model.safetensors"))
    del state["vision_model.encoder.layers.1.mlp.fc2.bias"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(LoadError, match=r"missing keys \(1\): vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        load_network(tmp_path)


# ----------------------------------------------------------------------------- text
@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu", "gelu_new"])
def test_text_model(saved, hidden_act):
    model, folder = saved("CLIPTextModel", hidden_act=hidden_act)
    cell = loaded(folder)
    ids = token_ids()
    hidden, pooled = cell(ms.Tensor(ids))
    with torch.no_grad():
        ref = model(torch.from_numpy(ids))
    assert hidden.shape == (2, SEQ, 32) and pooled.shape == (2, 32)
    assert rel_l2(np_out(hidden), np_out(ref.last_hidden_state)) <= TOL
    assert rel_l2(np_out(pooled), np_out(ref.pooler_output)) <= TOL


def test_text_attention_mask(saved):
    model, folder = saved("CLIPTextModel")
    cell = loaded(folder)
    ids, mask = token_ids(pad=0), right_padding_mask()
    hidden, pooled = cell(ms.Tensor(ids), ms.Tensor(mask))
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        unmasked = model(torch.from_numpy(ids)).last_hidden_state
    assert rel_l2(np_out(hidden), np_out(ref.last_hidden_state)) <= TOL
    assert rel_l2(np_out(pooled), np_out(ref.pooler_output)) <= TOL
    # the mask matters: padded positions see less than with the causal mask alone
    assert rel_l2(np_out(hidden), np_out(unmasked)) > 1e-3


def test_text_left_padding_matches_eager(saved):
    # Left padding makes the first rows attend to nothing. transformers' eager attention (which
    # this port follows: additive float32-min bias) then spreads them uniformly; its sdpa path
    # differs on those padded rows only.
    _, folder = saved("CLIPTextModel")
    model = transformers.CLIPTextModel.from_pretrained(folder, attn_implementation="eager").eval()
    cell, _ = load_network(folder)
    ids = token_ids()
    mask = np.ones_like(ids)
    mask[0, :4] = 0
    hidden, _ = cell(ms.Tensor(ids), ms.Tensor(mask))
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    assert rel_l2(np_out(hidden), np_out(ref)) <= TOL


@pytest.mark.parametrize("eos_token_id", [EOS, 2])
def test_pooled_token_rule(saved, eos_token_id):
    model, folder = saved("CLIPTextModel", eos_token_id=eos_token_id)
    cell = loaded(folder)
    ids = token_ids(batch=3, eos_at=(9, 30, 50))
    ids[2, 50:] = 5  # row 2: no EOS at all (position 0 when eos_token_id is EOS)
    ids[2, 20] = ids[2, 40] = VOCAB - 1 if eos_token_id == 2 else 7  # legacy rule: first of two maxima
    _, pooled = cell(ms.Tensor(ids))
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).pooler_output
    assert rel_l2(np_out(pooled), np_out(ref)) <= TOL


def diffusers_prompt_embeds(model, ids, mask, clip_skip):
    """diffusers' encode_prompt (AnimateDiff / text-to-video): [0] without clip_skip, else
    final_layer_norm(hidden_states[-(clip_skip + 1)]). diffusers writes
    ``text_encoder.text_model.final_layer_norm``, which transformers 5 spells ``final_layer_norm``."""
    with torch.no_grad():
        am = None if mask is None else torch.from_numpy(mask)
        if clip_skip is None:
            return model(torch.from_numpy(ids), attention_mask=am)[0]
        out = model(torch.from_numpy(ids), attention_mask=am, output_hidden_states=True)
        return model.final_layer_norm(out[-1][-(clip_skip + 1)])


@pytest.mark.parametrize("clip_skip,masked", [(None, False), (1, False), (2, False), (1, True)])
def test_clip_skip(saved, clip_skip, masked):
    model, folder = saved("CLIPTextModel")
    cell = loaded(folder)
    ids = token_ids(pad=0 if masked else EOS)
    mask = right_padding_mask() if masked else None
    encoder = CLIPPromptEncoder(cell, clip_skip=clip_skip)
    out = encoder(ms.Tensor(ids)) if mask is None else encoder(ms.Tensor(ids), ms.Tensor(mask))
    ref = diffusers_prompt_embeds(model, ids, mask, clip_skip)
    assert out.shape == (2, SEQ, 32)
    assert rel_l2(np_out(out), np_out(ref)) <= TOL
    if clip_skip:  # skipping layers changes the embeddings
        assert rel_l2(np_out(out), np_out(diffusers_prompt_embeds(model, ids, mask, None))) > 1e-3


def test_clip_skip_out_of_range(saved):
    _, folder = saved("CLIPTextModel")
    cell = loaded(folder)
    with pytest.raises(ValueError, match=r"clip_skip must be None or an int in \[0, 3\]"):
        CLIPPromptEncoder(cell, clip_skip=4)


def test_text_with_projection(saved):
    model, folder = saved("CLIPTextModelWithProjection")
    cell = loaded(folder)
    ids = token_ids()
    text_embeds, hidden = cell(ms.Tensor(ids))
    with torch.no_grad():
        ref = model(torch.from_numpy(ids))
    assert text_embeds.shape == (2, 16)
    assert rel_l2(np_out(text_embeds), np_out(ref.text_embeds)) <= TOL
    assert rel_l2(np_out(hidden), np_out(ref.last_hidden_state)) <= TOL


def test_hub_layout_text_checkpoint(saved, tmp_path):
    """Hub snapshots (older transformers) prefix a bare CLIPTextModel with ``text_model.`` and may
    carry the ``position_ids`` buffer; both load to the same network."""
    from safetensors.numpy import load_file, save_file

    model, folder = saved("CLIPTextModel")
    state = {"text_model." + k: v for k, v in load_file(str(folder / "model.safetensors")).items()}
    state["text_model.embeddings.position_ids"] = np.arange(SEQ, dtype=np.int64)[None]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    cell, _ = load_network(tmp_path)
    ids = token_ids()
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).last_hidden_state
    assert rel_l2(np_out(cell(ms.Tensor(ids))[0]), np_out(ref)) <= TOL


def test_export_prompt_encoder_mindir(saved, tmp_path):
    """A fixed 77-token graph exports to MindIR and reloads with the same output."""
    _, folder = saved("CLIPTextModel")
    cell, _ = load_network(folder)
    encoder = CLIPPromptEncoder(cell, clip_skip=1)
    ids = ms.Tensor(token_ids(batch=1).astype(np.int32))
    expected = np_out(encoder(ids))
    ms.export(encoder, ids, file_name=str(tmp_path / "text_encoder"), file_format="MINDIR")
    graph = ms.nn.GraphCell(ms.load(str(tmp_path / "text_encoder.mindir")))
    np.testing.assert_array_equal(np_out(graph(ids)), expected)


# ----------------------------------------------------------------------------- configs
def write_config(folder, raw):
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


def test_nested_clip_config_is_refused(tmp_path):
    raw = {"architectures": ["CLIPVisionModelWithProjection"], "vision_config": {"hidden_size": 32},
           "text_config": {"hidden_size": 32}}
    with pytest.raises(LoadError, match="nests 'text_config'/'vision_config'"):
        load_config(write_config(tmp_path, raw))


@pytest.mark.parametrize("cls,bad,match", [
    ("CLIPTextModel", {"hidden_act": "gelu_accurate"}, "unsupported hidden_act 'gelu_accurate'; supported"),
    ("CLIPTextModel", {"eos_token_id": [2, 3]}, "eos_token_id must be one int"),
    ("CLIPVisionModelWithProjection", {"image_size": [224, 224]}, "image_size must be a positive int"),
    ("CLIPVisionModelWithProjection", {"hidden_size": 30, "num_attention_heads": 4}, "not a multiple"),
])
def test_unsupported_config_values(tmp_path, cls, bad, match):
    with pytest.raises(LoadError, match=match):
        load_config(write_config(tmp_path, {"architectures": [cls], **bad}))


def test_config_defaults_match_transformers():
    from video_aot.models.clip import CLIPTextConfig, CLIPVisionConfig

    for ours, theirs in ((CLIPTextConfig(), transformers.CLIPTextConfig()),
                         (CLIPVisionConfig(), transformers.CLIPVisionConfig())):
        for field in ours.__dataclass_fields__:
            if field not in ("text_config", "vision_config"):
                assert getattr(ours, field) == getattr(theirs, field), field
