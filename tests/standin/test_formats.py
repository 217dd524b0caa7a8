"""Go's formats and Ollama's parsing rules, as pure functions (no process)."""

from __future__ import annotations

import json
import re

import pytest

from ollamad.goduration import FOREVER_NS
from ollamad.testing.standin import apitypes, gojson, gotime, textgen
from ollamad.testing.standin.apitypes import ApiError
from ollamad.testing.standin.config import parse_ollama_host
from ollamad.testing.standin.faults import make_fault, parse_spec


@pytest.mark.parametrize("ns, text", [
    (0, "0s"), (999, "999ns"), (1_500, "1.5µs"), (2_345_678, "2.345678ms"),
    (1_500_000_000, "1.5s"), (61 * 10**9, "1m1s"), (3661 * 10**9, "1h1m1s"),
])
def test_duration_string_matches_go(ns, text):
    assert gotime.duration_string(ns) == text


def test_timestamps_are_rfc3339_nano_utc():
    assert gotime.rfc3339_nano(1_700_000_000_123_400_000) == "2023-11-14T22:13:20.1234Z"
    assert gotime.rfc3339_nano(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", gotime.utc_now())


@pytest.mark.parametrize("body, message", [
    (b"x", "invalid character 'x' looking for beginning of value"),
    (b'{"model": }', "invalid character '}' looking for beginning of value"),
    (b'{"model" "x"}', "invalid character '\"' after object key"),
    (b'{"model": "x" "y"}', "invalid character '\"' after object key:value pair"),
    (b"{model: 1}", "invalid character 'm' looking for beginning of object key string"),
    (b'{"model": "x', "unexpected EOF"),
    (b'{"a": 01}', "invalid character '1' after object key:value pair"),
    (b'{"a": tru}', "invalid character '}' in literal true (expecting 'e')"),
    (b'{"a": "\\q"}', "invalid character 'q' in string escape code"),
    (b'{"a": NaN}', "invalid character 'N' looking for beginning of value"),
    (b'{"a": [1,]}', "invalid character ']' looking for beginning of value"),
    (b'{"a": -}', "invalid character '}' in numeric literal"),
    (b"{'a': 1}", "invalid character '\\'' looking for beginning of object key string"),
])
def test_syntax_errors_read_like_go(body, message):
    with pytest.raises(gojson.DecodeError) as error:
        gojson.loads(body)
    assert str(error.value) == message


def test_only_the_first_json_value_counts_like_a_go_decoder():
    assert gojson.loads(b' {"model": "m"} trailing garbage') == {"model": "m"}


@pytest.mark.parametrize("body, message", [
    (b'{"model": 1}', "json: cannot unmarshal number into Go struct field "
                      "GenerateRequest.model of type string"),
    (b'{"stream": "yes"}', "json: cannot unmarshal string into Go struct field "
                           "GenerateRequest.stream of type bool"),
    (b'{"context": [1.5]}', "json: cannot unmarshal number 1.5 into Go struct field "
                            "GenerateRequest.context of type int"),
    (b'{"options": []}', "json: cannot unmarshal array into Go struct field "
                         "GenerateRequest.options of type map[string]interface {}"),
    (b"[]", "json: cannot unmarshal array into Go value of type api.GenerateRequest"),
    (b'{"keep_alive": "300"}', 'time: missing unit in duration "300"'),
    (b'{"keep_alive": true}', "Unsupported type: 'bool'"),
])
def test_field_type_errors_read_like_go(body, message):
    with pytest.raises(ApiError) as error:
        apitypes.decode(body, apitypes.GENERATE)
    assert (error.value.status, error.value.message) == (400, message)


def test_nested_field_errors_name_the_path():
    with pytest.raises(ApiError) as error:
        apitypes.decode(b'{"messages": [{"role": "user", "content": 7}]}', apitypes.CHAT)
    assert error.value.message == ("json: cannot unmarshal number into Go struct field "
                                   "ChatRequest.messages.content of type string")


def test_field_names_match_case_insensitively_like_go():
    assert apitypes.decode(b'{"Model": "m", "PROMPT": "p"}', apitypes.GENERATE) == {
        "model": "m", "prompt": "p"}


@pytest.mark.parametrize("value, ns", [
    (0, 0), (30, 30 * 10**9), (1.9, 1_900_000_000), (-1, FOREVER_NS), ("10m", 600 * 10**9),
    ("-5m", FOREVER_NS),
])
def test_keep_alive_forms(value, ns):
    assert apitypes.keep_alive_ns(value) == ns


def test_options_type_errors_are_500s_with_ollamas_text():
    with pytest.raises(ApiError) as error:
        apitypes.options({"temperature": "hot"})
    assert (error.value.status, error.value.message) == (
        500, 'option "temperature" must be of type float32')
    with pytest.raises(ApiError) as error:
        apitypes.options({"num_predict": "3"})
    assert error.value.message == 'option "num_predict" must be of type integer'
    assert apitypes.options({"num_predict": 3.9, "unknown": 1})["num_predict"] == 3


@pytest.mark.parametrize("value, expected", [
    ("", ("127.0.0.1", 11434)), ("0.0.0.0", ("0.0.0.0", 11434)), (":0", ("", 0)),
    ("127.0.0.1:0", ("127.0.0.1", 0)), ("http://localhost:8080", ("localhost", 8080)),
    ("http://example.org", ("example.org", 80)), ("https://h", ("h", 443)),
    ("[::1]:9", ("::1", 9)), ("host:notaport", ("host", 11434)),
])
def test_ollama_host_is_read_like_ollama(value, expected):
    assert parse_ollama_host(value)[:2] == expected


def test_fault_specs():
    assert parse_spec("busy").describe() == {"kind": "busy", "remaining": None}
    assert parse_spec("busy:2").describe() == {"kind": "busy", "remaining": 2}
    assert parse_spec("crash_mid_stream:1:after_tokens=5").describe() == {
        "kind": "crash_mid_stream", "remaining": 1, "after_tokens": 5}
    assert parse_spec("exit:code=3").params == {"code": 3}
    for bad in ("nope", "busy:0", "busy:x", "exit:colour=3", "crash_mid_stream:after_tokens=1.5"):
        with pytest.raises(ValueError):
            parse_spec(bad)
    with pytest.raises(ValueError):
        make_fault("busy", count=True)


def test_tokens_concatenate_to_the_text():
    text = 'Hello, world!  {"a": [1, 2]}\n end '
    assert "".join(textgen.tokenize(text)) == text
    assert textgen.tokenize("Hi there.") == ["Hi", " there", "."]


def test_schema_answers_match_the_schema():
    schema = {
        "$defs": {"Pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}}},
        "type": "object",
        "properties": {
            "name": {"type": "string"}, "age": {"type": "integer", "minimum": 1, "maximum": 9},
            "score": {"type": "number"}, "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            "pet": {"$ref": "#/$defs/Pet"},
            "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
    }
    value = json.loads("".join(textgen.answer("k", json.dumps(schema))))
    assert list(value) == ["name", "age", "score", "ok", "tags", "pet", "nickname"]
    assert isinstance(value["name"], str) and isinstance(value["nickname"], str)
    assert isinstance(value["age"], int) and 1 <= value["age"] <= 9
    assert isinstance(value["score"], float) and isinstance(value["ok"], bool)
    assert 1 <= len(value["tags"]) <= 2 and all(isinstance(t, str) for t in value["tags"])
    assert value["pet"]["kind"] in ("cat", "dog")


def test_embedding_numbers_print_like_go_float32():
    vector_text = textgen.embedding_json("m", "x", 16)
    assert "e" not in vector_text and ".0," not in vector_text
    vector = json.loads(vector_text)
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-4
