"""The agent runtime: the processes that call models and tools for the agents the journal folds."""
