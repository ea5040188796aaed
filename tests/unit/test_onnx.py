"""verifier.onnx: ONNX -> Network agrees with onnxruntime; save_onnx round-trips; bad files raise ModelError."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from verifier.errors import ModelError
from verifier.network import Affine, Network, ReLU, random_network
from verifier.onnx import OnnxRunner, load_onnx, run_onnxruntime, save_onnx

ROOT = Path(__file__).resolve().parents[2]
DATA, MODELS = ROOT / "tests" / "data", ROOT / "models"  # as in tests/conftest.py
LOCAL_MODELS = sorted(DATA.glob("*.onnx")) + sorted(MODELS.glob("*.onnx"))


def assert_matches_onnxruntime(path: Path, n_points: int = 100, seed: int = 0) -> Network:
    """load_onnx(path).forward equals onnxruntime on random points of [-1, 1]^n to 1e-5 relative."""
    net = load_onnx(path)
    x = np.random.default_rng(seed).uniform(-1, 1, size=(n_points, net.n_inputs))
    x = x.astype(np.float32).astype(np.float64)  # the exact inputs onnxruntime sees for a float32 model
    reference = run_onnxruntime(path, x)
    scale = max(1.0, float(np.abs(reference).max()))
    np.testing.assert_allclose(net.forward(x), reference, rtol=1e-5, atol=1e-5 * scale, err_msg=str(path))
    return net


# --- real networks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", LOCAL_MODELS, ids=lambda p: p.name)
def test_local_models_match_onnxruntime(path):
    assert_matches_onnxruntime(path)


def test_local_copies_are_present():
    names = {p.name for p in DATA.glob("*.onnx")}
    assert {"ACASXU_run2a_1_1_batch_2000.onnx", "mnist-net_256x2.onnx", "test_nano.onnx", "test_tiny.onnx",
            "test_small.onnx", "test_sat.onnx", "test_unsat.onnx"} <= names


def test_every_shared_benchmark_network_matches_onnxruntime(shared_benchmarks):
    paths = sorted(shared_benchmarks.glob("*/onnx/*.onnx"))
    assert len(paths) >= 47
    for path in paths:
        assert_matches_onnxruntime(path)


def test_acasxu_structure():
    net = load_onnx(DATA / "ACASXU_run2a_1_1_batch_2000.onnx")
    assert net.input_shape == (1, 1, 1, 5) and net.n_inputs == 5 and net.n_outputs == 5
    # the mean subtraction and Flatten fold into the first Affine: 7 affine layers, ReLUs between them only
    assert net.widths == [50] * 6 and net.n_relus == 300 and len(net.affines) == 7
    assert net.relu_after == [True] * 6 + [False]
    assert net.source.endswith("ACASXU_run2a_1_1_batch_2000.onnx")


def test_mnist_structure():
    net = load_onnx(DATA / "mnist-net_256x2.onnx")
    assert net.input_shape == (1, 784, 1)
    assert [a.weight.shape for a in net.affines] == [(256, 784), (256, 256), (10, 256)]
    assert net.relu_after == [True, True, False] and net.n_relus == 512
    assert all(a.weight.dtype == np.float64 for a in net.affines)


def test_vnncomp_test_nets_have_the_documented_functions():
    nano = load_onnx(DATA / "test_nano.onnx")  # y = relu(0.5 x), the ReLU on the output kept as a layer
    assert nano.input_shape == (1,) and nano.relu_after == [True]
    np.testing.assert_allclose(nano.forward(np.array([[-2.0], [3.0]])), [[0.0], [1.5]])
    tiny = load_onnx(DATA / "test_tiny.onnx")  # MatMul(W, x) layout
    np.testing.assert_allclose(tiny.forward(np.array([[-1.0], [0.7]])), [[0.0], [0.7]])
    small = load_onnx(DATA / "test_small.onnx")
    assert [a.weight.shape for a in small.affines] == [(2, 1), (2, 2), (1, 2)]


# --- hand-built graphs for each supported operator -----------------------------------------------------------
def build(path: Path, nodes: list, input_shape: list, inits: dict, opset: int = 13, n_inputs: int = 1) -> Path:
    """Write a graph with data input(s) "x" (and "x2"), output "y" and float32 initializers."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)]
    if n_inputs == 2:
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, input_shape))
    tensors = [numpy_helper.from_array(np.asarray(v, dtype=np.int64 if k.startswith("i_") else np.float32), k)
               for k, v in inits.items()]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def rand(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).normal(size=shape)


N = helper.make_node
GRAPHS = {
    # Gemm with transA on the data tensor, alpha/beta and a bias of shape (1, 4); then transB without bias
    "gemm_attributes": (lambda: ([N("Gemm", ["x", "B", "C"], ["h"], alpha=0.5, beta=2.0, transA=1),
                                  N("Relu", ["h"], ["r"]), N("Gemm", ["r", "W"], ["y"], transB=1)],
                                 [3, 1], {"B": rand(3, 4), "C": rand(1, 4), "W": rand(2, 4)}, 13)),
    # the data tensor as Gemm's B, transposed, with a transposed constant A and a bias broadcast over columns
    "gemm_data_second": (lambda: ([N("Gemm", ["A", "x", "C"], ["y"], transA=1, transB=1, alpha=-1.5)],
                                  [2, 4], {"A": rand(4, 3), "C": rand(3, 1)}, 13)),
    # weight as the first operand on a column x of shape [n, 1], biases of shape [m, 1]
    "matmul_weight_first": (lambda: ([N("MatMul", ["W", "x"], ["m"]), N("Add", ["m", "b"], ["h"]),
                                      N("Relu", ["h"], ["r"]), N("MatMul", ["W2", "r"], ["m2"]),
                                      N("Add", ["b2", "m2"], ["y"])],
                                     [4, 1], {"W": rand(3, 4), "b": rand(3, 1), "W2": rand(2, 3), "b2": rand(2, 1)},
                                     13)),
    # x a matrix: W @ x acts on each column (and each batch entry), x @ W on each row
    "matmul_matrix_data": (lambda: ([N("MatMul", ["W", "x"], ["m"]), N("Relu", ["m"], ["r"]),
                                     N("MatMul", ["r", "W2"], ["y"])], [2, 4, 2], {"W": rand(3, 4), "W2": rand(2, 5)},
                                    13)),
    "matmul_1d_weights": (lambda: ([N("MatMul", ["u", "x"], ["m"]), N("Relu", ["m"], ["r"]),
                                    N("MatMul", ["r", "v"], ["y"])], [3, 2], {"u": rand(3), "v": rand(2)}, 13)),
    "matmul_vector": (lambda: ([N("MatMul", ["x", "W"], ["m"]), N("Neg", ["m"], ["n"]), N("Sub", ["n", "b"], ["y"])],
                               [3], {"W": rand(3, 2), "b": rand(2)}, 13)),
    # constants from Constant nodes (value, value_float, value_floats), a transposed weight, c - x, c * x, x / c
    "constant_nodes": (lambda: ([N("Constant", [], ["s"], value_float=2.5),
                                 N("Constant", [], ["c"], value_floats=[0.1, -0.2, 0.3, 0.4, -0.5]),
                                 N("Constant", [], ["Wt"], value=numpy_helper.from_array(
                                     rand(4, 5).astype(np.float32), "Wt")),
                                 N("Transpose", ["Wt"], ["W"], perm=[1, 0]),
                                 N("Sub", ["c", "x"], ["a"]), N("Mul", ["s", "a"], ["b"]),
                                 N("Div", ["b", "d"], ["e"]), N("MatMul", ["e", "W"], ["y"])],
                                [1, 5], {"d": [0.5, 2.0, -4.0, 1.0, 3.0]}, 13)),
    # input normalisation with per-channel constants of shapes (1, C, 1, 1) and (C, 1, 1)
    "per_channel_normalisation": (lambda: ([N("Sub", ["x", "mean"], ["a"]), N("Div", ["a", "std"], ["b"]),
                                            N("Flatten", ["b"], ["f"], axis=1), N("MatMul", ["f", "W"], ["m"]),
                                            N("Add", ["m", "bias"], ["h"]), N("Relu", ["h"], ["y"])],
                                           [1, 3, 2, 2], {"mean": [[[[0.1]], [[0.5]], [[-0.3]]]],
                                                          "std": [[[0.2]], [[1.5]], [[0.7]]],
                                                          "W": rand(12, 4), "bias": rand(4)}, 13)),
    # Squeeze/Unsqueeze with axes as inputs (opset 13), Reshape with 0 and -1, and torch's x.view(x.size(0), -1)
    "shape_ops": (lambda: ([N("Squeeze", ["x", "i_ax0"], ["s"]), N("Unsqueeze", ["s", "i_ax0"], ["u"]),
                            N("Reshape", ["u", "i_shape"], ["r"]), N("Identity", ["r"], ["id"]),
                            N("Shape", ["id"], ["shp"]), N("Gather", ["shp", "i_zero"], ["n"], axis=0),
                            N("Unsqueeze", ["n", "i_ax0"], ["n1"]), N("Concat", ["n1", "i_minus1"], ["tgt"], axis=0),
                            N("Reshape", ["id", "tgt"], ["v"]), N("Gemm", ["v", "W", "b"], ["y"], transB=1)],
                           [1, 1, 6], {"i_ax0": [0], "i_shape": [0, -1], "i_zero": 0, "i_minus1": [-1],
                                       "W": rand(3, 6), "b": rand(3)}, 13)),
    "squeeze_attribute_opset11": (lambda: ([N("Unsqueeze", ["x"], ["u"], axes=[0]), N("Squeeze", ["u"], ["s"],
                                                                                        axes=[0, 1]),
                                            N("MatMul", ["s", "W"], ["y"])], [1, 4], {"W": rand(4, 2)}, 11)),
    # a transpose of the data tensor is a permutation of the flat vector
    "transpose_data": (lambda: ([N("Transpose", ["x"], ["t"], perm=[0, 2, 1]), N("Reshape", ["t", "i_s"], ["r"]),
                                 N("MatMul", ["r", "W"], ["y"])], [1, 2, 3], {"i_s": [1, 6], "W": rand(6, 3)}, 13)),
    # leading Relu (identity Affine in front), Relu-Identity-Relu (folds), a final Relu kept as a layer
    "relu_placement": (lambda: ([N("Relu", ["x"], ["r0"]), N("Relu", ["r0"], ["r1"]), N("MatMul", ["r1", "W"], ["m"]),
                                 N("Relu", ["m"], ["r2"]), N("Identity", ["r2"], ["i"]), N("Relu", ["i"], ["r3"]),
                                 N("Add", ["r3", "b"], ["a"]), N("Relu", ["a"], ["y"])],
                                [1, 4], {"W": rand(4, 3), "b": rand(3)}, 13)),
}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_hand_built_graph_matches_onnxruntime(tmp_path, name):
    nodes, shape, inits, opset = GRAPHS[name]()
    path = build(tmp_path / f"{name}.onnx", nodes, shape, inits, opset)
    net = assert_matches_onnxruntime(path, n_points=50)
    assert net.input_shape == tuple(shape)


def test_affine_chains_fold_and_relus_are_placed(tmp_path):
    nodes, shape, inits, opset = GRAPHS["relu_placement"]()
    net = load_onnx(build(tmp_path / "r.onnx", nodes, shape, inits, opset))
    assert [type(layer) for layer in net.layers] == [Affine, ReLU, Affine, ReLU, Affine, ReLU]
    np.testing.assert_array_equal(net.affines[0].weight, np.eye(4))
    nodes, shape, inits, opset = GRAPHS["constant_nodes"]()
    net = load_onnx(build(tmp_path / "c.onnx", nodes, shape, inits, opset))
    assert len(net.layers) == 1  # Sub, Mul, Div and MatMul are one affine map


# --- torch export ------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's deprecation notice
@pytest.mark.parametrize("channels,side", [(1, 8), (3, 4)])
def test_torch_export_with_normalisation(tmp_path, channels, side):
    torch = pytest.importorskip("torch")

    class Normalize(torch.nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

        def forward(self, x):
            return (x - self.mean) / self.std

    torch.manual_seed(0)
    n = channels * side * side
    model = torch.nn.Sequential(Normalize([0.1, 0.4, -0.2][:channels], [0.3, 2.0, 0.5][:channels]),
                                torch.nn.Flatten(), torch.nn.Linear(n, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 4)).eval()
    path = tmp_path / "torch.onnx"
    # dynamo=False: the torch.export-based exporter needs onnxscript, which is not a dependency
    torch.onnx.export(model, (torch.zeros(1, channels, side, side),), str(path), input_names=["input"],
                      dynamo=False)
    net = assert_matches_onnxruntime(path)
    assert net.input_shape == (1, channels, side, side) and net.relu_after == [True, False]
    x = np.random.default_rng(1).uniform(0, 1, size=(20, n))
    with torch.no_grad():
        expected = model(torch.tensor(x, dtype=torch.float32).reshape(20, channels, side, side)).double().numpy()
    np.testing.assert_allclose(net.forward(x), expected, rtol=1e-5, atol=1e-5)


# --- save_onnx round trip ----------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 7), min_size=2, max_size=5), relu_on_output=st.booleans(),
       shape_kind=st.sampled_from(["flat", "batch", "image", "fixed"]), seed=st.integers(0, 2**16))
def test_save_load_round_trip(tmp_path_factory, sizes, relu_on_output, shape_kind, seed):
    rng = np.random.default_rng(seed)
    base = random_network(sizes, rng, relu_on_output=relu_on_output)
    shape = {"flat": (sizes[0],), "batch": (1, sizes[0]), "image": (1, sizes[0], 1), "fixed": (sizes[0], 1)}[shape_kind]
    net = Network(base.layers, shape)
    folder = tmp_path_factory.mktemp("rt")
    exact = load_onnx(save_onnx(net, folder / "f64.onnx", dtype=np.float64))
    assert exact.input_shape == (shape if len(shape) > 1 else (1, *shape))  # (n,) is written as [batch, n]
    assert [type(a) for a in exact.layers] == [type(a) for a in net.layers]
    for a, b in zip(exact.affines, net.affines):  # float64 export: the very same weights
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)
    single = load_onnx(save_onnx(net, folder / "f32.onnx"))  # float32: rounded weights, same function to 1e-6
    x = rng.uniform(-1, 1, size=(30, sizes[0]))
    np.testing.assert_allclose(single.forward(x), net.forward(x), rtol=1e-5, atol=1e-5)
    again = load_onnx(save_onnx(single, folder / "again.onnx"))  # float32 -> float64 -> float32 is lossless
    assert all(np.array_equal(a.weight, b.weight) for a, b in zip(again.affines, single.affines))
    assert_matches_onnxruntime(folder / "f32.onnx", n_points=20)
    # a network without a source file runs through an in-memory float64 export: its own function
    np.testing.assert_allclose(run_onnxruntime(net, x), net.forward(x), rtol=1e-10, atol=1e-12)


def test_runner_shapes_and_batching(tmp_path):
    net = random_network([6, 5, 3], np.random.default_rng(2))
    batched = OnnxRunner(save_onnx(Network(net.layers, (1, 6)), tmp_path / "b.onnx"))
    fixed = OnnxRunner(DATA / "ACASXU_run2a_1_1_batch_2000.onnx")
    assert batched.batched and not fixed.batched and fixed.input_shape == (1, 1, 1, 5)
    x = np.random.default_rng(3).uniform(size=(7, 6))
    out = batched(x)
    assert out.shape == (7, 3) and out.dtype == np.float64
    np.testing.assert_allclose(batched(x[2]), out[2], rtol=1e-6)  # one flat sample -> (n_outputs,)
    x5 = np.random.default_rng(4).uniform(size=(4, 5))
    acas = fixed(x5)  # batch axis fixed to 1: run one sample at a time
    assert acas.shape == (4, 5)
    np.testing.assert_allclose(fixed(x5[1]), acas[1], rtol=1e-6)
    # a symbolic batch axis but a graph that hard-codes batch 1: falls back to one sample at a time
    path = tmp_path / "hard.onnx"
    build(path, [N("Reshape", ["x", "i_s"], ["r"]), N("Gemm", ["r", "W"], ["y"], transB=1)], ["N", 4],
          {"i_s": [1, 4], "W": rand(2, 4)})
    hard = OnnxRunner(path)
    assert hard.batched
    np.testing.assert_allclose(hard(x[:, :4]), load_onnx(path).forward(x[:, :4]), rtol=1e-5)
    assert not hard.batched
    sourced = load_onnx(DATA / "test_small.onnx")  # a loaded network runs its source file
    np.testing.assert_allclose(run_onnxruntime(sourced, np.array([[0.5]])), [[sourced.forward(np.array([0.5]))[0]]],
                               rtol=1e-6)


# --- bad input -------------------------------------------------------------------------------------------
def assert_model_error(path: Path, *words: str) -> str:
    with pytest.raises(ModelError) as info:
        load_onnx(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, message
    return message


def test_missing_text_and_truncated_files(tmp_path):
    assert_model_error(tmp_path / "missing.onnx", "no such file")
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n")
    assert_model_error(text, "not an ONNX model")
    content = (DATA / "ACASXU_run2a_1_1_batch_2000.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(content[: len(content) // 2])
    assert_model_error(cut, "truncated")
    for fraction in (0.01, 0.2, 0.7, 0.95, 0.999):  # wherever a file is cut, the error is a ModelError
        cut.write_bytes(content[: int(len(content) * fraction)])
        assert_model_error(cut)


def test_nan_in_weights(tmp_path):
    model = onnx.load(str(DATA / "ACASXU_run2a_1_1_batch_2000.onnx"))
    init = next(i for i in model.graph.initializer if i.name == "Operation_3_MatMul_W")
    values = numpy_helper.to_array(init).copy()
    values[4, 7] = np.nan
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    assert_model_error(tmp_path / "nan.onnx", "NaN", "Operation_3_MatMul_W")
    path = build(tmp_path / "inf.onnx", [N("Constant", [], ["c"], value_float=float("inf")),
                                         N("Add", ["x", "c"], ["y"])], [1, 2], {})
    assert_model_error(path, "NaN or Inf")


@pytest.mark.parametrize("op,extra", [("Sigmoid", {}), ("LpPool", {"kernel_shape": [1, 1]})])
def test_unsupported_operator(tmp_path, op, extra):
    path = build(tmp_path / f"{op}.onnx", [N("Gemm", ["x", "W"], ["h"], name="dense"),
                                           N(op, ["h"], ["y"], name="my_node", **extra)], [1, 3], {"W": rand(3, 2)})
    message = assert_model_error(path, op, "my_node", "supported:", "Gemm", "MatMul", "Relu", "Conv", "MaxPool")
    assert "unsupported operator" in message


def test_more_than_one_data_input(tmp_path):
    path = build(tmp_path / "two.onnx", [N("Add", ["x", "x2"], ["y"])], [1, 3], {}, n_inputs=2)
    assert_model_error(path, "exactly one data input", "x2")


@pytest.mark.parametrize("case,nodes,shape,inits,words", [
    ("square", [N("Mul", ["x", "x"], ["y"], name="sq")], [1, 3], {}, ["sq", "product of two data tensors"]),
    ("reciprocal", [N("Div", ["c", "x"], ["y"], name="inv")], [1, 3], {"c": [1.0]}, ["inv", "division by the data"]),
    ("division_by_zero", [N("Div", ["x", "c"], ["y"])], [1, 2], {"c": [1.0, 0.0]}, ["zeros"]),
    ("broadcast_grows", [N("Add", ["x", "c"], ["y"], name="grow")], [1, 3], {"c": rand(2, 3)}, ["grow", "broadcasts"]),
    ("broadcast_data", [N("Reshape", ["x", "i_s"], ["r"]), N("Add", ["r", "x"], ["y"], name="skip")], [1, 3],
     {"i_s": [3, 1]}, ["skip", "no broadcasting"]),
    ("conv_1d", [N("Conv", ["x", "w"], ["y"], name="c1")], [1, 1, 3], {"w": rand(1, 1, 2)}, ["c1", "N, C, H, W"]),
    ("matmul_mismatch", [N("MatMul", ["x", "W"], ["y"], name="mm")], [1, 3], {"W": rand(4, 2)}, ["do not match"]),
    ("nonlinear_cast", [N("Cast", ["x"], ["y"], to=TensorProto.INT64, name="cast")], [1, 3], {}, ["Cast"]),
])
def test_unrepresentable_operations(tmp_path, case, nodes, shape, inits, words):
    message = assert_model_error(build(tmp_path / f"{case}.onnx", nodes, shape, inits), *words)
    assert "no linear-operator or ReLU form" in message


def test_output_must_come_from_the_input(tmp_path):
    path = build(tmp_path / "early.onnx", [N("Relu", ["x"], ["y"]), N("Relu", ["y"], ["z"])], [1, 3], {})
    net = load_onnx(path)  # nodes after the output are dropped
    np.testing.assert_array_equal(net.forward(np.array([-1.0, 0.5, 2.0])), [0.0, 0.5, 2.0])
    path = build(tmp_path / "const.onnx", [N("Relu", ["x"], ["r"]), N("Neg", ["c"], ["y"])], [1, 3], {"c": [1.0]})
    assert_model_error(path, "one output computed from the data input")


def test_undefined_tensor_and_missing_shape(tmp_path):
    path = build(tmp_path / "undef.onnx", [N("Add", ["x", "gone"], ["y"], name="add")], [1, 3], {})
    assert_model_error(path, "add", "'gone' is not defined")
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(model, str(tmp_path / "noshape.onnx"))
    assert_model_error(tmp_path / "noshape.onnx", "declares no shape")
