"""Dataset interop: the flashinfer-trace layout both ways, FlashInfer's level-10 API dumps in.

``trace_import`` / ``trace_export`` map between a fibuild workspace and a flashinfer-trace
directory (``trace_mapping`` holds the per-record mapping); ``dump_reader`` / ``dump_import``
turn FlashInfer API dumps into workloads. Dataset and dump files are read as JSON and
safetensors only: nothing in them is executed or unpickled.
"""
