"""The models the stand-in pretends to have on disk.

Names follow Ollama's rules: case-insensitive, `:latest` when no tag is given,
`registry.ollama.ai/library/` optional. Well-known models carry their real
sizes, shapes, KV cache per token and capabilities (`tools`, `thinking`,
`embedding`); any other name in `--models` gets plausible values derived
from its tag (`foo:7b` → 7 billion parameters) and only `completion` (or
`embedding` for `*embed*` names). Models in the well-known table that are
not installed can be pulled; any model can be copied and deleted.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import asdict, dataclass, replace

from ollamad.goduration import NS_PER_S
from ollamad.ollama.names import canonical as canonical_name
from ollamad.testing.standin.gotime import rfc3339_nano

DEFAULT_MODELS = ("llama3.1:8b", "llama3.2:1b", "qwen3:0.6b", "nomic-embed-text:latest")

_CHAT = ("completion", "tools")
_THINKING = ("completion", "tools", "thinking")
_EMBEDDING = ("embedding",)
KIB = 1024


@dataclass(frozen=True)
class Shape:
    """What a model is, whatever it is called."""

    family: str
    parameter_size: str
    parameter_count: int
    quantization: str
    size: int
    context_length: int
    embedding_length: int
    kv_bytes_per_token: int  # f16 K and V over all layers: 2 x layers x kv heads x head dim x 2
    capabilities: tuple[str, ...]


_WELL_KNOWN = {
    "llama3.1:8b": Shape("llama", "8.0B", 8_030_261_248, "Q4_K_M", 4_920_753_328, 131072, 4096,
                          128 * KIB, _CHAT),
    "llama3.2:1b": Shape("llama", "1.2B", 1_235_814_432, "Q8_0", 1_321_098_329, 131072, 2048,
                          32 * KIB, _CHAT),
    "llama3.2:3b": Shape("llama", "3.2B", 3_212_749_888, "Q4_K_M", 2_019_393_189, 131072, 3072,
                          112 * KIB, _CHAT),
    "qwen2.5:0.5b": Shape("qwen2", "494.03M", 494_032_768, "Q4_K_M", 397_821_319, 32768, 896,
                           12 * KIB, _CHAT),
    "qwen3:0.6b": Shape("qwen3", "751.63M", 751_632_384, "Q4_K_M", 522_653_767, 40960, 1024,
                         112 * KIB, _THINKING),
    "mistral:7b": Shape("llama", "7.2B", 7_248_023_552, "Q4_0", 4_113_301_824, 32768, 4096,
                         128 * KIB, _CHAT),
    "nomic-embed-text:latest": Shape("nomic-bert", "137M", 136_727_040, "F16", 274_302_450, 2048,
                                      768, 36 * KIB, _EMBEDDING),
    "all-minilm:latest": Shape("bert", "23M", 22_565_376, "F16", 45_960_996, 512, 384, 9 * KIB,
                                _EMBEDDING),
}
_FILE_TYPES = {"F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}
_LLAMA3_TEMPLATE = (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
    "{{- end }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>")
_STOP_WORDS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def _derived_shape(name: str) -> Shape:
    """Plausible numbers for a model the well-known table does not have."""
    base, _, tag = name.partition(":")
    letters = re.match(r"[a-z]+", base.rpartition("/")[2])
    family = letters[0] if letters else "model"
    count = 7_000_000_000
    if found := re.search(r"(\d+(?:\.\d+)?)([bm])", tag):
        count = int(float(found[1]) * (1e9 if found[2] == "b" else 1e6))
    size_label = f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"
    embedding = "embed" in base or "bert" in family
    width = 768 if embedding else (4096 if count >= 6e9 else 2048)
    kv_per_token = max(4, round(count / 1e9 * 16)) * KIB  # llama-like: 16 KiB per billion
    return Shape(family, size_label, count, "Q4_K_M", int(count * 0.6), 8192, width,
                  kv_per_token, _EMBEDDING if embedding else ("completion",))


# Architectures Ollama runs with one slot whatever OLLAMA_NUM_PARALLEL says (sched.go:499-510).
_ONE_SLOT_FAMILIES = {"mllama", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen3next",
                      "lfm2", "lfm2moe", "nemotron_h", "nemotron_h_moe", "nemotron_h_omni"}


@dataclass(frozen=True)
class Model(Shape):
    """A shape installed under a name."""

    name: str = ""
    blob: str = ""  # the model a copy was made from: copies share its blobs and digest

    @classmethod
    def named(cls, name: str) -> "Model":
        return cls(**asdict(_WELL_KNOWN.get(name) or _derived_shape(name)), name=name)

    def copied_as(self, name: str) -> "Model":
        return replace(self, name=name, blob=self.blob or self.name)

    @property
    def embedding_only(self) -> bool:
        return "completion" not in self.capabilities

    @property
    def full_name(self) -> str:
        """The name Ollama's errors print: host and namespace included."""
        parts = self.name.split("/")
        if len(parts) == 1:
            parts.insert(0, "library")
        if len(parts) == 2:
            parts.insert(0, "registry.ollama.ai")
        return "/".join(parts)

    @property
    def block_count(self) -> int:
        return 32 if self.parameter_count > 6e9 else 16

    def slots(self, num_parallel: int) -> int:
        """Parallel sequences a runner gets: embedding models and some architectures get one."""
        one = self.embedding_only or self.family.replace("-", "_") in _ONE_SLOT_FAMILIES
        return 1 if one else num_parallel

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"ollamad-standin:{self.blob or self.name}".encode()).hexdigest()

    @property
    def modified_ns(self) -> int:
        # A fixed moment per model in late 2024: stable across runs, like a file's mtime.
        offset = int(self.digest[:8], 16) % (30 * 86400) * NS_PER_S + int(self.digest[8:14], 16)
        return 1_730_000_000 * NS_PER_S + offset

    @property
    def modified_at(self) -> str:
        return rfc3339_nano(self.modified_ns, local=True)

    def details(self) -> dict:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        }

    def tags_entry(self) -> dict:
        return {"name": self.name, "model": self.name, "modified_at": self.modified_at,
                "size": self.size, "digest": self.digest, "details": self.details()}

    def layers(self) -> list[tuple[str, int]]:
        """(digest, size) of the blobs a pull would fetch: weights, template, params."""
        blobs = [("model", self.size - 1_500), ("template", 1_400), ("params", 100)]
        return [(hashlib.sha256(f"{self.blob or self.name}/{kind}".encode()).hexdigest(), size)
                for kind, size in blobs]

    def model_info(self) -> dict:
        arch = self.family.replace("-", "_")
        info = {
            "general.architecture": arch,
            "general.file_type": _FILE_TYPES.get(self.quantization, 15),
            "general.parameter_count": self.parameter_count,
            "general.quantization_version": 2,
            f"{arch}.block_count": self.block_count,
            f"{arch}.context_length": self.context_length,
            f"{arch}.embedding_length": self.embedding_length,
            f"{arch}.attention.head_count": 32,
            "tokenizer.ggml.model": "bert" if self.embedding_only else "gpt2",
        }
        return dict(sorted(info.items()))  # Go writes map keys sorted

    def show(self) -> dict:
        """The body of /api/show (ShowResponse field order)."""
        template = "{{ .Prompt }}" if self.embedding_only else _LLAMA3_TEMPLATE
        stops = () if self.embedding_only else _STOP_WORDS
        parameters = "\n".join(f'{"stop":<30} "{word}"' for word in stops)
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {self.name}\n\n"
            f"FROM /usr/share/ollama/.ollama/models/blobs/sha256-{self.layers()[0][0]}\n"
            f'TEMPLATE """{template}"""\n'
            + "".join(f"PARAMETER stop {word}\n" for word in stops))
        answer = {"license": "Stand-in model: no weights, no license.", "modelfile": modelfile}
        if parameters:
            answer["parameters"] = parameters
        answer.update({
            "template": template,
            "details": self.details(),
            "model_info": self.model_info(),
            "capabilities": list(self.capabilities),
            "modified_at": self.modified_at,
        })
        return answer


class Catalog:
    """The installed models; pulling a well-known model installs it."""

    def __init__(self, names: tuple[str, ...]):
        self._lock = threading.Lock()
        self._models: dict[str, Model] = {}
        for name in names:
            canonical = canonical_name(name)
            if canonical is None:
                raise ValueError(f"invalid model name {name!r}")
            self._models[canonical] = Model.named(canonical)

    def find(self, name: str) -> Model | None:
        canonical = canonical_name(name)
        return self._models.get(canonical) if canonical else None

    def all(self) -> list[Model]:
        """Installed models, newest first (the order of /api/tags)."""
        with self._lock:
            return sorted(self._models.values(), key=lambda model: -model.modified_ns)

    def pullable(self, name: str) -> Model | None:
        """The model a pull of `name` would install, or None if the registry lacks it."""
        canonical = canonical_name(name)
        if canonical is None:
            return None
        installed = self._models.get(canonical)
        if installed or canonical not in _WELL_KNOWN:
            return installed
        return Model.named(canonical)

    def install(self, model: Model):
        with self._lock:
            self._models[model.name] = model

    def copy(self, source: str, destination: str) -> bool:
        """Install `source` under the name `destination`; False when `source` is missing."""
        canonical = canonical_name(destination)
        with self._lock:
            model = self._models.get(canonical_name(source) or "")
            if model is None or canonical is None:
                return False
            self._models[canonical] = model.copied_as(canonical)
            return True

    def delete(self, name: str) -> bool:
        with self._lock:
            return self._models.pop(canonical_name(name) or "", None) is not None
