"""Retrieval-augmented generation over a Milvus collection, framework-free.

What the service calls (each module imports its heavy libraries lazily, so importing this package is cheap):

- :class:`service.rag.pipeline.RagPipeline` — ``from_settings()``, ``warm_up()``, ``query()``, ``ingest()``,
  ``delete()``, ``stats()``, ``close()``; plus ``validate_question()`` / ``validate_top_k()``.
- :mod:`service.rag.schemas` — the typed payloads (``Document``, ``IngestRequest``, ``IngestReport``,
  ``RagAnswer``, ``StoreStats``, ``DeleteReport``).
- :mod:`service.rag.errors` — ``RagError`` subclasses, each with the ``http_status`` the service answers.
- :func:`evaluations.rag_metrics.retrieval_metrics` — recall@k and MRR, for the evaluation CLI.
"""
