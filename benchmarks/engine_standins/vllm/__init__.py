"""vllm stand-in for the decode-step benchmark: only ``vllm._C_stable_libtorch`` (see ../README.md)."""
