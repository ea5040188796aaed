"""Records -> summary, JSON document (DESIGN.md schema), rich table and plot."""
from __future__ import annotations

import math

import numpy as np

from .bounds import proves
from .compare import ATTACKS, EXACT, certified_methods
from .network import Network

VERDICT_STYLE = {"certified": "green", "robust": "cyan", "attacked": "red", "unknown": "yellow",
                 "misclassified": "dim", "error": "bold red"}
NOT_EVALUATED = ("misclassified", "error")  # verdicts of records without method results


def summarize(records: list[dict], methods: list[str]) -> dict:
    """Counts per verdict and per certified method, and the mean gaps exact - LP and PGD - exact; "errors" (records
    whose task failed, counted neither clean nor misclassified) only when there are some."""
    clean = [r for r in records if r["verdict"] not in NOT_EVALUATED]
    summary = {
        "n": len(records),
        "clean": len(clean),
        "attacked": sum(r["verdict"] == "attacked" for r in records),
        "robust": sum(any(proves(r["methods"].get(m, {}).get("lower", -1)) for m in EXACT) for r in clean),
        "certified": {m: sum(bool(proves(r["methods"][m]["lower"])) for r in clean)
                      for m in certified_methods(methods)},
    }
    exact = [r for r in clean if r["methods"].get("milp", {}).get("status") == "optimal"]
    for certified in certified_methods(methods):
        gaps = [r["methods"]["milp"]["lower"] - r["methods"][certified]["lower"] for r in exact]
        if gaps:
            summary[f"gap_exact_{certified}"] = float(np.mean(gaps))
    for attack in (m for m in methods if m in ATTACKS):
        gaps = [r["methods"][attack]["upper"] - r["methods"]["milp"]["upper"] for r in exact]
        if gaps:
            summary[f"gap_{attack}_exact"] = float(np.mean(gaps))
    errors = sum(r["verdict"] == "error" for r in records)
    if errors:
        summary["errors"] = errors
    smoothed = [r["smoothing"] for r in records if "smoothing" in r]
    if smoothed:  # probabilistic (Cohen et al.), of the smoothed classifier: counted apart from the verdicts
        summary["smoothing_certified"] = sum(s["certified"] for s in smoothed)
    return summary


def document(model: str, network: Network, eps: float, clip, records: list[dict], methods: list[str],
             norm: str = "linf", smoothing: dict | None = None) -> dict:
    """The `--json` document of DESIGN.md; input_set.norm is "linf", "l2" or "l1"; with smoothing (its options)
    also "smoothing" and per sample the smoothed classifier's entry."""
    doc = {
        "model": model,
        "network": {"inputs": network.n_inputs, "outputs": network.n_outputs, "widths": network.widths,
                    "relus": network.n_relus},
        "input_set": {"norm": norm, "eps": float(eps), "clip": None if clip is None else [float(c) for c in clip]},
        "samples": [_finite(r) for r in records],
        "summary": summarize(records, methods),
    }
    if smoothing is not None:
        doc["smoothing"] = dict(smoothing)
    return doc


def _finite(value):
    """JSON has no inf/nan: map them to None (recursively)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell(entry: dict | None, key: str) -> str:
    if not entry or key not in entry:
        return ""
    text = f"{entry[key]:+.4f}"
    if entry.get("status") == "time_limit":
        text = f"[{entry['lower']:+.3f}, {entry['upper']:+.3f}]"
    return text


def table(records: list[dict], methods: list[str], title: str = ""):
    """A rich Table: index, label, prediction, attack uppers, exact, certified lowers, verdict."""
    from rich.table import Table

    out = Table(title=title or None)
    for name in ("#", "label", "pred"):
        out.add_column(name, justify="right")
    columns = ([(m, "upper") for m in methods if m in ATTACKS] + [(m, "lower") for m in methods if m in EXACT]
               + [(m, "lower") for m in certified_methods(methods)])
    for method, key in columns:
        out.add_column(f"{method} ({'upper' if key == 'upper' else 'exact' if method in EXACT else 'lower'})",
                       justify="right")
    smoothed = any("smoothing" in r for r in records)
    if smoothed:
        out.add_column("smoothed L2 radius", justify="right")
    out.add_column("verdict")
    for r in records:
        cells = [_cell(r["methods"].get(m), key) for m, key in columns]
        if smoothed:
            cells.append(_smoothed_cell(r.get("smoothing"), r["label"]))
        style = VERDICT_STYLE[r["verdict"]]
        out.add_row(str(r["index"]), str(r["label"]), "" if r["prediction"] is None else str(r["prediction"]), *cells,
                    f"[{style}]{r['verdict']}[/{style}]")
    return out


def _smoothed_cell(entry: dict | None, label: int) -> str:
    """The smoothed classifier's certified radius (green when it certifies the sample at eps; the class when it
    is not the label), or abstain."""
    if not entry:
        return ""
    if entry["prediction"] is None:
        return "abstain"
    text = f"{entry['radius']:.3f}" + ("" if entry["prediction"] == label else f" (class {entry['prediction']})")
    return f"[green]{text}[/green]" if entry["certified"] else text


def summary_lines(summary: dict) -> list[str]:
    """Human-readable summary lines."""
    n, clean = summary["n"], summary["clean"]
    lines = [f"samples {n}, clean accuracy {clean}/{n}, attacked {summary['attacked']}, "
             f"exactly robust {summary['robust']}" + (f", failed {summary['errors']}" if "errors" in summary else "")]
    if summary["certified"]:
        lines.append("certified: " + ", ".join(f"{m} {c}/{n}" for m, c in summary["certified"].items()))
    if "smoothing_certified" in summary:
        lines.append("smoothed classifier certified (radius > eps, probabilistic): "
                     f"{summary['smoothing_certified']}/{n}")
    gaps = {k: v for k, v in summary.items() if k.startswith("gap_")}
    if gaps:
        lines.append("mean gaps: " + ", ".join(f"{k[4:].replace('_', ' - ')} {v:.4f}" for k, v in gaps.items()))
    return lines


def plot(records: list[dict], methods: list[str], path: str) -> None:
    """Per sample: the interval [best certified lower, best attack upper], the exact value, zero as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = [r for r in records if r["verdict"] not in NOT_EVALUATED]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(clean) + 2), 4))
    for i, r in enumerate(clean):
        lowers = [r["methods"][m]["lower"] for m in certified_methods(methods)]
        uppers = [r["methods"][m]["upper"] for m in methods if m in ATTACKS + EXACT and "upper" in r["methods"][m]]
        low, high = (max(lowers) if lowers else None), (min(uppers) if uppers else None)
        if low is not None and high is not None:
            ax.plot([i, i], [low, high], color="0.6", lw=3, solid_capstyle="butt")
        if low is not None:
            ax.plot(i, low, "v", color="tab:green", label="best certified (lower)" if i == 0 else None)
        if high is not None:
            ax.plot(i, high, "^", color="tab:red", label="best attack / exact point (upper)" if i == 0 else None)
        if "milp" in r["methods"] and r["methods"]["milp"].get("status") == "optimal":
            ax.plot(i, r["methods"]["milp"]["lower"], "D", color="k", ms=4, label="exact" if i == 0 else None)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(clean)), [str(r["index"]) for r in clean], fontsize=7)
    ax.set_xlabel("sample")
    ax.set_ylabel("robust margin bounds")
    ax.set_title("certified lower bound ≤ exact ≤ attack; above 0 = robust")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
