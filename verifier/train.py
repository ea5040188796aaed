"""Training ReLU MLPs: standard, adversarial (PGD, fast FGSM), certified (dual bounds) and Gaussian noise.

Objectives (the loss minimised per batch; ``CE`` is cross-entropy, ``B(x)`` the L-inf ball of radius eps clipped to
the data range):

- ``standard``: ``CE(f(x), y)``.
- ``pgd`` (Madry et al. 2018): ``CE(f(x*), y)`` with x* from projected gradient ascent of the CE over B(x) (random
  start). By Danskin's theorem the gradient of ``max_{x' in B(x)} CE`` is the gradient at the maximiser, so x* is
  treated as a constant (no gradient flows through the attack).
- ``fgsm`` (Wong, Rice & Kolter 2020, "fast is better than free"): one signed-gradient step of size 1.25 eps from
  a uniform random start, projected back on B(x).
- ``certified`` (Wong & Kolter 2018): ``CE(-lower, y)`` where ``lower_j`` is the dual bound on ``f_y - f_j`` over
  B(x) (0 for j = y); an upper bound on the worst-case CE, differentiable w.r.t. the weights.
- ``noise``: ``CE(f(x + sigma N(0, I)), y)``, the base classifier of randomized smoothing (Cohen et al. 2019).

eps grows linearly from 0 over the first ``eps_ramp_epochs`` epochs; ``clean_weight`` mixes in the clean loss.
Randomness comes from generators seeded by ``seed`` (no global seeding), so a fixed seed gives the same model.
"""
from __future__ import annotations

import argparse
import math
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .network import Network, from_torch

OBJECTIVES = ("standard", "pgd", "fgsm", "certified", "noise")


@dataclass(frozen=True)
class Objective:
    """What one training step minimises (module docstring). eps: target L-inf radius; clip: data range or None;
    sigma: noise level (``noise``); pgd_steps, pgd_step_size (default 2.5 eps / steps): inner attack;
    clean_weight in [0, 1]: weight of the clean loss; slopes: lower ReLU slopes of the dual bound."""

    name: str = "standard"
    eps: float = 0.0
    clip: tuple[float, float] | None = (0.0, 1.0)
    sigma: float = 0.25
    pgd_steps: int = 10
    pgd_step_size: float | None = None
    clean_weight: float = 0.0
    slopes: str = "adaptive"

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise InputError(f"unknown objective {self.name!r}; choose one of {', '.join(OBJECTIVES)}")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise InputError(f"eps must be a finite number >= 0, got {self.eps}")
        if self.name in ("pgd", "fgsm", "certified") and self.eps <= 0:
            raise InputError(f"objective {self.name} needs eps > 0")
        if self.name == "noise" and not self.sigma > 0:
            raise InputError(f"objective noise needs sigma > 0, got {self.sigma}")
        if not 0.0 <= self.clean_weight <= 1.0:
            raise InputError(f"clean_weight must lie in [0, 1], got {self.clean_weight}")
        if self.pgd_steps < 1:
            raise InputError(f"pgd_steps must be >= 1, got {self.pgd_steps}")
        if self.slopes not in ("wk", "adaptive"):
            raise InputError(f"slopes must be 'wk' or 'adaptive' for training, got {self.slopes!r}")


@dataclass(frozen=True)
class StepResult:
    """One batch: loss (scalar tensor, still attached to the weights), x_used (B, n) the inputs the robust loss was
    evaluated at (attack points, noisy points; None for standard/certified), clean_correct and robust_correct (B,)
    bool (robust: correct at x_used, or certified by the dual bound at the current eps)."""

    loss: torch.Tensor
    x_used: torch.Tensor | None
    clean_correct: torch.Tensor
    robust_correct: torch.Tensor | None


def mlp(sizes: list[int], generator: torch.Generator) -> torch.nn.Sequential:
    """A ReLU MLP with layer sizes [n_in, h1, ..., n_out], initialised like `torch.nn.Linear` from generator."""
    if len(sizes) < 2 or min(sizes) < 1:
        raise InputError(f"layer sizes must be >= 2 positive integers, got {sizes}")
    modules: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        linear = torch.nn.utils.skip_init(torch.nn.Linear, n_in, n_out)  # no draw from the global RNG
        bound = 1.0 / math.sqrt(n_in)  # torch's default: kaiming_uniform(a=sqrt 5) gives U(-1/sqrt(fan_in), ...)
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound, generator=generator)
            linear.bias.uniform_(-bound, bound, generator=generator)
        modules.append(linear)
        if i < len(sizes) - 2:
            modules.append(torch.nn.ReLU())
    return torch.nn.Sequential(*modules)


def _ball(x: torch.Tensor, eps: float, clip) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
    return lo, hi


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per row of outputs (B, R, k) for labels y (B,): (B, R)."""
    index = y.view(-1, 1, 1).expand(*out.shape[:2], 1)
    return torch.logsumexp(out, -1) - out.gather(-1, index).squeeze(-1)


def _margin(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f_y - max_{j != y} f_j`` per row of outputs (B, R, k): (B, R)."""
    index = y.view(-1, 1, 1).expand(*out.shape[:2], 1)
    others = out.scatter(-1, index, -torch.inf)
    return out.gather(-1, index).squeeze(-1) - others.amax(-1)


def attack_points(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, clip, steps: int,
                  step_size: float, generator: torch.Generator) -> torch.Tensor:
    """Projected signed-gradient ascent of the CE over the clipped L-inf ball, from a uniform random start.

    x (B, n), y (B,) -> x* (B, n), detached: the point of lowest margin met (PGD by `verifier.attacks`' batched
    core, one restart, constant step `step_size` in input units). Gradients go to the inputs only.
    """
    from .attacks import _pgd_core

    lo, hi = _ball(x, eps, clip)
    start = lo + (hi - lo) * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if steps == 1:  # fast adversarial training: exactly one step from the random start, no best-point tracking
        x_adv = start.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        return torch.minimum(torch.maximum(start.detach() + step_size * grad.sign(), lo), hi).detach()
    # the core scales its steps by the box half-width per coordinate: constant `step_size` in input units means
    # a fraction step_size / eps of it (clipped coordinates, with a smaller half-width, take smaller steps)
    fraction = step_size / eps
    if generator.device.type != "cpu":  # the core draws its (unused, one-restart) random points on the CPU
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
        generator = torch.Generator().manual_seed(seed)
    x_adv, _, _ = _pgd_core(lambda h, leak=0.0: model(h), lo, hi, lambda out: _margin(out, y),
                            lambda out: -_ce(out, y), start=start, norm="linf", radius=None, restarts=1,
                            steps=steps, step_size=fraction, final_step=fraction, generator=generator, stop=None)
    return x_adv.detach()


def linear_layers(model: torch.nn.Sequential) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[bool]]:
    """The (W (out, in), b (out,)) parameters of a Sequential of Linear/ReLU/Flatten, and whether a ReLU follows."""
    weights, relu_after = [], []
    for m in model:
        if isinstance(m, torch.nn.Linear):
            weights.append((m.weight, m.bias))
            relu_after.append(False)
        elif isinstance(m, torch.nn.ReLU) and relu_after:
            relu_after[-1] = True
        elif not isinstance(m, (torch.nn.Flatten, torch.nn.Identity)):
            raise InputError(f"training supports Linear/ReLU MLPs only, got {type(m).__name__}")
    return weights, relu_after


def margin_lower_bounds(model: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float, clip,
                        slopes: str = "adaptive") -> torch.Tensor:
    """Dual lower bounds (B, n_out) of ``f_y - f_j`` over the ball around each x (row y is exactly 0);
    differentiable w.r.t. the model's weights."""
    from .bounds.dual import batched_bounds

    weights, relu_after = linear_layers(model)
    n_out = weights[-1][0].shape[0]
    eye = torch.eye(n_out, device=x.device, dtype=x.dtype)
    C = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (B, n_out, n_out): row j = e_y - e_j
    lo, hi = _ball(x, eps, clip)
    lower, _ = batched_bounds(weights, relu_after, lo, hi, C, slopes=slopes)
    return torch.where(eye[y] > 0, torch.zeros_like(lower), lower)


def loss_terms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective, eps: float,
               generator: torch.Generator) -> StepResult:
    """The objective's loss on one batch at radius eps (the ramped value of objective.eps); see the module docs."""
    name = objective.name
    if name == "standard":
        logits = model(x)
        return StepResult(F.cross_entropy(logits, y), None, logits.argmax(1) == y, None)
    x_used, robust_correct = None, None
    if name in ("pgd", "fgsm"):
        steps = objective.pgd_steps if name == "pgd" else 1
        size = objective.pgd_step_size or (2.5 * eps / steps if name == "pgd" else 1.25 * eps)
        x_used = attack_points(model, x, y, eps, objective.clip, steps, size, generator)
        robust_logits = model(x_used)
    elif name == "noise":
        x_used = x + objective.sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        robust_logits = model(x_used)
    else:  # certified: the margins' lower bounds, negated, play the logits (worst case over the ball)
        lower = margin_lower_bounds(model, x, y, eps, objective.clip, objective.slopes)
        robust_logits = -lower
        robust_correct = (lower > 0).sum(1) == lower.shape[1] - 1
    loss = F.cross_entropy(robust_logits, y)
    if robust_correct is None:
        robust_correct = robust_logits.argmax(1) == y
    if objective.clean_weight > 0:
        clean_logits = model(x)
        loss = objective.clean_weight * F.cross_entropy(clean_logits, y) + (1 - objective.clean_weight) * loss
    else:
        with torch.no_grad():
            clean_logits = model(x)
    return StepResult(loss, x_used, clean_logits.argmax(1) == y, robust_correct.detach())


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               objective: Objective, eps: float, generator: torch.Generator) -> StepResult:
    """One optimiser step on the gradient of `loss_terms` (for pgd: the CE gradient at the attack point)."""
    optimizer.zero_grad()
    result = loss_terms(model, x, y, objective, eps, generator)
    result.loss.backward()
    optimizer.step()
    return result


def _as_data(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise InputError(f"need x (N, ...) and y (N,) with N > 0, got x {x.shape} and y {y.shape}")
    x = x.reshape(len(x), -1).astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError("x contains NaN or Inf")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise InputError("labels y must be integers")
    return x, y.astype(np.int64)


def train(model_or_sizes, x, y, *, objective: str = "standard", eps: float = 0.0, epochs: int = 20,
          lr: float = 1e-3, batch_size: int = 64, seed: int = 0, clip: tuple[float, float] | None = (0.0, 1.0),
          sigma: float = 0.25, eps_ramp_epochs: int | None = None, clean_weight: float = 0.0, pgd_steps: int = 10,
          slopes: str = "adaptive", progress: bool = True, device: str = "cpu") -> Network:
    """Train an MLP with Adam on (x (N, n), y (N,)) and return it as a float64 `Network`.

    model_or_sizes: layer sizes [n_in, h1, ..., n_out] (a new MLP initialised from seed), or a torch
    ``nn.Sequential`` of Linear/ReLU (trained in place, float32, moved to device). eps_ramp_epochs: epochs over
    which eps grows linearly from 0 (default: half the epochs for certified, 0 otherwise). Batches are reshuffled
    every epoch from a generator seeded by seed. progress: a per-epoch bar on stderr (loss, clean and robust
    accuracy on the training batches).
    """
    spec = Objective(objective, eps, clip, sigma, pgd_steps, None, clean_weight, slopes)
    x, y = _as_data(x, y)
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise InputError(f"need epochs >= 1, batch_size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    shuffle = torch.Generator().manual_seed(seed)
    if isinstance(model_or_sizes, torch.nn.Module):
        model = model_or_sizes
    else:
        model = mlp([int(s) for s in model_or_sizes], torch.Generator().manual_seed(seed))
    model = model.to(device=device, dtype=torch.float32)
    weights, _ = linear_layers(model)
    n_out = weights[-1][0].shape[0]
    if weights[0][0].shape[1] != x.shape[1]:
        raise InputError(f"the model takes {weights[0][0].shape[1]} inputs, the data has {x.shape[1]}")
    if y.min() < 0 or y.max() >= n_out:
        raise InputError(f"labels must lie in 0..{n_out - 1}, got {y.min()}..{y.max()}")
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    ramp = (epochs // 2 if objective == "certified" else 0) if eps_ramp_epochs is None else eps_ramp_epochs
    ramp_steps = max(ramp, 0) * math.ceil(len(y) / batch_size)
    with _EpochBar(epochs, objective, enabled=progress) as bar:
        step = 0
        for epoch in range(epochs):
            totals = np.zeros(4)  # loss sum, clean correct, robust correct, count
            for idx in torch.randperm(len(yt), generator=shuffle).split(batch_size):
                step += 1
                eps_now = eps * min(1.0, step / ramp_steps) if ramp_steps else eps
                out = train_step(model, optimizer, xt[idx], yt[idx], spec, eps_now, noise)
                robust = out.robust_correct.sum().item() if out.robust_correct is not None else 0
                totals += (out.loss.item() * len(idx), out.clean_correct.sum().item(), robust, len(idx))
            bar.update(epoch, totals[0] / totals[3], totals[1] / totals[3],
                       totals[2] / totals[3] if objective != "standard" else None, eps_now)
    return from_torch(model, (1, x.shape[1]))  # ONNX convention: one sample with a batch axis


class _EpochBar:
    """A rich progress bar on stderr, one tick per epoch, showing loss, clean and robust accuracy and eps."""

    ROBUST_LABEL = {"pgd": "adversarial", "fgsm": "adversarial", "certified": "certified", "noise": "noisy"}

    def __init__(self, epochs: int, objective: str, enabled: bool) -> None:
        self.label = self.ROBUST_LABEL.get(objective, "")
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn(f"train {objective}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                 console=Console(stderr=True), disable=not enabled)
        self.task = self.progress.add_task("train", total=epochs, stats="")

    def __enter__(self) -> "_EpochBar":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, epoch: int, loss: float, clean: float, robust: float | None, eps: float) -> None:
        stats = f"loss {loss:.4f}  clean {clean:.3f}"
        if robust is not None:
            stats += f"  {self.label} {robust:.3f}" + (f" (eps {eps:.3g})" if self.label != "noisy" else "")
        self.progress.update(self.task, completed=epoch + 1, stats=stats)


def accuracy(network: Network, x, y) -> float:
    """Fraction of samples whose argmax output equals the label."""
    x, y = _as_data(x, y)
    return float(np.mean(network.forward(x).argmax(1) == y))


def save_model(network: Network, path: str | Path) -> None:
    """Write the network to an ONNX file (`verifier.onnx.save_onnx`: float32 weights, input [batch, n])."""
    from .onnx import save_onnx

    try:
        save_onnx(network, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="verify-train", description="Train a ReLU MLP (standard, adversarial, certified or noisy) and save it "
                                         "as ONNX. Trains on x_train/y_train of the .npz if present, else x/y; "
                                         "reports clean accuracy on x/y.",
        epilog="example:\n  verify-train models/digits.npz --objective pgd --eps 0.1 --hidden 32,32 --epochs 20 "
               "--out model.onnx", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help=".npz with arrays x (N x inputs) and y (N labels), optionally x_train/y_train")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--objective", choices=OBJECTIVES, default="standard", help="training objective")
    p.add_argument("--eps", type=float, default=0.0, help="L-inf radius for pgd, fgsm and certified")
    p.add_argument("--sigma", type=float, default=0.25, help="noise level for the noise objective")
    p.add_argument("--hidden", default="32,32", help="hidden widths, comma separated (default 32,32)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eps-ramp", type=int, help="epochs over which eps grows from 0 (default: half for certified)")
    p.add_argument("--clean-weight", type=float, default=0.0, help="weight of the clean loss in [0, 1]")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--clip", type=float, nargs=2, metavar=("LO", "HI"), default=(0.0, 1.0),
                   help="data range of the inputs (default 0 1)")
    p.add_argument("--no-clip", action="store_true", help="do not clip the eps-balls")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _load_npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if "x" not in arrays or "y" not in arrays:
        raise InputError(f"{path} must hold arrays x and y (it has {', '.join(arrays) or 'none'})")
    return arrays


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not Path(args.out).resolve().parent.is_dir():  # fail before training, not after
            raise InputError(f"cannot write {args.out}: its folder does not exist")
        data = _load_npz(args.data)
        try:
            hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
        except ValueError:
            raise InputError(f"--hidden must be comma-separated integers, got {args.hidden!r}") from None
        x_train, y_train = _as_data(data.get("x_train", data["x"]), data.get("y_train", data["y"]))
        sizes = [x_train.shape[1], *hidden, int(max(y_train.max(), np.max(data["y"]))) + 1]
        network = train(sizes, x_train, y_train, objective=args.objective, eps=args.eps, epochs=args.epochs,
                        lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                        clip=None if args.no_clip else tuple(args.clip), sigma=args.sigma,
                        eps_ramp_epochs=args.eps_ramp, clean_weight=args.clean_weight, pgd_steps=args.pgd_steps,
                        progress=not args.quiet, device=args.device)
        save_model(network, args.out)
        print(f"{args.out}: {network.summary()}, clean accuracy {accuracy(network, data['x'], data['y']):.4f} "
              f"on x/y", file=sys.stderr)
        return 0
    except InputError as exc:
        print(f"verify-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("verify-train: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
