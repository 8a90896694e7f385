"""Step logic of the QA evaluation: plain typed functions, no ClearML, heavy imports inside."""
