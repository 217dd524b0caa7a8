"""`ollamad pull`'s view of Ollama's progress: a line per status, layers without a flood."""

from __future__ import annotations

import io

from ollamad.render import PullProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def layer(completed: int, total: int = 1_048_576) -> dict:
    return {"status": "pulling c1a43ad63810", "digest": "sha256:c1a43ad63810" + "0" * 52,
            "total": total, "completed": completed}


def feed(view: PullProgress, clock: Clock) -> None:
    """What Ollama sends: statuses, and a layer's progress every 60 ms for 3 s."""
    view.show({"status": "pulling manifest"})
    for step in range(51):
        view.show(layer(min(step * 20_972, 1_048_576)))
        clock.now += 0.06
    view.show(layer(1_048_576))
    view.show({"status": "verifying sha256 digest"})
    view.show({"status": "success"})


def test_off_a_terminal_a_layer_is_a_line_a_second_and_its_last_one():
    out, clock = io.StringIO(), Clock()
    feed(PullProgress(out, terminal=False, clock=clock), clock)
    lines = out.getvalue().splitlines()
    layer_lines = [line for line in lines if line.startswith("pulling c1a4")]
    assert lines[0] == "pulling manifest" and lines[-2:] == ["verifying sha256 digest", "success"]
    assert 3 <= len(layer_lines) <= 5, layer_lines   # 3 s of progress: about one a second
    assert layer_lines[0] == "pulling c1a43ad63810    0% of 1.0 MiB (0 B)"
    assert layer_lines[-1] == "pulling c1a43ad63810  100% of 1.0 MiB (1.0 MiB)"
    assert "\r" not in out.getvalue()


def test_on_a_terminal_a_layer_is_one_line_rewritten_in_place_a_few_times_a_second():
    out, clock = io.StringIO(), Clock()
    feed(PullProgress(out, terminal=True, clock=clock), clock)
    text = out.getvalue()
    assert text.count("\r") <= 3 * PullProgress.REDRAW + 2   # 3 s at most 10 redraws a second
    lines = text.split("\n")
    assert lines[0] == "pulling manifest"
    assert lines[1].endswith("\rpulling c1a43ad63810  100% of 1.0 MiB (1.0 MiB)\x1b[K")
    assert lines[2:] == ["verifying sha256 digest", "success", ""]


def test_a_layer_line_left_open_is_ended_before_what_comes_next():
    out, clock = io.StringIO(), Clock()
    view = PullProgress(out, terminal=True, clock=clock)
    view.show(layer(500))
    view.end()   # an error follows
    assert out.getvalue() == "\rpulling c1a43ad63810    0% of 1.0 MiB (500 B)\x1b[K\n"
