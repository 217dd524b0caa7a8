"""The Prometheus exposition and the request log, with the real daemon and a real Prometheus.

The real-server test needs Debian's ``prometheus`` package; it installs it
when absent and it can (root with apt-get), and skips with the reason when
it cannot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import requests

from ollamad_client import OllamadError

SCRAPED = {"metrics": {"listen": "127.0.0.1:0", "max_tenant_labels": 3},
           "ollama": {"probe_interval": 60.0}}


def metrics_url(daemon, wait_for) -> str:
    wait_for(lambda: re.search(r"Prometheus metrics on (http://\S+/metrics)", daemon.log()), 10,
             "the metrics listener")
    return re.search(r"Prometheus metrics on (http://\S+/metrics)", daemon.log()).group(1)


def samples(text: str, name: str) -> dict[frozenset, float]:
    """``{labels: value}`` of every sample of ``name`` in an exposition."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            found[labels] = float(match.group(2))
    return found


@pytest.fixture(scope="module")
def scraped(module_daemon_factory):
    return module_daemon_factory(SCRAPED)


@pytest.fixture(scope="session")
def promtool():
    """Debian's prometheus package (promtool and the server), installed when absent."""
    if shutil.which("promtool") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
                       env=env, capture_output=True, timeout=600)
    if shutil.which("promtool") is None or shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus package is not installed and could not be "
                    "(needs root, apt-get and a package mirror)")
    return shutil.which("promtool")


def test_every_request_is_counted_by_op_model_lane_tenant_and_code(scraped, wait_for):
    url = metrics_url(scraped, wait_for)
    with scraped.client(app="counted") as client:
        for i in range(3):
            client.generate(f"counted {i}", max_tokens=3)
        client.batch(["b1", "b2"], max_tokens=2)
        with pytest.raises(OllamadError):
            client.generate("absent", model="no-such-model")
    text = requests.get(url, timeout=5).text
    requests_total = samples(text, "ollamad_requests_total")
    mine = {labels: value for labels, value in requests_total.items()
            if ("tenant", "root/counted") in labels}
    assert mine[frozenset({("op", "generate"), ("model", "llama3.1:8b"),
                           ("lane", "interactive"), ("tenant", "root/counted"),
                           ("code", "ok")})] == 3
    assert mine[frozenset({("op", "batch_item"), ("model", "llama3.1:8b"), ("lane", "batch"),
                           ("tenant", "root/counted"), ("code", "ok")})] == 2
    assert mine[frozenset({("op", "generate"), ("model", "no-such-model:latest"),
                           ("lane", "interactive"), ("tenant", "root/counted"),
                           ("code", "model_not_found")})] == 1
    generated = samples(text, "ollamad_generation_tokens_total")
    assert generated[frozenset({("model", "llama3.1:8b"), ("lane", "interactive"),
                                ("tenant", "root/counted")})] == 9
    for histogram in ("ollamad_e2e_request_latency_seconds", "ollamad_request_queue_time_seconds",
                      "ollamad_time_to_first_token_seconds"):
        counts = samples(text, histogram + "_count")
        assert counts[frozenset({("lane", "interactive")})] >= 3, histogram
    assert samples(text, "ollamad_ollama_state")[frozenset({("state", "RUNNING")})] == 1
    assert samples(text, "ollamad_model_loaded")[frozenset({("model", "llama3.1:8b")})] == 1
    assert samples(text, "ollamad_gpu_available")[frozenset()] == 0   # no GPU here


def test_tenants_beyond_the_limit_fold_into_other(scraped, wait_for):
    url = metrics_url(scraped, wait_for)
    for app in ("fold-1", "fold-2", "fold-3", "fold-4"):
        with scraped.client(app=app) as client:
            client.generate(f"fold {app}", max_tokens=1)
    tenants = {dict(labels).get("tenant") for labels in
               samples(requests.get(url, timeout=5).text, "ollamad_requests_total")}
    # Three tenants of the module's daemon get their own names; the rest are "other".
    assert "other" in tenants and len(tenants - {"", "other"}) == 3


def test_promtool_finds_nothing_wrong_with_the_exposition(scraped, wait_for, promtool):
    url = metrics_url(scraped, wait_for)
    with scraped.client(app="linted") as client:
        client.generate("linted", max_tokens=2)
        client.batch(["l1"], max_tokens=1)
    text = requests.get(url, timeout=5).content
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                             timeout=30)
    assert checked.returncode == 0 and not checked.stdout and not checked.stderr, \
        checked.stdout + checked.stderr


def test_a_real_prometheus_scrapes_the_daemon_and_counts_the_requests(daemon_factory, reaper,
                                                                     wait_for, promtool):
    daemon = daemon_factory(SCRAPED)
    target = urllib.parse.urlsplit(metrics_url(daemon, wait_for)).netloc
    with daemon.client(app="promql") as client:
        for i in range(5):
            client.generate(f"promql {i}", max_tokens=2)
    with tempfile.TemporaryDirectory(prefix="prom-") as directory:
        config = Path(directory) / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
                          "scrape_configs:\n  - job_name: ollamad\n    static_configs:\n"
                          f"      - targets: ['{target}']\n")
        server = reaper.spawn(["prometheus", f"--config.file={config}",
                               f"--storage.tsdb.path={directory}/data",
                               "--web.listen-address=127.0.0.1:0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        api = _prometheus_address(server)
        query = 'sum(ollamad_requests_total{op="generate",tenant="root/promql",code="ok"})'

        def counted() -> float | None:
            try:
                answer = requests.get(f"http://{api}/api/v1/query", params={"query": query},
                                      timeout=2).json()
            except requests.RequestException:
                return None
            result = answer.get("data", {}).get("result") or []
            return float(result[0]["value"][1]) if result else None
        wait_for(lambda: counted() == 5, 30, "Prometheus to have scraped the 5 requests")
        server.terminate()
        server.wait(10)


def _prometheus_address(server: subprocess.Popen, timeout: float = 30.0) -> str:
    """The address Prometheus listens on (it logs it; port 0 lets the OS choose)."""
    deadline = time.monotonic() + timeout
    seen = b""
    os.set_blocking(server.stderr.fileno(), False)
    while time.monotonic() < deadline:
        chunk = server.stderr.read() or b""
        seen += chunk
        match = re.search(rb'msg="Listening on" address=(\S+)', seen) or \
            re.search(rb"Listening on.*?address=(\S+)", seen)
        if match:
            return match.group(1).decode().strip('"')
        if server.poll() is not None:
            pytest.fail(f"prometheus exited: {seen.decode(errors='replace')[-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"prometheus did not say where it listens: {seen.decode(errors='replace')[-2000:]}")


def test_the_listener_never_takes_ollamas_port(daemon_factory):
    daemon = daemon_factory({"ollama": {"url": "http://127.0.0.1:11434"},
                             "metrics": {"listen": "127.0.0.1:11434"}}, ready=False)
    assert daemon.process.wait(30) == 1
    assert "metrics.listen 127.0.0.1:11434 is Ollama's port" in daemon.log()


def test_each_finished_model_request_gets_one_log_line_with_its_figures(scraped, wait_for):
    with scraped.client(app="logged") as client:
        client.generate("logged ok", max_tokens=2)
        with pytest.raises(OllamadError):
            client.generate("logged missing", model="absent-model")
        client.status()

    def lines() -> list[str]:
        return [line for line in scraped.log().splitlines()
                if "ollamad.requests" in line and "tenant=root/logged" in line]
    wait_for(lambda: len(lines()) == 2, 5, "two request lines")
    ok, missing = lines()
    assert re.search(r"request id=\S+ tenant=root/logged op=generate model=llama3.1:8b "
                     r"lane=interactive result=ok attempts=1 queue_wait=\d+\.\d{3} "
                     r"duration=\d+\.\d{3} tokens=2$", ok), ok
    assert "model=absent-model:latest" in missing and "result=model_not_found" in missing
    assert not any("op=status" in line for line in scraped.log().splitlines()
                   if "ollamad.requests" in line)
