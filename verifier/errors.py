"""Errors that mean "bad input": the CLI prints their one-line message and exits with code 2."""


class InputError(ValueError):
    """Base class of every user-input error (bad model file, bad property, bad arguments)."""


class ModelError(InputError):
    """An ONNX file that cannot be read or holds something unsupported; the message names file, op and node."""


class VnnlibError(InputError):
    """A VNN-LIB file that cannot be parsed; the message names file, line and what was expected."""


class UnsupportedNetwork(InputError):
    """A method asked for on a network it cannot handle yet (e.g. a convolutional graph where a method needs a
    dense chain); the message names the method and what it lacks."""
