"""The training loop, its run record, checkpoints, shards, progress and a sweep's per-member settings."""
