"""Progress a CI log can read (issue 27, item 3): lines per step with elapsed times and a heartbeat."""

from __future__ import annotations

import io
import time

from edgeship.progress import LineProgress, mode, progress


def test_mode_follows_the_terminal_and_the_override(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("EDGESHIP_PROGRESS", raising=False)
    assert mode(stream=Tty()) == "bar" and mode(stream=io.StringIO()) == "lines"
    assert mode(enabled=False, stream=Tty()) == "off"
    monkeypatch.setenv("EDGESHIP_PROGRESS", "lines")
    assert mode(stream=Tty()) == "lines"
    monkeypatch.setenv("EDGESHIP_PROGRESS", "off")
    assert mode(stream=io.StringIO()) == "off"


def test_lines_say_each_step_with_its_time_and_beat_during_a_long_one():
    out = io.StringIO()
    bar = LineProgress(total=2, desc="quantize", stream=out, heartbeat=0.2)
    bar.set_postfix_str("calibrate")
    time.sleep(0.55)  # a long step: at least two heartbeats
    bar.update()
    bar.set_postfix_str("tflite int8")
    bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert all(line.startswith("edgeship: quantize: ") for line in lines)
    beats = [line for line in lines if "still working: 'calibrate'" in line]
    assert len(beats) >= 2
    done = [line for line in lines if " done in " in line]
    assert [d.split(": ")[2].split(" done")[0] for d in done] == ["calibrate", "tflite int8"]
    assert "(step 1/2, " in done[0] and "(step 2/2, " in done[1] and "so far)" in done[1]


def test_off_prints_nothing_and_iterates(monkeypatch):
    monkeypatch.setenv("EDGESHIP_PROGRESS", "off")
    out = io.StringIO()
    assert list(progress([1, 2, 3], desc="x", stream=out)) == [1, 2, 3] and out.getvalue() == ""
    monkeypatch.setenv("EDGESHIP_PROGRESS", "lines")
    assert list(progress([1, 2], desc="export", unit="artifact", stream=out)) == [1, 2]
    assert out.getvalue().count("artifacts done in") == 2


def test_image_streams_beat_and_close_with_one_line():
    out = io.StringIO()
    bar = LineProgress(total=1000, desc="validate", unit="image", stream=out, heartbeat=0.2, steps=False)
    for _ in range(10):
        bar.update(32)
    time.sleep(0.3)
    bar.close()
    bar.close()
    lines = out.getvalue().splitlines()
    assert any("still working: 320/1000 images" in line for line in lines)  # no line per batch, a heartbeat
    assert lines[-1].startswith("edgeship: validate: 320/1000 images done in ") and len(lines) <= 4
