"""A real `vigil serve` (BentoML) against a real MLflow server: REST, Open Inference v2 on REST and gRPC, limits,
alias following under load, and serving from the local cache when MLflow is away."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mlflow import MlflowClient
from tritonclient.utils import InferenceServerException

from service.errors import OipErrorResponse
from service.oip import grpc_service_pb2 as pb
from service.oip import grpc_service_pb2_grpc as pb_grpc
from telemetry.records import create_engine, read_frame
from tests.conftest import free_port, wait_until
from tests.integration.conftest import INGEST_TOKEN, MODEL, Server, VigilEnv, start_server
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.serving import metric

POSITIVE = "I love this phone, it works great and the battery lasts forever."
NEGATIVE = "Terrible quality, it broke after one day. Waste of money."


def predict(server: Server, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{server.http}/predict", json=body, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_rest_predict_single_and_batch(server: Server) -> None:
    one = predict(server, {"text": POSITIVE})
    assert one.status_code == 200, one.text
    assert one.json()["predictions"][0]["label"] == "positive"
    assert one.json()["model"] == {"name": MODEL, "version": "1"}
    assert one.json()["request_id"] == one.headers["x-request-id"] and len(one.headers["x-request-id"]) == 32

    many = predict(server, {"texts": [POSITIVE, NEGATIVE, POSITIVE]})
    assert [p["label"] for p in many.json()["predictions"]] == ["positive", "negative", "positive"]
    assert all(0.5 <= p["score"] <= 1.0 for p in many.json()["predictions"])


def test_openapi_has_examples(server: Server) -> None:
    spec = httpx.get(f"{server.http}/api/openapi.json", timeout=10).json()
    assert "/predict" in spec["paths"] and "/v2/models/{name}/infer" in spec["paths"]

    def examples(path: str) -> dict[str, object]:
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        return {name: example["value"] for name, example in body["examples"].items()}

    assert examples("/predict") == {"one": {"text": "Great phone, the battery lasts all day."},
                                    "many": {"texts": ["Loved it.", "Broke after a week."]}}
    assert examples("/rag/query") == {
        "question": {"question": "Which NFL team represented the AFC at Super Bowl 50?", "top_k": 5}}
    # What the page offers to try works as it is.
    for path in ("/predict", "/rag/query"):
        for body in examples(path).values():
            tried = httpx.post(f"{server.http}{path}", json=body, timeout=60)
            assert tried.status_code == 200, (path, tried.text)
    rag = spec["paths"]["/rag/query"]["post"]
    assert "Super Bowl 50" in json.dumps(rag["requestBody"])
    assert rag["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/RagQueryResponse")
    assert "ErrorResponse" in json.dumps(rag["responses"])


def test_open_inference_rest(server: Server) -> None:
    assert httpx.get(f"{server.http}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.http}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server.http}/v2").json()["name"] == "vigil"
    meta = httpx.get(f"{server.http}/v2/models/{MODEL}").json()
    assert meta["versions"] == ["1"] and meta["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}
    assert httpx.get(f"{server.http}/v2/models/{MODEL}/ready").status_code == 200

    for shape, data in (([2], [POSITIVE, NEGATIVE]), ([2, 1], [[POSITIVE], [NEGATIVE]])):
        body = {"id": "r1", "inputs": [{"name": "text", "shape": shape, "datatype": "BYTES", "data": data}]}
        response = httpx.post(f"{server.http}/v2/models/{MODEL}/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        assert outputs["label"]["data"] == ["positive", "negative"]
        assert outputs["score"]["datatype"] == "FP32" and outputs["score"]["shape"] == [2]
        assert response.json()["model_version"] == "1" and response.json()["id"] == "r1"


def test_triton_http_client_at_its_defaults(server: Server) -> None:
    client = triton_http.InferenceServerClient(server.http.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready(MODEL)
    tensor = triton_http.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(np.array([POSITIVE.encode(), NEGATIVE.encode(), "Café was lovely!".encode()],
                                        dtype=object))  # binary tensors, the client's default
    result = client.infer(MODEL, [tensor])  # no outputs named: all of them, in binary
    assert [v.decode() for v in result.as_numpy("label")] == ["positive", "negative", "positive"]
    assert result.as_numpy("score").dtype == np.float32 and result.as_numpy("score").shape == (3,)
    assert result.get_response()["model_version"] == "1" and len(result.get_response()["id"]) == 32

    json_tensor = triton_http.InferInput("text", [2], "BYTES")
    json_tensor.set_data_from_numpy(np.array([POSITIVE.encode(), NEGATIVE.encode()], dtype=object),
                                    binary_data=False)
    result = client.infer(MODEL, [json_tensor], outputs=[triton_http.InferRequestedOutput("label", binary_data=False)])
    assert result.as_numpy("label").tolist() == ["positive", "negative"]

    wrong = triton_http.InferInput("text", [1], "FP32")
    wrong.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException) as refused:  # the protocol's error body, read by the client
        client.infer(MODEL, [wrong])
    assert refused.value.status() == "400" and "expected BYTES" in str(refused.value.message())


def test_grpc_with_triton_client(server: Server) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_model_metadata(MODEL).versions == ["1"]
    tensor = triton_grpc.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(np.array([POSITIVE.encode(), NEGATIVE.encode(), "Café was lovely!".encode()],
                                        dtype=object))
    result = client.infer(MODEL, [tensor])
    assert [v.decode() for v in result.as_numpy("label")] == ["positive", "negative", "positive"]
    assert result.as_numpy("score").dtype == np.float32
    assert result.get_response().model_version == "1"


def test_grpc_health_and_reflection(server: Server) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for answer in answers for s in answer.list_services_response.service}
        assert "inference.GRPCInferenceService" in names


BAD_REST = [
    ({"text": ""}, 400, "empty_text"),
    ({"text": "   \n "}, 400, "empty_text"),
    ({"texts": []}, 400, "empty_request"),
    ({"texts": ["ok"] * 257}, 413, "too_many_texts"),
    ({"text": "a" * 10_001}, 413, "text_too_long"),
    ({"text": 42}, 422, "invalid_request"),
    ({"texts": "not a list"}, 422, "invalid_request"),
    ({"text": "a", "texts": ["b"]}, 422, "invalid_request"),
    ({"txt": "typo"}, 422, "invalid_request"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_REST)
def test_rest_refusals_are_clear(server: Server, body: object, status: int, code: str) -> None:
    response = predict(server, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_malformed_bodies(server: Server) -> None:
    cases = [
        (b'{"text": "caf\xe9"}', 400, "invalid_encoding"),
        (b'{"text": ', 400, "invalid_json"),
        (b"", 400, "empty_request"),
        (b'{"text": "' + b"a" * (5 * 1024 * 1024) + b'"}', 413, "body_too_large"),
    ]
    for raw, status, code in cases:
        response = httpx.post(f"{server.http}/predict", content=raw, timeout=30,
                              headers={"content-type": "application/json"})
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), raw[:40]


def oip_refusal(response: httpx.Response) -> tuple[int, str]:
    """Status and message of an Open Inference refusal, whose body is exactly the protocol's `{"error": "..."}`."""
    assert set(response.json()) == {"error"}, response.text
    return response.status_code, OipErrorResponse.model_validate_json(response.content).error


def test_open_inference_refusals(server: Server) -> None:
    url = f"{server.http}/v2/models/{MODEL}/infer"
    cases = [
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 400, "expected BYTES"),
        ({"inputs": [{"name": "text", "shape": [2, 2], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]}, 400,
         "expected [N] or [N, 1]"),
        ({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}, 400, "holds 1 element"),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, 400, "unknown input"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [7]}]}, 422, "expected a string"),
        ({"inputs": []}, 400, "exactly one input tensor"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "x"}]},
         400, "unknown output"),
    ]
    for body, status, message in cases:
        refused_status, refused_message = oip_refusal(httpx.post(url, json=body, timeout=30))
        assert refused_status == status and message in refused_message, (body, refused_message)
    unknown = oip_refusal(httpx.post(f"{server.http}/v2/models/nope/infer", json=cases[0][0], timeout=30))
    assert unknown[0] == 404 and "unknown model 'nope'" in unknown[1]
    metadata = oip_refusal(httpx.get(f"{server.http}/v2/models/nope"))
    assert metadata[0] == 404 and "unknown model 'nope'" in metadata[1]


def test_grpc_refusals(server: Server) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def infer(model: str, datatype: str, shape: list[int], values: list[bytes]) -> grpc.StatusCode:
            request = pb.ModelInferRequest(model_name=model)
            tensor = request.inputs.add(name="text", datatype=datatype, shape=shape)
            tensor.contents.bytes_contents.extend(values)
            try:
                stub.ModelInfer(request, timeout=30)
            except grpc.RpcError as error:
                assert error.details()
                return error.code()
            return grpc.StatusCode.OK

        assert infer("nope", "BYTES", [1], [b"ok"]) == grpc.StatusCode.NOT_FOUND
        assert infer(MODEL, "FP32", [1], [b"ok"]) == grpc.StatusCode.INVALID_ARGUMENT
        assert infer(MODEL, "BYTES", [2], [b"ok"]) == grpc.StatusCode.INVALID_ARGUMENT
        assert infer(MODEL, "BYTES", [1], [b"caf\xe9"]) == grpc.StatusCode.INVALID_ARGUMENT
        assert infer(MODEL, "BYTES", [1], [b""]) == grpc.StatusCode.INVALID_ARGUMENT
        assert infer(MODEL, "BYTES", [1], [b"fine"]) == grpc.StatusCode.OK


def test_still_serving_after_every_refusal(server: Server) -> None:
    assert predict(server, {"text": POSITIVE}).status_code == 200
    assert server.process.poll() is None


def test_alias_move_under_load_switches_without_errors(
    server: Server, vigil_env: VigilEnv, registry_client: MlflowClient
) -> None:
    registry_client.copy_model_version("models:/sentiment/2", MODEL)
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{server.http}/predict", json={"text": POSITIVE})
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                seen.append(response.json()["model"]["version"])

    streamer = threading.Thread(target=stream)
    streamer.start()
    try:
        wait_until(lambda: len(seen) > 5, timeout=30, what="requests flowing")
        # Forced: this copy of the sentiment model has no evaluation dataset for the promotion gate to score.
        vigil_env.run("models", "promote", MODEL, "--version", "2", "--force", "--reason", "swap under load")
        wait_until(lambda: seen and seen[-1] == "2", timeout=60, what="the service to answer with v2")
        count = len(seen)
        wait_until(lambda: len(seen) > count + 5, timeout=30, what="more requests on v2")
    finally:
        stop.set()
        streamer.join()
    assert failures == []
    switch = seen.index("2")
    assert set(seen[:switch]) == {"1"} and set(seen[switch:]) == {"2"}
    status = httpx.get(f"{server.http}/status").json()["models"][MODEL]
    assert status["version"] == "2" and status["swaps"] >= 1
    assert httpx.get(f"{server.http}/v2/models/{MODEL}").json()["versions"] == ["2"]


def traceparent(index: int) -> tuple[str, str]:
    trace_id = f"{0xABC000 + index:032x}"
    return trace_id, f"00-{trace_id}-{index + 1:016x}-01"


def find_trace(client: MlflowClient, trace_id: str, span: str = "sentiment.predict") -> object:
    experiment = client.get_experiment_by_name("vigil-traces")
    assert experiment is not None

    def found() -> object:
        traces = client.search_traces(locations=[experiment.experiment_id],
                                      filter_string=f"trace.request_id = 'tr-{trace_id}'")
        return traces[0] if traces and any(s.name == span for s in traces[0].data.spans) else None

    return wait_until(found, timeout=30, interval=0.5, what=f"trace {trace_id} in MLflow")


def test_rest_request_is_traced_into_mlflow(server: Server, registry_client: MlflowClient) -> None:
    trace_id, header = traceparent(1)
    response = httpx.post(f"{server.http}/predict", json={"text": POSITIVE}, headers={"traceparent": header})
    assert response.status_code == 200
    assert response.json()["trace_id"] == trace_id
    assert response.headers["traceparent"].split("-")[1] == trace_id
    trace = find_trace(registry_client, trace_id)
    spans = {span.span_id: span for span in trace.data.spans}  # type: ignore[attr-defined]
    predict_span = next(s for s in spans.values() if s.name == "sentiment.predict")
    assert predict_span.attributes["vigil.model.name"] == MODEL
    assert predict_span.attributes["vigil.model.version"] == response.json()["model"]["version"]
    assert predict_span.attributes["vigil.labels.positive"] == 1
    ancestors = []
    parent = spans.get(predict_span.parent_id)
    while parent is not None:
        ancestors.append(parent.name)
        parent = spans.get(parent.parent_id)
    assert any(name.startswith("POST /predict") for name in ancestors), ancestors


def test_grpc_request_is_traced_into_mlflow(server: Server, registry_client: MlflowClient) -> None:
    trace_id, header = traceparent(2)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"Superb!")
        reply, call = stub.ModelInfer.with_call(request, metadata=(("traceparent", header),), timeout=30)
    trailing = dict(call.trailing_metadata())
    assert trailing["traceparent"].split("-")[1] == trace_id
    trace = find_trace(registry_client, trace_id)
    names = {span.name for span in trace.data.spans}  # type: ignore[attr-defined]
    assert {"inference.GRPCInferenceService/ModelInfer", "sentiment.predict"} <= names
    predict_span = next(s for s in trace.data.spans if s.name == "sentiment.predict")  # type: ignore[attr-defined]
    assert predict_span.attributes["vigil.model.name"] == MODEL
    assert reply.model_version and predict_span.attributes["vigil.model.version"] == reply.model_version


def test_langsmith_receives_the_same_spans(server: Server, langsmith: OtlpReceiver) -> None:
    trace_id, header = traceparent(3)
    assert httpx.post(f"{server.http}/predict", json={"text": NEGATIVE}, headers={"traceparent": header}
                      ).status_code == 200

    def arrived() -> list[object]:
        return [(e, s) for e, s in langsmith.spans() if s.trace_id == trace_id and s.name == "sentiment.predict"]

    export, span = wait_until(arrived, timeout=30, what="spans at the LangSmith stand-in")[0]  # type: ignore[misc]
    assert export.headers["x-api-key"] == "ls-test-key"
    assert export.headers["langsmith-project"] == "vigil-tests"
    assert span.attributes["vigil.model.name"] == MODEL


def test_metrics_move_with_traffic(server: Server) -> None:
    series = {
        "positive": ("vigil_predictions_total", {"model": MODEL, "label": "positive"}),
        "negative": ("vigil_predictions_total", {"model": MODEL, "label": "negative"}),
        "texts batched": ("vigil_batch_size_sum", {}),
        "refused empty": ("vigil_requests_rejected_total", {"reason": "empty_text"}),
        "log rows": ("vigil_inference_log_writes_total", {}),
    }

    def scrape() -> dict[str, float]:
        return {what: metric(server, sample, **labels) for what, (sample, labels) in series.items()}

    before = scrape()
    assert predict(server, {"texts": [POSITIVE, NEGATIVE]}).status_code == 200
    assert predict(server, {"text": "  "}).status_code == 400
    # Log rows are written by a background thread every VIGIL_INFERENCE_LOG_FLUSH_SECONDS: the count reaches ours
    # after a while, and rows of an earlier test's requests may still land in between, hence at least two.
    def written() -> dict[str, float] | None:
        now = scrape()
        return now if now["log rows"] >= before["log rows"] + 2 else None

    after = wait_until(written, timeout=30, what="the two predictions' log rows to be written")
    moved = {what: after[what] - before[what] for what in series if what != "log rows"}
    assert moved == {"positive": 1, "negative": 1, "texts batched": 2, "refused empty": 1}, moved
    assert metric(server, "vigil_model_loads_total", model=MODEL) >= 1


def test_rag_query_cites_the_gold_passage_with_usage(server: Server, registry_client: MlflowClient) -> None:
    trace_id, header = traceparent(4)
    response = httpx.post(f"{server.http}/rag/query", timeout=60, headers={"traceparent": header},
                          json={"question": "Which NFL team represented the AFC at Super Bowl 50?", "top_k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "Super_Bowl_50_p000" in [c["document_id"] for c in body["citations"]]
    # Extractive answers are sentences of the cited chunks, each followed by its [n] marker.
    first_sentence = body["answer"].split(" [")[0]
    assert any(first_sentence in c["text"] for c in body["citations"]), body["answer"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert body["generator"]["name"] == "extractive" and body["trace_id"] == trace_id

    trace = find_trace(registry_client, trace_id, span="rag.generate")
    spans = {span.name: span for span in trace.data.spans}  # type: ignore[attr-defined]
    assert {"rag.query", "rag.embed", "rag.retrieve", "rag.generate"} <= set(spans)
    assert spans["rag.generate"].attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert spans["rag.generate"].attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]


def test_rag_over_open_inference_rest_and_grpc(server: Server) -> None:
    question = "Where is the Vistula river?"
    body = {"inputs": [{"name": "question", "shape": [1], "datatype": "BYTES", "data": [question]}]}
    response = httpx.post(f"{server.http}/v2/models/rag/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    citations = json.loads(outputs["citations"]["data"][0])
    assert any(c["title"] == "Warsaw" for c in citations)
    assert outputs["usage"]["datatype"] == "INT64" and len(outputs["usage"]["data"]) == 3

    client = triton_grpc.InferenceServerClient(server.grpc_target)
    tensor = triton_grpc.InferInput("question", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([question.encode()], dtype=object))
    result = client.infer("rag", [tensor])
    assert result.as_numpy("answer")[0].decode() == outputs["answer"]["data"][0]
    assert result.as_numpy("usage").tolist() == outputs["usage"]["data"]


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"question": ""}, 400, "InvalidQuestion"), ({"question": "   "}, 400, "InvalidQuestion"),
    ({"question": "x" * 4001}, 413, "QuestionTooLong"), ({"question": "ok?", "top_k": 0}, 422, "InvalidTopK"),
    ({"question": "ok?", "top_k": 51}, 422, "InvalidTopK"), ({"question": 5}, 422, "invalid_request"),
])
def test_rag_refusals(server: Server, body: object, status: int, code: str) -> None:
    response = httpx.post(f"{server.http}/rag/query", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]


def test_rag_refusals_over_open_inference_grpc(server: Server) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    tensor = triton_grpc.InferInput("question", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"   "], dtype=object))
    with pytest.raises(triton_grpc.InferenceServerException) as caught:
        client.infer("rag", [tensor])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "question is empty" in caught.value.message()


def test_rag_ingest_through_the_service_needs_the_token(server: Server) -> None:
    document = {"id": "vigil-note", "title": "Vigil", "text": "Vigil keeps its vectors in Milvus Lite by default."}
    url = f"{server.http}/rag/documents"
    for headers in ({}, {"Authorization": "Bearer nope"}):
        refused = httpx.post(url, json={"documents": [document]}, headers=headers)
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "unauthorized")
    # The API checks documents against the contract before the RAG service sees them.
    invalid = httpx.post(url, json={"documents": [{"id": "", "text": ""}]}, timeout=60,
                         headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert (invalid.status_code, invalid.json()["error"]["code"]) == (422, "invalid_request"), invalid.text
    assert "documents.0.id" in invalid.json()["error"]["message"]
    report = httpx.post(url, json={"documents": [document]}, timeout=60,
                        headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert report.status_code == 200, report.text
    assert report.json()["documents"] == 1 and report.json()["chunks"] >= 1
    answer = httpx.post(f"{server.http}/rag/query", timeout=60,
                        json={"question": "Where does Vigil keep its vectors?", "top_k": 3}).json()
    assert answer["citations"][0]["document_id"] == "vigil-note"


def test_every_request_is_logged_even_right_before_shutdown(server: Server) -> None:
    sent: dict[str, str] = {}
    request_ids: dict[str, str] = {}  # trace id -> the request id the response carried
    with grpc.insecure_channel(server.grpc_target) as channel, httpx.Client(timeout=30) as client:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for index in range(10, 30):
            trace_id, header = traceparent(index)
            # Every third caller names its own request id; the others get one from Vigil.
            own_id = [("x-request-id", f"caller-{index}")] if index % 3 == 0 else []
            if index % 2:
                request = pb.ModelInferRequest(model_name=MODEL)
                request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
                    f"request {index} was great".encode())
                reply, call = stub.ModelInfer.with_call(request, metadata=(("traceparent", header), *own_id),
                                                        timeout=30)
                sent[trace_id] = reply.model_version
                request_ids[trace_id] = dict(call.trailing_metadata())["x-request-id"]
                assert reply.id == request_ids[trace_id]  # the protocol's id, as the caller sent none
            else:
                response = client.post(f"{server.http}/predict", json={"text": f"request {index} was bad"},
                                       headers={"traceparent": header, **dict(own_id)})
                sent[trace_id] = response.json()["model"]["version"]
                request_ids[trace_id] = response.json()["request_id"]
                assert response.headers["x-request-id"] == request_ids[trace_id]
            if own_id:
                assert request_ids[trace_id] == f"caller-{index}"
    server.terminate()  # graceful, as a supervisor stops it: right after the last request
    rows = read_frame(create_engine(f"sqlite:///{Path(server.env['VIGIL_HOME']) / 'inference_log.db'}"),
                      kind="sentiment")
    logged = rows[rows["trace_id"].isin(list(sent))]
    assert len(logged) == len(sent) == 20
    assert dict(zip(logged["trace_id"], logged["model_version"], strict=True)) == sent
    assert dict(zip(logged["trace_id"], logged["request_id"], strict=True)) == request_ids
    assert len(set(request_ids.values())) == 20
    assert set(logged["protocol"]) == {"rest", "grpc"}
    assert logged["input_text"].str.startswith("request ").all()


def test_restart_without_mlflow_serves_the_cached_version(
    server: Server, registry_client: MlflowClient, tmp_path: Path
) -> None:
    served = registry_client.get_model_version_by_alias(MODEL, "champion").version
    server.stop()
    closed = f"http://127.0.0.1:{free_port()}"
    # MLflow (registry and trace store) and LangSmith all out of reach: predictions still flow.
    env = {**server.env, "MLFLOW_TRACKING_URI": closed, "LANGSMITH_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    degraded = start_server(env, tmp_path / "degraded.log")
    try:
        response = predict(degraded, {"text": NEGATIVE})
        assert response.status_code == 200
        assert response.json()["model"]["version"] == served
        status = httpx.get(f"{degraded.http}/status").json()["models"][MODEL]
        assert status["degraded"] is True and status["source"] == "cache"
        assert "MLflow unreachable" in status["reason"]
    finally:
        degraded.stop()


def test_no_cache_and_no_mlflow_is_not_ready(vigil_env: VigilEnv, tmp_path: Path) -> None:
    env = {**vigil_env.env, "VIGIL_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
           "VIGIL_SENTIMENT_MODEL_NAME": MODEL, "VIGIL_TRACING": "off"}
    server = start_server(env, tmp_path / "not-ready.log", expect_ready=False)
    try:
        assert httpx.get(f"{server.http}/readyz").status_code == 503
        status = httpx.get(f"{server.http}/status").json()["models"][MODEL]
        assert status["ready"] is False and "no cached model" in status["reason"]
        response = predict(server, {"text": POSITIVE})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        assert response.headers["retry-after"]
    finally:
        server.stop()
