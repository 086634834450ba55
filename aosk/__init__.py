"""AOSK, the Agent OS Kernel: an event-sourced kernel for AI agents on Kafka and PostgreSQL."""

__version__ = "0.1.0"
