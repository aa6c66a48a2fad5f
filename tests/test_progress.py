"""The progress bar's echo: what a sweep shows for the cell it runs."""
import io

from lossland.progress import Progress


def test_echo_gets_notes_and_each_tenth_whether_or_not_the_bar_is_shown():
  for enabled in (False, True):
    got, stream = [], io.StringIO()
    bar = Progress("training", enabled=enabled, stream=stream, echo=got.append)
    bar.note("compiling...")
    for done in (0.05, 0.15, 0.16, 0.5, 1.0):
      bar(done, 1.0, f"step {int(done * 100)}")
    assert got == ["compiling...", "training 5% step 5", "training 15% step 15",
                   "training 50% step 50", "training 100% step 100"]
    assert bool(stream.getvalue()) == enabled   # the bar itself only when enabled


def test_no_echo_is_the_plain_bar():
  stream = io.StringIO()
  bar = Progress("x", enabled=False, stream=stream)
  bar.note("a")
  bar(0.5, 1.0)
  assert stream.getvalue() == ""
