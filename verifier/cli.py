"""`verify`: argument parsing only; maps flags to API calls (DESIGN.md, "CLI").

Exit codes: 0 ran to the end (whatever the verdicts), 2 bad usage or bad input (one line, no traceback),
1 internal error, 3 a suite run gave a wrong answer, 4 some tasks of a suite or dataset run failed (their rows
say `error` and why; the other rows are complete), 130 interrupted (Ctrl-C; finished rows are in --out).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from .errors import InputError

DEFAULT_METHODS = "pgd,ibp,dual"
PROGRESS_SECONDS = 5.0  # a --vnnlib run's branch and bound prints its state on stderr this often (and per phase)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="verify",
        description="How robust is a ReLU network? Attacks (upper bounds), certified bounds (lower bounds) and "
                    "exact answers, side by side.",
        epilog="examples:\n  verify models/digits_mlp.onnx --eps 0.02 --method pgd,ibp,dual,lp,milp\n"
               "  verify net.onnx --vnnlib prop.vnnlib --timeout 60 --result-file out.txt\n"
               "  verify --instances suite/instances.csv --out results.csv [--workers 2 | --cluster tcp://HOST:8786]"
               " [--resume]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="ONNX file of a ReLU network")
    what = p.add_argument_group("robustness of samples (a ball around each)")
    what.add_argument("--eps", type=float, help="radius of the ball around each sample")
    what.add_argument("--norm", choices=["inf", "2", "1"],
                      help="the ball's norm: inf (a box, the default), 2 or 1 (milp: inf and 1 only)")
    what.add_argument("--input", help=".npy file with one input (any shape with the model's input size)")
    what.add_argument("--label", type=int, help="the input's true label (with --input)")
    what.add_argument("--data", help=".npz with arrays x (N x input shape) and y (N labels); default: the "
                                     "model's companion data file in models/, if it ships one")
    what.add_argument("--start", type=int, default=0, help="first sample of --data (default 0)")
    what.add_argument("--limit", type=int, help="number of samples of --data (default all)")
    what.add_argument("--clip", type=float, nargs=2, metavar=("LO", "HI"), default=(0.0, 1.0),
                      help="data range the ball is clipped to (default 0 1)")
    what.add_argument("--no-clip", action="store_true", help="do not clip the ball")
    what.add_argument("--method", default=DEFAULT_METHODS,
                      help=f"comma list of pgd, fgsm, ibp, dual, lp, milp (default {DEFAULT_METHODS})")
    prop = p.add_argument_group("a VNN-LIB property (complete verification)")
    prop.add_argument("--vnnlib", help="VNN-LIB file: decide whether the property holds on the model")
    prop.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole property (default 60)")
    prop.add_argument("--result-file", help="write the VNN-COMP result (sat + assignment / unsat / unknown / "
                                            "timeout) here")
    prop.add_argument("--certificate", metavar="CERT",
                      help="on holds, write a certificate (.npz) that `verify-check MODEL P CERT` checks "
                           "independently (dense ReLU networks only)")
    suite = p.add_argument_group("a suite of VNN-LIB instances (VNN-COMP instances.csv)")
    suite.add_argument("--instances", help="csv of onnx,vnnlib,timeout_s[,expected] rows (paths relative to it): "
                                           "verify them all; exit code 3 if an answer contradicts 'expected'")
    suite.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every timeout (default 1)")
    many = p.add_argument_group("runs of many instances or samples (--instances, --data): where and how")
    many.add_argument("--out", help="append each result here as it finishes: csv rows for --instances, JSON lines "
                                    "(a header of options, then one record per sample) for --data")
    many.add_argument("--resume", action="store_true",
                      help="keep the results already in --out (same options) and run only the missing ones")
    many.add_argument("--workers", type=int, default=1,
                      help="run that many tasks in parallel processes on this machine, one torch thread each (a "
                           "process pool; default 1: this process)")
    many.add_argument("--cluster", metavar="ADDRESS",
                      help="run the tasks on the Dask scheduler at ADDRESS (e.g. tcp://10.0.0.1:8786); needs "
                           "pip install 'verifier[cluster]'")
    opts = p.add_argument_group("method options")
    opts.add_argument("--slopes", choices=["wk", "adaptive", "opt"], default="adaptive",
                      help="lower ReLU slopes of the dual pass (default adaptive)")
    opts.add_argument("--intermediate", choices=["dual", "lp"], default="dual",
                      help="layer bounds for lp/milp: from the dual pass or by LPs per layer (default dual)")
    opts.add_argument("--time-limit", type=float, default=60.0, help="MILP time limit per sample, s (default 60)")
    opts.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1) of the dual pass, the "
                      "attacks, smoothing and the ReLU-split search (default cpu; input splitting, the MILP and "
                      "the onnxruntime checks run on the CPU)")
    opts.add_argument("--seed", type=int, default=0, help="seed of the attacks (default 0)")
    smooth = p.add_argument_group("randomized smoothing (certified L2 radii)")
    smooth.add_argument("--smoothing", type=float, metavar="SIGMA",
                        help="certify the Gaussian-smoothed classifier with noise level SIGMA instead; with --eps "
                             "and --norm 2: as a column beside the deterministic methods")
    smooth.add_argument("--n", type=int, default=100_000, help="noise samples for the estimate (default 100000)")
    smooth.add_argument("--n0", type=int, default=100, help="noise samples to select the class (default 100)")
    smooth.add_argument("--alpha", type=float, default=0.001, help="failure probability (default 0.001)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON document to stdout")
    out.add_argument("--plot", help="draw per sample [certified, attack] with the exact value to this PNG")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args, parser)
    except InputError as exc:
        print(f"verify: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("verify: interrupted", file=sys.stderr)
        return 130
    except Exception:  # an internal error: keep the traceback for the bug report
        traceback.print_exc()
        return 1


def check_device(name: str) -> None:
    """A one-line InputError unless torch can run on the device `name` (cpu, cuda, cuda:N)."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a torch device (cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: only cpu and cuda devices are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")


def run(args, parser) -> int:
    if args.norm is not None and (args.vnnlib is not None or args.instances is not None):
        raise InputError("--norm is for balls around samples (--eps); VNN-LIB properties are boxes")
    check_device(args.device)
    if args.instances is not None:
        return run_instances(args)
    if args.model is None:
        parser.error("give a MODEL.onnx")
    if args.certificate is not None and args.vnnlib is None:
        raise InputError("--certificate is for --vnnlib runs")
    if args.smoothing is not None and (args.eps is not None or args.norm not in (None, "2")):
        if args.norm != "2":
            raise InputError("--smoothing certifies L2 radii: beside --eps it needs --norm 2")
        if not (args.smoothing > 0 and np.isfinite(args.smoothing)):
            raise InputError(f"--smoothing must be a noise level > 0, got {args.smoothing}")
        if args.n < 1 or args.n0 < 1 or not 0 < args.alpha < 1:
            raise InputError("--n and --n0 must be >= 1 and --alpha in (0, 1)")
    elif args.vnnlib is not None or args.smoothing is not None:
        if args.cluster or args.resume or args.workers != 1:
            raise InputError("--workers, --cluster and --resume are for --instances and --data runs")
        return run_vnnlib(args) if args.vnnlib is not None else run_smoothing(args)
    if args.eps is None:
        parser.error("give --eps (the ball's radius)")
    return run_robustness(args)


def companion_data(model: Path) -> Path | None:
    """models/<stem>.npz or models/<prefix>.npz for models/<prefix>_<rest>.onnx, when it exists."""
    for stem in (model.stem, model.stem.split("_")[0]):
        candidate = model.with_name(stem + ".npz")
        if candidate.is_file():
            return candidate
    return None


def load_samples(args, n_inputs: int, n_outputs: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(xs (N, n_inputs), labels (N,), index of the first) from --input/--label, --data or the companion file."""
    if args.input is not None:
        if args.label is None:
            raise InputError("--input needs --label")
        x = _load(Path(args.input), np.load).reshape(-1)
        if x.size != n_inputs:
            raise InputError(f"{args.input}: {x.size} values, the model takes {n_inputs} inputs")
        xs, labels, start = x[None], np.array([args.label]), 0
    else:
        data = Path(args.data) if args.data else companion_data(Path(args.model))
        if data is None:
            raise InputError("give --input X.npy --label K or --data D.npz (this model ships no companion data)")
        arrays = _load(data, np.load)
        if "x" not in arrays or "y" not in arrays:
            raise InputError(f"{data}: needs arrays 'x' and 'y', has {sorted(arrays.files)}")
        xs, labels = arrays["x"], arrays["y"]
        xs = xs.reshape(len(xs), -1)
        if xs.shape[1] != n_inputs:
            raise InputError(f"{data}: samples have {xs.shape[1]} values, the model takes {n_inputs} inputs")
        start = max(args.start, 0)
        stop = len(xs) if args.limit is None else start + max(args.limit, 0)
        if stop <= start or start >= len(xs):
            limit = "" if args.limit is None else f", --limit {args.limit}"
            raise InputError(f"{data}: no samples selected (--start {args.start}{limit}; the file holds {len(xs)})")
        xs, labels = xs[start:stop], labels[start:stop]
    bad = [int(v) for v in labels if not 0 <= int(v) < n_outputs]
    if bad:
        raise InputError(f"label {bad[0]} out of range for a model with {n_outputs} outputs")
    return np.asarray(xs, dtype=np.float64), np.asarray(labels, dtype=np.int64), start


def _load(path: Path, loader):
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return loader(path)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def run_robustness(args) -> int:
    from rich.console import Console

    from . import compare, report
    from .dataset import run_dataset
    from .onnx import load_onnx
    from .spec import norm_name
    from .tasks import file_sha256

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    unknown = [m for m in methods if m not in compare.known_methods()]
    if unknown:
        raise InputError(f"unknown method {unknown[0]!r}; available: {', '.join(compare.known_methods())}")
    if args.eps < 0 or not np.isfinite(args.eps):
        raise InputError(f"--eps must be a finite number >= 0, got {args.eps}")
    norm = norm_name(args.norm or "inf")
    if norm == "l2" and "milp" in methods:
        raise InputError("milp is exact for --norm inf and 1 only (an L2 ball is not linear); drop it for --norm 2")
    smoothing = None if args.smoothing is None else {"sigma": args.smoothing, "n": args.n, "n0": args.n0,
                                                      "alpha": args.alpha, "seed": args.seed, "device": args.device}
    network = load_onnx(args.model)
    xs, labels, start = load_samples(args, network.n_inputs, network.n_outputs)
    clip = None if args.no_clip else tuple(args.clip)
    if clip is not None and clip[0] > clip[1]:
        raise InputError(f"--clip: lo > hi ({clip[0]} > {clip[1]})")
    options = {"pgd": {"seed": args.seed, "device": args.device}, "fgsm": {"seed": args.seed, "device": args.device},
               "dual": {"slopes": args.slopes, "device": args.device},
               "lp": {"intermediate": args.intermediate},
               "milp": {"intermediate": args.intermediate, "time_limit": args.time_limit}}
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    ball_name = {"linf": "L-inf", "l2": "L2", "l1": "L1"}[norm]
    console.print(f"{args.model}: {network.summary()}; {len(xs)} samples, {ball_name} eps {args.eps}, methods "
                  f"{', '.join(methods)}" + (f", smoothing sigma {args.smoothing}" if smoothing else ""))
    data_file = args.input if args.input is not None else (args.data or companion_data(Path(args.model)))
    data_id = f"sha256 {file_sha256(data_file)}" + (f" label {args.label}" if args.input is not None else "")
    with cluster_client(args) as client:
        records, interrupted = run_dataset(
            network, xs, labels, args.eps, methods=methods, clip=clip, options=options, start=start, out=args.out,
            resume=args.resume, data_id=data_id, client=client, workers=args.workers, progress=len(xs) > 1,
            console=console, norm=norm, smoothing=smoothing)
    if interrupted:
        console.print(f"[yellow]interrupted: {len(records)} of {len(xs)} samples done"
                      + (f", in {args.out}: rerun with --resume to finish[/yellow]" if args.out else "[/yellow]"))
    errors = [r for r in records if r["verdict"] == "error"]
    for record in errors:
        console.print(f"[bold red]ERROR: sample {record['index']}: {record['error']}[/bold red]", highlight=False)
    doc = report.document(str(args.model), network, args.eps, clip, records, methods, norm, smoothing)
    console.print(report.table(records, methods))
    for line in report.summary_lines(doc["summary"]):
        console.print(line)
    if args.plot:
        report.plot(records, methods, args.plot)
        console.print(f"plot written to {args.plot}")
    if args.json:
        print(json.dumps(doc, indent=1))
    return 130 if interrupted else 4 if errors else 0


class ProgressLines:
    """A `bab.Progress` that prints a line on stderr when the phase changes and every PROGRESS_SECONDS within one:
    seconds since start (time.perf_counter()), phase, domains, open ones and their lowest bound (> 0 proves)."""

    def __init__(self, start: float, every: float = PROGRESS_SECONDS) -> None:
        self.start, self.every, self.phase, self.last = start, every, None, -np.inf

    def __call__(self, phase: str, domains: int, open_: int, lowest: float | None) -> None:
        now = time.perf_counter()
        if phase == self.phase and now - self.last < self.every:
            return
        self.phase, self.last = phase, now
        parts = ([f"{domains:,} domains"] if domains else []) + [f"{open_:,} open"] + \
            ([f"lowest bound {lowest:.4g}"] if lowest is not None else [])
        print(f"{now - self.start:8.1f} s  {phase}: {', '.join(parts)}", file=sys.stderr, flush=True)


def run_vnnlib(args) -> int:
    """Verify a VNN-LIB property: print the verdict (and the result file) as VNN-COMP expects."""
    from .onnx import load_onnx
    from .verify import RESULT_WORDS, verify_instance, write_result_file

    if not (args.timeout > 0 and np.isfinite(args.timeout)):
        raise InputError(f"--timeout must be a number of seconds > 0, got {args.timeout}")
    if not Path(args.vnnlib).is_file():
        raise InputError(f"{args.vnnlib}: no such file")
    network = load_onnx(args.model)
    start = time.perf_counter()
    verdict = verify_instance(network, args.vnnlib, args.timeout, seed=args.seed, certificate=args.certificate,
                              progress=ProgressLines(start), device=args.device)
    seconds = time.perf_counter() - start
    cert = verdict.stats.get("certificate")
    if cert is not None and cert["written"]:
        print(f"certificate written to {cert['path']}: {cert['leaves']} leaves ({cert['milp_trusted']} "
              f"MILP-trusted), {cert['bytes']} bytes, {cert['seconds']:.2f} s", file=sys.stderr)
    elif cert is not None:
        print(f"no certificate written: {cert['why']}", file=sys.stderr)
    elif args.certificate:
        print(f"no certificate written: the answer is {verdict.status}, not holds", file=sys.stderr)
    print(f"{verdict.status} ({RESULT_WORDS[verdict.status]}) in {seconds:.2f} s, "
          f"{verdict.stats.get('domains', 0)} domains", file=sys.stderr)
    if args.json:
        doc = {"model": str(args.model), "vnnlib": str(args.vnnlib), "verdict": verdict.status,
               "result": RESULT_WORDS[verdict.status], "seconds": seconds, "stats": verdict.stats}
        if verdict.counterexample is not None:
            doc["counterexample"] = {"x": [float(v) for v in verdict.counterexample[0]],
                                     "y": [float(v) for v in np.ravel(verdict.counterexample[1])]}
        print(json.dumps(doc, indent=1, default=float))
    else:
        print(RESULT_WORDS[verdict.status])
    if args.result_file:
        write_result_file(args.result_file, verdict)
    return 0


SMOOTHING_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def run_smoothing(args) -> int:
    """Certified L2 radii of the smoothed classifier per sample, and certified accuracy at SMOOTHING_RADII."""
    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from .onnx import load_onnx
    from .smoothing import ABSTAIN, Smoothed

    if not (args.smoothing > 0 and np.isfinite(args.smoothing)):
        raise InputError(f"--smoothing must be a noise level > 0, got {args.smoothing}")
    if args.n < 1 or args.n0 < 1 or not 0 < args.alpha < 1:
        raise InputError("--n and --n0 must be >= 1 and --alpha in (0, 1)")
    network = load_onnx(args.model)
    xs, labels, start = load_samples(args, network.n_inputs, network.n_outputs)
    smoothed = Smoothed(network, args.smoothing, network.n_outputs, device=args.device)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    records = []
    with Progress(console=console, transient=True, disable=len(xs) < 2) as progress:
        task = progress.add_task("certifying", total=len(xs))
        for offset, (x, label) in enumerate(zip(xs, labels)):
            predicted, radius = smoothed.certify(x, args.n0, args.n, args.alpha, generator=generator)
            records.append({"index": start + offset, "label": int(label),
                            "prediction": None if predicted == ABSTAIN else int(predicted),
                            "radius": float(radius), "correct": bool(predicted == label)})
            progress.advance(task)
    accuracy = {str(r): sum(rec["correct"] and rec["radius"] >= r for rec in records) / max(len(records), 1)
                for r in SMOOTHING_RADII}
    table = Table(title=f"randomized smoothing, sigma {args.smoothing}, n {args.n}, alpha {args.alpha}")
    for name in ("#", "label", "prediction", "L2 radius"):
        table.add_column(name, justify="right")
    for rec in records:
        shown = "abstain" if rec["prediction"] is None else str(rec["prediction"])
        table.add_row(str(rec["index"]), str(rec["label"]), shown, f"{rec['radius']:.3f}")
    console.print(table)
    console.print("certified accuracy: " + ", ".join(f"r={r} {a:.2f}" for r, a in accuracy.items()))
    if args.json:
        print(json.dumps({"model": str(args.model), "smoothing": {"sigma": args.smoothing, "n": args.n,
                          "n0": args.n0, "alpha": args.alpha}, "samples": records,
                          "certified_accuracy": accuracy}, indent=1))
    return 0


def run_instances(args) -> int:
    """Verify a suite (--instances): progress and summary on stderr; exit code 3 when an answer is wrong."""
    with cluster_client(args) as client:  # first: a wrong address fails before the imports below
        from .suite import run_suite

        _, summary = run_suite(args.instances, timeout_scale=args.timeout_scale, out=args.out, workers=args.workers,
                               client=client, resume=args.resume, seed=args.seed, device=args.device)
    return 3 if summary["wrong"] else 130 if summary["interrupted"] else 4 if summary["error"] else 0


def cluster_client(args):
    """A context giving the distributed.Client of --cluster ADDRESS (closed at the end), or None without it."""
    import contextlib

    if args.cluster is None:
        return contextlib.nullcontext(None)
    if args.workers != 1:
        raise InputError("--workers is for this machine; with --cluster the cluster's workers run the tasks")
    from .cluster import connect

    return connect(args.cluster)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
