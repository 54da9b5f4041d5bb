"""Asymmetric time intervals: the label UNet is told a later timestep only while sampling."""

from __future__ import annotations

import torch

from pipeline_lib.config import GenerationConfig
from pipeline_lib.generate.time_shift import shifted_timesteps


class Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen: list = []

    def forward(self, sample, timestep, encoder_hidden_states=None):
        self.seen.append(timestep.tolist() if torch.is_tensor(timestep) else timestep)
        return sample


def test_the_unet_sees_later_timesteps_capped_at_the_last_and_only_inside():
    unet = Recorder()
    x = torch.zeros(1)
    with shifted_timesteps(unet, 30, last=999):
        unet(x, torch.tensor(500))
        unet(x, 980)
        unet(x, timestep=torch.tensor([10, 990]))
    unet(x, 500)
    assert unet.seen == [530, 999, [40, 999], 500]
    with shifted_timesteps(unet, 0):
        unet(x, 7)
    assert unet.seen[-1] == 7 and not unet._forward_pre_hooks


def test_no_shift_leaves_the_generation_dump_as_before():
    assert "label_time_shift" not in GenerationConfig().model_dump()
    assert GenerationConfig(label_time_shift=20).model_dump()["label_time_shift"] == 20


def test_a_shift_below_a_timestep_leaves_the_noisier_steps_as_they_are():
    unet = Recorder()
    x = torch.zeros(1)
    with shifted_timesteps(unet, 100, last=999, below=200):
        unet(x, 500)
        unet(x, 199)
        unet(x, timestep=torch.tensor([950, 200, 150]))
    assert unet.seen == [500, 299, [950, 200, 250]]
    assert "label_time_shift_below" not in GenerationConfig(label_time_shift=20).model_dump()
