"""Fake modules.devices: CPU only."""

import torch

cpu = torch.device("cpu")
device = cpu
dtype = torch.float32
dtype_unet = torch.float32
fp8 = False


def torch_gc():
    pass
