"""lqkernels: ℓq-norm compressibility, adaptive pruning and sparse kernels for PyTorch.

Importing the package registers the ops `torch.ops.lqkernels.*` (schemas in lqkernels._ops; C++
and CUDA kernels from lqkernels._C; Triton kernels from lqkernels._triton).
"""
from lqkernels import _ops  # noqa: F401  (schemas first, then the kernels that implement them)
from lqkernels import _backend  # noqa: F401
from lqkernels import ops
from lqkernels import nn  # noqa: F401
from lqkernels.sparsify import densify_, sparsify_
from lqkernels import prune, theory  # noqa: F401  (the paper's method: lqkernels.prune, lqkernels.theory)

__version__ = "0.1.0"
__all__ = ["ops", "__version__", "sparsify_", "densify_"]
