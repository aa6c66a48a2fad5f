"""Run ``python -m MODULE ARGS`` for the tests, without paying jax's import each time.

Most of the suite's command-line tests check what a script does with its
flags before any real work (bad input: a one-line error and exit status 2;
``--help``). Each such run used to start a fresh interpreter that imported
jax and the library again: about 1.3 s of CPU per run, some 60 runs.

:func:`run` sends the command to a fork server: one helper process per test
process that has imported jax and the library once (without creating a
backend, so forking is safe) and forks a child per command. The child does
what ``python -m`` does (``runpy.run_module(MODULE, run_name="__main__")``
with ``sys.argv`` set; the script module itself is imported fresh in every
child, so its flags are defined once per run), with the command's own
working directory, environment and stdout/stderr files, and exits with the
status the script gave (``SystemExit``), or 1 on an uncaught exception after
printing the traceback, as the interpreter does. Commands whose environment
sets ``JAX_*``, ``XLA_*``, ``PYTHONPATH`` or ``PYTHONHASHSEED`` (read when
the interpreter and jax start) go to a server started with those values.
Without ``fork`` (not Linux), or when the server cannot start, a command
runs as a plain subprocess.
"""
import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
import types

_SERVER = r'''
import json, os, runpy, signal, sys, time, traceback
import jax, numpy  # noqa: F401  (the expensive imports, done once)
import lossland, lossland.experiments.job, lossland.figures  # noqa: F401
import absl.app, absl.flags  # noqa: F401
out = sys.stdout
for line in sys.stdin:
  req = json.loads(line)
  pid = os.fork()
  if pid == 0:
    code = 1
    try:
      os.chdir(req["cwd"])
      os.environ.clear()
      os.environ.update(req["env"])
      fo = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
      fe = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
      os.dup2(fo, 1), os.dup2(fe, 2)
      sys.stdin = open(os.devnull)
      sys.argv = [req["module"], *req["args"]]
      try:
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
        code = 0
      except SystemExit as e:
        c = e.code
        code = 0 if c is None else c if isinstance(c, int) else (print(c, file=sys.stderr) or 1)
      except BaseException:
        traceback.print_exc()
        code = 1
    finally:
      try:
        import atexit
        atexit._run_exitfuncs()
        sys.stdout.flush(), sys.stderr.flush()
      finally:
        os._exit(code)
  deadline = time.time() + req["timeout"]
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      rc = os.waitstatus_to_exitcode(status)
      break
    if time.time() > deadline:
      os.kill(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
      rc = "timeout"
      break
    time.sleep(0.005)
  out.write(json.dumps({"rc": rc}) + "\n")
  out.flush()
'''

# read when jax and the library are imported: a server per combination
_FIXED_PREFIXES = ("JAX_", "XLA_", "PYTHONPATH", "PYTHONHASHSEED")
_lock = threading.Lock()
_state = {}


def _fixed(env: dict) -> dict:
  return {k: v for k, v in env.items() if k.startswith(_FIXED_PREFIXES)}


def _server(env: dict):
  """The server for this jax environment (started on first use), or None."""
  key = json.dumps(sorted(_fixed(env).items()))
  if key not in _state:
    try:
      proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
      atexit.register(proc.kill)
    except OSError:
      proc = None
    _state[key] = proc
  proc = _state[key]
  return proc if proc is not None and proc.poll() is None else None


def run(module: str, args, env: dict | None = None, cwd: str | None = None,
        timeout: float = 300) -> types.SimpleNamespace:
  """``python -m module *args``: returncode, stdout and stderr as text.

  Raises subprocess.TimeoutExpired after ``timeout`` seconds (the child is
  killed), as ``subprocess.run`` does.
  """
  env = dict(os.environ if env is None else env)
  cwd = os.path.abspath(cwd or os.getcwd())
  args = [str(a) for a in args]
  if sys.platform != "linux":
    return _plain(module, args, env, cwd, timeout)
  with _lock:
    proc = _server(env)
    if proc is None:
      return _plain(module, args, env, cwd, timeout)
    with tempfile.TemporaryDirectory() as tmp:
      paths = {k: os.path.join(tmp, k) for k in ("stdout", "stderr")}
      proc.stdin.write(json.dumps({"module": module, "args": args, "env": env, "cwd": cwd,
                                   "timeout": timeout, **paths}) + "\n")
      proc.stdin.flush()
      reply = proc.stdout.readline()
      if not reply:
        return _plain(module, args, env, cwd, timeout)
      rc = json.loads(reply)["rc"]
      if rc == "timeout":
        raise subprocess.TimeoutExpired([module, *args], timeout)
      text = {k: open(p, errors="replace").read() for k, p in paths.items()}
  return types.SimpleNamespace(returncode=rc, args=[module, *args], **text)


def _plain(module, args, env, cwd, timeout):
  res = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                       text=True, env=env, cwd=cwd, timeout=timeout)
  return types.SimpleNamespace(returncode=res.returncode, args=res.args, stdout=res.stdout,
                               stderr=res.stderr)
