"""Benchmarks on the target runtime: latency of any backend, and the tables and environment record around it.

Torch-free: runs on a Jetson with numpy, pillow and onnxruntime or TensorRT.
"""

from edgeprompt.bench.latency import LatencyResult, measure_latency, summarize
from edgeprompt.bench.report import csv, environment, markdown_table

__all__ = ["LatencyResult", "csv", "environment", "markdown_table", "measure_latency", "summarize"]
