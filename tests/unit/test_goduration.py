"""Go's duration parser and Ollama's keep_alive rule (ollamad.goduration), as pure functions."""

from __future__ import annotations

import pytest

from ollamad import goduration
from ollamad.goduration import FOREVER_NS


@pytest.mark.parametrize("text, ns", [
    ("5m", 300 * 10**9), ("1h30m", 5400 * 10**9), ("1.5s", 1_500_000_000), ("300ms", 3 * 10**8),
    ("0", 0), ("-1s", -10**9), ("2us", 2000), ("1µs", 1000), (".5h", 1800 * 10**9),
])
def test_parse_duration_accepts_go_durations(text, ns):
    assert goduration.parse_duration(text) == ns


@pytest.mark.parametrize("text, message", [
    ("300", 'time: missing unit in duration "300"'),
    ("-1", 'time: missing unit in duration "-1"'),
    ("5x", 'time: unknown unit "x" in duration "5x"'),
    ("", 'time: invalid duration ""'),
    ("abc", 'time: invalid duration "abc"'),
    ("1.s.", 'time: invalid duration "1.s."'),
    ("9999999999h", 'time: invalid duration "9999999999h"'),  # past int64 nanoseconds
])
def test_parse_duration_errors_are_go_texts(text, message):
    with pytest.raises(ValueError) as error:
        goduration.parse_duration(text)
    assert str(error.value) == message


@pytest.mark.parametrize("value, ns", [
    (0, 0), (30, 30 * 10**9), (1.5, 1_500_000_000), (-1, FOREVER_NS),
    (-1e-10, FOREVER_NS),  # negative is forever, however small
    ("0", 0), ("10m", 600 * 10**9), ("-1s", FOREVER_NS), ("-5m", FOREVER_NS),
])
def test_keep_alive_numbers_are_seconds_and_strings_go_durations(value, ns):
    assert goduration.keep_alive_ns(value) == ns


@pytest.mark.parametrize("text", ["-1", "300", "5 m", "forever", ""])
def test_a_keep_alive_string_without_a_unit_is_refused_with_gos_text(text):
    with pytest.raises(ValueError, match=r"^time: (missing unit|unknown unit|invalid duration) "):
        goduration.keep_alive_ns(text)
