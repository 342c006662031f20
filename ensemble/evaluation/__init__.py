"""Scoring: the one registry of combiners and metrics, ensemble-vs-single comparisons, plots, selection."""
