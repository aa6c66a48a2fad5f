"""tests/cli_runner.py (the fork server behind the command-line tests) against
plain ``python -m`` subprocesses: the same exit status, stdout and stderr, the
command's own working directory and environment, and the timeout."""
import os
import subprocess
import sys
import textwrap

import pytest

import cli_runner

_MODULE = textwrap.dedent("""
    import os, sys, time
    what = sys.argv[1]
    print("argv", sys.argv[1:], "cwd", os.path.basename(os.getcwd()), "env",
          os.environ.get("CLI_RUNNER_TEST"), "name", __name__)
    print("to stderr", file=sys.stderr)
    if what == "exit3":
      sys.exit(3)
    if what == "message":
      sys.exit("error: a message")
    if what == "raise":
      raise ValueError("boom")
    if what == "sleep":
      time.sleep(30)
    """)


@pytest.mark.parametrize("what", ["ok", "exit3", "message", "raise"])
def test_same_as_python_m(tmp_path, what):
  (tmp_path / "cli_runner_probe.py").write_text(_MODULE)
  env = dict(os.environ, CLI_RUNNER_TEST="x1")
  got = cli_runner.run("cli_runner_probe", [what, "b c"], env=env, cwd=str(tmp_path))
  want = subprocess.run([sys.executable, "-m", "cli_runner_probe", what, "b c"], env=env,
                        cwd=str(tmp_path), capture_output=True, text=True)
  assert got.returncode == want.returncode == {"ok": 0, "exit3": 3, "message": 1,
                                               "raise": 1}[what]
  assert got.stdout == want.stdout
  assert "name __main__" in got.stdout and "env x1" in got.stdout
  if what == "raise":  # the traceback's frames differ (runpy's), its last line does not
    assert got.stderr.strip().splitlines()[-1] == want.stderr.strip().splitlines()[-1] \
        == "ValueError: boom"
  else:
    assert got.stderr == want.stderr


def test_timeout_kills_the_command(tmp_path):
  (tmp_path / "cli_runner_probe.py").write_text(_MODULE)
  with pytest.raises(subprocess.TimeoutExpired):
    cli_runner.run("cli_runner_probe", ["sleep"], cwd=str(tmp_path), timeout=1)
  # the server is still there for the next command
  assert cli_runner.run("cli_runner_probe", ["ok"], cwd=str(tmp_path)).returncode == 0
