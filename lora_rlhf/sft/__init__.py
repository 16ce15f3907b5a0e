"""The SFT stage (InstructGPT §3.5): the supervised fine-tuning loss on demonstrations and its trainer."""
