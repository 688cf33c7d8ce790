"""Fake ``modules.sd_schedulers``: the schedule types of AUTOMATIC1111 1.10 (``schedulers_map`` by name and label)."""

from collections import namedtuple

Scheduler = namedtuple("Scheduler", ["name", "label", "function", "default_rho", "need_inner_model", "aliases"])

_PAIRS = (("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras"), ("exponential", "Exponential"),
          ("polyexponential", "Polyexponential"), ("sgm_uniform", "SGM Uniform"), ("kl_optimal", "KL Optimal"),
          ("align_your_steps", "Align Your Steps"), ("simple", "Simple"), ("normal", "Normal"), ("ddim", "DDIM"), ("beta", "Beta"))

schedulers = [Scheduler(name, label, None, None, False, None) for name, label in _PAIRS]
schedulers_map = {**{x.name: x for x in schedulers}, **{x.label: x for x in schedulers}}
