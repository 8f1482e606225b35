"""Training: corpus building blocks (corpus.py), token shards (data.py), run configs (config.py),
the training loop (train.py), shared token budgets (budget.py), evaluation (evaluate.py), plots (report.py)."""
