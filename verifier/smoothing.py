"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): a probabilistic L2 certificate for any classifier.

The smoothed classifier of a base classifier f (here: argmax of a network's outputs) is
``g(x) = argmax_c P(f(x + delta) = c)`` with ``delta ~ N(0, sigma^2 I)``. If the top class has probability
``p_A >= pA_lower > 1/2``, g is constant on the L2 ball of radius ``sigma * Phi^-1(pA_lower)`` around x (Cohen et al.,
Theorem 1 with the bound p_B <= 1 - p_A). g is not computable exactly; `Smoothed` estimates it by Monte Carlo,
with the guarantees stated on `Smoothed.predict` and `Smoothed.certify`. The guarantees hold for the base classifier
exactly as evaluated here (the network in torch at the given dtype), over the randomness of the noise only.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

from .network import Network

ABSTAIN = -1


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower confidence bound on a binomial proportion, confidence 1 - alpha.

    ``P(p < bound) <= alpha`` for every true p; the bound is 0 when there are no successes.
    """
    if successes <= 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


class Smoothed:
    """The Gaussian-smoothed version of a classifier.

    net: a `Network`, or a torch module mapping (B, n) inputs to (B, num_classes) scores. sigma: standard
    deviation of the noise (in input units; the noise is not clipped to the data range). device, dtype: where and
    how the base classifier runs (float64 by default, like the rest of the certification code).
    """

    def __init__(self, net: Network | torch.nn.Module, sigma: float, num_classes: int, *, device: str = "cpu",
                 dtype: torch.dtype = torch.float64) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.sigma = float(sigma)
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.dtype = dtype
        self.n_inputs = None
        if isinstance(net, Network):
            if net.n_outputs != num_classes:
                raise ValueError(f"the network has {net.n_outputs} outputs, num_classes is {num_classes}")
            self.n_inputs = net.n_inputs
            self.base = net.torch(device=self.device, dtype=dtype)
        else:  # a copy: moving the caller's module to another device or dtype would change it under them
            self.base = copy.deepcopy(net).to(device=self.device, dtype=dtype)

    def counts(self, x: np.ndarray, num: int, batch: int = 1000,
               generator: torch.Generator | None = None) -> np.ndarray:
        """How often the base classifier picks each class on num noisy copies of x: (num_classes,) int64.

        x: one input (any shape; flattened). Noise is drawn in batches of at most `batch` copies from generator
        (a fresh randomly seeded one when None; pass a seeded ``torch.Generator(device)`` to reproduce a run).
        """
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.seed()
        x = np.asarray(x, dtype=np.float64).reshape(1, -1)
        if self.n_inputs is not None and x.shape[1] != self.n_inputs:
            raise ValueError(f"x has {x.shape[1]} entries, the network takes {self.n_inputs} inputs")
        center = torch.as_tensor(x, device=self.device, dtype=self.dtype)
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)
        remaining = int(num)
        with torch.no_grad():
            while remaining > 0:
                size = min(batch, remaining)
                noise = torch.randn((size, center.shape[1]), generator=generator, device=self.device,
                                    dtype=self.dtype)
                predictions = self.base(center + self.sigma * noise).argmax(dim=1)
                counts += torch.bincount(predictions, minlength=self.num_classes)
                remaining -= size
        return counts.cpu().numpy()

    def predict(self, x: np.ndarray, n: int, alpha: float, batch: int = 1000,
                generator: torch.Generator | None = None) -> int:
        """The smoothed prediction g(x) from n noisy samples, or ABSTAIN.

        Returns the most frequent class when a two-sided binomial test says the top two counts differ at level
        alpha, else ABSTAIN. Guarantee (Cohen et al. 2019, Prop. 1): the probability of returning a class other
        than g(x) is at most alpha.
        """
        counts = self.counts(x, n, batch, generator)
        order = np.argsort(-counts, kind="stable")
        top, second = int(counts[order[0]]), int(counts[order[1]])
        if binomtest(top, top + second, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(order[0])

    def certify(self, x: np.ndarray, n0: int, n: int, alpha: float, batch: int = 1000,
                generator: torch.Generator | None = None) -> tuple[int, float]:
        """(class, L2 radius) certified for the smoothed classifier at x, or (ABSTAIN, 0.0).

        n0 noisy samples select the candidate class c; n fresh samples give the one-sided Clopper-Pearson lower
        bound pA of P(f(x + delta) = c) at confidence 1 - alpha. Abstains when pA <= 1/2; otherwise returns
        (c, sigma * Phi^-1(pA)). Guarantee (Cohen et al. 2019, Prop. 2 / Theorem 1): with probability at least
        1 - alpha over the noise, if a class c is returned then g(x') = c for every x' with
        ``||x' - x||_2 < radius``.
        """
        selection = self.counts(x, n0, batch, generator)
        candidate = int(np.argmax(selection))
        estimate = self.counts(x, n, batch, generator)
        p_lower = clopper_pearson_lower(int(estimate[candidate]), int(n), alpha)
        if p_lower <= 0.5:
            return ABSTAIN, 0.0
        return candidate, self.sigma * float(norm.ppf(p_lower))
