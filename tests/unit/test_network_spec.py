"""Network structure and evaluation, input boxes, properties and margin rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.errors import InputError
from verifier.network import Affine, Network, ReLU, from_torch, random_network
from verifier.spec import (InputBox, Property, SpecError, linf_ball, margin_rows, robustness_property,
                           targeted_property)


def test_structure_and_summary():
    net = random_network([4, 6, 5, 3], np.random.default_rng(0))
    assert (net.n_inputs, net.n_outputs, net.widths, net.n_relus) == (4, 3, [6, 5], 11)
    assert net.relu_after == [True, True, False]
    assert net.summary() == "4 -> 6 -> 5 -> 3, 11 ReLUs"
    clipped = random_network([4, 6, 3], np.random.default_rng(0), relu_on_output=True)
    assert clipped.widths == [6, 3] and "ReLU on outputs" in clipped.summary()


def test_forward_matches_manual_and_torch():
    rng = np.random.default_rng(1)
    net = random_network([3, 7, 2], rng)
    x = rng.normal(size=(20, 3))
    a, b = net.affines
    manual = np.maximum(x @ a.weight.T + a.bias, 0) @ b.weight.T + b.bias
    np.testing.assert_allclose(net.forward(x), manual, rtol=1e-12)
    np.testing.assert_allclose(net.forward(x[0]), manual[0], rtol=1e-12)
    with torch.no_grad():
        out = net.torch()(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(out, manual, rtol=1e-12)
    np.testing.assert_allclose(from_torch(net.torch()).forward(x), manual, rtol=1e-12)


def test_network_rejects_bad_layers():
    a = Affine(np.eye(2), np.zeros(2))
    with pytest.raises(ValueError, match="alternate"):
        Network((a, a))
    with pytest.raises(ValueError, match="start"):
        Network((ReLU(), a))
    with pytest.raises(ValueError, match="NaN or Inf"):
        Affine(np.array([[np.nan]]), np.zeros(1))
    with pytest.raises(ValueError, match="chain"):
        Network((a, ReLU(), Affine(np.ones((1, 3)), np.zeros(1))))
    with pytest.raises(ValueError, match="input shape"):
        Network((a,), input_shape=(1, 3))


def test_weights_are_read_only():
    a = Affine(np.eye(2), np.zeros(2))
    with pytest.raises(ValueError):
        a.weight[0, 0] = 5.0


def test_linf_ball_clips_and_validates():
    box = linf_ball(np.array([0.0, 0.5, 1.0]), 0.1)
    np.testing.assert_allclose(box.lo, [0.0, 0.4, 0.9])
    np.testing.assert_allclose(box.hi, [0.1, 0.6, 1.0])
    assert linf_ball(np.array([0.0]), 0.1, clip=None).lo[0] == pytest.approx(-0.1)
    with pytest.raises(SpecError, match="eps"):
        linf_ball(np.zeros(2), -0.1)
    with pytest.raises(SpecError, match="lo > hi"):
        InputBox(np.array([1.0]), np.array([0.0]))
    assert issubclass(SpecError, InputError)


def test_box_sample_and_contains():
    box = InputBox(np.array([-1.0, 2.0]), np.array([1.0, 2.5]))
    pts = box.sample(500, np.random.default_rng(0))
    assert pts.shape == (500, 2) and box.contains(pts)
    assert not box.contains(np.array([1.1, 2.2]))
    assert np.any(np.all(pts == box.lo, axis=1)) or np.any(np.all(pts == box.hi, axis=1))


def test_margin_rows_and_properties():
    C, d = margin_rows(2, 4)
    y = np.array([1.0, 5.0, 3.0, -2.0])
    np.testing.assert_allclose(C @ y + d, [2.0, -2.0, 5.0])
    prop = robustness_property(2, 4)
    assert len(prop.disjuncts) == 3
    assert prop.violated_by(y)  # class 1 beats class 2
    assert not prop.violated_by(np.array([1.0, 2.0, 3.0, -2.0]))
    assert prop.violated_by(np.array([1.0, 3.0, 3.0, -2.0]))  # a tie is unsafe (C y <= d)
    np.testing.assert_allclose(prop.unsafe_value(np.array([1.0, 2.0, 3.0, -2.0])), 1.0)
    target = targeted_property(2, 3, 4)
    assert not target.violated_by(y) and target.violated_by(np.array([0, 0, 1.0, 2.0]))
    with pytest.raises(SpecError):
        margin_rows(4, 4)
    with pytest.raises(SpecError):
        targeted_property(2, 2, 4)


def test_property_objective_rows_sign():
    prop = Property(((np.array([[1.0, -1.0]]), np.array([0.5])),))
    C, d = prop.objective_rows(0)
    y = np.array([3.0, 1.0])  # C y = 2 > 0.5: safe, objective 1.5 > 0
    np.testing.assert_allclose(C @ y + d, [1.5])
    assert not prop.violated_by(y)


def test_property_stacked_rows_are_the_disjuncts_rows_in_order():
    prop = Property(((np.array([[1.0, -1.0]]), np.array([0.5])),
                     (np.array([[0.0, 1.0], [2.0, 0.0]]), np.array([1.0, -2.0]))))
    C, d = prop.stacked_rows()
    np.testing.assert_array_equal(C, [[1.0, -1.0], [0.0, 1.0], [2.0, 0.0]])
    np.testing.assert_array_equal(d, [-0.5, -1.0, 2.0])
    C1, d1 = prop.stacked_rows([1])
    np.testing.assert_array_equal(C1, C[1:])
    np.testing.assert_array_equal(d1, d[1:])
