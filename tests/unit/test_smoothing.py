"""Randomized smoothing is statistically sound on a linear classifier whose smoothed version has a closed form.

For f(x) = [w.x + b > 0] (a network with outputs (0, w.x + b)) and noise N(0, sigma^2 I), P(f(x + delta) = 1) =
Phi((w.x + b) / (sigma ||w||)): the smoothed classifier equals f and its exact L2 robust radius is
|w.x + b| / ||w||. Every repetition below draws from its own seeded generator, so the tests are deterministic.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from verifier.network import Affine, Network
from verifier.smoothing import ABSTAIN, Smoothed, clopper_pearson_lower

W = np.array([0.6, -0.8, 0.5])
B = 0.1
SIGMA = 0.5
ALPHA = 0.05
REPEATS = 200


def linear_net() -> Network:
    return Network((Affine(np.vstack([np.zeros(3), W]), np.array([0.0, B])),))


def point_at(signed_distance: float) -> np.ndarray:
    """A point whose signed L2 distance to the decision boundary w.x + b = 0 is signed_distance."""
    unit = W / np.linalg.norm(W)
    return unit * (signed_distance - B / np.linalg.norm(W))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def allowed_failures(repeats: int, alpha: float, tail: float = 1e-4) -> int:
    """The count of failures that a Binomial(repeats, alpha) exceeds with probability below `tail`."""
    return int(binom.ppf(1 - tail, repeats, alpha))


def test_clopper_pearson_known_values():
    # all successes: P(Binom(n, p) = n) = p^n = alpha at the bound
    assert clopper_pearson_lower(50, 50, 0.01) == pytest.approx(0.01 ** (1 / 50), rel=1e-12)
    assert clopper_pearson_lower(0, 50, 0.01) == 0.0
    # k of n: at the bound, P(Binom(n, p) >= k) = alpha
    p = clopper_pearson_lower(70, 100, 0.05)
    assert binom.sf(69, 100, p) == pytest.approx(0.05, rel=1e-8)
    assert p < 0.7


def test_point_at_has_the_requested_distance():
    x = point_at(0.3)
    assert (W @ x + B) / np.linalg.norm(W) == pytest.approx(0.3)


@pytest.mark.parametrize("distance", [0.15, -0.4])
def test_certified_radius_exceeds_true_radius_at_most_alpha_of_the_time(distance):
    smoothed = Smoothed(linear_net(), SIGMA, 2)
    x = point_at(distance)
    true_class, true_radius = int(distance > 0), abs(distance)
    wrong = 0
    certified = []
    for seed in range(REPEATS):
        label, radius = smoothed.certify(x, n0=20, n=400, alpha=ALPHA, generator=gen(seed))
        if label != ABSTAIN:
            certified.append(radius)
            wrong += label != true_class or radius > true_radius
    assert wrong <= allowed_failures(REPEATS, ALPHA)
    # not vacuous: most runs certify, and the radii are close to the truth (p_A = Phi(0.3) or Phi(0.8))
    assert len(certified) >= REPEATS // 2
    assert np.median(certified) > 0.5 * true_radius


def test_certify_far_from_boundary_has_the_all_successes_radius():
    # every noisy copy is classified 1, so pA = alpha^(1/n) exactly
    smoothed = Smoothed(linear_net(), 0.1, 2)
    label, radius = smoothed.certify(point_at(3.0), n0=10, n=100, alpha=0.001, generator=gen(0))
    assert label == 1
    assert radius == pytest.approx(0.1 * norm.ppf(0.001 ** (1 / 100)), rel=1e-10)


def test_certify_and_predict_abstain_on_the_decision_boundary():
    smoothed = Smoothed(linear_net(), SIGMA, 2)
    x = point_at(0.0)  # both classes have probability 1/2: the smoothed classifier ties
    certify_abstained = sum(smoothed.certify(x, 20, 400, ALPHA, generator=gen(s))[0] == ABSTAIN for s in range(100))
    predict_abstained = sum(smoothed.predict(x, 400, ALPHA, generator=gen(s)) == ABSTAIN for s in range(100))
    assert certify_abstained >= 100 - allowed_failures(100, ALPHA)
    assert predict_abstained >= 100 - allowed_failures(100, ALPHA)


def test_predict_returns_the_wrong_class_at_most_alpha_of_the_time():
    smoothed = Smoothed(linear_net(), SIGMA, 2)
    x = point_at(-0.05)  # p(class 1) = Phi(-0.1) ~ 0.46: hard to tell apart, the truth is class 0
    answers = np.array([smoothed.predict(x, 400, ALPHA, generator=gen(s)) for s in range(REPEATS)])
    assert np.sum(answers == 1) <= allowed_failures(REPEATS, ALPHA)
    far = np.array([smoothed.predict(point_at(-1.0), 100, ALPHA, generator=gen(s)) for s in range(20)])
    assert np.all(far == 0)


def test_counts_are_reproducible_and_match_the_closed_form():
    smoothed = Smoothed(linear_net(), SIGMA, 2)
    x = point_at(0.2)
    a = smoothed.counts(x, 1000, batch=1000, generator=gen(7))
    b = smoothed.counts(x, 1000, batch=1000, generator=gen(7))
    assert np.array_equal(a, b) and a.sum() == 1000
    # the frequency agrees with the closed form Phi(0.2 / sigma) within 4 standard errors
    p = norm.cdf(0.2 / SIGMA)
    assert abs(a[1] / 1000 - p) < 4 * np.sqrt(p * (1 - p) / 1000)
    c = smoothed.counts(x, 1000, batch=64, generator=gen(7))
    assert c.sum() == 1000


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Smoothed(linear_net(), 0.0, 2)
    with pytest.raises(ValueError):
        Smoothed(linear_net(), 0.5, 3)


def test_a_torch_module_base_gives_the_same_counts_and_is_left_unchanged():
    net = linear_net()
    module = net.torch(dtype=torch.float32)
    from_module = Smoothed(module, SIGMA, 2).counts(point_at(0.1), 500, generator=gen(3))
    from_network = Smoothed(net, SIGMA, 2).counts(point_at(0.1), 500, generator=gen(3))
    assert np.array_equal(from_module, from_network)
    assert next(module.parameters()).dtype == torch.float32  # the caller's module was not converted


def test_wrong_input_size_is_rejected():
    with pytest.raises(ValueError, match="inputs"):
        Smoothed(linear_net(), SIGMA, 2).counts(np.zeros(4), 10)
