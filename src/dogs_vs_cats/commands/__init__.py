"""The commands outside the pipeline: `predict`, `serve` and `submit`. Their options live in cli.py,
which no stage runs, so editing a command's interface re-runs nothing."""
