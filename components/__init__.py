"""Step logic of the QA evaluation: plain typed functions and the settings class of each part;
no ClearML, and heavy third-party imports (torch, transformers, vLLM) only inside functions."""
