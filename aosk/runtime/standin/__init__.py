"""The stand-in model server: a small deterministic server speaking the OpenAI HTTP protocol.

It is not a language model. Its replies are scripted (``rules``): a pure function of the
request body, so a re-issued call gets the identical reply, byte for byte; faults and
latency come only from request headers or markers in the prompt, never at random
(docs/runtime.md, "The stand-in model server"). ``aosk dev up`` runs it beside Kafka and
PostgreSQL; ``aosk dev standin`` runs it alone. Pointing ``llm.base_url`` at a real server
changes nothing else.

``rules`` imports only the standard library; ``server`` is the ASGI app around it.
"""
