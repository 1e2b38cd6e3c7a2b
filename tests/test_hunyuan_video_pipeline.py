"""HunyuanVideo end to end: export a tiny HunyuanVideoPipeline snapshot (diffusers' dummy components with
3 Llama layers, weights perturbed, eval mode; a generated word-level Llama tokenizer and CLIP BPE
tokenizer), run the exported pipeline and compare its frames with diffusers' HunyuanVideoPipeline
given the same latents: two frame counts (one decoded in framewise temporal tiles), a non-square size,
true_cfg_scale 1 and 2, a user prompt template."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline_suite import PipelineSuite, SuiteCase
from tiny import perturb

from video_aot.export.run import export_model
from video_aot.runtime import ShapeMismatch, load_pipeline

# diffusers tests/pipelines/hunyuan_video get_dummy_components, with 3 Llama layers (hidden_states[-3]
# is then a layer's output), 2 key-value heads, and the transformer at patch_size 2
LLAMA = dict(bos_token_id=0, eos_token_id=2, hidden_size=16, intermediate_size=37, layer_norm_eps=1e-05,
             num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3, pad_token_id=1, vocab_size=1000,
             hidden_act="gelu", projection_dim=32)
CLIP = dict(bos_token_id=0, eos_token_id=2, hidden_size=8, intermediate_size=37, layer_norm_eps=1e-05,
            num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=1000, hidden_act="gelu",
            projection_dim=32)
TRANSFORMER = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
                   num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
                   text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4))
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
           act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
           temporal_compression_ratio=4, mid_block_add_attention=True)
SCHEDULER = dict(shift=7.0)
HEIGHT, WIDTH, MAX_LENGTH = 16, 32, 12  # latents 2x4 (non-square), 1x2 video tokens per frame
PROMPT = "a cat on the beach at night"
NEGATIVE = "blurry low quality video"
TEMPLATE_WORDS = ("system user describe the video by detailing following aspects main content and theme of color "
                  "shape size texture quantity text spatial relationships objects actions events behaviors temporal "
                  "physical movement changes background environment light style atmosphere camera angles movements "
                  "transitions used in").split()


def llama_tokenizer():
    """A word-level tokenizer with Llama 3's special tokens (the template's headers), <|begin_of_text|>
    in front of every text, right padding; no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from video_aot.export.tiny import TOKENIZER_WORDS

    special = ["<unk>", "<|end_of_text|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
               "<|eot_id|>"]
    words = list(dict.fromkeys(list(TOKENIZER_WORDS) + TEMPLATE_WORDS + list("0123456789.,:")))
    vocab = {w: i for i, w in enumerate(special + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.add_special_tokens(special)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                   pad_token="<|end_of_text|>", unk_token="<unk>", padding_side="right",
                                   model_max_length=128)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from diffusers import (
        AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, LlamaConfig, LlamaModel

    from video_aot.export.tiny import write_clip_tokenizer

    torch.manual_seed(0)
    transformer = perturb(HunyuanVideoTransformer3DModel(**TRANSFORMER), 0, scale=0.1).eval()
    torch.manual_seed(1)
    vae = perturb(AutoencoderKLHunyuanVideo(**VAE), 1, scale=0.05).eval()
    torch.manual_seed(2)
    text_encoder = perturb(LlamaModel(LlamaConfig(**LLAMA)).eval(), 2, scale=0.05)
    torch.manual_seed(3)
    text_encoder_2 = perturb(CLIPTextModel(CLIPTextConfig(**CLIP)).eval(), 3, scale=0.05)
    clip_dir = write_clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"))
    pipe = HunyuanVideoPipeline(text_encoder=text_encoder, tokenizer=llama_tokenizer(), transformer=transformer,
                                vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
                                text_encoder_2=text_encoder_2, tokenizer_2=CLIPTokenizer.from_pretrained(str(clip_dir)))
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("hunyuan-snapshot")
    pipe.save_pretrained(folder)
    return pipe, folder


def _export(folder, out, frames, onnx=False, **kwargs):
    return export_model(str(folder), str(out), frames=frames, height=HEIGHT, width=WIDTH,
                        max_sequence_length=MAX_LENGTH, log=lambda *a: None, onnx=onnx, **kwargs)


@pytest.fixture(scope="module")
def exported(reference, tmp_path_factory):
    return _export(reference[1], tmp_path_factory.mktemp("hunyuan-export") / "e", frames=9, onnx=True)


@pytest.fixture(scope="module")
def ours(exported):
    return load_pipeline(exported, backend="mindspore")


def _latents(frames, seed=3):
    f = (frames - 1) // 4 + 1
    return np.random.default_rng(seed).standard_normal((1, 4, f, HEIGHT // 8, WIDTH // 8)).astype(np.float32)


def _compare(reference, ours, frames, **kwargs):
    pipe, _ = reference
    latents = _latents(frames)
    common = dict(height=HEIGHT, width=WIDTH, num_frames=frames, num_inference_steps=2, output_type="np",
                  max_sequence_length=MAX_LENGTH)
    expected = np.asarray(pipe(latents=torch.tensor(latents), **common, **kwargs).frames)
    got = ours(latents=latents, **common, **kwargs).frames
    assert got.shape == expected.shape == (1, frames, HEIGHT, WIDTH, 3)
    return float(np.abs(got - expected).max()), got


@pytest.mark.parametrize("case", [
    dict(),  # true_cfg_scale 1: one transformer pass, distilled guidance 6
    dict(negative_prompt=NEGATIVE, true_cfg_scale=2.0, guidance_scale=4.5),  # the second (negative) pass
    dict(prompt_template={"template": "user describe the video : {} <|eot_id|>", "crop_start": 5}),
], ids=["guidance-only", "true-cfg-2", "user-template"])
def test_matches_diffusers(reference, ours, case):
    err, got = _compare(reference, ours, 9, prompt=PROMPT, **case)
    print("hunyuan 9 frames", case, "max abs", err)
    assert err <= 1e-3, err
    assert got.std() > 1e-3


def test_true_cfg_changes_the_video(ours):
    kwargs = dict(prompt=PROMPT, num_inference_steps=2, output_type="np", latents=_latents(9))
    plain = ours(**kwargs).frames
    cfg = ours(negative_prompt=NEGATIVE, true_cfg_scale=2.0, **kwargs).frames
    assert np.abs(plain - cfg).max() > 1e-2


def test_framewise_tiled_decode_and_batch_of_two_match_diffusers(reference, tmp_path):
    """A batch-2 export at 17 frames: 5 latent frames, decoded as diffusers does by default in temporal
    tiles of 5 and 2 latent frames (one graph each), blended; two prompts with two negative prompts under
    true CFG, and one prompt with num_videos_per_prompt=2."""
    pipe, folder = reference
    out = _export(folder, tmp_path / "e", frames=17, batch=2)
    ours = load_pipeline(out, backend="mindspore")
    assert sorted(ours.manifest["vae_decoders"]) == ["vae_decoder_2_2x4", "vae_decoder_5_2x4"]
    latents = np.random.default_rng(5).standard_normal((2, 4, 5, 2, 4)).astype(np.float32)
    common = dict(height=HEIGHT, width=WIDTH, num_frames=17, num_inference_steps=2, output_type="np",
                  max_sequence_length=MAX_LENGTH)
    # (prompts long enough to keep tokens after this tokenizer's crop: a caption cropped to no valid token
    # makes the refiner's mask-averaged pooling 0/0, NaN in diffusers too)
    for case in (dict(prompt=[PROMPT, "a red car in the city at night"],
                      negative_prompt=[NEGATIVE, "a dog in the forest at day"], true_cfg_scale=2.0),
                 dict(prompt="a dog at night", num_videos_per_prompt=2)):
        expected = np.asarray(pipe(latents=torch.tensor(latents), **common, **case).frames)
        got = ours(latents=latents, **common, **case).frames
        err = float(np.abs(got - expected).max())
        print("hunyuan 17 frames batch 2", case, "max abs", err)
        assert got.shape == expected.shape == (2, 17, HEIGHT, WIDTH, 3) and err <= 1e-3, err
    with pytest.raises(ShapeMismatch, match="asks for batch=1"):
        ours(prompt=PROMPT, **common)


def test_spatial_tiling_matches_diffusers(reference, tmp_path):
    """vae.enable_tiling() at 16x272 pixels (latents 2x34, wider than the 32-latent tile): decoder graphs
    for the 32- and 10-wide tiles (every 24), blended over 64 pixel columns, as diffusers' tiled_decode."""
    pipe, folder = reference
    out = export_model(str(folder), str(tmp_path / "e"), frames=9, height=16, width=272,
                       max_sequence_length=MAX_LENGTH, tiling=True, log=lambda *a: None, onnx=False)
    ours = load_pipeline(out, backend="mindspore")
    assert sorted(ours.manifest["vae_decoders"]) == ["vae_decoder_3_2x10", "vae_decoder_3_2x32"]
    latents = np.random.default_rng(4).standard_normal((1, 4, 3, 2, 34)).astype(np.float32)
    common = dict(prompt=PROMPT, height=16, width=272, num_frames=9, num_inference_steps=1, output_type="np",
                  max_sequence_length=MAX_LENGTH)
    pipe.vae.enable_tiling()
    try:
        expected = np.asarray(pipe(latents=torch.tensor(latents), **common).frames)
    finally:
        pipe.vae.disable_tiling()
    ours.enable_tiling()
    got = ours(latents=latents, **common).frames
    err = float(np.abs(got - expected).max())
    print("hunyuan spatial tiling max abs", err)
    assert got.shape == expected.shape == (1, 9, 16, 272, 3) and err <= 1e-3, err


def test_untiled_export_has_one_decoder_graph_and_refuses_bad_sizes(reference, tmp_path):
    out = export_model(str(reference[1]), str(tmp_path / "e"), frames=1, height=16, width=272,
                       max_sequence_length=MAX_LENGTH, log=lambda *a: None, dry_run=True)
    assert sorted(out["graphs"]) == ["text_encoder", "text_encoder_2", "transformer", "vae_decoder_1_2x34"]
    assert out["graphs"]["text_encoder"]["inputs"][0]["shape"] == [1, 95 + MAX_LENGTH]  # DEFAULT_PROMPT_TEMPLATE room
    with pytest.raises(ValueError, match="divisible by 16"):
        export_model(str(reference[1]), str(tmp_path / "x"), frames=9, height=24, width=32, log=lambda *a: None,
                     dry_run=True)


def test_an_image_to_video_transformer_is_refused(reference, tmp_path):
    """HunyuanVideo-I2V's transformer loads as a network (image_condition_type), but the text-to-video
    pipeline feeds it no image: the export says so instead of serving it."""
    import json
    import shutil

    snapshot = tmp_path / "i2v-snapshot"
    shutil.copytree(reference[1], snapshot)
    config = snapshot / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "image_condition_type": "token_replace"}))
    with pytest.raises(ValueError, match="image-to-video"):
        export_model(str(snapshot), str(tmp_path / "e"), frames=1, height=16, width=272,
                     max_sequence_length=MAX_LENGTH, log=lambda *a: None, dry_run=True)


def test_callback_replaces_latents_and_prompt_embeds_like_diffusers(reference, ours):
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append(sorted(kwargs))
        out = dict(kwargs)
        out["prompt_embeds"] = kwargs["prompt_embeds"] * 0.5
        if i == 0:
            out["latents"] = kwargs["latents"] * 0.9
        return out

    err, _ = _compare(reference, ours, 9, prompt=PROMPT, callback_on_step_end=callback,
                      callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert seen[0] == ["latents", "prompt_embeds"]
    print("hunyuan callback max abs", err)
    assert err <= 1e-3, err


def test_given_embeddings_match_diffusers(reference, ours):
    """prompt_embeds / prompt_attention_mask / pooled_prompt_embeds and the negative ones given directly
    (true CFG from negative embeddings alone); output_type='latent' returns the sampler's latents."""
    pipe, _ = reference
    rng = np.random.default_rng(7)
    embeds = rng.standard_normal((2, 1, MAX_LENGTH, 16)).astype(np.float32)
    pooled = rng.standard_normal((2, 1, 8)).astype(np.float32)
    masks = np.zeros((2, 1, MAX_LENGTH), np.float32)
    masks[0, :, :5] = 1
    masks[1, :, :9] = 1
    kwargs = dict(height=HEIGHT, width=WIDTH, num_frames=9, num_inference_steps=2, output_type="latent",
                  max_sequence_length=MAX_LENGTH, true_cfg_scale=3.0)
    given = dict(prompt_embeds=embeds[0], pooled_prompt_embeds=pooled[0], prompt_attention_mask=masks[0],
                 negative_prompt_embeds=embeds[1], negative_pooled_prompt_embeds=pooled[1],
                 negative_prompt_attention_mask=masks[1])
    expected = pipe(latents=torch.tensor(_latents(9)), **{k: torch.tensor(v) for k, v in given.items()},
                    **kwargs).frames.numpy()
    got = ours(latents=_latents(9), **given, **kwargs).frames
    assert got.shape == expected.shape == (1, 4, 3, 2, 4)
    err = float(np.abs(got - expected).max())
    print("hunyuan given embeddings latents max abs", err)
    assert err <= 1e-4, err


def test_preset_plans_the_full_size_graphs():
    manifest = export_model("hunyuan-video", "unused", frames=61, height=320, width=512, random_weights=True,
                            dry_run=True, log=lambda *a: None)
    graphs = manifest["graphs"]
    assert graphs["transformer"]["inputs"][0]["shape"] == [1, 16, 16, 40, 64]
    assert graphs["transformer"]["inputs"][6]["shape"] == [16 * 20 * 32, 128]
    assert graphs["text_encoder"]["inputs"][0]["shape"] == [1, 95 + 256]
    assert graphs["text_encoder_2"]["outputs"][0]["shape"] == [1, 768]
    # 16 latent frames: framewise tiles of 5 latent frames every 3 (the last one 1 frame long)
    assert sorted(manifest["vae_decoders"]) == ["vae_decoder_1_40x64", "vae_decoder_4_40x64", "vae_decoder_5_40x64"]
    assert manifest["dtype_plan"]["transformer"] == "bf16" and manifest["scheduler"]["shift"] == 7.0


def _weight_dtypes(path) -> set:
    """The data types of a MindIR graph's parameters (its weights)."""
    from mindspore.train import mind_ir_pb2

    model = mind_ir_pb2.ModelProto()
    model.ParseFromString(path.read_bytes())
    return {mind_ir_pb2.TensorProto.DataType.Name(p.data_type) for p in model.graph.parameter}


def test_mixed_dtype_export_matches_diffusers_with_the_same_dtypes(reference, ours, tmp_path):
    """--dtype text_encoder=fp16,text_encoder_2=fp16,vae=fp16 (the transformer stays fp32): each graph is
    traced with its component's weights in that dtype (the MindIR's parameters) and the manifest says so; the
    frames match diffusers run with the same per-component dtypes within twice diffusers' own difference
    between these dtypes and fp32 (measured here: the size of half-precision rounding at this scale), and
    differ from our fp32 export's (the fp16 graphs really compute in fp16)."""
    import copy

    from diffusers import HunyuanVideoPipeline

    pipe, folder = reference
    out = _export(folder, tmp_path / "e", frames=9, dtype="text_encoder=fp16,text_encoder_2=fp16,vae=fp16")
    mixed = load_pipeline(out, backend="mindspore")
    m = mixed.manifest
    assert m["dtype"] == "mixed"
    assert m["dtype_plan"] == {"text_encoder": "fp16", "text_encoder_2": "fp16", "transformer": "fp32", "vae": "fp16"}
    assert {name: g["dtype"] for name, g in m["graphs"].items()} == {
        "text_encoder": "fp16", "text_encoder_2": "fp16", "transformer": "fp32", "vae_decoder_3_2x4": "fp16"}
    assert {name: _weight_dtypes(out / g["file"]) for name, g in m["graphs"].items()} == {
        "text_encoder": {"FLOAT16"}, "text_encoder_2": {"FLOAT16"}, "transformer": {"FLOAT"},
        "vae_decoder_3_2x4": {"FLOAT16"}}

    half = HunyuanVideoPipeline(
        text_encoder=copy.deepcopy(pipe.text_encoder).half(), tokenizer=pipe.tokenizer, transformer=pipe.transformer,
        vae=copy.deepcopy(pipe.vae).half(), scheduler=pipe.scheduler,
        text_encoder_2=copy.deepcopy(pipe.text_encoder_2).half(), tokenizer_2=pipe.tokenizer_2)
    half.set_progress_bar_config(disable=True)
    latents = _latents(9)
    common = dict(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=9, num_inference_steps=2, output_type="np",
                  max_sequence_length=MAX_LENGTH)
    expected = np.asarray(half(latents=torch.tensor(latents), **common).frames, np.float32)
    fp32 = np.asarray(pipe(latents=torch.tensor(latents), **common).frames)
    rounding = float(np.abs(expected - fp32).max())  # diffusers: these dtypes against fp32
    got = mixed(latents=latents, **common).frames
    err = float(np.abs(got - expected).max())
    moved = float(np.abs(got - ours(latents=latents, **common).frames).max())  # against our fp32 export
    print(f"hunyuan mixed dtypes: max abs {err:.2e} against diffusers with the same dtypes; diffusers' own "
          f"difference from fp32 {rounding:.2e}; ours from our fp32 export {moved:.2e}")
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert 1e-4 < rounding < 1e-2 and moved > 1e-4
    assert err <= 2 * rounding, (err, rounding)


def test_the_preset_dtype_plan_traces_bf16_and_the_cpu_refuses_it(reference, tmp_path):
    """HunyuanVideo's preset dtype_plan (transformer bf16, text encoders and VAE fp16) on the tiny snapshot:
    every graph traces; loading it on the CPU is refused, naming the bf16 graph."""
    from video_aot.export.sources import presets
    from video_aot.runtime import ExportInvalid

    plan = presets()["hunyuan-video"]["dtype_plan"]
    out = _export(reference[1], tmp_path / "e", frames=1, dtype=plan)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype_plan"] == plan and manifest["export_options"]["dtype"] == plan
    assert {name: g["dtype"] for name, g in manifest["graphs"].items()} == {
        "text_encoder": "fp16", "text_encoder_2": "fp16", "transformer": "bf16", "vae_decoder_1_2x4": "fp16"}
    assert _weight_dtypes(out / "transformer.mindir") == {"BFLOAT16"}
    with pytest.raises(ExportInvalid, match=r"holds bf16 graphs \(transformer\); MindSpore 2.7.1 has no bf16 CPU "
                                            r"kernels.*Ascend.*transformer=fp16"):
        load_pipeline(out, backend="mindspore")


def test_other_shapes_are_refused_listing_the_exported_ones(ours):
    kwargs = dict(prompt=PROMPT, num_inference_steps=2, max_sequence_length=MAX_LENGTH)
    with pytest.raises(ShapeMismatch, match=r"built for 3 latent frames \(num_frames 9 to 12\)"):
        ours(num_frames=13, **kwargs)
    with pytest.raises(ShapeMismatch, match="height=16, width=32.*asks for height=32"):
        ours(height=32, **kwargs)
    with pytest.raises(ShapeMismatch, match="crop_start <= 95"):
        ours(prompt_template={"template": "{}", "crop_start": 96}, **kwargs)
    with pytest.raises(ValueError, match="divisible by 16"):
        ours(height=24, **kwargs)
    with pytest.raises(ValueError, match="attention_kwargs"):
        ours(attention_kwargs={"scale": 0.5}, **kwargs)
    # with this tokenizer the default template's crop_start (95) leaves "" no token: diffusers' token refiner
    # then averages over none and its frames are NaN
    with pytest.raises(ValueError, match="crop_start=95 crops all of them"):
        ours(**{**kwargs, "prompt": ""})


def test_validate_request(ours):
    request = ours.validate_request(ours.example_request())
    assert request["num_inference_steps"] == 1
    schema = ours.request_schema()
    assert schema["num_frames"]["enum"] == [9] and schema["true_cfg_scale"]["default"] == 1.0
    assert schema["scheduler"]["enum"] == ["flow_euler"] and "prompt_template" not in schema


@pytest.fixture(scope="module")
def case(reference, exported, ours):
    """The shared pipeline suite's case (a module fixture: pytest deprecates class fixtures as methods)."""
    pipe, _ = reference
    inputs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=2.0, num_inference_steps=2)

    def diffusers_frames(inputs, latents):
        return pipe(**inputs, height=HEIGHT, width=WIDTH, num_frames=9, max_sequence_length=MAX_LENGTH,
                    output_type="np", latents=torch.tensor(latents)).frames

    return SuiteCase(pipe=ours, export_dir=str(exported), inputs=inputs, reference=diffusers_frames,
                     cli_args=["--prompt", PROMPT, "--steps", "1", "--seed", "0"],
                     callback_inputs=("latents", "prompt_embeds"))


class TestSuite(PipelineSuite):
    """The shared pipeline tests: latents= parity, generate-video, request validation, bad inputs."""
