"""Data the project generates for itself (tests, benchmarks, the demo and its model)."""
