"""ollamad.args as pure functions: what a chat sends Ollama, and how an answer is read."""

from __future__ import annotations

import pytest

from ollamad.args import (GenerationDefaults, InvalidArguments, PullArguments, chat_call,
                          generate_call, pull_arguments)

DEFAULTS = GenerationDefaults(model="llama3.1:8b", max_tokens_cap=4096)
CALL = {"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}


def test_chat_messages_keep_ollamas_fields_and_drop_the_rest():
    messages = [{"role": "user", "content": "look", "images": ["aGk=\n"], "name": "me"},
                {"role": "assistant", "content": "", "thinking": "hm", "tool_calls": [CALL]},
                {"role": "tool", "content": "2", "tool_name": "f", "tool_call_id": "call_1"}]
    body = chat_call({"messages": messages, "think": "low", "tools": []}, DEFAULTS).body
    assert body["messages"] == [{"role": "user", "content": "look", "images": ["aGk=\n"]},
                                messages[1], messages[2]]
    assert body["think"] == "low" and "tools" not in body  # no tools: none sent


@pytest.mark.parametrize("think", ["yes", 1, ["high"]])
def test_think_is_a_bool_or_a_level(think):
    with pytest.raises(InvalidArguments, match="'think' must be true, false or one of"):
        generate_call({"prompt": "x", "think": think}, DEFAULTS)


def test_an_answer_collects_text_thinking_and_tool_calls_from_any_line():
    answer = chat_call({"messages": [{"role": "user", "content": "x"}]}, DEFAULTS).answer()
    lines = [{"message": {"role": "assistant", "content": "", "thinking": "so"}},
             {"message": {"role": "assistant", "content": "A", "thinking": "!"}},
             {"message": {"role": "assistant", "content": "", "tool_calls": [CALL]}},
             {"message": None},
             {"message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 4}]
    chunks = [answer.add(line) for line in lines]
    assert chunks == [{"thinking": "so"}, {"thinking": "!", "text": "A"}, {}, {}, {}]
    result = answer.result(lines[-1], attempts=1, elapsed=0.1)
    assert (result["text"], result["thinking"], result["tool_calls"]) == ("A", "so!", [CALL])
    assert result["message"] == {"role": "assistant", "content": "A", "thinking": "so!",
                                 "tool_calls": [CALL]}
    assert result["tokens"] == 4


def test_a_generate_answer_has_thinking_and_no_message():
    answer = generate_call({"prompt": "x"}, DEFAULTS).answer()
    assert answer.add({"response": "", "thinking": "hm"}) == {"thinking": "hm"}
    assert answer.has_pieces
    result = answer.result({"done": True}, attempts=1, elapsed=0.0)
    assert result["thinking"] == "hm" and result["text"] == ""
    assert "message" not in result and "tool_calls" not in result


def test_pull_arguments_take_a_name_as_ollama_reads_it_and_ollamas_insecure_flag():
    assert pull_arguments({"model": " 127.0.0.1:5000/library/tiny:v1 ", "insecure": True}) == \
        PullArguments("127.0.0.1:5000/library/tiny:v1", True)
    assert pull_arguments({"model": "llama3.1:8b"}) == PullArguments("llama3.1:8b", False)


@pytest.mark.parametrize("args, named", [
    ({}, "'model' is required"), ({"model": 7}, "'model' must be"), ({"model": "  "}, "'model'"),
    ({"model": "m" * 601}, "1 to 600 characters"), ({"model": "x", "insecure": "yes"},
                                                     "'insecure' must be true or false"),
])
def test_bad_pull_arguments_are_named(args, named):
    with pytest.raises(InvalidArguments) as bad:
        pull_arguments(args)
    assert named in bad.value.message
