"""The `lora-rlhf` command line."""
