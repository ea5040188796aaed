"""Attacks: upper bounds on the robust margin (FGSM, PGD), and the linear closed form (property falsification,
on the same batched cores: falsification.py).

Every attack returns a real point of the input set, so the margin there is an *upper* bound on the robust margin
``min_{x in set} min_{j != label} f_label(x) - f_j(x)``. A point is reported as a counterexample (``success``)
only after onnxruntime, running the model's ONNX file, agrees (soundness rule 3 of DESIGN.md).

Input sets: a box ``lo <= x <= hi`` (an L-inf ball is a box), or for ``norm="l2"`` / ``"l1"`` the intersection of
the box with the ball ``||x - center||_p <= radius`` (center must lie in the box; `spec.InputBall`). Steps per
norm: the gradient's sign (L-inf) or the normalised gradient (L2, `norms.steepest_direction`), then the exact
Euclidean projection onto ball ∩ box (`norms.project_l2`, by bisection on the multiplier of the ball constraint;
every point it returns lies in both). L1 takes Frank-Wolfe steps instead, ``x + gamma (v - x)`` towards the vertex
v of ball ∩ box that minimises the gradient's linear model (`norms.l1_vertex`, exact by sorting; gamma = twice
the step size, at most 1): projected sparse steps stalled near box corners, where the L1 ball's minimiser lies.
The batched core works on B problems at once with R restarts each; tensors are laid out (B, R, n).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import norms
from .linear import binary_linear_worst, linear_worst_case  # noqa: F401 -- re-exported: the exact linear answers
from .network import Network
from .spec import InputBall, InputBox, SpecError, norm_name

OUTPUT_LEAK = 0.01  # gradient slope below zero of an output ReLU: a dead output still points somewhere
LEAK_ANNEAL = 0.8  # the hidden-ReLU gradient leak decays linearly to 0 at this fraction of the steps
LEAK_SCALES = (0.0, 1.0, 3.0, 0.3)  # restarts r >= 1 cycle through leak times these (restart 0: true gradient)


@dataclass(frozen=True, eq=False)
class AttackResult:
    """x (n_inputs,) float64 or None; value: margin (attack) or ``prop.unsafe_value`` (falsify) of OUR network's
    float64 forward at x; success: value < 0 (falsify: <= 0) and confirmed by onnxruntime with x in the set;
    info: method details and, when not successful, the reason."""

    x: np.ndarray | None
    value: float
    success: bool
    seconds: float
    info: dict = field(default_factory=dict)


# --- torch forward with leaky gradients ------------------------------------------------------------------------
def _relu(h: torch.Tensor, leak) -> torch.Tensor:
    """max(h, 0) in value (exactly: the added term is t - t = 0), with gradient slope `leak` below zero."""
    if isinstance(leak, float) and leak == 0.0:
        return torch.relu(h)
    negative = torch.clamp(h, max=0.0)
    return torch.relu(h) + leak * (negative - negative.detach())


class _Forward:
    """The network's own torch forward (any graph). Values are exact; gradients may leak through inactive ReLUs
    (`leak` for hidden ones, OUTPUT_LEAK for an output ReLU), so PGD can switch on neurons that are off everywhere
    it has been: on sparse nets (few active neurons per input) the true gradient only sees the active ones."""

    def __init__(self, network: Network, device, dtype) -> None:
        self.network = network.to(device, dtype)

    def __call__(self, x: torch.Tensor, leak=0.0) -> torch.Tensor:
        """x (..., n_in) -> outputs (..., n_out); leak: float or tensor broadcasting against (..., 1)."""
        lead = x.shape[:-1]
        if not isinstance(leak, float):  # one leak per sample: broadcast over every node's shape
            leak = leak.expand(*lead, 1).reshape(-1)

        def activation(h: torch.Tensor, is_output: bool) -> torch.Tensor:
            rate = OUTPUT_LEAK if is_output else leak
            if not isinstance(rate, float):
                rate = rate.reshape(-1, *([1] * (h.dim() - 1)))
            return _relu(h, rate)

        return self.network.forward_torch(x.reshape(-1, x.shape[-1]), activation).reshape(*lead, -1)


# --- objectives: (B, R, n_out) -> (B, R), to be minimised ----------------------------------------------------
def _pick(out: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """out (B, R, k) at classes (B,) or (B, R) -> (B, R)."""
    classes = classes[:, None].expand(out.shape[:2]) if classes.dim() == 1 else classes
    return out.gather(-1, classes[..., None]).squeeze(-1)


def _margin(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``f_label - max_{j != label} f_j`` per row; labels (B,)."""
    is_label = torch.nn.functional.one_hot(labels, out.shape[-1]).bool()[:, None, :]
    return _pick(out, labels) - out.masked_fill(is_label, -torch.inf).amax(-1)


def _multi_targeted(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Restart 0: the margin; restart r >= 1: ``f_label - f_j`` for j = label + 1 + (r - 1) mod (k - 1) (mod k).

    Descending the margin follows whichever class is closest, and can stall at a local minimum that belongs to
    it; giving each restart one fixed target class reaches every class's own minimum (on a linear model, each
    one exactly: a box corner), and the tracked margin keeps the best of them.
    """
    offset = 1 + (torch.arange(out.shape[1], device=out.device) - 1) % (out.shape[2] - 1)
    pair = _pick(out, labels) - _pick(out, (labels[:, None] + offset[None, :]) % out.shape[2])
    return torch.cat([_margin(out[:, :1], labels), pair[:, 1:]], dim=1)


def _cross_entropy(out: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``classes`` (B,) per row."""
    return torch.logsumexp(out, -1) - _pick(out, classes)


# --- the batched cores ----------------------------------------------------------------------------------------
def _pgd_core(forward: _Forward, lo: torch.Tensor, hi: torch.Tensor, objective: Callable, loss: Callable, *,
              start: torch.Tensor, norm: str, radius: torch.Tensor | None, restarts: int, steps: int,
              step_size: float, final_step: float, generator: torch.Generator, stop: str | None,
              leak: float = 0.0, inclusive: bool = False, deadline: float | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Projected descent of ``loss`` from ``start`` (restart 0) and uniform random points (the others).

    lo, hi, start (B, n); radius (B,) for L2/L1 (ball centred at start). objective/loss map outputs (B, R, n_out) to
    (B, R); the objective (the value that counts) is tracked, the loss gives the gradient. Step t moves by
    ``size_t * scale`` with size decaying geometrically from step_size to final_step, scale = the box half-width
    per coordinate (L-inf) or the radius (L2); L1 steps are Frank-Wolfe steps of fraction min(1, 2 size_t).
    leak: the largest gradient slope through inactive hidden ReLUs, varied over restarts (LEAK_SCALES) and
    annealed to 0 (LEAK_ANNEAL) so each run ends on the true gradient; the leak explores, the tracked objective
    is always the true network's. stop: "all"/"any" = exit once
    all/any of the B problems reached objective < 0 (<= 0 when inclusive); None = run every step.
    Returns the best x (B, n) over restarts and steps, its objective (B,), and the number of steps taken.
    """
    B, n = lo.shape
    shape = (B, restarts, n)
    lo_r, hi_r = lo[:, None].expand(shape), hi[:, None].expand(shape)
    center = start[:, None].expand(shape)
    rad = None if radius is None else radius[:, None].expand(shape[:2])
    project = lambda p: norms.project(p, lo_r, hi_r, center, rad, norm)
    if norm == "linf":
        u = torch.rand(shape, generator=generator, dtype=lo.dtype, device=generator.device).to(lo.device)
        x = lo_r + u * (hi_r - lo_r)
    else:  # uniform points of the ball (then projected into the box)
        x = center + rad[..., None] * norms.random_in_ball(shape, norm, generator, lo.dtype, lo.device)
    x[:, 0] = start
    x = project(x)
    scale = (hi_r - lo_r) / 2 if norm == "linf" else rad[..., None]
    scales = torch.tensor((0.0,) + LEAK_SCALES, dtype=lo.dtype, device=lo.device)
    index = torch.arange(restarts, device=lo.device)
    leaks = leak * scales[torch.where(index == 0, 0, 1 + (index - 1) % len(LEAK_SCALES))]
    leaks = leaks[None, :, None]
    best_x, best_v = x.detach().clone(), torch.full(shape[:2], torch.inf, dtype=lo.dtype, device=lo.device)
    taken = 0
    for t in range(steps + 1):
        x = x.detach().requires_grad_(True)
        anneal = max(0.0, 1.0 - t / (LEAK_ANNEAL * max(steps, 1)))
        out = forward(x, leaks * anneal if leak and anneal else 0.0)
        value = objective(out.detach())
        (grad,) = torch.autograd.grad(loss(out).sum(), x)
        with torch.no_grad():
            better = value < best_v
            best_v = torch.where(better, value, best_v)
            best_x = torch.where(better[..., None], x, best_x)
            per_problem = best_v.amin(1)
            done = per_problem <= 0 if inclusive else per_problem < 0
            if (stop == "all" and bool(done.all())) or (stop == "any" and bool(done.any())):
                break
            if t == steps or (deadline is not None and time.perf_counter() > deadline):
                break
            size = step_size * (final_step / step_size) ** (t / max(steps - 1, 1))
            if norm == "l1":  # Frank-Wolfe: a convex combination of two points of the set (projected: rounding)
                vertex = norms.l1_vertex(grad, lo_r, hi_r, center, rad)
                x = project(x + min(1.0, 2 * size) * (vertex - x))
                taken += 1
                continue
            if norm == "l2":  # coordinates pinned at the box side they descend to cannot move: step elsewhere
                grad = torch.where(((x <= lo_r) & (grad > 0)) | ((x >= hi_r) & (grad < 0)), 0.0, grad)
            x = project(x - size * scale * norms.steepest_direction(grad, norm))
            taken += 1
    pick = best_v.argmin(1)
    rows = torch.arange(B, device=lo.device)
    return best_x[rows, pick], best_v[rows, pick], taken


def _fgsm_core(forward: _Forward, lo, hi, loss: Callable, *, start, norm, radius) -> torch.Tensor:
    """One full step from start (B, n) along the loss's descent direction, into the set: for L-inf the box corner
    chosen by the gradient sign (coordinates with zero gradient stay), for L2 ``start - radius g/||g||`` projected
    onto ball ∩ box, for L1 the vertex of ball ∩ box minimising the gradient's linear model (`norms.l1_vertex`:
    without clipping ``start - radius sign(g_i) e_i`` at the largest |g_i|)."""
    x = start.detach()[:, None].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(forward(x)).sum(), x)
    with torch.no_grad():
        grad = grad[:, 0]
        if norm == "linf":
            return torch.where(grad > 0, lo, torch.where(grad < 0, hi, start))
        if norm == "l1":
            return norms.l1_vertex(grad, lo, hi, start, radius)
        return norms.project(start - radius[:, None] * norms.steepest_direction(grad, "l2"), lo, hi, start, radius,
                             "l2")


# --- public batched attacks -----------------------------------------------------------------------------------
def _setup(network, lo, hi, labels, target, loss, norm, center, radius, device, dtype):
    """Validate and convert the batched arguments; returns forward, tensors and (objective, loss) callables."""
    if norm not in ("linf", "l2", "l1"):
        raise ValueError(f"norm must be 'linf', 'l2' or 'l1', got {norm!r}")
    if loss not in ("margin", "ce"):
        raise ValueError(f"loss must be 'margin' or 'ce', got {loss!r}")
    dtype = dtype or torch.float64
    as_t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), dtype=dtype, device=device)
    lo_np, hi_np = np.atleast_2d(np.asarray(lo, np.float64)), np.atleast_2d(np.asarray(hi, np.float64))
    if lo_np.shape != hi_np.shape or lo_np.shape[1] != network.n_inputs or np.any(lo_np > hi_np):
        raise SpecError(f"boxes lo {lo_np.shape}, hi {hi_np.shape} must be (B, {network.n_inputs}) with lo <= hi")
    center_np = (lo_np + hi_np) / 2 if center is None else np.atleast_2d(np.asarray(center, np.float64))
    if norm == "linf":  # a clean point outside a clipped box still gives a start: its nearest box point
        center_np = np.clip(center_np, lo_np, hi_np)
    elif np.any(center_np < lo_np) or np.any(center_np > hi_np):
        raise SpecError(f"the {norm.upper()} ball's centre must lie in the box")
    labels_t = torch.as_tensor(np.atleast_1d(labels), dtype=torch.long, device=device)
    if network.n_outputs < 2:
        raise SpecError("a margin needs a network with at least 2 outputs")
    if labels_t.min() < 0 or labels_t.max() >= network.n_outputs:
        raise SpecError(f"labels must lie in 0..{network.n_outputs - 1}")
    if norm != "linf":
        if radius is None:
            raise SpecError(f"an {norm.upper()} attack needs a radius")
        radius_np = np.broadcast_to(np.asarray(radius, np.float64), (lo_np.shape[0],))
        if not (np.isfinite(radius_np).all() and np.all(radius_np >= 0)):
            raise SpecError(f"the {norm.upper()} radius must be a finite number >= 0")
        radius = as_t(radius_np * (1 - 1e-12))  # points a hair inside: any norm's rounding still finds them in
    else:
        radius = None  # the L-inf ball is the box itself
    if target is None:
        objective = lambda out: _margin(out, labels_t)
        surrogate = ((lambda out: -_cross_entropy(out, labels_t)) if loss == "ce"
                     else (lambda out: _multi_targeted(out, labels_t)))
    else:
        targets = torch.tensor(np.broadcast_to(target, labels_t.shape), dtype=torch.long, device=device)
        if bool((targets == labels_t).any()) or targets.min() < 0 or targets.max() >= network.n_outputs:
            raise SpecError("each target must be another class than its label")
        objective = lambda out: _pick(out, labels_t) - _pick(out, targets)
        surrogate = (lambda out: _cross_entropy(out, targets)) if loss == "ce" else objective
    return _Forward(network, device, dtype), as_t(lo_np), as_t(hi_np), as_t(center_np), radius, objective, surrogate


def _to_box(x: torch.Tensor, lo, hi) -> np.ndarray:
    """x as float64 numpy, clipped to the float64 box: a no-op in float64, a guard when torch ran in float32
    (rounding lo/hi to float32 can move them outside the box)."""
    return np.clip(x.detach().cpu().numpy().astype(np.float64), np.atleast_2d(lo), np.atleast_2d(hi))


def fgsm(network: Network, lo, hi, labels, *, target=None, loss: str = "margin", norm: str = "linf",
         center=None, radius=None, device="cpu", dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Fast gradient sign method on B problems: boxes lo, hi (B, n), labels (B,), optional targets (B,).

    One full step from center (B, n; default the box centres; the clean points for a clipped ball) into the set.
    Returns x (B, n) and the objective there (B,): the margin ``f_label - max_{j != label} f_j`` (untargeted) or
    ``f_label - f_target`` (targeted), negative = success. loss "margin" or "ce" picks the gradient's source.
    """
    forward, lo_t, hi_t, c_t, r_t, objective, surrogate = _setup(network, lo, hi, labels, target, loss, norm,
                                                                  center, radius, device, dtype)
    x = _fgsm_core(forward, lo_t, hi_t, surrogate, start=c_t, norm=norm, radius=r_t)
    with torch.no_grad():
        value = objective(forward(x[:, None]))[:, 0]
    return _to_box(x, lo, hi), value.cpu().numpy().astype(np.float64)


def pgd(network: Network, lo, hi, labels, *, target=None, loss: str = "margin", norm: str = "linf",
        center=None, radius=None, restarts: int = 10, steps: int = 100, step_size: float = 0.5,
        final_step: float = 0.005, leak: float = 0.1, seed: int = 0, early_exit: bool = True, device="cpu",
        dtype=None, deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Projected gradient descent of the margin (or ascent of the cross-entropy) on B problems at once.

    Arguments as `fgsm`; restart 0 starts at center, the others at uniform random points of the set. With the
    untargeted "margin" loss, restarts r >= 1 each descend ``f_label - f_j`` for one class j (`_multi_targeted`).
    step_size and final_step: first and last step as fractions of the box half-width (L-inf, per coordinate) or
    of the radius (L2), decaying geometrically. leak: gradient slope through inactive hidden ReLUs for restarts >= 1
    (annealed to 0; see `_pgd_core`). early_exit: stop once every problem has a negative objective.
    Deterministic under seed. Returns the best x (B, n) over restarts and steps and its objective (B,).
    """
    if restarts < 1 or steps < 0:
        raise ValueError("restarts must be >= 1 and steps >= 0")
    forward, lo_t, hi_t, c_t, r_t, objective, surrogate = _setup(network, lo, hi, labels, target, loss, norm,
                                                                  center, radius, device, dtype)
    generator = torch.Generator().manual_seed(int(seed))
    x, value, _ = _pgd_core(forward, lo_t, hi_t, objective, surrogate, start=c_t, norm=norm, radius=r_t,
                            restarts=restarts, steps=steps, step_size=step_size, final_step=final_step,
                            generator=generator, stop="all" if early_exit else None, leak=leak,
                            deadline=deadline)
    return _to_box(x, lo, hi), value.cpu().numpy().astype(np.float64)


# --- counterexample check ---------------------------------------------------------------------------------------
def _snap_float32(x: np.ndarray, box: InputBox | InputBall) -> np.ndarray:
    """The float32 point nearest x (n,) that still lies in the box, coordinate by coordinate; coordinates whose
    box interval holds no float32 number keep their float64 value. onnxruntime runs float32 models on float32
    inputs, so a snapped point is evaluated at exactly the same input by both sides. For a ball every coordinate
    is rounded towards x0 instead (no |x_i - x0_i| grows when x0 is float32, as data is); x itself when that
    still leaves the set."""
    if isinstance(box, InputBall):
        x32 = x.astype(np.float32)
        away = np.abs(x32.astype(np.float64) - box.x0) > np.abs(x - box.x0)
        x32 = np.where(away, np.nextafter(x32, box.x0.astype(np.float32)), x32)
        snapped = x32.astype(np.float64)
        return snapped if box.contains(snapped) else x
    x32 = x.astype(np.float32)
    up = np.nextafter(x32, np.float32(np.inf))
    down = np.nextafter(x32, np.float32(-np.inf))
    x32 = np.where(x32.astype(np.float64) < box.lo, up, x32)
    x32 = np.where(x32.astype(np.float64) > box.hi, down, x32)
    snapped = x32.astype(np.float64)
    return np.where((snapped >= box.lo) & (snapped <= box.hi), snapped, x)


def _confirm(network: Network, box: InputBox | InputBall, x: np.ndarray, value_of: Callable[[np.ndarray], float],
             inclusive: bool) -> tuple[bool, dict]:
    """Re-run x in onnxruntime: confirmed when x is in the set and value_of(onnxruntime outputs) < 0 (<= 0)."""
    if not box.contains(x):
        return False, {"reason": "the point lies outside the input set"}
    from .onnx import run_onnxruntime  # the ONNX layer sits beside attacks; imported where it is needed

    try:
        ort_value = float(value_of(np.asarray(run_onnxruntime(network, x[None]), dtype=np.float64)[0]))
    except Exception as error:  # a failed check is never a success; say why
        return False, {"reason": f"onnxruntime check failed: {type(error).__name__}: {error}"}
    ok = ort_value <= 0 if inclusive else ort_value < 0
    info = {"onnxruntime_value": ort_value}
    if not ok:
        info["reason"] = f"onnxruntime does not confirm (its value {ort_value:.6g})"
    return ok, info


def _finish(network, box, x, value_of, inclusive, check, start, info) -> AttackResult:
    """Snap a candidate to float32, confirm it when it violates, and package the result."""
    value = float(value_of(network.forward(x)))
    hit = (lambda v: v <= 0) if inclusive else (lambda v: v < 0)
    if hit(value) and check:
        snapped = _snap_float32(x, box)
        snapped_value = float(value_of(network.forward(snapped)))
        if hit(snapped_value):
            x, value = snapped, snapped_value
            success, more = _confirm(network, box, x, value_of, inclusive)
        else:
            success, more = False, {"reason": "the point stops violating when rounded to float32"}
        info.update(more, confirmed=success)
    else:
        success = hit(value)
        info["confirmed"] = False
        if not success:
            info.setdefault("reason", "no violating point found")
    return AttackResult(x, value, success, time.perf_counter() - start, info)


def _margin_np(y: np.ndarray, label: int) -> float:
    return float(y[label] - np.max(np.delete(y, label)))


# --- one sample, one property ---------------------------------------------------------------------------------
def attack(network: Network, box: InputBox | InputBall, label: int, method: str = "pgd", *, target: int | None = None,
           loss: str = "margin", norm: str = "linf", center=None, eps: float | None = None, restarts: int = 10,
           steps: int = 100, step_size: float = 0.5, final_step: float = 0.005, leak: float = 0.1,
           early_exit: bool = False, seed: int = 0, device="cpu", dtype=None, check: bool = True) -> AttackResult:
    """Attack one sample over the box (norm "linf"), an `InputBall` (its norm, x0 and eps; then norm, center and
    eps must be left as they are), or the box intersected with the L2/L1 ball (norm, center, eps).

    method "fgsm" or "pgd". value = the margin ``min_{j != label} f_label - f_j`` of our float64 forward at the
    returned x: an upper bound on the robust margin. success: value < 0 (targeted: ``f_label - f_target < 0``),
    confirmed by onnxruntime when check (else ``info["confirmed"]`` is False). center: the clean point (start
    and L2 centre), default the box centre. early_exit is off by default: the lowest margin is the tighter upper
    bound; `falsify` is the tool for "any violation will do".
    """
    start = time.perf_counter()
    if method not in ("fgsm", "pgd"):
        raise ValueError(f"unknown attack {method!r}; available: fgsm, pgd")
    if box.n != network.n_inputs:
        raise SpecError(f"input box has {box.n} entries, the network takes {network.n_inputs} inputs")
    region, norm = box, norm_name(norm)
    if isinstance(box, InputBall):
        if norm != "linf" or center is not None or eps is not None:
            raise SpecError("an InputBall carries its norm, centre and eps: pass none of them")
        norm, center, eps, box = region.norm, region.x0, region.eps, region.box
    if norm != "linf" and eps is None:
        raise SpecError(f"an {norm.upper()} attack needs eps (the ball's radius)")
    common = dict(target=None if target is None else [target], loss=loss, norm=norm,
                  center=None if center is None else np.reshape(center, (1, -1)), radius=eps, device=device,
                  dtype=dtype)
    if method == "fgsm":
        x, _ = fgsm(network, box.lo[None], box.hi[None], [label], **common)
    else:
        x, _ = pgd(network, box.lo[None], box.hi[None], [label], restarts=restarts, steps=steps,
                   step_size=step_size, final_step=final_step, leak=leak, seed=seed, early_exit=early_exit,
                   **common)
    x = x[0]
    info = {"method": method, "norm": norm, "loss": loss, "target": target, "restarts": restarts, "steps": steps}
    if target is None:
        return _finish(network, region, x, lambda y: _margin_np(y, label), False, check, start, info)
    targeted = _finish(network, region, x, lambda y: float(y[label] - y[target]), False, check, start, info)
    value = _margin_np(network.forward(targeted.x), label)
    info["target_value"] = targeted.value
    return AttackResult(targeted.x, value, targeted.success, targeted.seconds, info)
