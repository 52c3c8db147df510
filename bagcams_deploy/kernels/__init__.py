"""CUDA aggregation kernels: the prebuilt fatbin, its sources and the PyCUDA launcher.

``AggregationKernel`` needs pycuda and a CUDA GPU (imported lazily, on construction);
``make_plan`` is pure Python.
"""

from bagcams_deploy.kernels.launcher import AggregationKernel, LaunchPlan, make_plan

__all__ = ["AggregationKernel", "LaunchPlan", "make_plan"]
