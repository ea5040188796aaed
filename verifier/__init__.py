"""verifier: how robust is a ReLU network? Attacks (upper bounds), certified bounds and exact answers."""
from .bounds import METHODS, BoundResult, bound
from .errors import InputError, ModelError, VnnlibError
from .network import Affine, Network, ReLU
from .spec import InputBox, Property, linf_ball, margin_rows, robustness_property, targeted_property

__version__ = "0.1.0"
