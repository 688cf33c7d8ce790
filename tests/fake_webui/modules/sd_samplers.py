"""Fake ``modules.sd_samplers``: the sampler names of AUTOMATIC1111 1.10 (``all_samplers_map`` keyed by name)."""

from collections import namedtuple

SamplerData = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])

NAMES = ("DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler",
         "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM")

all_samplers = [SamplerData(name, None, [], {}) for name in NAMES]
all_samplers_map = {x.name: x for x in all_samplers}
