"""Kernels for :class:`pagoda.quantization.int_weight.IntWeight`: a Triton W4A16/W8A16 GEMM for CUDA
(``triton_wna16``) and torch's packed CPU weight-only matmuls (``cpu_woq``)."""
