"""Op definitions: registry plus the built-in ops, one module per family."""
from .registry import (REQUIRED, KernelContext, OpSchema, all_schemas, get_schema, infer_graph, infer_node,
                       register_op, register_schema, require_schema)

_BUILTIN_MODULES = ("elementwise", "nn", "shape_ops", "reduce", "control", "quant", "math_ops", "indexing",
                    "spatial", "detection", "sequence", "random_ops", "signal", "rnn", "normalization",
                    "transformer", "loss", "strings", "ml", "fused")


def load_builtin_ops() -> None:
    """Import the built-in op modules (each registers its rows on import)."""
    import importlib

    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{mod}")


__all__ = ["REQUIRED", "KernelContext", "OpSchema", "all_schemas", "get_schema", "infer_graph", "infer_node",
           "register_op", "register_schema", "require_schema", "load_builtin_ops"]
