"""Direct Preference Optimization (Rafailov et al. 2023) on the role stack: losses over K-way rankings, the stage."""
