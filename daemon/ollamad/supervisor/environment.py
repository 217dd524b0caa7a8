"""The environment a spawned Ollama gets: an allowlist, never the daemon's whole environment.

The daemon's environment is the service's: systemd puts ``NOTIFY_SOCKET``,
``CREDENTIALS_DIRECTORY`` and ``LISTEN_FDS`` there, and operators put
secrets meant for other programs (``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``)
into shared environment files. ``ollama serve`` and every runner it starts
inherit what they are given, so they are given only what Ollama and the GPU
libraries read, plus the names ``ollama.pass_environment`` adds.
"""

from __future__ import annotations

from typing import Iterable, Mapping

#: Variables passed by exact name: the process basics, locale and time zone,
#: and what Go's HTTP client reads for registry pulls through a proxy or with
#: a private CA (Ollama's FAQ: HTTPS_PROXY).
PASSED_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    "LD_LIBRARY_PATH",
    "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
    "GPU_DEVICE_ORDINAL",
})
#: Variables passed by prefix: Ollama's own settings, the CUDA and NVIDIA
#: runtime's (CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES), ROCm's
#: (HIP_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES, HSA_OVERRIDE_GFX_VERSION),
#: ggml's (GGML_CUDA_ENABLE_UNIFIED_MEMORY) and the locale categories.
PASSED_PREFIXES = ("OLLAMA_", "CUDA_", "NVIDIA_", "HIP_", "ROCR_", "HSA_", "GGML_", "LC_")
#: The bundled stand-in is a Python program configured by its own variables
#: (``ollamad stand-in --help``): it also gets those and Python's.
STAND_IN_PREFIXES = ("OLLAMAD_STANDIN_", "PYTHON")

def allowed(name: str, extra: Iterable[str] = (), stand_in: bool = False) -> bool:
    """Whether a spawned server gets the variable `name`; `extra` holds names and
    prefixes ending in ``*`` (``ollama.pass_environment``, checked by the config)."""
    if name in PASSED_NAMES or name.startswith(PASSED_PREFIXES):
        return True
    if stand_in and name.startswith(STAND_IN_PREFIXES):
        return True
    return any(name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern
               for pattern in extra)


def filtered(environ: Mapping[str, str], extra: Iterable[str] = (),
             stand_in: bool = False) -> dict[str, str]:
    """The variables of `environ` a spawned server gets."""
    extra = tuple(extra)
    return {name: value for name, value in environ.items() if allowed(name, extra, stand_in)}
