"""CogVideoXDDIMScheduler / CogVideoXDPMScheduler (numpy) step for step against diffusers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from video_aot.runtime.schedulers import make_cogvideox_scheduler

CONFIGS = {
    # the CogVideoX snapshots' settings: v-prediction, zero terminal SNR, trailing spacing
    "cogvideox": dict(beta_schedule="scaled_linear", prediction_type="v_prediction", rescale_betas_zero_snr=True,
                      timestep_spacing="trailing", snr_shift_scale=1.0, clip_sample=False),
    "shifted-eps-leading": dict(snr_shift_scale=3.0, timestep_spacing="leading", prediction_type="epsilon",
                                steps_offset=1),
    "linear-linspace": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, timestep_spacing="linspace",
                            prediction_type="sample"),
}


@pytest.fixture
def shared_noise(monkeypatch):
    """diffusers' DPM step draws torch noise; feed it the numpy stream ours draws from."""
    import diffusers.schedulers.scheduling_dpm_cogvideox as dpm

    stream = np.random.default_rng(7)
    monkeypatch.setattr(dpm, "randn_tensor", lambda shape, generator=None, device=None, dtype=None:
                        torch.from_numpy(stream.standard_normal(tuple(shape), dtype=np.float32)))
    return lambda: np.random.default_rng(7)


@pytest.mark.parametrize("kind", ["ddim", "dpm"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cogvideox_schedulers_match_diffusers(kind, name, shared_noise):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    cls = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}[kind]
    config = CONFIGS[name]
    ref = cls(**config)
    ref.set_timesteps(6)
    ours = make_cogvideox_scheduler({**config, "_class_name": cls.__name__})
    plan = ours.set_timesteps(6)
    assert np.array_equal(plan.timesteps, ref.timesteps.numpy())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 4, 5, 6)).astype(np.float32)
    x_ref = torch.tensor(x)
    old, old_ref, gen = None, None, shared_noise()
    for i, t in enumerate(ref.timesteps):
        out = rng.standard_normal(x.shape).astype(np.float32)
        if kind == "ddim":
            x_ref = ref.step(torch.tensor(out), t, x_ref, return_dict=False)[0]
        else:
            x_ref, old_ref = ref.step(torch.tensor(out), old_ref, t, ref.timesteps[i - 1] if i > 0 else None, x_ref,
                                      return_dict=False)
        x, old = ours.step(plan, i, x, out, old, generator=gen)
        np.testing.assert_allclose(x, x_ref.numpy(), rtol=1e-6, atol=1e-6)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    expected = ref.add_noise(torch.tensor(x), torch.tensor(noise), ref.timesteps[2:3]).numpy()
    np.testing.assert_allclose(ours.add_noise(plan, x, noise, 2), expected, rtol=1e-6, atol=1e-6)


def test_unknown_cogvideox_scheduler_is_named():
    with pytest.raises(ValueError, match="ddim.*dpm"):
        make_cogvideox_scheduler({"_class_name": "EulerDiscreteScheduler"})
