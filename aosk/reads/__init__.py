"""The read side: every query of the projections, shared by the API, the SDK and the CLI."""
