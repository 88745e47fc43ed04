"""The log writer thread: flush means written, and every lost line is counted exactly once."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

from pgproxy.sink.writer import QueueWriter, next_wait, utf8_buffer
from tests.harness import wait_until


class _GatedStream(io.StringIO):
    """A log destination whose writes wait for ``release``; ``entered`` is set when a write is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        assert self.release.wait(60), "test never released the stream"
        return super().write(s)


def _stalled_writer(max_queued: int) -> tuple[QueueWriter, _GatedStream]:
    """A writer whose thread is stuck inside the stream's write, with an empty queue."""
    stream = _GatedStream()
    writer = QueueWriter(stream, max_queued=max_queued)
    writer.write('{"n":"first"}')  # wakes the idle thread (no flush marker: it could stay queued behind the line)
    assert stream.entered.wait(30)
    return writer, stream


def test_flush_reports_done_only_once_the_last_batch_is_written() -> None:
    writer, stream = _stalled_writer(max_queued=1000)
    for i in range(10):
        writer.write(f'{{"n":{i}}}')
    assert writer.flush(timeout=0.05) is False  # the stream has not taken the lines: not done
    stream.release.set()
    assert writer.flush(timeout=30) is True
    lines = stream.getvalue().splitlines()
    assert lines[-10:] == [f'{{"n":{i}}}' for i in range(10)]
    writer.close()


def test_flush_returns_with_every_earlier_line_in_the_stream() -> None:
    stream = io.StringIO()
    writer = QueueWriter(stream, max_queued=100_000)
    for round_ in range(300):
        for i in range(round_ % 7 + 1):
            writer.write(f"{round_}.{i}")
        assert writer.flush(timeout=30)
        assert stream.getvalue().endswith(f"{round_}.{round_ % 7}\n"), round_
    writer.close()


class _ReportGatedStream(io.StringIO):
    """Takes lines at once, but holds the ``log.dropped`` report until ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.lines_gate = threading.Event()  # set: ordinary lines pass
        self.report_waiting = threading.Event()

    def write(self, s: str) -> int:
        if "log.dropped" in s:
            self.report_waiting.set()
            assert self.release.wait(60), "test never released the stream"
        else:
            assert self.lines_gate.wait(60)
        return super().write(s)


def test_flush_waits_for_the_drop_report_too() -> None:
    stream = _ReportGatedStream()
    writer = QueueWriter(stream, max_queued=100)
    for i in range(1000):  # the writer thread holds at most one batch of 100 while its stream waits: lines drop
        writer.write(f'{{"n":{i}}}')
    stream.lines_gate.set()
    assert writer.flush(timeout=0.2) is False  # lines written, but the loss not yet told
    assert stream.report_waiting.is_set()
    stream.release.set()
    assert writer.flush(timeout=30) is True
    last = json.loads(stream.getvalue().splitlines()[-1])
    assert last["event"] == "log.dropped" and last["dropped_total"] == writer.dropped >= 700
    writer.close()


def test_drops_from_many_threads_are_counted_exactly_and_reported() -> None:
    writer, stream = _stalled_writer(max_queued=100)
    per_thread, threads = 5_000, 8

    def produce(tag: int) -> None:
        for i in range(per_thread):
            writer.write(f'{{"t":{tag},"n":{i}}}')

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert not w.is_alive(), "a producer blocked on the stalled log stream"
    stream.release.set()
    assert writer.flush(timeout=30)
    writer.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    written = [line for line in lines if "t" in line]
    reports = [line for line in lines if line.get("event") == "log.dropped"]
    assert len(written) + writer.dropped == per_thread * threads
    assert writer.dropped >= per_thread * threads - 200
    assert reports and reports[-1]["dropped_total"] == writer.dropped
    assert sum(r["dropped_since_last_report"] for r in reports) == writer.dropped


def test_an_idle_writer_writes_the_first_line_at_once() -> None:
    """With nothing queued the thread waits for a line, not for its timer (ten minutes here)."""
    stream = io.StringIO()
    writer = QueueWriter(stream, interval=600)
    writer.write("first")
    wait_until(lambda: "first" in stream.getvalue(), 30, lambda: "an idle writer waited for its timer")
    writer.close()


def test_the_thread_sleeps_its_interval_while_lines_come_and_waits_for_one_when_they_stop() -> None:
    assert next_wait(1, 0.25) == 0.25
    assert next_wait(5000, 0.25) == 0.25  # however busy: four wakes a second at most
    assert next_wait(0, 0.25) is None


def test_lines_that_keep_coming_are_written_together_once_per_interval() -> None:
    """After a wake the thread sleeps its interval: lines queued meanwhile go in one write, not one wake each."""
    stream = _WritesStream()
    writer = QueueWriter(stream, interval=600)
    writer.write("first")
    wait_until(lambda: stream.writes, 30, lambda: "the first line was not written")
    writer.write("second")
    writer.write_all([b"third", b"fourth"])
    assert writer.flush(timeout=30)  # wakes the thread at once: everything queued, in one batch
    writer.close()
    assert stream.writes == ["first\n", "second\nthird\nfourth\n"]


def test_a_writer_whose_lines_stopped_waits_for_the_next_one_again() -> None:
    """A timed wake that found nothing puts the thread back to waiting for a line, whatever its interval."""
    stream = io.StringIO()
    writer = QueueWriter(stream, interval=0.05)
    writer.write_all([b"first"])
    wait_until(lambda: "first" in stream.getvalue(), 30, lambda: "the first line was not written")
    # Once a timed wake found the queue empty, the thread waits for a line; a timer would now take ten minutes.
    wait_until(lambda: writer.idle, 30, lambda: "the writer kept waking on its timer")
    writer.interval = 600
    writer.write_all([b"second"])
    wait_until(lambda: "second" in stream.getvalue(), 30, lambda: "an idle writer waited for its timer")
    writer.close()


def test_write_all_queues_and_drops_as_writing_line_by_line() -> None:
    """A batch beyond ``max_queued`` keeps its first lines, in order, and counts the rest dropped."""
    results = []
    for batched in (False, True):
        writer, stream = _stalled_writer(max_queued=5)
        batches = [[f"{b}.{i}" for i in range(n)] for b, n in enumerate((2, 0, 2, 3, 1))]
        for batch in batches:
            if batched:
                writer.write_all(batch)
            else:
                for line in batch:
                    writer.write(line)
        dropped = writer.dropped
        stream.release.set()
        assert writer.flush(timeout=30)
        writer.close()
        lines = stream.getvalue().splitlines()
        results.append((dropped, [x for x in lines if "log.dropped" not in x]))
    assert results[0] == results[1]
    assert results[1] == (3, ['{"n":"first"}', "0.0", "0.1", "2.0", "2.1", "3.0"])


class _WritesStream(io.StringIO):
    """A log destination that keeps each write's text apart (a write is one batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


def test_utf8_lines_are_written_as_the_same_text() -> None:
    """Lines queued as UTF-8 bytes (the direct JSON lines) reach the stream as the text they encode.

    Batches of bytes only (decoded at once), of text only, and of both, with
    flush markers between: each write, and the whole, must be what the lines
    written as text give.
    """
    texts = [f'{{"n":{i},"t":"é€😀 {i}"}}' for i in range(40)]
    # bytes or str per line: runs of each, alternations, lone ones; a flush after some lines
    kinds = "bbbbbssssbsbsbbsbbbbbbbbbbsssbbbbsbbbbbb"
    flushes = {4, 9, 10, 25, 39}
    outputs = []
    for as_bytes in (True, False):
        stream = _WritesStream()
        writer, gate = _stalled_writer(max_queued=1000)
        writer.stream = stream  # the gated stream holds the first write; the rest go here
        start = 0
        for i in range(len(texts)):
            if i + 1 in flushes or i == len(texts) - 1:
                chunk = texts[start : i + 1]
                writer.write_all(
                    [t.encode() if as_bytes and k == "b" else t for t, k in zip(chunk, kinds[start:], strict=False)]
                )
                start = i + 1
                if i + 1 in flushes:
                    marker = threading.Event()
                    writer._queue.append(marker)  # a flush marker, without waiting for it
        gate.release.set()
        assert writer.flush(timeout=30)
        writer.close()
        outputs.append(stream.writes)
    assert outputs[0] == outputs[1]
    assert "".join(outputs[0]) == "".join(t + "\n" for t in texts)
    assert len(outputs[0]) == len(flushes) + 1  # one write per batch between markers, and the last


class _FailingBytes(io.BytesIO):
    """A binary stream whose writes fail, as a closed pipe's do."""

    def write(self, data: object) -> int:
        raise BrokenPipeError("the reader went away")


def test_utf8_lines_go_straight_to_a_utf8_files_buffer_as_the_same_text(tmp_path: Path) -> None:
    """With ``plain_newlines`` a UTF-8 file gets a batch of bytes lines on its buffer: the same file as the text way.

    Text written to the stream by someone else before a batch stays before it
    (the text layer is flushed first), and a failing stream counts every line
    of the batch lost, as the text way does.
    """
    texts = [f'{{"n":{i},"t":"é€😀"}}' for i in range(30)]
    contents = []
    for plain in (True, False):
        path = tmp_path / f"log-{plain}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            assert (utf8_buffer(handle) is handle.buffer) is True
            writer = QueueWriter(handle, plain_newlines=plain)
            writer.write_all([t.encode() for t in texts[:10]])
            assert writer.flush(timeout=30)
            handle.write("from elsewhere\n")  # left in the text layer, unflushed
            writer.write_all([t.encode() for t in texts[10:20]])
            assert writer.flush(timeout=30)
            writer.write_all([t.encode() if i % 3 else t for i, t in enumerate(texts[20:])])  # mixed: the text way
            assert writer.flush(timeout=30)
            writer.close()
        contents.append(path.read_text(encoding="utf-8"))
    assert contents[0] == contents[1]
    assert contents[0] == "".join(t + "\n" for t in texts[:10]) + "from elsewhere\n" + "".join(
        t + "\n" for t in texts[10:]
    )

    for plain in (True, False):
        broken = io.TextIOWrapper(_FailingBytes(), encoding="utf-8")
        writer = QueueWriter(broken, plain_newlines=plain)
        writer.write_all([t.encode() for t in texts])
        writer.flush(timeout=30)
        writer.close()
        assert writer.dropped == len(texts), plain


def test_only_a_utf8_text_file_has_its_buffer_written_directly(tmp_path: Path) -> None:
    with open(tmp_path / "latin", "w", encoding="latin-1") as latin, open(tmp_path / "u", "w", encoding="UTF8") as utf8:
        assert utf8_buffer(latin) is None
        assert utf8_buffer(utf8) is utf8.buffer  # any spelling of UTF-8
    assert utf8_buffer(io.StringIO()) is None


def test_on_drop_is_called_once_per_unreported_drop_from_the_thread_that_dropped() -> None:
    """How the proxy learns of drops without polling: one call, then none until ``drops_reported``."""
    writer, stream = _stalled_writer(max_queued=2)
    calls: list[str] = []
    writer.on_drop = lambda: calls.append(threading.current_thread().name)
    writer.drops_reported()
    writer.write_all(['{"n":1}', '{"n":2}'])  # fills the queue: nothing dropped yet
    assert calls == [] and writer.dropped == 0
    writer.write('{"n":3}')
    writer.write_all(['{"n":4}', '{"n":5}'])
    assert writer.dropped == 3
    assert calls == [threading.current_thread().name]  # once, by the writing thread, for three lines
    writer.drops_reported()
    assert calls == [threading.current_thread().name]
    dropper = threading.Thread(target=writer.write, args=('{"n":6}',), name="another-writer")
    dropper.start()
    dropper.join(30)
    assert calls == [threading.current_thread().name, "another-writer"] and writer.dropped == 4
    stream.release.set()
    writer.close()
