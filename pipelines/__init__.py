"""The pipeline: defined once (dag.py), run by one executor, on one machine (local.py) or on
ClearML (clearml/), configured by config/, driven by the thin entry points of cli/."""
