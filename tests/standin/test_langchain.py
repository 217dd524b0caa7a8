"""langchain-ollama against the stand-in: what users build on Ollama must work unchanged."""

from __future__ import annotations

import pytest
from langchain_core.tools import tool
from langchain_ollama import ChatOllama, OllamaEmbeddings
from pydantic import BaseModel

from ollamad.testing import StandIn

MODEL = "llama3.1:8b"


@pytest.fixture(scope="module")
def standin():
    with StandIn(models=[MODEL, "qwen3:0.6b", "nomic-embed-text"]) as running:
        yield running


@pytest.fixture
def chat(standin):
    return ChatOllama(model=MODEL, base_url=standin.url, temperature=0)


class Person(BaseModel):
    name: str
    age: int
    hobbies: list[str]


@tool
def get_weather(city: str, unit: str = "C") -> str:
    """The weather in a city."""
    return f"12 {unit} in {city}"


def test_invoke(chat):
    message = chat.invoke("Why is the sky blue?")
    assert message.content and message.response_metadata["done_reason"] == "stop"
    assert message.usage_metadata["output_tokens"] > 0
    assert message.usage_metadata["input_tokens"] > 0


def test_stream(chat):
    chunks = list(chat.stream("Why is the sky blue?"))
    assert len(chunks) > 2
    assert "".join(chunk.content for chunk in chunks) == chat.invoke("Why is the sky blue?").content


def test_batch(chat):
    prompts = ["one", "two", "three"]
    answers = chat.batch(prompts)
    assert [answer.content for answer in answers] == [chat.invoke(p).content for p in prompts]
    assert len({answer.content for answer in answers}) == 3


# (Not "json_mode": that asks for any JSON and leaves the shape to the prompt, which a
# pretend model cannot read.)
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output(chat, method):
    person = chat.with_structured_output(Person, method=method).invoke("Describe a person")
    assert isinstance(person, Person) and isinstance(person.age, int)


def test_bind_tools(chat):
    message = chat.bind_tools([get_weather]).invoke("What is the weather in Paris?")
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    assert call["args"]["unit"] and message.content == ""


def test_reasoning(standin):
    thinker = ChatOllama(model="qwen3:0.6b", base_url=standin.url, reasoning=True)
    message = thinker.invoke("Hello")
    assert message.content and message.additional_kwargs["reasoning_content"]


def test_embeddings(standin):
    embeddings = OllamaEmbeddings(model="nomic-embed-text", base_url=standin.url)
    [first, second] = embeddings.embed_documents(["alpha", "beta"])
    assert len(first) == 768 and first != second
    assert embeddings.embed_query("alpha") == first
