"""ONNX file <-> `Network`, and onnxruntime as the reference executor. Nothing else reads ONNX.

Loading walks the ONNX graph in order. Constants (initializers, Constant nodes, shapes of data tensors, and nodes
whose inputs are all constants) are evaluated in numpy. Every node on the data path goes through the operator
table (`onnx_handlers.HANDLERS`), which adds verifier operators (verifier/ops/) to the graph; MaxPool becomes an exact
tree of ReLUs there. The graph is then simplified (fuse.py): a single path of dense-able affine maps and ReLUs
becomes a dense chain of Affine layers, anything else a graph with adjacent affine operators fused. Saving
(onnx_export.py) writes the graph back operator by operator.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelError
from .fuse import simplify
from .network import Network
from .onnx_export import save_onnx, to_onnx_model
from .onnx_handlers import HANDLERS, Data, GraphBuilder, shape_op

_CONSTANT_OPS = ("Add", "Cast", "Concat", "Constant", "Div", "Flatten", "Gather", "Identity", "Mul", "Neg",
                 "Reshape", "Shape", "Squeeze", "Sub", "Transpose", "Unsqueeze")
DATA_OPS = tuple(sorted(HANDLERS))
SUPPORTED_OPS = tuple(sorted(set(DATA_OPS) | set(_CONSTANT_OPS)))


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
    return args[0].reshape(shape_op(op, args[0].shape, attrs, args))  # Flatten, Reshape, (Un)squeeze, Identity


def _data_inputs(path: Path, graph: onnx.GraphProto, consts: dict) -> tuple[str, tuple]:
    data_inputs = [i for i in graph.input if i.name not in consts]
    if len(data_inputs) != 1:
        raise ModelError(f"{path}: the graph needs exactly one data input, it has {len(data_inputs)} "
                         f"({', '.join(i.name for i in data_inputs)})")
    if not data_inputs[0].type.tensor_type.HasField("shape"):
        raise ModelError(f"{path}: the input '{data_inputs[0].name}' declares no shape")
    return data_inputs[0].name, _declared_shape(data_inputs[0])[0]


def _node_value(node: onnx.NodeProto, where: str, values: dict, builder: GraphBuilder):
    """The value of the node's first output: a constant (numpy) or a `Data`."""
    op, attrs = node.op_type, _attrs(node)
    if op == "Constant":
        value = _constant_value(attrs)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ModelError(f"{where}: the constant contains NaN or Inf")
        return value
    for name in node.input:
        if name and name not in values:
            raise ModelError(f"{where}: its input '{name}' is not defined before it")
    args = [values[name] if name else None for name in node.input]
    if op == "Shape" and isinstance(args[0], Data):
        return _shape_of(args[0].shape, attrs)
    if not any(isinstance(a, Data) for a in args):
        if op not in _CONSTANT_OPS:
            raise ModelError(f"{where}: {op} is supported on the data tensor only, not on constants")
        return _fold(op, attrs, args)
    if op not in HANDLERS:
        raise ValueError(f"{op} on the data tensor")
    return HANDLERS[op](builder, attrs, args)


def load_onnx(path: str | Path) -> Network:
    """Read an ONNX file as a `Network` (float64). Raises ModelError with a one-line message on bad input."""
    path = Path(path)
    graph = _read(path).graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for name, value in consts.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ModelError(f"{path}: initializer '{name}' contains NaN or Inf")
    input_name, input_shape = _data_inputs(path, graph, consts)
    builder = GraphBuilder(input_shape)
    values = {**consts, input_name: Data(0, input_shape)}
    for node in graph.node:
        op = node.op_type
        where = f"{path}: node '{node.name or '<unnamed>'}' ({op})"
        if op not in SUPPORTED_OPS:
            raise ModelError(f"{where}: unsupported operator {op}; supported: {', '.join(SUPPORTED_OPS)}")
        try:
            values[node.output[0]] = _node_value(node, where, values, builder)
        except ModelError:
            raise
        except Exception as exc:  # a shape mismatch, a non-linear use of the data tensor, a bad attribute
            raise ModelError(f"{where}: {_one_line(exc)}; it has no linear-operator or ReLU form") from None
    outputs = [o.name for o in graph.output]
    if len(outputs) != 1 or not isinstance(values.get(outputs[0]), Data):
        raise ModelError(f"{path}: the graph needs one output computed from the data input, it has {outputs}")
    try:
        layers, nodes, output = simplify(builder.nodes, values[outputs[0]].node)
        if layers is not None:
            return Network(tuple(layers), input_shape, source=str(path))
        return Network(tuple(nodes), input_shape, source=str(path), output=output)
    except ValueError as exc:  # e.g. weights overflowing to Inf when folded
        raise ModelError(f"{path}: {_one_line(exc)}") from None


class OnnxRunner:
    """onnxruntime on one model: ``runner(x)`` maps flat inputs (N, n_inputs) or (n_inputs,) to flat outputs.

    model: an ONNX path, or a Network (its `source` file; when it has none, a float64 export held in memory, so
    that the runner computes the network's own function; float32 for a graph with convolutions, which
    onnxruntime only runs in float32). Inputs are cast to the model's input type (float32 for
    almost every file). A first input axis that is symbolic is used to batch the samples; otherwise (e.g. a batch
    axis fixed to 1) samples run one at a time.
    """

    def __init__(self, model: str | Path | Network, threads: int = 1) -> None:
        import onnxruntime

        if isinstance(model, Network) and not model.source:
            # float64 (its own function), unless onnxruntime lacks a float64 kernel (Conv, AveragePool)
            dtype = np.float32 if {"Conv2d", "AvgPool2d"} & set(model.op_names()) else np.float64
            proto = to_onnx_model(model, dtype)
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
