"""Differential fuzzing: random valid ONNX graphs, checked against onnxruntime on every backend and level.

``fuzz`` generates graphs over the ops of ``opgen.OPS`` (and the multi-node
patterns of ``opgen.MOTIFS`` that passes rewrite), runs each on onnxruntime and
on graphopt at each level, classifies every disagreement with onnx's
``ReferenceEvaluator`` as the tie-breaker (``check``), and minimizes every
graphopt failure to a few-node reproducer (``minimize``) in a folder of its
own. ``graphopt fuzz`` is the command line (``cli``).

>>> from graphopt.fuzz import fuzz
>>> stats = fuzz(seed=0, count=3, backends=["cpu"], levels=[0, 2])
>>> stats.graphs
3
"""
from .check import Checker, Outcome, differ
from .minimize import minimize
from .run import FuzzStats, fuzz, generate

__all__ = ["fuzz", "generate", "FuzzStats", "Checker", "Outcome", "differ", "minimize"]
