"""Continuous-batching engine: scheduler (torch-free), runner, engine loop."""
