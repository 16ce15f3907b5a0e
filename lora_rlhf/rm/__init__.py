"""The reward model stage (InstructGPT §3.5, eq. 1): K-way ranking batches, the ranking loss, centring, the trainer."""
