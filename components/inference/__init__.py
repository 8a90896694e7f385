"""Generating the answers of an inference step, whichever backend does it.

config.py  InferenceConfig: every ``inference.*`` setting, its default and its check
plan.py    what is decided before a model loads: files, device, dtype, backend, prompts
engine.py  the backend loaded (kept across a sweep) at its batch size; out of memory
run.py     one attempt: resume from the checkpoint, generate the rest, save each batch
report.py  what the step hands on (GenerationReport); shards merged into one
"""
