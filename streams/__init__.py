"""AOSK kernel workers; installed as aosk.streams.

``aosk.streams.worker.Worker`` is the loop ``aosk worker`` runs (its only Kafka client
code is in ``kafka``); the batch logic (``processor``, ``offsets``, ``snapshots``,
``timeouts``, ``pausing``, ``forks``, ``records``) imports no Kafka client.
docs/workers.md.
"""
