"""The agent runtime: what runs agents on top of the kernel (the model provider, the stand-in model
server, tools)."""
