"""The ``graphopt`` command's parts: input shapes and feeds, output tables, and the verbs that live
in their own module (``compare``, ``cache``). ``graphopt.cli`` builds the parser and registers verbs."""
