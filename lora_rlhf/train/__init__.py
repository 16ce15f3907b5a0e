"""The training loop, optimisation config and checkpoints shared by the SFT and reward-model stages."""
