"""graphopt: a model compiler for deep-learning inference.

>>> import graphopt
>>> g = graphopt.load("model.onnx")                       # doctest: +SKIP
>>> report = graphopt.optimize(g, level=2)               # doctest: +SKIP
>>> model = graphopt.compile(g, backend="cpu")           # doctest: +SKIP
>>> (y,) = model(x)                                      # doctest: +SKIP
"""
from .builder import GraphBuilder
from .errors import GraphoptError
from .ir import Graph, Node, TensorType, Value
from .passmanager import PassContext, PassManager, PassResult, register_pass

__version__ = "0.1.0"


def __getattr__(name):
    # the API pulls in optional pieces lazily so that `import graphopt` needs only NumPy and networkx
    if name in ("load", "optimize", "compile", "save", "CompiledModel"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["Graph", "Node", "Value", "TensorType", "GraphBuilder", "GraphoptError", "PassContext", "PassManager",
           "PassResult", "register_pass", "load", "optimize", "compile", "save", "CompiledModel"]
