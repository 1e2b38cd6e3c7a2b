"""Parity of runtime/schedulers.py with diffusers for flow matching, the stochastic samplers
(Euler ancestral, LCM) and scheduler swaps (``_use_default_values``).

Every reference comes from diffusers 0.42. Both loops are fed the same model outputs (a fake
network evaluated on our sample) and, for the stochastic samplers, the same noise: diffusers'
``randn_tensor`` is replaced by draws from a numpy generator seeded like ours. Timesteps, sigmas
and every step's sample are compared at 1e-6 relative (max abs difference / max abs reference).
"""
import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_mod  # noqa: E402
import diffusers.schedulers.scheduling_flow_match_euler_discrete as flow_mod  # noqa: E402
import diffusers.schedulers.scheduling_lcm as lcm_mod  # noqa: E402
from diffusers import (  # noqa: E402
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
)
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift as ltx_calculate_shift  # noqa: E402
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule as mochi_schedule  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

from video_aot.runtime import schedulers as S  # noqa: E402

RTOL = 1e-6
SHAPE = (1, 4, 3, 6, 6)  # batch, channels, frames, height, width


@pytest.fixture(autouse=True, scope="module")
def _quiet_diffusers():
    # from_config warns about keys meant for other classes; only while this module runs
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    yield
    diffusers_logging.set_verbosity(level)


# Hub scheduler_config.json files (keys diffusers adds on load are left out, as in the snapshots)
LTX_091_CONFIG = {  # Lightricks/LTX-Video, 0.9.1 scheduler
    "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 1024, "base_shift": 0.95,
    "invert_sigmas": False, "max_image_seq_len": 4096, "max_shift": 2.05, "num_train_timesteps": 1000,
    "shift": 1.0, "shift_terminal": 0.1, "use_beta_sigmas": False, "use_dynamic_shifting": True,
    "use_exponential_sigmas": False, "use_karras_sigmas": False,
}
HUNYUAN_CONFIG = {  # hunyuanvideo-community/HunyuanVideo scheduler
    "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 7.0,
    "use_dynamic_shifting": False,
}
MOCHI_CONFIG = {  # genmo/mochi-1-preview scheduler
    "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
    "invert_sigmas": True, "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000,
    "shift": 1.0, "shift_terminal": None, "use_beta_sigmas": False, "use_dynamic_shifting": False,
    "use_exponential_sigmas": False, "use_karras_sigmas": False,
}
# damo-vilab/text-to-video-ms-1.7b scheduler (written by diffusers 0.15: no timestep_spacing key)
T2V_CONFIG = {
    "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}


def fake_network(x: np.ndarray, t) -> np.ndarray:
    """A smooth, t-dependent stand-in for a denoiser."""
    x = np.asarray(x, dtype=np.float32)
    out = np.float32(0.9) * x + np.float32(0.1) * np.tanh(np.float32(2) * x)
    return (out + np.float32(0.05) * np.cos(x + np.float32(0.003) * np.float32(t))).astype(np.float32)


def rel_err(ours, ref) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(np.asarray(ours, dtype=np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.fixture
def shared_noise(monkeypatch):
    """diffusers' samplers take their noise from ``queue`` (filled by compare_loops with exactly
    what our generator draws next); returns the generator factory for our side."""
    queue = []

    def randn(shape, generator=None, device=None, dtype=None, layout=None):
        noise = queue.pop(0)
        assert noise.shape == tuple(shape)
        return torch.from_numpy(noise)

    for mod in (flow_mod, euler_a_mod, lcm_mod):
        monkeypatch.setattr(mod, "randn_tensor", randn)
    return lambda: (np.random.default_rng(1234), queue)


def compare_loops(ours, plan, ref, noise=None, start=0, x=None):
    """Run our loop and the diffusers loop side by side; check every step twice, as
    tests/test_schedulers.py does, both at RTOL:

    * local: a copy of diffusers' scheduler steps from *our* current sample with *our* model output
      (and the noise our step draws); error relative to the larger magnitude of the step's input
      and output;
    * trajectory: the independent diffusers loop (its own fake-network calls, the same noise),
      relative to the largest magnitude its sample has reached so far (one-ulp local differences
      random-walk along a long run).
    Returns the largest local error.
    """
    gen, queue = noise if noise is not None else (None, None)
    if x is None:
        x = (np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32) * plan.init_noise_sigma)
    x_ref = torch.from_numpy(x.copy())
    running_scale = float(np.abs(x).max())
    worst, state = 0.0, None
    for i in range(start, len(plan.timesteps)):
        t = ref.timesteps[i]
        local = copy.deepcopy(ref)
        model_in = ours.scale_model_input(plan, i, x)
        local_in = torch.from_numpy(x.copy())
        if hasattr(ref, "scale_model_input"):  # FlowMatchEulerDiscreteScheduler has none
            local_in = local.scale_model_input(local_in, t)
        assert rel_err(model_in, local_in.numpy()) <= RTOL, f"scale_model_input, step {i}"
        out = fake_network(model_in, plan.timesteps[i])
        if gen is not None:  # the draw our step is about to make, for both diffusers steps
            upcoming = copy.deepcopy(gen).standard_normal(x.shape, dtype=np.float32)
            queue[:] = [upcoming, upcoming]
        local_out = local.step(torch.from_numpy(out), t, torch.from_numpy(x.copy()), return_dict=False)[0].numpy()
        x_in = x
        before = gen.bit_generator.state if gen is not None else None
        x, state = ours.step(plan, i, x, out, state, generator=gen)
        assert x.dtype == np.float32
        scale = max(np.abs(x_in).max(), np.abs(local_out).max())
        err = float(np.abs(x.astype(np.float64) - local_out).max() / scale)
        assert err <= RTOL, f"step {i} on identical inputs: relative error {err:.3g}"
        worst = max(worst, err)

        ref_in = ref.scale_model_input(x_ref, t) if hasattr(ref, "scale_model_input") else x_ref
        out_ref = torch.from_numpy(fake_network(ref_in.numpy(), t.item()))
        x_ref = ref.step(out_ref, t, x_ref, return_dict=False)[0]
        if gen is not None:  # both sides drew noise at this step, or neither did
            drew = gen.bit_generator.state != before
            assert len(queue) == (0 if drew else 2), f"noise draws differ at step {i}"
            queue.clear()
        running_scale = max(running_scale, float(np.abs(x_ref.numpy()).max()))
        err = float(np.abs(x - x_ref.numpy()).max()) / running_scale
        assert err <= RTOL, f"trajectory after step {i}: relative error {err:.3g}"
    return worst


def check_plan(plan, ref):
    np.testing.assert_allclose(plan.timesteps, ref.timesteps.numpy(), rtol=RTOL, atol=0)
    np.testing.assert_allclose(plan.sigmas, ref.sigmas.numpy(), rtol=RTOL, atol=0)
    assert plan.timesteps.dtype == np.float32 and plan.sigmas.dtype == np.float32
    assert len(plan) == len(ref.timesteps)


def flow_pair(config, **overrides):
    ours = S.make_scheduler(config, **overrides)
    assert isinstance(ours, S.FlowMatchEulerDiscrete)
    return ours, FlowMatchEulerDiscreteScheduler.from_config(config, **overrides)


# ----------------------------------------------------------------------------------------------
# flow matching: the three video configs, as their pipelines call set_timesteps
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [2, 7, 30])
def test_ltx_091_dynamic_shift_and_shift_terminal(num_steps):
    ours, ref = flow_pair(LTX_091_CONFIG)
    seq_len = 21 * 16 * 22  # 161 frames at 512x704: latent frames x height x width
    c = ref.config
    mu_ref = ltx_calculate_shift(seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    mu = ours.mu_for(seq_len)
    assert mu == mu_ref
    assert S.calculate_shift(seq_len, 1024, 4096, 0.95, 2.05) == mu_ref
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)  # LTXPipeline
    ref.set_timesteps(num_steps, sigmas=sigmas, mu=mu_ref)
    plan = ours.set_timesteps(num_steps, sigmas=sigmas, mu=mu)
    check_plan(plan, ref)
    assert abs(plan.sigmas[-2] - 0.1) < 1e-6  # shift_terminal
    compare_loops(ours, plan, ref)
    with pytest.raises(ValueError, match="mu="):
        ours.set_timesteps(num_steps)


def test_ltx_condition_per_token_timesteps():
    # LTXConditionPipeline: conditioning tokens carry lower timesteps; the packed sample is [B, N, C]
    ours, ref = flow_pair(LTX_091_CONFIG)
    num_steps, mu = 8, ours.mu_for(4 * 6 * 6)
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    ref.set_timesteps(num_steps, sigmas=sigmas, mu=mu)
    plan = ours.set_timesteps(num_steps, sigmas=sigmas, mu=mu)
    rng = np.random.default_rng(3)
    mask = torch.from_numpy(rng.choice(np.float32([0.0, 0.0, 1.0, 0.35]), size=(2, 144)))  # [B, N]
    x = rng.standard_normal((2, 144, 8)).astype(np.float32)
    x_ref, x_start = torch.from_numpy(x.copy()), x.copy()
    for i, t in enumerate(ref.timesteps):
        timestep = torch.min(t.expand(2).unsqueeze(-1).float(), (1 - mask) * 1000.0)  # as the pipeline
        out = fake_network(x, float(t))
        x, _ = ours.step(plan, i, x, out, per_token_timesteps=timestep.numpy())
        x_ref = ref.step(-torch.from_numpy(out), t, x_ref, per_token_timesteps=timestep, return_dict=False)[0]
        err = rel_err(x, x_ref.numpy())
        assert err <= RTOL, f"step {i}: relative error {err:.3g}"
    frozen = (mask == 1).numpy()
    np.testing.assert_array_equal(x[frozen], x_start[frozen])  # fully conditioned tokens never move
    assert rel_err(x[~frozen], x_start[~frozen]) > 1e-2
    with pytest.raises(ValueError, match="channel axis"):
        ours.step(plan, 0, x, x, per_token_timesteps=np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("num_steps", [1, 7, 30])
def test_hunyuan_static_shift_with_pipeline_sigmas(num_steps):
    ours, ref = flow_pair(HUNYUAN_CONFIG)
    sigmas = np.linspace(1.0, 0.0, num_steps + 1)[:-1]  # HunyuanVideoPipeline
    ref.set_timesteps(sigmas=sigmas)
    plan = ours.set_timesteps(sigmas=sigmas)
    check_plan(plan, ref)
    compare_loops(ours, plan, ref)


@pytest.mark.parametrize("num_steps", [2, 7, 30, 64])
def test_mochi_inverted_linear_quadratic_sigmas(num_steps):
    ref_sigmas = np.array(mochi_schedule(num_steps, 0.025))
    sigmas = S.linear_quadratic_schedule(num_steps, 0.025)
    np.testing.assert_array_equal(sigmas, ref_sigmas)
    np.testing.assert_array_equal(S.linear_quadratic_schedule(num_steps, 0.1, 1),
                                  np.array(mochi_schedule(num_steps, 0.1, 1)))
    ours, ref = flow_pair(MOCHI_CONFIG)
    ref.set_timesteps(sigmas=ref_sigmas)  # MochiPipeline, through retrieve_timesteps
    plan = ours.set_timesteps(sigmas=sigmas)
    check_plan(plan, ref)
    assert plan.sigmas[0] == 0 and plan.sigmas[-1] == 1  # inverted
    compare_loops(ours, plan, ref)


# ----------------------------------------------------------------------------------------------
# flow matching: the other config switches
# ----------------------------------------------------------------------------------------------

FLOW_CASES = [
    # (id, overrides, set_timesteps kwargs)
    ("default-shift3", {"shift": 3.0}, {"num_inference_steps": 9}),
    ("default-noshift-1step", {}, {"num_inference_steps": 1}),
    ("karras", {"shift": 7.0, "use_karras_sigmas": True}, {"num_inference_steps": 9}),
    ("exponential", {"shift": 7.0, "use_exponential_sigmas": True}, {"num_inference_steps": 9}),
    ("beta", {"shift": 7.0, "use_beta_sigmas": True}, {"num_inference_steps": 9}),
    # sigma_min / sigma_max in the config dict (not as overrides: diffusers ignores those kwargs)
    ("karras-hidden-sigma-bounds", {"use_karras_sigmas": True}, {"num_inference_steps": 6}),
    ("linear-time-shift", {"use_dynamic_shifting": True, "time_shift_type": "linear"},
     {"num_inference_steps": 8, "mu": 2.5}),
    ("dynamic-exp-default-spacing", {"use_dynamic_shifting": True}, {"num_inference_steps": 8, "mu": 0.7}),
    ("terminal-karras", {"shift": 3.0, "shift_terminal": 0.05, "use_karras_sigmas": True},
     {"num_inference_steps": 8}),
    ("custom-timesteps", {"shift": 3.0}, {"timesteps": [1000.0, 900.0, 700.5, 400.0, 150.0, 20.0]}),
    ("custom-sigmas-and-timesteps", {"shift": 3.0},
     {"sigmas": [1.0, 0.8, 0.5, 0.2], "timesteps": [999.0, 800.0, 500.0, 200.0]}),
    ("custom-timesteps-inverted", {"invert_sigmas": True},
     {"num_inference_steps": 4, "timesteps": [990.0, 700.0, 300.0, 40.0]}),
    ("dynamic-custom-sigmas-terminal", {"use_dynamic_shifting": True, "shift_terminal": 0.2},
     {"sigmas": list(np.linspace(1.0, 0.05, 12)), "mu": 1.3}),
]


@pytest.mark.parametrize("case", FLOW_CASES, ids=[c[0] for c in FLOW_CASES])
def test_flow_options_match_diffusers(case):
    _, overrides, kwargs = case
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler"}
    if "hidden" in case[0]:
        config.update(sigma_min=0.05, sigma_max=0.9)
    ours, ref = flow_pair(config, **overrides)
    ref.set_timesteps(**kwargs)
    plan = ours.set_timesteps(**kwargs)
    check_plan(plan, ref)
    compare_loops(ours, plan, ref)


@pytest.mark.parametrize("num_steps", [3, 10])
def test_flow_stochastic_sampling_same_noise(num_steps, shared_noise):
    ours, ref = flow_pair(HUNYUAN_CONFIG, stochastic_sampling=True)
    sigmas = np.linspace(1.0, 0.0, num_steps + 1)[:-1]
    ref.set_timesteps(sigmas=sigmas)
    plan = ours.set_timesteps(sigmas=sigmas)
    compare_loops(ours, plan, ref, noise=shared_noise())
    with pytest.raises(ValueError, match="generator"):
        ours.step(plan, 0, np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.float32))


def test_scale_noise_and_strength_match_diffusers():
    ours, ref = flow_pair(HUNYUAN_CONFIG)
    n = 12
    sigmas = np.linspace(1.0, 0.0, n + 1)[:-1]
    ref.set_timesteps(sigmas=sigmas)
    plan = ours.set_timesteps(sigmas=sigmas)
    rng = np.random.default_rng(5)
    latents = rng.standard_normal((2, *SHAPE[1:])).astype(np.float32)
    noise = rng.standard_normal(latents.shape).astype(np.float32)
    t_start, timesteps = S.get_timesteps_for_strength(plan, 0.6)
    # the pipelines' img2img flow: get_timesteps, set_begin_index, scale_noise(latents, t[:1], noise)
    init_timestep = min(int(n * 0.6), n)
    ref_start = max(n - init_timestep, 0)
    assert t_start == ref_start
    ref.set_begin_index(ref_start)
    t0 = ref.timesteps[ref_start:ref_start + 1].repeat(2)
    x_ref = ref.scale_noise(torch.from_numpy(latents), t0, torch.from_numpy(noise))
    x = S.scale_noise(plan, latents, noise, step_index=t_start)
    assert rel_err(x, x_ref.numpy()) <= RTOL
    assert rel_err(S.add_noise(plan, latents, noise, step_index=t_start), x_ref.numpy()) <= RTOL
    compare_loops(ours, plan, ref, start=t_start, x=x)
    # without a begin index diffusers looks each timestep up
    ref2 = FlowMatchEulerDiscreteScheduler.from_config(HUNYUAN_CONFIG)
    ref2.set_timesteps(sigmas=sigmas)
    picks = [0, 7]
    x_ref = ref2.scale_noise(torch.from_numpy(latents), ref2.timesteps[picks], torch.from_numpy(noise))
    assert rel_err(S.scale_noise(plan, latents, noise, plan.timesteps[picks]), x_ref.numpy()) <= RTOL
    with pytest.raises(ValueError, match="flow-matching"):
        S.scale_noise(S.make_scheduler({}, "euler").set_timesteps(3), latents, noise, step_index=0)


def test_flow_errors_teach():
    ours = S.make_scheduler(HUNYUAN_CONFIG)
    with pytest.raises(ValueError, match="same length"):
        ours.set_timesteps(sigmas=[1.0, 0.5], timesteps=[1000.0])
    with pytest.raises(ValueError, match="num_inference_steps=3"):
        ours.set_timesteps(3, sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="at most one"):
        S.make_scheduler(HUNYUAN_CONFIG, use_karras_sigmas=True, use_beta_sigmas=True)
    with pytest.raises(ValueError, match="time_shift_type"):
        S.make_scheduler(HUNYUAN_CONFIG, time_shift_type="cosine")
    assert isinstance(S.make_scheduler({}, "FlowMatchEulerDiscreteScheduler"), S.FlowMatchEulerDiscrete)
    assert isinstance(S.make_scheduler({}, "flow_euler"), S.FlowMatchEulerDiscrete)


# ----------------------------------------------------------------------------------------------
# Euler ancestral and LCM (stochastic: same noise stream on both sides)
# ----------------------------------------------------------------------------------------------

SD_CONFIG = {  # Stable Diffusion 1.x (PNDM) config, used with name overrides
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None, "clip_sample": False,
}


@pytest.mark.parametrize("num_steps", [1, 6, 25])
@pytest.mark.parametrize("overrides", [{}, {"timestep_spacing": "leading"},
                                       {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
                                       {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                                        "timestep_spacing": "trailing"}],
                         ids=["eps-linspace", "eps-leading", "v-trailing", "v-zero-snr"])
def test_euler_ancestral_matches_diffusers(overrides, num_steps, shared_noise):
    ours = S.make_scheduler(SD_CONFIG, "euler_a", **overrides)
    assert isinstance(ours, S.EulerAncestralDiscrete)
    ref = EulerAncestralDiscreteScheduler.from_config(SD_CONFIG, **overrides)
    ref.set_timesteps(num_steps)
    plan = ours.set_timesteps(num_steps)
    rtol = 1e-5 if overrides.get("rescale_betas_zero_snr") else RTOL  # see test_schedulers CASES "shared"
    np.testing.assert_allclose(plan.sigmas, ref.sigmas.numpy(), rtol=rtol)
    np.testing.assert_allclose(plan.timesteps, ref.timesteps.numpy(), rtol=RTOL)
    np.testing.assert_allclose(plan.init_noise_sigma, float(ref.init_noise_sigma), rtol=rtol)
    if overrides.get("rescale_betas_zero_snr"):
        ref.sigmas = torch.from_numpy(plan.sigmas.copy())  # step with our schedule (ulp-sensitive end)
    compare_loops(ours, plan, ref, noise=shared_noise())


@pytest.mark.parametrize("num_steps,set_kwargs", [(1, {}), (4, {}), (8, {}), (4, {"original_inference_steps": 100}),
                                                  (3, {"strength": 0.5})],
                         ids=["1", "4", "8", "4-orig100", "3-strength0.5"])
@pytest.mark.parametrize("overrides", [{}, {"prediction_type": "v_prediction", "clip_sample": True}],
                         ids=["eps", "v-clip"])
def test_lcm_matches_diffusers(num_steps, set_kwargs, overrides, shared_noise):
    config = dict(LCMScheduler(**overrides).config)
    ours = S.make_scheduler(config, "LCMScheduler")
    assert isinstance(ours, S.LCM)
    ref = LCMScheduler.from_config(config)
    ref.set_timesteps(num_steps, **set_kwargs)
    plan = ours.set_timesteps(num_steps, **set_kwargs)
    np.testing.assert_array_equal(plan.timesteps, ref.timesteps.numpy())
    compare_loops(ours, plan, ref, noise=shared_noise())


def test_lcm_add_noise_matches_diffusers():
    ours = S.make_scheduler({}, "lcm")
    ref = LCMScheduler()
    plan = ours.set_timesteps(4)
    ref.set_timesteps(4)
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal((2, *SHAPE[1:])).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = ref.timesteps[1:2].repeat(2)
    expected = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), t).numpy()
    assert rel_err(S.add_noise(plan, x0, noise, step_index=1), expected) <= RTOL
    assert rel_err(S.add_noise(ours, x0, noise, timestep=t.numpy()), expected) <= RTOL


# ----------------------------------------------------------------------------------------------
# Class swaps honour _use_default_values, as diffusers' from_config does
# ----------------------------------------------------------------------------------------------


def _swap_check(our_config, ref_config, name, ref_cls, num_steps=2, **set_kwargs):
    ours = S.make_scheduler(our_config, name)
    ref = ref_cls.from_config(ref_config)
    plan = ours.set_timesteps(num_steps)
    ref.set_timesteps(num_steps)
    np.testing.assert_array_equal(plan.timesteps, ref.timesteps.numpy())
    compare_loops(ours, plan, ref)
    return plan


def test_swap_to_dpm_honours_use_default_values(tmp_path):
    # 1. a live TextToVideoSD-style DDIM: diffusers lists the arguments left at their defaults
    ddim = DDIMScheduler(**{k: v for k, v in T2V_CONFIG.items() if not k.startswith("_") and k != "skip_prk_steps"})
    live = dict(ddim.config)
    assert "timestep_spacing" in live["_use_default_values"] and live["timestep_spacing"] == "leading"
    plan = _swap_check(live, ddim.config, "dpm++", DPMSolverMultistepScheduler)
    # DPM's own default spacing (linspace), not DDIM's "leading" (which would give [667, 334])
    without_list = {k: v for k, v in live.items() if k != "_use_default_values"}
    assert plan.timesteps.tolist() != S.make_scheduler(without_list, "dpm++").set_timesteps(2).timesteps.tolist()
    for steps in (7, 25):
        _swap_check(live, ddim.config, "DPMSolverMultistepScheduler", DPMSolverMultistepScheduler, steps)
    _swap_check(live, ddim.config, "euler", EulerDiscreteScheduler, 7)
    _swap_check(live, ddim.config, "ddim", DDIMScheduler, 7)

    # 2. an old snapshot without timestep_spacing (the hub's TextToVideoSD config): diffusers records
    #    the missing keys on load; reading the file gives the same result
    old = tmp_path / "old"
    old.mkdir()
    (old / "scheduler_config.json").write_text(json.dumps(T2V_CONFIG))
    loaded = DDIMScheduler.from_pretrained(old)
    assert "timestep_spacing" in loaded.config["_use_default_values"]
    _swap_check(old / "scheduler_config.json", loaded.config, "dpm++", DPMSolverMultistepScheduler, 7)
    _swap_check(dict(loaded.config), loaded.config, "dpm++", DPMSolverMultistepScheduler, 7)

    # 3. save_pretrained of diffusers 0.42 writes every key and drops the list, so a re-saved
    #    snapshot keeps "leading" on both sides
    ddim.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "scheduler_config.json").read_text())
    resaved = DDIMScheduler.from_pretrained(tmp_path / "saved")
    plan = _swap_check(saved, resaved.config, "dpm++", DPMSolverMultistepScheduler, 7)
    _swap_check(dict(resaved.config), resaved.config, "dpm++", DPMSolverMultistepScheduler, 7)


def test_cogvideox_swap_honours_use_default_values():
    ddim = CogVideoXDDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction",
                                  rescale_betas_zero_snr=True, snr_shift_scale=1.0)
    ours = S.make_scheduler(dict(ddim.config), "CogVideoXDPMScheduler")  # a live config has no _class_name
    ref = CogVideoXDPMScheduler.from_config(ddim.config)
    assert ours.name == "cogvideox_dpm"
    for field in ("timestep_spacing", "steps_offset", "set_alpha_to_one", "prediction_type", "snr_shift_scale"):
        assert getattr(ours.config, field) == ref.config[field], field
    ref.set_timesteps(9)
    np.testing.assert_array_equal(ours.set_timesteps(9).timesteps, ref.timesteps.numpy())


def test_names_and_class_map():
    for canonical, class_name in S.SCHEDULER_CLASS_NAMES.items():
        if canonical.startswith("cogvideox"):
            assert S.make_cogvideox_scheduler({"_class_name": class_name}).name == canonical
            continue
        assert S.canonical_scheduler_name(class_name) == canonical
        assert S.make_scheduler({}, class_name).name == canonical
    with pytest.raises(ValueError, match="flow_euler"):
        S.canonical_scheduler_name("unipc")
