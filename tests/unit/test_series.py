"""Labelled counters and histograms for /metrics, and the listener's config."""

from __future__ import annotations

import pytest

from ollamad import config
from ollamad.config import ConfigError
from ollamad.series import OTHER, BoundedLabel, Histogram, Series


def test_a_label_keeps_its_first_values_and_folds_the_rest_for_good():
    label = BoundedLabel(2)
    assert [label(v) for v in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]


def test_histogram_buckets_are_cumulative_and_end_at_inf():
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4 and histogram.sum == pytest.approx(3.65)


def test_only_model_requests_feed_histograms_tokens_and_retries():
    series = Series(max_tenants=1)
    result = {"prompt_tokens": 5, "completion_tokens": 7, "attempts": 3}
    series.request("generate", "m", "interactive", "root/a", "ok", 0.4, result, True)
    series.request("batch", "m", "batch", "root/b", "ok", 2.0, {}, False)
    series.request("status", None, None, None, "ok", 0.0, None, False)
    snap = series.snapshot()
    assert snap["requests"] == {("generate", "m", "interactive", "root/a", "ok"): 1,
                                ("batch", "m", "batch", OTHER, "ok"): 1,
                                ("status", "", "", "", "ok"): 1}
    assert snap["tokens"] == {("prompt", "m", "interactive", "root/a"): 5,
                              ("generation", "m", "interactive", "root/a"): 7}
    assert snap["retries"] == {("generate", "interactive"): 2}
    assert set(snap["latency"]) == {"interactive"} and snap["latency"]["interactive"]["count"] == 1


@pytest.mark.parametrize("listen, where", [("127.0.0.1:9464", ("127.0.0.1", 9464)),
                                           ("[::1]:0", ("::1", 0)), ("", None)])
def test_the_listener_address_is_host_and_port(listen, where):
    loaded = config.load("/dev/null", env={"OLLAMAD_METRICS_LISTEN": listen})
    assert config.listen_address(loaded) == where


@pytest.mark.parametrize("listen", ["banana", "9464", ":9464", "host:99999", "host:port"])
def test_a_listener_address_that_is_not_host_and_port_stops_start_up(listen):
    with pytest.raises(ConfigError) as err:
        config.load("/dev/null", env={"OLLAMAD_METRICS_LISTEN": listen})
    assert str(err.value).startswith("metrics.listen: must be HOST:PORT"), str(err.value)
