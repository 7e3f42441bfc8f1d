"""A custom pass shipped as its own package, found through the ``graphopt.passes`` entry point.

    pip install ./samples/custom_pass_plugin
    graphopt passes | grep sample_fold_double_neg
    graphopt optimize model.onnx -o out.onnx --passes sample_fold_double_neg

The pass is a list of rules, like the built-in ones.
"""
from graphopt.passmanager import rule_pass
from graphopt.patterns import P, Rule, X


def _drop_both(graph, m):
    m.replace_with(m["x"])
    return True


RULES = [Rule("neg_neg_to_identity", P("Neg", P("Neg", X)), _drop_both)]

# opt_level 2: it runs in the default -O2 pipeline once the package is installed
rule_pass("sample_fold_double_neg", RULES, opt_level=2, order=50,
          doc="Neg(Neg(x)) => x  (sample plugin from graphopt-fold-double-neg)")
