"""MaxPool windows as a whole (`windows.max_windows`, `windows.window_bound`): the upper line of a window's maximum
lies above it at every point of the box, the windows found in the rewrite are the MaxPool's own, and on MaxPool
graphs the bounds with it stay below the exact minimum (MILP) while the objective rows gain over the nested
triangles alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_models import random_graph_file
from verifier.bounds import engine, milp, windows
from verifier.onnx import load_onnx
from verifier.spec import InputBox


def test_the_upper_line_lies_above_the_maximum_at_every_point():
    rng = np.random.default_rng(0)
    n_source, n, m, B = 12, 40, 7, 3
    index = torch.as_tensor(rng.integers(0, n_source, size=(n, m)))  # entries repeat, as where windows overlap
    ordered, order = index.sort(1)
    repeat = torch.zeros_like(index, dtype=torch.bool)
    repeat.scatter_(1, order[:, 1:], ordered[:, 1:] == ordered[:, :-1])  # counted: each entry's first occurrence
    l = torch.as_tensor(rng.normal(size=(B, n_source)))
    u = l + torch.as_tensor(rng.exponential(size=(B, n_source)) * (rng.random((B, n_source)) > 0.2))  # some l = u
    coef, offset = windows.threshold_line(l[:, index], u[:, index], ~repeat)
    assert coef.shape == (B, n, m) and bool(((coef >= 0) & (coef <= 1)).all())
    points = l.unsqueeze(1) + (u - l).unsqueeze(1) * torch.as_tensor(rng.random((B, 500, n_source)))
    points[:, :100] = torch.where(torch.as_tensor(rng.random((B, 100, n_source))) < 0.5, l.unsqueeze(1),
                                  u.unsqueeze(1))  # corners
    entries = points[:, :, index]  # (B, P, n, m)
    line = (entries * coef.unsqueeze(1)).sum(-1) + offset.unsqueeze(1)
    assert bool((line >= entries.amax(-1) - 1e-12).all())
    # where one entry's lower bound is above every other's upper bound, the line is that entry: exact
    low = torch.tensor([[[3.0, 0.0, -1.0]]])
    coef, offset = windows.threshold_line(low, low + 1, torch.ones(1, 3, dtype=torch.bool))
    np.testing.assert_allclose(coef[0, 0].numpy(), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(offset.numpy(), [[0.0]])


def test_the_windows_are_the_maxpool_windows_of_the_input(tmp_path):
    """On the `maxpool` graph (a 3x3 MaxPool, stride 2, padding 1, then a 2x2 one) the one window found per output
    entry is the union of the first pool's windows under the second's, over the first ReLU's output, and the
    network's values equal the maximum over those entries."""
    net = load_onnx(random_graph_file("maxpool", tmp_path, seed=1))
    found = windows.max_windows(net)
    assert len(found) == 1
    (top, (source, index, counted, levels)), = found.items()
    values = {}
    x = torch.as_tensor(np.random.default_rng(2).uniform(-1, 1, (5, net.n_inputs)))
    for k, node in enumerate(net.nodes):
        values[k] = x.reshape(5, *net.input_shape) if k == 0 else node.op.forward(*[values[i] for i in node.inputs])
    assert type(net.nodes[source].op).__name__ == "ReLU"
    flat = values[source].reshape(5, -1)
    torch.testing.assert_close(values[top].reshape(5, -1), flat[:, index].amax(-1))
    assert index.shape[1] == int(counted.sum(1).max()) <= 25  # at most 5 x 5 distinct entries
    assert all(len(set(row[mask].tolist())) == int(mask.sum()) for row, mask in zip(index, counted))
    assert [type(net.nodes[r].op).__name__ for r, _, _ in levels] == ["ReLU"] * 6  # 16 entries, then 4


@pytest.mark.parametrize("seed", [4, 8, 147])
def test_maxpool_rows_stay_below_the_exact_minimum_and_gain_over_the_triangles(tmp_path, monkeypatch, seed):
    net = load_onnx(random_graph_file("maxpool", tmp_path, seed=seed))
    rng = np.random.default_rng(seed)
    centre, radius = rng.uniform(0, 1, net.n_inputs), 0.06
    box = InputBox(centre - radius, centre + radius)
    C = rng.normal(size=(4, net.n_outputs))
    lo, hi = (torch.tensor(v)[None] for v in (box.lo, box.hi))
    with_windows, _ = engine.crown(net, lo, hi, torch.as_tensor(C))
    monkeypatch.setattr(engine, "max_windows", lambda network: {})
    triangles, _ = engine.crown(net, lo, hi, torch.as_tensor(C))
    exact = milp.bound(net, box, C, time_limit=60)
    assert all(s == "optimal" for s in exact.info["status"])
    assert np.all(with_windows[0].numpy() <= exact.lower + 1e-7)
    assert np.all(triangles[0].numpy() <= exact.lower + 1e-7)
    gain = (with_windows - triangles)[0].numpy()
    assert gain.max() > 0.01 and gain.sum() > 0, gain
