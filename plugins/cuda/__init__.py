"""The CUDA backend: generated CUDA C kernels, run through CuPy on a GPU (``cuda``)
or under host emulation (``cuda-emu``). See docs/cuda.md for the layers."""


def __getattr__(name):
    if name in ("CudaBackend", "CudaEmuBackend"):
        from . import backend

        return getattr(backend, name)
    raise AttributeError(name)


__all__ = ["CudaBackend", "CudaEmuBackend"]
