"""A readable text form of a graph, one node per line.

>>> from graphopt.builder import GraphBuilder
>>> b = GraphBuilder("tiny"); x = b.input("x", (2, 3)); b.output(b.op("Relu", x))
>>> print(format_graph(b.graph))  # doctest: +NORMALIZE_WHITESPACE
graph tiny(%x: float32[2,3]) {
  %relu: float32[2,3] = Relu(%x)
  return %relu
}
"""
from __future__ import annotations

import numpy as np


def _fmt_attr(v) -> str:
    from .ir import Graph

    if isinstance(v, Graph):
        return f"<graph {v.name}>"
    if isinstance(v, np.ndarray):
        if v.size <= 8:
            return f"tensor({v.tolist()})"
        return f"tensor<{v.dtype}{list(v.shape)}>"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)) and len(v) > 16:
        return f"[{', '.join(map(str, v[:16]))}, ...]"
    return repr(v) if isinstance(v, (str, bytes)) else str(v)


def format_graph(g, indent: str = "", max_const: int = 20) -> str:
    ins = ", ".join(repr(v) for v in g.inputs)
    lines = [f"{indent}graph {g.name}({ins}) {{"]
    shown = 0
    for name, v in g.initializers.items():
        if shown >= max_const:
            lines.append(f"{indent}  ... {len(g.initializers) - shown} more initializers")
            break
        lines.append(f"{indent}  %{name}: {v.type} = const")
        shown += 1
    for n in g:
        outs = ", ".join(repr(v) for v in n.outputs)
        args = ", ".join("_" if v is None else f"%{v.name}" for v in n.inputs)
        attrs = ""
        if n.attrs:
            attrs = "<" + ", ".join(f"{k}={_fmt_attr(a)}" for k, a in sorted(n.attrs.items())) + ">"
        lines.append(f"{indent}  {outs} = {n.qualified_op}{attrs}({args})")
        for sg in n.subgraphs():
            lines.append(format_graph(sg, indent + "    ", max_const))
    lines.append(f"{indent}  return {', '.join('%' + v.name for v in g.outputs)}")
    lines.append(f"{indent}}}")
    return "\n".join(lines)
