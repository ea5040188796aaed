"""What every bound method returns, and the checks of its arguments shared by all of them."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..network import Network
from ..spec import InputBox, SpecError

# A lower bound proves something (rules a row or piece out, certifies a sample) when it is > PROOF_MARGIN, not
# merely > 0: float64 rounding (~1e-16 relative, ~1e-12 on these networks' scales) must not turn an exact tie (a
# minimum of exactly 0: unsafe, since VNN-LIB's <= includes it) into a proof. Stricter than > 0, so never less
# sound; it costs nothing on real margins (>= 1e-6). Every such decision goes through `proves`.
PROOF_MARGIN = 1e-9


def proves(lower):
    """Whether lower bounds (a float, an array or a torch tensor, elementwise) prove their rows positive."""
    return lower > PROOF_MARGIN


@dataclass(frozen=True, eq=False)
class BoundResult:
    """Lower bounds of ``C @ f(x) + d`` over an input box.

    lower (k,) float64, one per objective row; layer_bounds [(l, u)] per affine layer (the last are the outputs'
    bounds); info: method-specific details (solver status, slopes, iterations). Exact methods also set
    ``upper`` (k,), the value at their best point, and ``x`` (k, n_inputs), that point per row.
    """

    lower: np.ndarray
    layer_bounds: list
    method: str
    seconds: float
    info: dict = field(default_factory=dict)
    upper: np.ndarray | None = None
    x: np.ndarray | None = None


def check_problem(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes; returns C (k, n_outputs) and d (k,) as float64."""
    if box.n != network.n_inputs:
        raise SpecError(f"input box has {box.n} entries, the network takes {network.n_inputs} inputs")
    C = np.array(C, dtype=np.float64, ndmin=2)
    if C.shape[1] != network.n_outputs:
        raise SpecError(f"objective rows have {C.shape[1]} columns, the network has {network.n_outputs} outputs")
    d = np.zeros(C.shape[0]) if d is None else np.array(d, dtype=np.float64).reshape(-1)
    if d.shape != (C.shape[0],):
        raise SpecError(f"{C.shape[0]} objective rows but {d.size} offsets")
    return C, d
