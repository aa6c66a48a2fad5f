"""Shared plumbing of the absl entry points: flags, errors, exit codes, progress
(:class:`Progress`, re-exported from :mod:`lossland.progress`).

* Bad input gives a one-line ``error: ...`` on stderr and exit status 2
  (absl's default for a flag error is a multi-line message and status 1).
  Only errors raised *on purpose* for bad input count as bad input:
  :class:`UsageError`, :class:`lossland.io.InputError` (run directories,
  job options), ``lossland.data.DataError`` where defined, and the
  ``ValueError`` a config dataclass raises from its ``__post_init__`` or
  ``validate``. Any other exception is a bug and keeps its traceback.
* ``-h``/``--help`` print the script's help and exit 0.
* Ctrl-C prints one line (``interrupted``) and exits 130. An interrupt that
  lands where Python swallows exceptions (a garbage-collection callback, such
  as jax's, prints "Exception ignored" and goes on) is raised again every
  2 s until the script has handled it (:func:`_sigint_redelivered`).
* ``--command_buffers xla|off|scan`` sets XLA's GPU command buffers before
  jax starts its backend (:mod:`lossland.xla_options`; worker subprocesses
  inherit the setting).
* JAX's persistent compilation cache is on for every script, in
  ``$LOSSLAND_CACHE_DIR``, else ``$XDG_CACHE_HOME/lossland/jax``, else
  ``~/.cache/lossland/jax``; ``--nocompilation_cache`` or
  ``LOSSLAND_COMPILATION_CACHE=0`` turn it off.
"""
import _thread
import contextlib
import os
import signal
import sys
import threading
import warnings

from absl import app
from absl import flags
from absl import logging

from lossland import io
from lossland.compilation_cache import cache_dir, enable_compilation_cache  # noqa: F401 (re-export)
from lossland.progress import Progress  # noqa: F401 (re-export: scripts use _cli.Progress)
from lossland.xla_options import COMMAND_BUFFERS, set_command_buffers


class UsageError(io.InputError):
  """Invalid input detected by a script after flag parsing (exit status 2)."""


_COMPILATION_CACHE = flags.DEFINE_boolean(
    "compilation_cache", True,
    "Keep compiled programs in JAX's persistent compilation cache "
    "($LOSSLAND_CACHE_DIR, else $XDG_CACHE_HOME/lossland/jax or "
    "~/.cache/lossland/jax); LOSSLAND_COMPILATION_CACHE=0 also turns it off.")

_COMMAND_BUFFERS = flags.DEFINE_enum(
    "command_buffers", "xla", list(COMMAND_BUFFERS),
    "GPU command buffers (CUDA graphs; lossland.xla_options): xla (XLA's default), off, or "
    "scan (also while loops, so a chunk of training steps launches as one graph). "
    "CPU backends ignore it.")

_HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "-?")
_FULL_HELP_ARGS = ("--helpfull", "-helpfull")


def write_summary(out_dir: str, out: dict, lines: list) -> dict:
  """A benchmark's end: prints its table ``lines``, keeps them as
  ``out["table"]`` and writes ``out_dir/summary.json``; returns ``out``."""
  print("\n".join(lines))
  out["table"] = lines
  with open(os.path.join(out_dir, "summary.json"), "w") as fh:
    fh.write(io.dumps(out, indent=2) + "\n")
  return out


def fail(message: str):
  """Prints ``error: message`` on one line to stderr and exits with status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def define_flags(spec, module_name: str, flag_values=flags.FLAGS) -> dict:
  """Defines one absl flag per option of a declarative spec.

  Args:
    spec: options with ``name``, ``type`` ("int", "float", "bool", "str",
      "enum"), ``default``, ``help`` and ``choices`` (e.g.
      :data:`lossland.job.SPEC`).
    module_name: the module the flags belong to (the script's ``__name__``),
      so that they are its key flags and appear in its ``--help``.

  Returns:
    dict name -> FlagHolder.
  """
  if module_name == "__main__":
    module_name = sys.argv[0]  # absl's name for the main module's flags
  define = {"int": flags.DEFINE_integer, "float": flags.DEFINE_float,
            "bool": flags.DEFINE_boolean, "str": flags.DEFINE_string}
  holders = {}
  for o in spec:
    if o.type == "enum":
      holders[o.name] = flags.DEFINE_enum(o.name, o.default, list(o.choices), o.help,
                                          flag_values=flag_values,
                                          module_name=module_name)
    elif o.type in ("ints", "floats"):  # comma-separated; parsed by options.parse_list
      default = None if o.default is None else [str(v) for v in o.default]
      holders[o.name] = flags.DEFINE_list(o.name, default, o.help, flag_values=flag_values,
                                          module_name=module_name)
    else:
      holders[o.name] = define[o.type](o.name, o.default, o.help,
                                       flag_values=flag_values,
                                       module_name=module_name)
  return holders


def flag_values(spec, flag_values=flags.FLAGS) -> dict:
  """The parsed values of the spec's flags: dict name -> value."""
  return {o.name: flag_values[o.name].value for o in spec}


def given_values(spec, flag_values=flags.FLAGS) -> dict:
  """The values of the spec's flags that the command line gave (a preset's
  overrides): dict name -> value."""
  return {o.name: flag_values[o.name].value for o in spec if flag_values[o.name].present}


def _cache_wanted() -> bool:
  env = os.environ.get("LOSSLAND_COMPILATION_CACHE", "").strip().lower()
  if env in ("0", "false", "no", "off"):
    return False
  return _COMPILATION_CACHE.value


def _main_module():
  return sys.modules.get("__main__")


def _print_help(full: bool):
  mod = _main_module()
  doc = (getattr(mod, "__doc__", None) or "").strip()
  if doc:
    print(doc, end="\n\n")
  if full:
    print(flags.FLAGS.get_help())
  else:
    print("flags (--helpfull lists absl's own as well):")
    print(flags.FLAGS.main_module_help())
    print(flags.FLAGS.module_help(sys.modules[__name__]))
  sys.stdout.flush()


def _parse(argv):
  args = argv[1:]
  if "--" in args:
    args = args[:args.index("--")]
  full = any(a in _FULL_HELP_ARGS for a in args)
  if full or any(a in _HELP_ARGS for a in args):
    try:
      _print_help(full=full)
    except BrokenPipeError:  # e.g. piped into head
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(e)


def _on_purpose(e: BaseException) -> bool:
  """Whether an exception is a bad-input error raised on purpose."""
  if isinstance(e, io.InputError):
    return True
  data = sys.modules.get("lossland.data")
  data_error = getattr(data, "DataError", None)
  if data_error is not None and isinstance(e, data_error):
    return True
  if type(e) is ValueError and e.__traceback__ is not None:
    tb = e.__traceback__
    while tb.tb_next is not None:
      tb = tb.tb_next
    # A config dataclass checking its own fields (NetConfig.__post_init__,
    # StudyConfig.validate, ...): the message names the bad value.
    return tb.tb_frame.f_code.co_name in ("__post_init__", "validate")
  return False


# Seconds between redeliveries of a Ctrl-C that was swallowed.
REDELIVER_SECONDS = 2.0


@contextlib.contextmanager
def _sigint_redelivered():
  """Ctrl-C raises KeyboardInterrupt, and keeps raising it until handled.

  Python runs a signal's handler at the next bytecode of the main thread; if
  that is inside a callback whose exceptions the interpreter ignores (gc
  callbacks: jax registers one), the KeyboardInterrupt is printed as
  "Exception ignored" and the script runs on (seen as a Ctrl-C that a
  training ignored). The first SIGINT starts a thread that re-raises it in
  the main thread (``_thread.interrupt_main``) every
  :data:`REDELIVER_SECONDS` until the body's ``except KeyboardInterrupt``
  calls the yielded ``handled()``, or the body ends. Only in the main thread
  (elsewhere: no change).
  """
  if threading.current_thread() is not threading.main_thread():
    yield lambda: None
    return
  done, started = threading.Event(), threading.Event()

  def redeliver():
    while not done.wait(REDELIVER_SECONDS):
      _thread.interrupt_main(signal.SIGINT)

  def handler(signum, frame):
    if not started.is_set():
      started.set()
      threading.Thread(target=redeliver, daemon=True).start()
    raise KeyboardInterrupt

  def handled():
    # no second KeyboardInterrupt while the script says goodbye
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    done.set()
  previous = signal.signal(signal.SIGINT, handler)
  try:
    yield handled
  finally:
    done.set()
    if signal.getsignal(signal.SIGINT) is handler:
      signal.signal(signal.SIGINT, previous)


def run(main, interrupted="interrupted"):
  """``absl.app.run(main)`` with one-line bad-input errors and exit status 2.

  Args:
    main: the script's ``main(argv)``.
    interrupted: the line printed on Ctrl-C (exit status 130), or a callable
      returning it (called after flag parsing).
  """
  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)
    # Buffer donation is a no-op on CPU; its warning is noise for a user.
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    set_command_buffers(_COMMAND_BUFFERS.value)  # before jax starts its backend
    if _cache_wanted():
      enable_compilation_cache()
    with _sigint_redelivered() as handled:
      try:
        return main(argv)
      except KeyboardInterrupt:
        handled()
        _interrupted(interrupted)
      except (Exception,) as e:  # pylint: disable=broad-except
        if _on_purpose(e):
          fail(e)
        raise
  app.run(wrapped, flags_parser=_parse)


def _interrupted(interrupted):
  """Ctrl-C: the one line on stderr, exit status 130."""
  msg = interrupted() if callable(interrupted) else interrupted
  sys.stdout.flush()
  tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
  sys.stderr.write(("\n" if tty else "") + msg + "\n")
  sys.stderr.flush()
  sys.exit(130)
