"""JSON answers from the bundled local model (response_format json_object / json_schema): a grammar constrains the
tokens, the daemon validates the answer, and nothing invalid or cut off is returned as a success.

The model's words and values are never asserted (greedy output differs between CPUs): only that answers parse,
validate against the schema, and have the right shape, types and enum members.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import pytest

from tests.conftest import DaemonProc
from tests.test_api import sse_events
from tiqo.core.errors import BadRequest, Unprocessable
from tiqo.daemon.runtime.engines import json_output as jo
from tiqo.policy.cache import cache_key
from tiqo.protocol.openai import ChatCompletionRequest, JsonFormat, json_format

CHAT = "/v1/chat/completions"
LOCAL = "smollm2-135m"


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


NAME = {"type": "string", "maxLength": 40}
PERSON = _object({"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}})
SENTIMENT = _object(
    {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
    }
)
CITY = _object({"city": NAME, "country": NAME, "capital": {"type": "boolean"}})
SHOPPING = _object(
    {
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 4,
            "items": _object({"name": NAME, "qty": {"type": "integer", "minimum": 1, "maximum": 12}}),
        }
    }
)
ORDER = _object(
    {
        "customer": _object({"name": NAME, "vip": {"type": "boolean"}}),
        "status": {"enum": ["new", "paid", "shipped"]},
        "total": {"type": "number"},
    }
)
TAGS = _object({"tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 5}})
POINT = _object(
    {"x": {"type": "integer", "minimum": -10, "maximum": 10}, "y": {"type": "integer", "minimum": -10, "maximum": 10}}
)
SEGMENT = {**_object({"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}}), "$defs": {"point": POINT}}
FILM = _object(
    {
        "title": {"type": "string", "maxLength": 60},
        "year": {"anyOf": [{"type": "integer", "minimum": 1900, "maximum": 2030}, {"type": "null"}]},
        "genre": {"enum": ["drama", "comedy", "action", "other"]},
    }
)
EVENT = _object({"event": NAME, "date": {"type": "string", "format": "date"}})
THREE = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100}, "minItems": 3, "maxItems": 3}
CASES = [
    (PERSON, "Describe a fictional person."),
    (PERSON, "Who wrote Hamlet? Give his name and age at death."),
    (SENTIMENT, "Review: I loved this movie, it was wonderful!"),
    (SENTIMENT, "Review: The food was cold and the waiter was rude."),
    (SENTIMENT, "Review: It was fine, nothing special."),
    (CITY, "Tell me about Paris."),
    (CITY, "Tell me about Lyon."),
    (SHOPPING, "Make a shopping list for a chocolate cake."),
    (SHOPPING, "I need milk and two loaves of bread."),
    (ORDER, "Alice, a VIP customer, paid 42.50 for her order."),
    (ORDER, "Bob placed a new order of 10 dollars."),
    (TAGS, "Tag this article: Python 3.13 released with a faster interpreter."),
    (TAGS, "Tag this: a recipe for vegan lasagna."),
    (SEGMENT, "A line from (0, 0) to (3, 4)."),
    (SEGMENT, "Draw a segment going left."),
    (FILM, "The movie Titanic came out in 1997."),
    (FILM, "Suggest a comedy film."),
    (EVENT, "The moon landing happened on 20 July 1969."),
    (THREE, "Three numbers between 0 and 100."),
    (THREE, "The first three primes."),
]


def schema_format(schema: dict[str, Any], name: str = "answer", strict: bool = True) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


def ask_json(prompt: str, response_format: dict[str, Any], **extra: Any) -> dict[str, Any]:
    body = {"model": LOCAL, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 200}
    return {**body, "response_format": response_format, **extra}


# ------------------------------------------------------------------ pure: the request shape and the schema check


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        (None, None),
        ({"type": "text"}, None),
        ({"type": "json_object"}, JsonFormat()),
        (schema_format(PERSON, "person"), JsonFormat(PERSON, "person", True)),
    ],
)
def test_response_format_shapes(response_format: dict[str, Any] | None, expected: JsonFormat | None) -> None:
    assert json_format(response_format) == expected


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": 3, "schema": {}}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}, "response_format.json_schema.strict"),
    ],
)
def test_malformed_response_formats_name_the_field(response_format: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        json_format(response_format)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        (_object({"x": {"type": "number", "minimum": 0}}), "minimum at /properties/x"),
        (_object({"n": {"type": "integer", "minimum": 0}}), "minimum at /properties/n"),  # one bound only
        (_object({"n": {"type": "integer", "minimum": 0, "maximum": 10_000}}), "maximum at /properties/n"),  # too wide
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems at /"),
        ({"not": {"type": "string"}}, "not at /"),
        ({"type": "string", "format": "email"}, "format 'email' at /"),
        ({"type": "string", "pattern": "[a-z]+"}, "pattern '[a-z]+' at /"),
        ({"type": ["string", "null"], "enum": ["a", None]}, "enum at / (beside a list of types)"),
        ({"$defs": {"a": {"type": "object", "minProperties": 1}}, "$ref": "#/$defs/a"}, "minProperties at /$defs/a"),
        ({"type": "object", "properties": {}, "required": ["id"]}, "required 'id' at /"),
        ({"allOf": [PERSON]}, "allOf at /"),
    ],
)
def test_keywords_the_grammar_cannot_enforce_are_named(schema: dict[str, Any], named: str) -> None:
    assert any(item.startswith(named) for item in jo.unsupported(schema)), jo.unsupported(schema)


@pytest.mark.parametrize("schema", [schema for schema, _ in CASES] + [{}, {"type": "object"}, {"title": "Anything"}])
def test_the_test_schemas_are_fully_enforced(schema: dict[str, Any]) -> None:
    assert jo.unsupported(schema) == []
    assert jo.compiled(JsonFormat(schema)).gbnf.startswith("")  # converts without error


@pytest.mark.parametrize(
    ("bounds", "values"),
    [
        ({"minimum": 1, "maximum": 3}, [1, 2, 3]),
        ({"exclusiveMinimum": 1, "exclusiveMaximum": 4}, [2, 3]),
        ({"minimum": 0.5, "exclusiveMaximum": 3.5}, [1, 2, 3]),
        ({"minimum": -2, "maximum": -1}, [-2, -1]),
    ],
)
def test_bounded_integers_become_enums(bounds: dict[str, float], values: list[int]) -> None:
    assert jo.for_grammar({"type": "integer", **bounds}) == {"type": "integer", "enum": values}


def test_the_grammar_sees_no_annotations_but_keeps_properties_named_like_them() -> None:
    schema = _object({"title": {"type": "string", "title": "The title"}, "description": {}})
    seen = jo.for_grammar({**schema, "title": "Doc", "$schema": "https://json-schema.org/draft/2020-12/schema"})
    assert seen["properties"] == {"title": {"type": "string"}, "description": {"type": list(jo.ANY_TYPES)}}
    assert "title" not in seen and "$schema" not in seen


def test_compiled_schemas_are_cached_by_content() -> None:
    jo.clear_cache()
    first = jo.compiled(JsonFormat(json.loads(json.dumps(PERSON))))
    again = jo.compiled(JsonFormat(dict(reversed(list(PERSON.items())))))  # same schema, keys in another order
    assert again is first


def test_a_schema_that_is_not_json_schema_is_a_400() -> None:
    with pytest.raises(BadRequest) as caught:
        jo.compiled(JsonFormat({"type": "integer", "minimum": "three"}))
    assert caught.value.code == "invalid_schema" and caught.value.param == jo.SCHEMA_PARAM
    assert "minimum" in caught.value.message


@pytest.mark.parametrize(
    ("text", "finish", "code"),
    [
        ('{"name": "Ada", "age": 36}', "stop", None),
        ('{"name": "Ada", "age": 36}', "length", None),  # whole and valid, even at the limit
        ('{"name": "Ada", "ag', "length", "json_truncated"),
        ('{"name": "Ada", "ag', "stop", "json_invalid"),
        ('{"name": "Ada", "age": 300}', "stop", "json_invalid"),
        ('{"name": "Ada"}', "stop", "json_invalid"),
    ],
)
def test_answers_are_checked(text: str, finish: str, code: str | None) -> None:
    made = jo.compiled(JsonFormat(PERSON))
    if code is None:
        jo.check_answer(text, finish, made, 20)
        return
    with pytest.raises(Unprocessable) as caught:
        jo.check_answer(text, finish, made, 20)
    assert caught.value.code == code and caught.value.hint


def test_the_schema_is_part_of_the_cache_key() -> None:
    base = ask_json("Describe a person.", schema_format(PERSON))
    keys = {
        cache_key(body, LOCAL, "user:u:internal")
        for body in (base, {**base, "response_format": schema_format(CITY)}, {**base, "response_format": None})
    }
    assert len(keys) == 3


def test_a_json_request_needs_the_json_capability() -> None:
    body = ChatCompletionRequest.model_validate(ask_json("hi", {"type": "json_object"}))
    assert "json" in body.needs()


# ------------------------------------------------------------------ the daemon with the bundled model


@pytest.mark.parametrize(("schema", "prompt"), CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_answers_validate_against_the_schema(daemon: DaemonProc, schema: dict[str, Any], prompt: str) -> None:
    r = daemon.client().post(CHAT, json=ask_json(prompt, schema_format(schema)))
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)
    assert choice["finish_reason"] == "stop" and r.headers["x-tiqo-backend"] == "local:llama.cpp"


def test_json_object_mode_answers_an_object(daemon: DaemonProc) -> None:
    r = daemon.client().post(
        CHAT, json=ask_json("Give the name and colour of a fruit as JSON.", {"type": "json_object"}, max_tokens=300)
    )
    assert r.status_code == 200, r.text
    assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)


def test_an_unsupported_schema_feature_is_a_400_naming_it(daemon: DaemonProc) -> None:
    schema = _object(
        {"price": {"type": "number", "exclusiveMinimum": 0}, "tags": {"type": "array", "uniqueItems": True}}
    )
    r = daemon.client().post(CHAT, json=ask_json("A product.", schema_format(schema)))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "unsupported_schema" and error["param"] == "response_format.json_schema.schema"
    assert (
        "exclusiveMinimum at /properties/price" in error["message"]
        and "uniqueItems at /properties/tags" in error["message"]
    )


def test_an_invalid_json_schema_is_a_400(daemon: DaemonProc) -> None:
    r = daemon.client().post(CHAT, json=ask_json("A number.", schema_format({"type": "integr"})))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_schema", r.text


def test_a_cut_off_answer_is_an_error_with_a_hint_not_a_success(daemon: DaemonProc) -> None:
    body = ask_json("Make a shopping list for a chocolate cake.", schema_format(SHOPPING), max_tokens=4)
    r = daemon.client().post(CHAT, json=body, headers={"x-tiqo-cache": "off"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "json_truncated" and "max_tokens" in error["hint"]
    row = daemon.client().get("/tiqo/logs", params={"n": 1}).json()["data"][0]
    assert row["error"] == "json_truncated" and row["outcome"] == "refused"

    with daemon.client().stream("POST", CHAT, json={**body, "stream": True}) as streamed:
        assert streamed.status_code == 200
        events = sse_events(streamed)
    assert events[-1] != "[DONE]" and events[-1]["error"]["code"] == "json_truncated"
    assert any(e.get("choices") and e["choices"][0]["delta"].get("content") for e in events[:-1])  # it did stream


def test_a_streamed_answer_reassembles_to_valid_json(daemon: DaemonProc) -> None:
    body = {**ask_json("Tell me about Paris.", schema_format(CITY)), "stream": True}
    with daemon.client().stream("POST", CHAT, json=body, headers={"x-tiqo-cache": "off"}) as streamed:
        events = sse_events(streamed)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]]
    assert sum(1 for d in deltas if d) > 3  # token by token, not one blob at the end
    jsonschema.validate(json.loads("".join(deltas)), CITY)


def test_route_explain_keeps_the_local_model_for_json(daemon: DaemonProc) -> None:
    result = (
        daemon.client()
        .post("/tiqo/route/explain", json={"prompt": "A person.", "response_format": schema_format(PERSON)})
        .json()
    )
    assert "json" in result["needs"] and result["chosen"] == LOCAL


def test_the_official_openai_client_parses_a_pydantic_model(daemon: DaemonProc) -> None:
    import openai
    from pydantic import BaseModel, Field

    class Review(BaseModel):
        sentiment: Literal["positive", "negative", "neutral"]
        summary: str = Field(max_length=60)

    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)))
    client = openai.OpenAI(base_url="http://tiqo/v1", api_key="unused", http_client=http)
    messages: Any = [{"role": "user", "content": "Review: the best pizza in town, I'll be back!"}]
    parsed = client.chat.completions.parse(
        model=LOCAL, messages=messages, response_format=Review, temperature=0, max_tokens=120
    )
    review = parsed.choices[0].message.parsed
    assert isinstance(review, Review) and review.sentiment in ("positive", "negative", "neutral")

    plain = client.chat.completions.create(
        model=LOCAL,
        messages=messages,
        temperature=0,
        max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": SENTIMENT}},
    )
    jsonschema.validate(json.loads(plain.choices[0].message.content or ""), SENTIMENT)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(
            model=LOCAL,
            messages=messages,
            max_tokens=3,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": SENTIMENT}},
        )
    assert "max_tokens" in str(caught.value)


def test_tiqo_ask_schema(daemon: DaemonProc, tmp_path: Path) -> None:
    schema_file = tmp_path / "city.json"
    schema_file.write_text(json.dumps(CITY))
    ok = daemon.cli("ask", "--schema", str(schema_file), "-t", "0", "--max-tokens", "200", "Tell me about Rome.")
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.strip().splitlines()) == 1
    jsonschema.validate(json.loads(ok.stdout), CITY)

    as_json = daemon.cli("ask", "--json", "--schema", str(schema_file), "-t", "0", "Tell me about Rome.")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["json"] == json.loads(ok.stdout)

    cut = daemon.cli("ask", "--schema", str(schema_file), "--max-tokens", "3", "--no-cache", "Tell me about Rome.")
    assert cut.returncode == 1 and "cut off" in cut.stderr and "max_tokens" in cut.stderr and not cut.stdout

    schema_file.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "number", "minimum": 1}}}))
    refused = daemon.cli("ask", "--schema", str(schema_file), "A number.")
    assert refused.returncode == 1 and "minimum at /properties/n" in refused.stderr

    schema_file.write_text("not json")
    usage = daemon.cli("ask", "--schema", str(schema_file), "A number.")
    assert usage.returncode == 2 and "not a JSON file" in usage.stderr
    missing = daemon.cli("ask", "--schema", str(tmp_path / "absent.json"), "A number.")
    assert missing.returncode == 2


@pytest.mark.parametrize(("schema", "prompt"), CASES[::5], ids=["person", "city", "order", "segment"])
def test_sampled_answers_validate_too(daemon: DaemonProc, schema: dict[str, Any], prompt: str) -> None:
    """With temperature the tokens are drawn from those that fit among the likeliest ones (grammar_sampler.py)."""
    body = ask_json(prompt, schema_format(schema), temperature=1.0, seed=7)
    r = daemon.client().post(CHAT, json=body, headers={"x-tiqo-cache": "off"})
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), schema)


def test_the_grammar_processor_matches_the_whole_vocabulary_when_no_likely_token_fits() -> None:
    import numpy as np

    from tests.conftest import smollm_path
    from tiqo.daemon.runtime.engines.grammar_sampler import TOP, GrammarProcessor
    from tiqo.daemon.runtime.engines.llama import LlamaEngine
    from tiqo.sdk.engine import ModelSpec

    spec = ModelSpec(name=LOCAL, kind="llm", engine="llama.cpp", path=smollm_path(), source="local", size_bytes=0)
    runner = LlamaEngine().load(spec, {"n_threads": 1, "n_ctx": 256})
    llm = runner.llm
    processor = GrammarProcessor(llm._model.vocab, 'root ::= "{" "}"')
    try:
        brace = llm.tokenize(b"{", add_bos=False, special=False)[0]
        others = [i for i in range(1000, 3000) if not llm.detokenize([i]).lstrip().startswith(b"{")][: TOP * 2]
        scores = np.zeros(llm.n_vocab(), dtype=np.single)
        scores[others] = 10.0  # the likeliest tokens all break the grammar
        fitted = processor([1, 2, 3], scores)
        allowed = np.flatnonzero(np.isfinite(fitted))
        assert processor.full_matches == 1 and brace in allowed
        assert all(llm.detokenize([int(t)]).startswith(b"{") for t in allowed)

        scores[brace] = 20.0  # now a likely token fits: only the likeliest tokens are matched
        fitted = processor([1, 2, 3], scores)
        assert processor.full_matches == 1 and np.argmax(fitted) == brace
        assert np.count_nonzero(np.isfinite(fitted)) <= TOP
    finally:
        processor.close()
        runner.close()
