"""Retrieval-augmented generation over a Milvus collection, framework-free.

What the service calls (each module imports its heavy libraries lazily, so importing this package is cheap):

- :class:`service.rag.pipeline.RagPipeline` — ``from_settings()``, ``warm_up()``, ``query()``, ``ingest()``,
  ``delete()``, ``stats()``, ``close()``; plus ``validate_question()`` / ``validate_top_k()``.
- :mod:`vigil.contracts` — what crosses the HTTP boundary (``Document``, ``IngestRequest``, ``IngestReport``,
  ``RagQueryResponse``); :mod:`service.rag.schemas` — what stays inside (``StoreStats``, ``DeleteReport``).
- :mod:`service.rag.errors` — ``RagError`` subclasses, one per reason; ``service.errors.REFUSALS`` maps each to
  the HTTP and gRPC status the API answers.
- :func:`evaluations.rag_metrics.retrieval_metrics` — recall@k and MRR, for the evaluation CLI.
"""
