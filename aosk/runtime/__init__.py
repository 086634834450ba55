"""The agent runtime: what runs agents on top of the kernel (models, tools)."""
