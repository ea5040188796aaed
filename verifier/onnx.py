"""ONNX file <-> `Network`, and onnxruntime as the reference executor. The operator table lives here, nowhere else.

Loading walks the graph from its single data input and keeps the data tensor as a *flat vector* (row-major order)
together with its ONNX shape (a symbolic batch axis counts as 1). Every operation on it must be affine in that
flat vector; consecutive affine operations are folded into one pending ``Affine`` (float64) that is emitted when a
``Relu`` (or the graph output) is reached. Shape-only operations (Flatten, Reshape, Squeeze, Unsqueeze, Identity)
leave the flat vector alone and only change the shape, which later MatMul/Gemm/broadcasting steps read.
Nodes whose inputs are all constants (initializers, Constant nodes, shapes of the data tensor) are evaluated
in numpy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelError
from .network import Affine, Network, ReLU

# Operators allowed on the data path; `_CONSTANT_OPS` may also be evaluated on constant inputs.
DATA_OPS = ("Add", "Div", "Flatten", "Gemm", "Identity", "MatMul", "Mul", "Neg", "Relu", "Reshape", "Shape",
            "Squeeze", "Sub", "Transpose", "Unsqueeze")
_CONSTANT_OPS = ("Add", "Cast", "Concat", "Constant", "Div", "Flatten", "Gather", "Identity", "Mul", "Neg",
                 "Reshape", "Shape", "Squeeze", "Sub", "Transpose", "Unsqueeze")
SUPPORTED_OPS = tuple(sorted(set(DATA_OPS) | set(_CONSTANT_OPS)))
_SHAPE_OPS = ("Flatten", "Identity", "Reshape", "Squeeze", "Unsqueeze")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # DecodeError for text/truncated files, OSError for missing external data
        raise ModelError(f"{path}: not an ONNX model or a truncated file ({type(exc).__name__}: "
                         f"{_one_line(exc)[:200]})") from None
    if not model.graph.node and not model.graph.input:
        raise ModelError(f"{path}: not an ONNX model (it holds no graph)")
    return model


def _declared_shape(value_info: onnx.ValueInfoProto) -> tuple[tuple[int, ...], bool]:
    """(shape with symbolic/0 dims replaced by 1, whether the first dim is symbolic)."""
    dims = value_info.type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)
    symbolic_first = bool(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0)
    return shape, symbolic_first


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(attrs: dict) -> np.ndarray:
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    raise ValueError(f"Constant with attribute(s) {sorted(attrs)} (need value, value_float(s) or value_int(s))")


def _axes(attrs: dict, args: list) -> list[int] | None:
    """Axes from the attribute (opset < 13) or the second input (opset >= 13), as given (may be negative)."""
    axes = attrs.get("axes", args[1] if len(args) > 1 else None)
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def _shape_op(op: str, shape: tuple, attrs: dict, args: list) -> tuple[int, ...]:
    """The output shape of a shape-only op (the flat vector is unchanged)."""
    if op == "Identity":
        return shape
    if op == "Flatten":
        axis = int(attrs.get("axis", 1)) % (len(shape) + 1) if shape else 0
        return (int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))
    if op == "Reshape":  # 0 copies the input dim (unless allowzero), -1 is inferred
        dims = [int(d) for d in np.asarray(attrs["shape"] if "shape" in attrs else args[1]).reshape(-1)]
        dims = dims if attrs.get("allowzero", 0) else [shape[i] if d == 0 else d for i, d in enumerate(dims)]
        if -1 in dims:
            dims[dims.index(-1)] = int(np.prod(shape)) // max(1, -int(np.prod(dims)))
        if int(np.prod(dims)) != int(np.prod(shape)):
            raise ValueError(f"cannot reshape {shape} to {tuple(dims)}")
        return tuple(dims)
    if op == "Squeeze":
        axes = _axes(attrs, args)
        axes = [i for i, s in enumerate(shape) if s == 1] if axes is None else [a % len(shape) for a in axes]
        if any(shape[a] != 1 for a in axes):
            raise ValueError(f"Squeeze of axes {axes} of shape {shape} that are not of size 1")
        return tuple(s for i, s in enumerate(shape) if i not in axes)
    axes = _axes(attrs, args) or []  # Unsqueeze: the axes index the output
    rank = len(shape) + len(axes)
    out = list(shape)
    for a in sorted(a % rank for a in axes):
        out.insert(a, 1)
    return tuple(out)


def _shape_of(shape: tuple, attrs: dict) -> np.ndarray:
    """ONNX Shape (with its opset-15 start/end slice) of a tensor of known shape."""
    return np.array(shape, dtype=np.int64)[attrs.get("start", 0):attrs.get("end", None)]


def _fold(op: str, attrs: dict, args: list) -> np.ndarray:
    """Evaluate a node whose inputs are all constants."""
    if op in ("Add", "Sub", "Mul", "Div"):  # integer Div only appears in shape arithmetic (>= 0): floor = trunc
        divide = np.floor_divide if np.issubdtype(args[0].dtype, np.integer) else np.divide
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": divide}[op](args[0], args[1])
    if op == "Neg":
        return -args[0]
    if op == "Cast":
        return args[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Transpose":
        return np.transpose(args[0], attrs.get("perm"))
    if op == "Shape":
        return _shape_of(args[0].shape, attrs)
    if op == "Gather":
        return np.take(args[0], args[1].astype(np.int64), axis=int(attrs.get("axis", 0)))
    if op == "Concat":
        return np.concatenate([np.atleast_1d(a) for a in args], axis=int(attrs["axis"]))
    return args[0].reshape(_shape_op(op, args[0].shape, attrs, args))  # Flatten, Reshape, (Un)squeeze, Identity


def _right_matmul(shape: tuple, weight: np.ndarray) -> tuple[np.ndarray, tuple]:
    """x @ weight with x the data tensor of `shape`: (matrix on the flat vector, output shape)."""
    if weight.ndim > 2 or not shape:
        raise ValueError(f"MatMul of a data tensor of shape {shape} with a weight of shape {weight.shape}")
    w2 = weight.reshape(-1, 1) if weight.ndim == 1 else weight
    if shape[-1] != w2.shape[0]:
        raise ValueError(f"MatMul shapes {shape} and {weight.shape} do not match")
    rows = int(np.prod(shape[:-1]))
    matrix = w2.T if rows == 1 else np.kron(np.eye(rows), w2.T)  # each row of x is mapped on its own
    return matrix, shape[:-1] + ((w2.shape[1],) if weight.ndim == 2 else ())


def _left_matmul(weight: np.ndarray, shape: tuple) -> tuple[np.ndarray, tuple]:
    """weight @ x with x the data tensor of `shape` ([k], [k, c] or [..., k, c])."""
    if weight.ndim > 2 or not shape:
        raise ValueError(f"MatMul of a weight of shape {weight.shape} with a data tensor of shape {shape}")
    w2 = weight.reshape(1, -1) if weight.ndim == 1 else weight
    k = shape[0] if len(shape) == 1 else shape[-2]
    if k != w2.shape[1]:
        raise ValueError(f"MatMul shapes {weight.shape} and {shape} do not match")
    if len(shape) == 1:
        return w2, (w2.shape[0],) if weight.ndim == 2 else ()
    cols, batch = shape[-1], int(np.prod(shape[:-2]))
    matrix = np.kron(w2, np.eye(cols))  # row-major [k, c]: entry (i, j) -> sum_l W[i, l] x[l, j]
    if batch > 1:
        matrix = np.kron(np.eye(batch), matrix)
    return matrix, shape[:-2] + ((w2.shape[0],) if weight.ndim == 2 else ()) + (cols,)


def _permutation(shape: tuple, perm) -> tuple[np.ndarray, tuple]:
    """Flat indices of the transposed tensor (out[i] = x[index[i]]) and its shape."""
    index = np.arange(int(np.prod(shape))).reshape(shape).transpose(perm)
    return index.reshape(-1), index.shape


class _Chain:
    """The layers built so far and the pending affine map from the last layer's output to the data tensor."""

    def __init__(self, shape: tuple) -> None:
        self.layers: list = []
        self.shape = shape
        self.weight: np.ndarray | None = None  # None: identity (nothing affine since the last layer)
        self.bias: np.ndarray | None = None  # None: zero

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def linear(self, matrix: np.ndarray, offset: np.ndarray | None, shape: tuple) -> None:
        """data <- matrix @ data + offset, now of `shape`."""
        self.weight = matrix if self.weight is None else matrix @ self.weight
        self.bias = None if self.bias is None else matrix @ self.bias
        if offset is not None:
            self.bias = offset if self.bias is None else self.bias + offset
        self.shape = shape

    def elementwise(self, scale: np.ndarray | None, offset: np.ndarray | None, shape: tuple) -> None:
        """data <- scale * data + offset (vectors of the flat size)."""
        if scale is not None:
            self.weight = np.diag(scale) if self.weight is None else scale[:, None] * self.weight
            self.bias = None if self.bias is None else scale * self.bias
        if offset is not None:
            self.bias = offset if self.bias is None else self.bias + offset
        self.shape = shape

    def permute(self, index: np.ndarray, shape: tuple) -> None:
        self.linear(np.eye(self.size)[index], None, shape)

    def flush(self) -> None:
        """Emit the pending affine map (an identity one if nothing is pending)."""
        weight = np.eye(self.size) if self.weight is None else self.weight
        bias = np.zeros(weight.shape[0]) if self.bias is None else self.bias
        self.layers.append(Affine(weight, bias))
        self.weight = self.bias = None

    def relu(self) -> None:
        pending = self.weight is not None or self.bias is not None
        if pending or not self.layers or not isinstance(self.layers[-1], ReLU):  # relu(relu(x)) = relu(x)
            self.flush()
            self.layers.append(ReLU())

    def finish(self) -> list:
        if self.weight is not None or self.bias is not None or not self.layers:
            self.flush()
        return self.layers


def _elementwise(op: str, chain: _Chain, const: np.ndarray, data_first: bool) -> None:
    out_shape = np.broadcast_shapes(chain.shape, const.shape)
    if int(np.prod(out_shape)) != chain.size:
        raise ValueError(f"a constant of shape {const.shape} broadcasts the data tensor {chain.shape} to {out_shape}")
    c = np.broadcast_to(const.astype(np.float64), out_shape).reshape(-1)
    if op == "Add":
        chain.elementwise(None, c, out_shape)
    elif op == "Sub":
        chain.elementwise(None, -c, out_shape) if data_first else chain.elementwise(-np.ones_like(c), c, out_shape)
    elif op == "Mul":
        chain.elementwise(c, None, out_shape)
    elif not data_first:
        raise ValueError("division by the data tensor is not affine")
    elif np.any(c == 0):
        raise ValueError("division by a constant that has zeros")
    else:
        chain.elementwise(1.0 / c, None, out_shape)


def _gemm(chain: _Chain, attrs: dict, args: list, data_pos: int) -> None:
    if len(chain.shape) != 2 or data_pos > 1:
        raise ValueError(f"Gemm with the data tensor of shape {chain.shape} as input {data_pos} (needs A or B, rank 2)")
    trans = int(attrs.get("transA" if data_pos == 0 else "transB", 0))
    if trans:
        chain.permute(*_permutation(chain.shape, (1, 0)))
    other = args[1 - data_pos].astype(np.float64)
    if int(attrs.get("transB" if data_pos == 0 else "transA", 0)):
        other = other.T
    matrix, shape = _right_matmul(chain.shape, other) if data_pos == 0 else _left_matmul(other, chain.shape)
    offset = None
    if len(args) > 2 and args[2] is not None:
        offset = float(attrs.get("beta", 1.0)) * np.broadcast_to(args[2].astype(np.float64), shape).reshape(-1)
    chain.linear(float(attrs.get("alpha", 1.0)) * matrix, offset, shape)


def _data_node(node: onnx.NodeProto, op: str, chain: _Chain, attrs: dict, args: list, data_pos: int) -> None:
    """Apply one node whose input `data_pos` is the data tensor (args holds constants, None at data_pos)."""
    if op in _SHAPE_OPS:
        if any(a is None for i, a in enumerate(args) if i != data_pos) or data_pos != 0:
            raise ValueError(f"{op} whose shape/axes depend on the data tensor")
        chain.shape = _shape_op(op, chain.shape, attrs, args)
    elif op == "Relu":
        chain.relu()
    elif op == "Transpose":
        chain.permute(*_permutation(chain.shape, attrs.get("perm", tuple(reversed(range(len(chain.shape)))))))
    elif op == "MatMul":
        const = args[1 - data_pos].astype(np.float64)
        matrix, shape = _right_matmul(chain.shape, const) if data_pos == 0 else _left_matmul(const, chain.shape)
        chain.linear(matrix, None, shape)
    elif op == "Gemm":
        _gemm(chain, attrs, args, data_pos)
    elif op == "Neg":
        chain.elementwise(-np.ones(chain.size), None, chain.shape)
    else:  # Add, Sub, Mul, Div
        _elementwise(op, chain, args[1 - data_pos], data_pos == 0)


def load_onnx(path: str | Path) -> Network:
    """Read an ONNX file as a canonical `Network` (float64). Raises ModelError with a one-line message on bad input."""
    path = Path(path)
    model = _read(path)
    graph = model.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for name, value in consts.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ModelError(f"{path}: initializer '{name}' contains NaN or Inf")
    data_inputs = [i for i in graph.input if i.name not in consts]
    if len(data_inputs) != 1:
        raise ModelError(f"{path}: the graph needs exactly one data input, it has {len(data_inputs)} "
                         f"({', '.join(i.name for i in data_inputs)})")
    if not data_inputs[0].type.tensor_type.HasField("shape"):
        raise ModelError(f"{path}: the input '{data_inputs[0].name}' declares no shape")
    input_shape, _ = _declared_shape(data_inputs[0])
    chain = _Chain(input_shape)
    current = data_inputs[0].name
    data_shapes = {current: input_shape}  # every data tensor seen so far, for Shape nodes and error messages
    for node in graph.node:
        op, name, attrs = node.op_type, node.name or "<unnamed>", _attrs(node)
        where = f"{path}: node '{name}' ({op})"
        if op not in SUPPORTED_OPS:
            raise ModelError(f"{where}: unsupported operator {op}; supported: {', '.join(SUPPORTED_OPS)}")
        try:
            if op == "Constant":
                value = _constant_value(attrs)
                if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                    raise ModelError(f"{where}: the constant contains NaN or Inf")
                consts[node.output[0]] = value
                continue
            if op == "Shape" and node.input[0] in data_shapes:
                consts[node.output[0]] = _shape_of(data_shapes[node.input[0]], attrs)
                continue
            for i in node.input:
                if i and i not in consts and i not in data_shapes:
                    raise ModelError(f"{where}: its input '{i}' is not defined before it")
            args = [consts.get(i) if i else None for i in node.input]
            data_pos = [k for k, i in enumerate(node.input) if i in data_shapes]
            if not data_pos:
                if op not in _CONSTANT_OPS:
                    raise ModelError(f"{where}: {op} is supported on the data tensor only, not on constants")
                consts[node.output[0]] = _fold(op, attrs, args)
                continue
            if op not in DATA_OPS:
                raise ValueError(f"{op} on the data tensor")
            stale = [node.input[k] for k in data_pos if node.input[k] != current]
            if stale or len(data_pos) > 1:
                raise ValueError(f"it uses the data tensor {'more than once' if not stale else repr(stale[0])} "
                                 "(only a chain from the input is supported, no branches)")
            _data_node(node, op, chain, attrs, args, data_pos[0])
        except ModelError:
            raise
        except Exception as exc:  # a shape mismatch, a non-affine use of the data tensor, a bad attribute
            raise ModelError(f"{where}: {_one_line(exc)}; the flat-vector semantics cannot represent it") from None
        current = node.output[0]
        data_shapes[current] = chain.shape
    outputs = [o.name for o in graph.output]
    if outputs != [current]:
        raise ModelError(f"{path}: the graph output(s) {outputs} are not the end of the chain from the input "
                         f"(which ends at '{current}')")
    try:
        return Network(tuple(chain.finish()), input_shape, source=str(path))
    except ValueError as exc:  # e.g. weights overflowing to Inf when folded
        raise ModelError(f"{path}: {_one_line(exc)}") from None


def to_onnx_model(network: Network, dtype=np.float32) -> onnx.ModelProto:
    """The network as an ONNX model (opset 13): [Reshape to rows], then Gemm (transB=1) and Relu per layer.

    Input "input" of shape ``network.input_shape``, with a symbolic batch axis "batch" so that onnxruntime runs many
    samples in one call: a leading 1 of a rank >= 2 shape becomes "batch" (load_onnx reads it back as 1, so the
    shape round-trips), and a flat shape (n,) (the default of a Network built without one) is written as
    ["batch", n] (read back as (1, n): same n_inputs, same function). Other shapes (e.g. (2, 3)) stay fixed.
    Output "output" of shape [batch, n_outputs].
    """
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    shape = list(network.input_shape)
    shape = [1, *shape] if len(shape) == 1 else shape
    batched = len(shape) >= 2 and shape[0] == 1
    declared = ["batch", *shape[1:]] if batched else shape
    nodes, inits, current = [], [], "input"
    if not (batched and len(shape) == 2):  # rows of n_inputs: [batch, n], or [1, n] for one sample of a fixed shape
        nodes, current = [helper.make_node("Reshape", ["input", "rows"], ["flat"], name="reshape")], "flat"
    for i, layer in enumerate(network.layers):
        out = "output" if i == len(network.layers) - 1 else f"h{i}"
        if isinstance(layer, Affine):
            inits += [numpy_helper.from_array(layer.weight.astype(dtype), f"weight{i}"),
                      numpy_helper.from_array(layer.bias.astype(dtype), f"bias{i}")]
            nodes.append(helper.make_node("Gemm", [current, f"weight{i}", f"bias{i}"], [out], name=f"gemm{i}",
                                          transB=1))
        else:
            nodes.append(helper.make_node("Relu", [current], [out], name=f"relu{i}"))
        current = out
    if nodes[0].op_type == "Reshape":  # listed last: weight0 stays the first initializer
        inits.append(numpy_helper.from_array(np.array([-1, network.n_inputs], dtype=np.int64), "rows"))
    graph = helper.make_graph(nodes, "network", [helper.make_tensor_value_info("input", elem, declared)],
                              [helper.make_tensor_value_info("output", elem, ["batch" if batched else 1,
                                                                              network.n_outputs])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="verifier")
    model.ir_version = 8  # opset 13 needs IR >= 7; pinned so that older onnxruntime releases load it too
    return model


def save_onnx(network: Network, path: str | Path, dtype=np.float32) -> Path:
    """Write the network as an ONNX file; returns the path.

    dtype float32 (default) is what ONNX models hold in practice and what every tool accepts; loading it back
    gives the float32-rounded weights (relative change <= 6e-8, and saving that again is lossless). float64
    (onnxruntime runs Gemm/Relu in double) makes ``load_onnx(save_onnx(net, p, np.float64))`` exactly ``net``.
    """
    path = Path(path)
    onnx.save(to_onnx_model(network, dtype), str(path))
    return path


class OnnxRunner:
    """onnxruntime on one model: ``runner(x)`` maps flat inputs (N, n_inputs) or (n_inputs,) to flat outputs.

    model: an ONNX path, or a Network (its `source` file; when it has none, a float64 export held in memory, so
    that the runner computes the network's own function). Inputs are cast to the model's input type (float32 for
    almost every file). A first input axis that is symbolic is used to batch the samples; otherwise (e.g. a batch
    axis fixed to 1) samples run one at a time.
    """

    def __init__(self, model: str | Path | Network, threads: int = 1) -> None:
        import onnxruntime

        if isinstance(model, Network) and not model.source:
            proto = to_onnx_model(model, np.float64)
            content, self.name = proto.SerializeToString(), "<network>"
        else:
            path = Path(model.source if isinstance(model, Network) else model)
            proto = _read(path)
            content, self.name = str(path), str(path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # old files warn about initializers listed as graph inputs
        try:
            self.session = onnxruntime.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"{self.name}: onnxruntime cannot load it ({_one_line(exc)[:300]})") from None
        inputs = {i.name for i in proto.graph.initializer}
        data_input = [i for i in proto.graph.input if i.name not in inputs][0]
        self.input_name = data_input.name
        self.input_shape, symbolic_first = _declared_shape(data_input)
        self.batched = symbolic_first and len(self.input_shape) >= 2
        self.dtype = helper.tensor_dtype_to_np_dtype(data_input.type.tensor_type.elem_type)
        self.n_inputs = int(np.prod(self.input_shape))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (N, n_inputs) -> (N, n_outputs) float64, or (n_inputs,) -> (n_outputs,)."""
        x = np.asarray(x, dtype=np.float64)
        single = x.ndim <= 1
        flat = x.reshape(1 if single else x.shape[0], self.n_inputs).astype(self.dtype)
        out = None
        if self.batched:
            try:
                batch = flat.reshape(flat.shape[0], *self.input_shape[1:])
                out = self.session.run(None, {self.input_name: batch})[0].reshape(flat.shape[0], -1)
            except Exception:  # a graph that hard-codes batch 1 inside (e.g. a Reshape to [1, n]): one at a time
                self.batched = False
        if out is None:
            out = np.stack([self.session.run(None, {self.input_name: row.reshape(self.input_shape)})[0].reshape(-1)
                            for row in flat])
        out = out.astype(np.float64)
        return out[0] if single else out


def run_onnxruntime(model: str | Path | Network, x: np.ndarray) -> np.ndarray:
    """Outputs of the model run by onnxruntime (see `OnnxRunner`): (N, n_outputs) or (n_outputs,), float64."""
    return OnnxRunner(model)(x)
