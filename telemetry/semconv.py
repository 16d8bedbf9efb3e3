"""Span names and attribute keys, in one place: every span Vigil opens, filters or reads is named here.

The GenAI names follow the OpenTelemetry GenAI semantic conventions, which are still "development" status:
when they change, they change here only.
"""

from __future__ import annotations

# --- span names ---------------------------------------------------------------------------------------------
SPAN_SENTIMENT_PREDICT = "sentiment.predict"
SPAN_MODEL_PREDICT = "model.predict"  # a prediction of any pyfunc model of VIGIL_MODELS
SPAN_RAG_QUERY = "rag.query"
SPAN_RAG_EMBED = "rag.embed"
SPAN_RAG_RETRIEVE = "rag.retrieve"
SPAN_RAG_GENERATE = "rag.generate"
SPAN_RAG_REQUEST = "rag.request"  # the API's span around a call to the RAG service
# The API worker's call to a model service, one span in each request's trace that the call served (the coalescer
# shares a call between requests); each links to the others' spans of the same call.
SPAN_MODEL_CALL = "model.call"
# gRPC requests carry their traceparent in metadata, so Vigil opens their server span itself (REST's is BentoML's).
SPAN_GRPC_MODEL_INFER = "inference.GRPCInferenceService/ModelInfer"
# The ASGI middleware BentoML installs names a span per `receive` and `send` message "<server span> http receive"
# (or "... http send"); they time socket reads and writes, not Vigil, and are never exported.
ASGI_MESSAGE_SPAN_SUFFIXES = (" http receive", " http send")

# --- Vigil's own attributes ---------------------------------------------------------------------------------
MODEL_NAME = "vigil.model.name"
MODEL_VERSION = "vigil.model.version"
MODEL_ALIAS = "vigil.model.alias"
MODEL_PRECISION = "vigil.model.precision"  # of the graph that scored: float | int8
BATCH_SIZE = "vigil.batch.size"
LABEL_COUNTS_PREFIX = "vigil.labels."  # + label -> count in this request
REQUEST_ID = "vigil.request.id"
PROTOCOL = "vigil.protocol"  # rest | grpc
ENDPOINT = "vigil.endpoint"
INPUT_TEXT = "vigil.input.text"  # raw, or its telemetry.redaction.text_digest with VIGIL_TRACE_RAW_TEXT=false
INPUT_COUNT = "vigil.input.count"
COALESCED_REQUESTS = "vigil.coalesced.requests"  # requests that shared one model call
COALESCED_ITEMS = "vigil.coalesced.items"  # texts or rows that call carried

# --- tail sampling (telemetry/sampling.py) --------------------------------------------------------------------
# On a process's local root span: what was known at the trace's start (sample | caller | all | budget |
# caller_budget | unsampled); the final decision is counted in vigil_traces_total.
SAMPLING_HEAD = "vigil.sampling.head"
# A Vigil service this span's request called, whose spans of the trace wait for this process's decision.
DOWNSTREAM_SERVICE = "vigil.downstream.service"

# --- retrieval ----------------------------------------------------------------------------------------------
RETRIEVAL_STORE = "vigil.retrieval.store"  # e.g. milvus-lite, milvus
RETRIEVAL_COLLECTION = "vigil.retrieval.collection"
RETRIEVAL_TOP_K = "vigil.retrieval.top_k"
RETRIEVAL_HIT_IDS = "vigil.retrieval.hit_ids"
RETRIEVAL_HIT_SCORES = "vigil.retrieval.hit_scores"
EMBEDDING_MODEL = "vigil.embedding.model"
EMBEDDING_MODEL_VERSION = "vigil.embedding.model_version"

# --- general semantic conventions (set by Vigil or by the HTTP middleware; `vigil traces tail` shows them) ------
RPC_SYSTEM = "rpc.system"  # "grpc"
RPC_METHOD = "rpc.method"
HTTP_ROUTE = "http.route"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
HTTP_STATUS_CODE = "http.status_code"  # the older name, which the ASGI middleware still writes by default

# --- GenAI semantic conventions -----------------------------------------------------------------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"  # "chat", "text_completion", "embeddings"
GEN_AI_SYSTEM = "gen_ai.system"  # provider, e.g. "openai", "vigil.extractive"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"

# --- resource -----------------------------------------------------------------------------------------------
# `deployment.environment` is what most backends still index; `.name` is its current semantic-convention name.
DEPLOYMENT_ENVIRONMENT = "deployment.environment"
DEPLOYMENT_ENVIRONMENT_NAME = "deployment.environment.name"
