"""Optimisers: fused update kernels, the one adapter to Keras' private optimizer state, SGDR."""
