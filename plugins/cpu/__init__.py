"""The NumPy CPU reference backend: the oracle every other backend is checked against."""
from .backend import CpuBackend, CpuExecutable, run_reference

__all__ = ["CpuBackend", "CpuExecutable", "run_reference"]
