"""Progress without a terminal: a log line every interval, with count, percentage and ETA."""
import logging

import tqdm

from llm_anatomy import progress as prog


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_log_lines_every_interval_with_an_eta(caplog):
    clock = Clock()
    items = []
    with caplog.at_level(logging.INFO, logger="llm_anatomy.progress"):
        bar = prog.LogProgress(range(12), desc="evaluate minilm", interval=30, clock=clock)
        for i in bar:
            items.append(i)
            clock.t += 10  # each item takes 10 s: a line after items 3, 6, 9 and 12
    assert items == list(range(12))
    lines = [r.getMessage() for r in caplog.records]
    # independent: after k items, 10k s elapsed, (12 - k) items left at 10 s each
    assert lines == [f"evaluate minilm: {k}/12 ({round(100 * k / 12)}%), {10 * k // 60}:{10 * k % 60:02d} elapsed, "
                     f"ETA {10 * (12 - k) // 60}:{10 * (12 - k) % 60:02d}" for k in (3, 6, 9, 12)]


def test_a_resumed_bar_estimates_from_this_runs_rate(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="llm_anatomy.progress"):
        bar = prog.LogProgress(total=1000, initial=400, desc="fine-tune minilm", interval=30, clock=clock)
        bar.set_postfix(loss="0.412")
        for _ in range(100):
            clock.t += 0.5
            bar.update(1)
    first = caplog.records[0].getMessage()
    # 60 steps in 30 s -> 0.5 s/step, 540 steps left -> 270 s
    assert first == "fine-tune minilm: 460/1000 (46%), 0:30 elapsed, ETA 4:30, loss 0.412"
    assert len(caplog.records) == 1


def test_hours_and_no_total(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="llm_anatomy.progress"):
        bar = prog.LogProgress(total=None, desc="ablate", interval=30, clock=clock)
        clock.t += 3725
        bar.update(7)
    assert caplog.records[0].getMessage() == "ablate: 7, 1:02:05 elapsed"


def test_a_terminal_gets_tqdm_and_no_desc_gets_nothing(monkeypatch):
    monkeypatch.setattr(prog.sys.stderr, "isatty", lambda: True, raising=False)
    assert isinstance(prog.progress([1, 2], desc="x"), tqdm.std.tqdm)
    monkeypatch.setattr(prog.sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(prog.progress([1, 2], desc="x"), prog.LogProgress)
    assert list(prog.progress([1, 2])) == [1, 2]
