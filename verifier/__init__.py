"""verifier: how robust is a ReLU network? Attacks (upper bounds), certified bounds and exact answers."""
from .attacks import AttackResult, attack
from .falsification import falsify
from .bounds import METHODS, BoundResult, bound
from .errors import InputError, ModelError, VnnlibError
from .network import Affine, Network, ReLU
from .onnx import OnnxRunner, load_onnx, run_onnxruntime, save_onnx
from .spec import (InputBall, InputBox, Property, ball, linf_ball, margin_rows, robustness_property,
                   targeted_property)
from .verify import Verdict, verify, verify_instance
from .vnnlib import parse_vnnlib

__version__ = "0.1.0"
