"""The README's main command: the demo's numbers against a dense float64 oracle."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.linalg as sla
from sklearn.datasets import load_digits

from nysact.train.demo import main


def _rows(out: str) -> dict[tuple[str, int, str], tuple[float, float]]:
    rows = {}
    for m in re.finditer(
        r"^(\w+)\s+(\d+)\s+([\w-]+)\s+([\d.]+)\s+([\d.]+)\s+(True|False)$", out, re.M
    ):
        rows[(m[1], int(m[2]), m[3])] = (float(m[4]), float(m[5]))
    return rows


def test_demo_digits_full_rank_is_exact_and_baseline_matches_oracle(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--ranks", "65", "10"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    # r = d = 65: the Tropp Nyström is exact (Tropp et al. 2017), so NysAct equals FOOF.
    assert rows[("subcolumn", 65, "tropp")][1] < 1e-6
    assert rows[("gaussian", 65, "tropp")][1] < 1e-6
    # r = 10 is an approximation: strictly between exact and no preconditioning.
    baseline = float(re.search(r"\(G/ρ\): err\(GP\) = ([\d.]+)", out)[1])  # type: ignore[index]
    assert 0.0 < rows[("gaussian", 10, "tropp")][1] < baseline
    # the G/ρ baseline, recomputed here with scipy in float64
    data = load_digits()
    x = np.hstack([data.data / 16.0, np.ones((len(data.data), 1))])
    n = len(x)
    a = x.T @ x / n
    onehot = np.eye(10)[data.target]
    g = (np.full((n, 10), 0.1) - onehot).T @ x / n
    exact = sla.solve(a + np.eye(65), g.T, assume_a="pos").T
    want = np.linalg.norm(g - exact) / np.linalg.norm(exact)
    assert baseline == pytest.approx(want, abs=1e-4)
