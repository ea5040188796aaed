"""The side-by-side view: per sample, attacks (upper bounds), certified bounds (lower) and the exact value.

A record is a plain dict in the JSON schema of DESIGN.md: ``{"index", "label", "prediction", "methods", "verdict"}``
where each method's entry holds ``lower`` and/or ``upper`` bounds on the sample's robust margin
``min_{x in box} min_{j != label} f_label(x) - f_j(x)``. A whole dataset runs sample by sample as tasks
(dataset.run_dataset: in this process, worker processes or a Dask cluster).
"""
from __future__ import annotations

import time

import numpy as np

from .bounds import METHODS, bound, proves
from .network import Network
from .spec import ball, margin_rows, norm_name

ATTACKS = ("pgd", "fgsm")
EXACT = ("milp",)


class SoundnessError(RuntimeError):
    """A certified lower bound above an attack's confirmed value: a bug, never a verdict."""


def known_methods() -> list[str]:
    """Every method name the comparison accepts: the attacks plus the bound registry."""
    return [*ATTACKS, *METHODS]


def certified_methods(methods: list[str]) -> list[str]:
    return [m for m in methods if m not in ATTACKS and m not in EXACT]


def evaluate_sample(network: Network, x: np.ndarray, label: int, eps: float, *, methods: list[str],
                    clip: tuple[float, float] | None = (0.0, 1.0), options: dict | None = None,
                    index: int = 0, norm: str = "linf", smoothing: dict | None = None) -> dict:
    """Run every method on the ball of radius eps around x (flat, (n_inputs,); norm "linf" | "l2" | "l1", clipped
    to clip) and decide the sample's verdict.

    options: per-method keyword arguments, e.g. ``{"dual": {"slopes": "opt"}, "milp": {"time_limit": 60}}``.
    A misclassified sample gets no method results (its robust margin is already negative at x). smoothing:
    {"sigma", "n", "n0", "alpha", "seed"}: also certify the Gaussian-smoothed classifier at x (every sample, the
    misclassified ones too) into record["smoothing"] (`smoothed_entry`); a probabilistic certificate of another
    classifier, so it never enters the verdict.
    """
    options = options or {}
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    prediction = int(np.argmax(network.forward(x)))
    record = {"index": int(index), "label": int(label), "prediction": prediction, "methods": {}}
    if smoothing is not None:
        record["smoothing"] = smoothed_entry(network, x, label, eps, index=index, **smoothing)
    if prediction != label:
        record["verdict"] = "misclassified"
        return record
    box = ball(x, eps, norm_name(norm), clip)
    C, d = margin_rows(label, network.n_outputs)
    for method in methods:
        if method in ATTACKS:
            record["methods"][method] = _run_attack(network, box, label, method, options.get(method, {}))
        else:
            record["methods"][method] = _run_bound(network, box, C, d, method, options.get(method, {}))
    record["verdict"] = decide(record["methods"])
    return record


def smoothed_entry(network: Network, x: np.ndarray, label: int, eps: float, *, sigma: float, n: int = 100_000,
                   n0: int = 100, alpha: float = 0.001, seed: int = 0, index: int = 0, device: str = "cpu") -> dict:
    """Randomized smoothing at x (smoothing.Smoothed.certify, noise seeded by seed and the sample's index, so a
    sample's answer does not depend on which worker ran it): {"prediction": class or None (abstain), "radius":
    the certified L2 radius, "certified": prediction == label and radius > eps (Cohen et al. certify the open
    ball ||delta|| < radius), "seconds"}."""
    import torch

    from .smoothing import ABSTAIN, Smoothed

    start = time.perf_counter()
    smoothed = Smoothed(network, sigma, network.n_outputs, device=device)
    generator = torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + int(index))
    predicted, radius = smoothed.certify(x, n0, n, alpha, generator=generator)
    return {"prediction": None if predicted == ABSTAIN else int(predicted), "radius": float(radius),
            "certified": bool(predicted == label and radius > eps), "seconds": time.perf_counter() - start}


def _run_attack(network, box, label, method, opts) -> dict:
    from .attacks import attack

    result = attack(network, box, label, method=method, **opts)
    return {"upper": float(result.value), "seconds": float(result.seconds), "success": bool(result.success),
            "x": None if result.x is None else [float(v) for v in result.x]}


def _run_bound(network, box, C, d, method, opts) -> dict:
    start = time.perf_counter()
    result = bound(network, box, C, d, method=method, **opts)
    entry = {"lower": float(np.min(result.lower)), "seconds": time.perf_counter() - start}
    if result.upper is not None:
        entry["upper"] = float(np.min(result.upper))
        # the robust margin is the minimum over the rows: exact when the solver closed the gap on that minimum
        entry["status"] = result.info.get("min_status", "time_limit")  # "optimal" | "time_limit" | "error"
    return entry


def decide(methods: dict) -> str:
    """certified (a certified lower bound proves the margin > 0: `proves`, > PROOF_MARGIN) > robust (the MILP's
    lower bound does) > attacked (confirmed attack) > unknown."""
    certified = any(proves(v["lower"]) for k, v in methods.items() if k not in ATTACKS and k not in EXACT)
    robust = any(proves(methods[k]["lower"]) for k in EXACT if k in methods)
    attacked = any(methods[k]["success"] for k in ATTACKS if k in methods)
    if attacked and (certified or robust):
        raise SoundnessError(f"a method proved robustness that an attack refutes: {methods}")
    if certified:
        return "certified"
    if robust:
        return "robust"
    return "attacked" if attacked else "unknown"
