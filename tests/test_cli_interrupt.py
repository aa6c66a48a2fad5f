"""Ctrl-C in the scripts (lossland/scripts/_cli.py): one line, exit 130, even
when the first KeyboardInterrupt lands where Python swallows it (a gc
callback: jax registers one; seen as a training that ignored Ctrl-C)."""
import textwrap
import time

import cli_runner

_SCRIPT = textwrap.dedent("""
    import gc, os, signal, sys, time
    from lossland.scripts import _cli

    def main(argv):
      if argv[1] == "swallowed":
        # the interrupt arrives inside a gc callback, which ignores exceptions
        def cb(phase, info):
          if phase == "start" and not cb.done:
            cb.done = True
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)   # the handler runs here: KeyboardInterrupt, ignored
        cb.done = False
        gc.callbacks.append(cb)
        gc.collect()
        gc.callbacks.remove(cb)
        print("still running", flush=True)
      else:
        os.kill(os.getpid(), signal.SIGINT)
      t0 = time.time()
      while time.time() - t0 < 30:
        time.sleep(0.01)
      print("never interrupted")

    _cli.run(main, interrupted="interrupted: bye")
    """)


def test_ctrl_c_is_one_line_and_130_even_if_swallowed_once(tmp_path):
  (tmp_path / "interrupt_probe.py").write_text(_SCRIPT)
  for how in ("plain", "swallowed"):
    t0 = time.time()
    out = cli_runner.run("interrupt_probe", [how], cwd=str(tmp_path), timeout=60)
    took = time.time() - t0
    assert out.returncode == 130, (how, out.stdout, out.stderr)
    assert out.stderr.strip().splitlines()[-1] == "interrupted: bye", out.stderr
    assert "never interrupted" not in out.stdout
    assert took < 15, took
    if how == "swallowed":
      assert "still running" in out.stdout  # the first interrupt was lost...
      assert "Exception ignored" in out.stderr  # ...where Python said so
