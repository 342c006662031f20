"""Snapshot ensembles: weights collected at the end of every SGDR cycle (fused and Keras callback)."""
