"""Hypothesis profiles for the property suite.

Choose one with ``pytest --hypothesis-profile=NAME`` (Hypothesis' own pytest option) or the
environment variable ``NYSACT_HYPOTHESIS_PROFILE``:

* ``ci`` (default): derandomized, bounded examples — fast and repeatable, used by CI;
* ``thorough``: many more random examples, for a local soak;
* ``mutation``: very few examples, for the mutation-testing run (see README).
"""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "mutation",
    max_examples=8,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("NYSACT_HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
