"""The exceptions graphopt raises for things a user can fix.

Every one of them carries a single-line message that names the thing at fault
(op, node, tensor, file, plugin); the CLI prints that line and exits non-zero,
and shows the traceback only under ``--debug``.
"""
from __future__ import annotations


class GraphoptError(Exception):
    """Base class: a problem with the user's model, input, plugin or request."""

    exit_code = 1


class ModelLoadError(GraphoptError):
    """The model file could not be read or is malformed or hostile."""


class UnsupportedOpError(GraphoptError):
    """No kernel or converter exists for an op."""


class VerifyError(GraphoptError):
    """The IR broke one of its invariants (SSA, acyclicity, types)."""


class InputError(GraphoptError):
    """A run was given a missing input or one of the wrong shape or dtype."""


class PluginError(GraphoptError):
    """A plugin failed to load or misbehaved."""


class PassError(GraphoptError):
    """A pass failed; the message names the pass and the passes before it."""


class ShapeError(GraphoptError):
    """Shape or type inference found inconsistent shapes."""
