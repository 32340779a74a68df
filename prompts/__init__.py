"""Prompt data the project ships (template sets). Installed as ``zeroshot_plus.prompt_data``."""
