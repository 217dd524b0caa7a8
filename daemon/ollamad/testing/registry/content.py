"""The models a test registry serves: manifests and blobs, made from their names.

Each model has a weights layer (``application/vnd.ollama.image.model``) of
the size asked for, a template layer and a config blob, as ``ollama push``
would upload them. The bytes follow from the name alone, so every run (and
every registry process) serves the same digests.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
WEIGHTS_TYPE = "application/vnd.ollama.image.model"
TEMPLATE_TYPE = "application/vnd.ollama.image.template"
DEFAULT_WEIGHTS_BYTES = 64 * 1024

_SPEC = re.compile(r"(?P<repository>[a-z0-9_][a-z0-9_-]*/[a-z0-9_][a-z0-9_.-]*)"
                   r":(?P<tag>[a-z0-9_][a-z0-9_.-]*)(=(?P<size>\d+))?")


@dataclass(frozen=True)
class Blob:
    digest: str          # "sha256:<hex>" of data
    media_type: str
    data: bytes

    @classmethod
    def of(cls, media_type: str, data: bytes) -> "Blob":
        return cls("sha256:" + hashlib.sha256(data).hexdigest(), media_type, data)

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


@dataclass(frozen=True)
class ServedModel:
    repository: str      # "library/tiny"
    tag: str
    manifest: bytes
    blobs: tuple[Blob, ...]


def parse_spec(spec: str) -> tuple[str, str, int]:
    """``NAMESPACE/MODEL:TAG[=WEIGHTS_BYTES]`` → (repository, tag, weights bytes)."""
    found = _SPEC.fullmatch(spec.strip().lower())
    if not found:
        raise ValueError(f"{spec!r} is not NAMESPACE/MODEL:TAG[=BYTES] (e.g. library/tiny:v1)")
    return found["repository"], found["tag"], int(found["size"] or DEFAULT_WEIGHTS_BYTES)


def _weights(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 64   # 2 KiB that differ per model
    return (block * (size // len(block) + 1))[:size]


def build(repository: str, tag: str, weights_bytes: int) -> ServedModel:
    name = f"{repository}:{tag}"
    weights = Blob.of(WEIGHTS_TYPE, _weights(name, weights_bytes))
    template = Blob.of(TEMPLATE_TYPE, b"{{ .Prompt }}")
    layers = (weights, template)
    config = Blob.of(CONFIG_TYPE, json.dumps({
        "model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
        "model_type": "1M", "file_type": "Q4_K_M", "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
    }, separators=(",", ":")).encode())
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                           "config": config.descriptor(),
                           "layers": [layer.descriptor() for layer in layers]},
                          separators=(",", ":")).encode()
    return ServedModel(repository, tag, manifest, (*layers, config))
