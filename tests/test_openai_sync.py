"""The synchronous OpenAI-compatible endpoints as an OpenAI user meets them: the
official ``openai`` package against a real ``docqueue serve``, a real worker and real
Redis and SQL (SQLite and PostgreSQL), compared with docqueue's native API."""

from __future__ import annotations

import base64
import os
import signal
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import test_api
from openai.types.chat import ChatCompletionMessageParam
from test_api import GONE, TOKEN, Server, error_of, register_gone_model

from docqueue.worker.models import packaged_embedding_model

GREEDY = {"max_new_tokens": 8}
serve = test_api.serve  # the fixture: a real `docqueue serve`


@pytest.fixture
def sdk() -> Iterator[Callable[..., openai.OpenAI]]:
    """``sdk(server, token)``: the official client as a user points it at docqueue
    (no retries: a test wants to see each answer), closed at the end."""
    made: list[openai.OpenAI] = []

    def make(server: Server, token: str = TOKEN) -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=60
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def native(http: httpx.Client, task: str, model: str, text: Any, **params: Any) -> dict[str, Any]:
    """The result row of one document through the native API."""
    body = {"task": task, "model": model, "text": text, "params": params}
    answer = http.post("/api/documents", params={"wait": 60}, json=body)
    assert answer.status_code == 200, answer.text
    row: dict[str, Any] = answer.json()["result"]
    return row


def test_embeddings_base64_and_float_equal_the_native_result(serve, start_worker, sdk):
    worker = start_worker({"mini": packaged_embedding_model()})
    server = serve(DOCQUEUE_API_SYNC_TIMEOUT="2")
    client, http = sdk(server), server.http()
    texts = ["The queue is empty.", "Workers batch documents by length."]
    expected = [native(http, "embed", "mini", t)["embedding"] for t in texts]

    # the SDK's default: base64 on the wire, decoded by the SDK
    default = client.embeddings.create(model="mini", input=texts[0])
    assert default.object == "list" and default.model == "mini"
    assert [d.index for d in default.data] == [0] and default.data[0].object == "embedding"
    assert default.data[0].embedding == pytest.approx(expected[0], abs=0)
    raw = http.post("/v1/embeddings", json={"model": "mini", "input": texts[0]}).json()
    assert raw["data"][0]["embedding"] == expected[0]  # the HTTP default: float
    as_base64 = http.post(
        "/v1/embeddings", json={"model": "mini", "input": texts, "encoding_format": "base64"}
    ).json()
    decoded = array("f", base64.b64decode(as_base64["data"][1]["embedding"]))
    assert list(decoded) == pytest.approx(expected[1], abs=1e-5)

    floats = client.embeddings.create(model="mini", input=texts, encoding_format="float")
    # batched with each other on the worker: padding moves the last bits only
    for got, want in zip(floats.data, expected, strict=True):
        assert got.embedding == pytest.approx(want, abs=1e-5)
    mini = tokenizer(str(packaged_embedding_model()))
    read = sum(len(mini(t)["input_ids"]) for t in texts)
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (read, read)

    [model] = client.models.list().data
    assert (model.id, model.object, model.owned_by) == ("mini", "model", "docqueue")
    assert client.models.retrieve("mini").id == "mini"
    with pytest.raises(openai.NotFoundError, match="no live worker serves it"):
        client.models.retrieve("nope")
    with pytest.raises(openai.UnprocessableEntityError, match="cannot generate"):
        client.completions.create(model="mini", prompt="hello")
    with pytest.raises(openai.UnprocessableEntityError, match="dimensions: model mini gives 384"):
        client.embeddings.create(model="mini", input="x", dimensions=8)

    # a worker that does not answer in time: 504, not retried, the job named and kept
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        late = http.post("/v1/embeddings", json={"model": "mini", "input": "late one"})
        error = error_of(late, 504)
        assert late.headers["x-should-retry"] == "false"
        assert "the documents stay queued" in error["message"]
        job_id = error["message"].split("(jobs: ")[1].rstrip(")")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    later = http.get(f"/api/documents/{job_id}", params={"wait": 60}).json()
    assert later["status"] == "done" and len(later["result"]["embedding"]) == 384


def test_completions_and_chat_with_greedy_decoding_equal_the_native_result(
    serve, start_worker, tiny_models, sdk
):
    start_worker({"gpt2": tiny_models["gpt2"], "llama": tiny_models["llama"]})
    server = serve()
    client, http = sdk(server), server.http()

    prompts = ["The worker reads", "Results land in"]
    expected = [native(http, "generate", "gpt2", p, **GREEDY)["generated_text"] for p in prompts]
    completion = client.completions.create(model="gpt2", prompt=prompts, max_tokens=8)
    assert completion.object == "text_completion" and completion.model == "gpt2"
    assert [c.text for c in completion.choices] == expected
    # 8 tokens, no end of text: the token limit stopped both, and usage counts them
    assert [(c.index, c.finish_reason) for c in completion.choices] == [
        (0, "length"),
        (1, "length"),
    ]
    read = sum(len(tokenizer(tiny_models["gpt2"])(p)["input_ids"]) for p in prompts)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (read, 16)
    assert completion.usage.total_tokens == read + 16
    echoed = client.completions.create(
        model="gpt2", prompt=prompts[0], max_tokens=8, temperature=0, echo=True
    )
    assert echoed.choices[0].text == prompts[0] + expected[0]

    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Where do results go?"},
    ]
    chat_expected = native(http, "generate", "llama", messages, **GREEDY)["generated_text"]
    chat = client.chat.completions.create(model="llama", messages=messages, max_tokens=8)
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    [choice] = chat.choices
    assert (choice.message.role, choice.message.content) == ("assistant", chat_expected)
    assert choice.finish_reason == "length" and chat.usage is not None
    template = tokenizer(tiny_models["llama"]).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (len(template), 8)
    job_id = chat.id.removeprefix("chatcmpl-")  # the same result, natively
    assert http.get(f"/api/documents/{job_id}").json()["result"]["generated_text"] == chat_expected
    newer = client.chat.completions.create(
        model="llama",
        messages=messages,
        max_completion_tokens=8,
        stop=["\n\n"],
        seed=3,
    )
    assert newer.choices[0].message.content is not None
    stopped = client.completions.create(
        model="gpt2", prompt=prompts[0], max_tokens=8, stop=[expected[0][2:4]]
    )
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage is not None
    assert 0 < stopped.usage.completion_tokens < 8


def test_bad_requests_are_clear_4xx_and_queue_nothing(serve, settings, sdk):
    register_gone_model(settings)
    server = serve()
    client, http = sdk(server), server.http()
    chat: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]

    def refused(status: int, path: str, body: dict[str, Any], needle: str) -> dict[str, Any]:
        error = error_of(http.post(path, json=body), status)
        assert needle in error["message"], error
        return error

    refused(422, "/v1/embeddings", {"model": "nope", "input": "x"}, "unknown model nope")
    refused(422, "/v1/completions", {"model": GONE, "prompt": "x", "stream": True}, "streaming")
    refused(422, "/v1/completions", {"model": GONE, "prompt": "x", "n": 2}, "one choice")
    refused(422, "/v1/completions", {"model": GONE, "prompt": [1, 2]}, "prompt")
    refused(422, "/v1/completions", {"model": GONE, "prompt": "x", "logprobs": 2}, "logprobs")
    refused(
        422, "/v1/completions", {"model": GONE, "prompt": "x", "temperature": 20}, "temperature"
    )
    refused(422, "/v1/completions", {"model": GONE, "prompt": "x", "max_tokens": 10**6}, "max_new")
    refused(
        422, "/v1/completions", {"model": GONE, "prompt": "  "}, "prompt: document is whitespace"
    )
    refused(422, "/v1/chat/completions", {"model": GONE, "messages": []}, "messages")
    refused(422, "/v1/chat/completions", {"model": GONE, "messages": [{"role": "x"}]}, "messages")
    refused(
        422, "/v1/embeddings", {"model": "m", "input": "x", "encoding_format": "hex"}, "encoding"
    )
    # a model whose workers are all gone: refused at once, nothing queued
    gone = refused(503, "/v1/chat/completions", {"model": GONE, "messages": chat}, "nothing was")
    assert f"no live worker serves model {GONE}" in gone["message"]
    assert http.get("/api/jobs", params={"interactive": True}).json()["data"] == []

    with pytest.raises(openai.UnprocessableEntityError, match="streaming is not supported"):
        client.chat.completions.create(model=GONE, messages=chat, stream=True)
    with pytest.raises(openai.AuthenticationError, match="not valid"):
        sdk(server, token="wrong-token-0123456789").models.list()
    missing = httpx.post(f"{server.url}/v1/embeddings", json={"model": GONE, "input": "x"})
    assert "no bearer token" in error_of(missing, 401)["message"]
    assert TOKEN not in server.log()
