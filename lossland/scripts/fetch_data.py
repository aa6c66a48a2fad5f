"""Downloads a data set's official files into the data directory, with resume
and checksums (standard library only).

    python -m lossland.scripts.fetch_data mnist
    python -m lossland.scripts.fetch_data cifar10 --data_dir /data/lossland
    python -m lossland.scripts.fetch_data fashion_mnist --url_base file:///mnt/mirror/

NAME is mnist, fashion_mnist, cifar10 or all. Files go to ``DIR/NAME/`` (DIR:
``--data_dir``, else ``$LOSSLAND_DATA_DIR``, else
``$XDG_CACHE_HOME/lossland/data``, else ``~/.cache/lossland/data``), where
``--dataset NAME`` of the scripts reads them. Each file is downloaded to
``FILE.part`` (an interrupted download resumes from there with an HTTP Range
request), checked against the official MD5/SHA-256 of
``lossland.data.CHECKSUMS``, and renamed into place only when it matches; a
``.part`` whose checksum differs is deleted. Files already in place with the
right checksum are kept. The sources are tried in order (for MNIST, mirrors
first); ``--url_base`` replaces them (http(s):// or file:// URL of a folder
holding the files). Bad input or a failed download: one line, exit status 2.
"""
import dataclasses
import http.client
import os
import re
import sys
import urllib.error
import urllib.request


from lossland import data
from lossland.experiments import options
from lossland.experiments.options import option
from lossland.scripts import _cli

@dataclasses.dataclass(frozen=True)
class FetchOptions:
  """The script's options (each field is the flag of the same name)."""
  data_dir: str | None = option(None, "Data directory (default: $LOSSLAND_DATA_DIR, else "
                                "$XDG_CACHE_HOME/lossland/data or ~/.cache/lossland/data).")
  url_base: str | None = option(None, "Download from this folder URL (http://, https:// or "
                                "file://) instead of the official sources.")
  timeout: float = option(60.0, "Network timeout in seconds.")


_OPTIONS = FetchOptions
_SPEC = options.spec_of(FetchOptions)
_cli.define_flags(_SPEC, __name__)

_CHUNK = 1 << 16


class DownloadError(Exception):
  """A download failed (network, HTTP status); the .part file is kept."""


def _file_names(name: str) -> dict:
  if name == "cifar10":
    return {"cifar-10-binary.tar.gz": "cifar-10-binary.tar.gz"}
  return {f: f for f in data.CHECKSUMS[name]}


def _open(url: str, start: int, timeout: float):
  headers = {"User-Agent": "lossland-fetch_data"}
  if start:
    headers["Range"] = f"bytes={start}-"
  return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                timeout=timeout)


def download(url: str, dest: str, expected: dict, *, timeout: float = 60.0,
             progress: bool = True) -> str:
  """Downloads ``url`` to ``dest`` through ``dest + ".part"``.

  Resumes an existing ``.part`` with ``Range: bytes=N-`` (a server that
  answers 200 instead of 206 is downloaded from the start), checks the
  complete file against ``expected`` (``{"md5", "sha256", "size"}``) and
  renames it into place.

  Returns:
    dest.

  Raises:
    DownloadError: network or HTTP failure (the .part is kept for a resume).
    lossland.data.DataError: checksum mismatch (the .part is deleted).
  """
  part = dest + ".part"
  have = os.path.getsize(part) if os.path.isfile(part) else 0
  size = expected.get("size")
  label = os.path.basename(dest)
  resp = None
  if not (size and have == size):  # a complete .part needs no request
    try:
      resp = _open(url, have, timeout)
    except urllib.error.HTTPError as e:
      if not (e.code == 416 and have):  # 416: nothing left after byte `have`
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
      reason = getattr(e, "reason", None) or e
      raise DownloadError(f"{url}: {reason}") from None
  if resp is not None:
    with resp:
      status = getattr(resp, "status", None)
      mode = "wb"
      if have and status == 206:
        m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
        if m and int(m.group(1)) == have:
          mode = "ab"
      if mode == "wb":
        have = 0
      length = resp.headers.get("Content-Length")
      total = have + int(length) if length and length.isdigit() else size
      bar = _cli.Progress(label, enabled=progress)
      if mode == "ab":
        bar.note(f"resuming at {have} bytes")
      done = have
      try:
        with open(part, mode) as fh:
          while True:
            chunk = resp.read(_CHUNK)
            if not chunk:
              break
            fh.write(chunk)
            done += len(chunk)
            if total:
              bar(done, total, f"{done / 1e6:.1f}/{total / 1e6:.1f} MB")
      except (OSError, http.client.HTTPException) as e:  # IncompleteRead, reset, timeout
        bar.close()
        raise DownloadError(f"{url}: interrupted after {done} bytes "
                            f"({str(e) or type(e).__name__}); run the same "
                            "command again to resume") from None
      bar.close()
      if total and done < total:
        raise DownloadError(f"{url}: interrupted after {done} of {total} bytes; "
                            "run the same command again to resume")
  problem = data.checksum_problem(part, expected)
  if problem:
    os.remove(part)
    raise data.DataError(f"{part}: checksum mismatch: the downloaded file "
                         f"{problem}; deleted it. Try again, or another source "
                         "with --url_base")
  os.replace(part, dest)
  return dest


def fetch(name: str, data_dir: str | None = None, url_base: str | None = None,
          *, checksums: dict | None = None, urls: dict | None = None,
          timeout: float = 60.0, progress: bool = True, log=None) -> list:
  """Downloads every file of data set ``name`` into ``<data_dir>/<name>/``.

  Args:
    name: "mnist", "fashion_mnist" or "cifar10".
    data_dir: default :func:`lossland.data.default_data_dir`.
    url_base: a folder URL replacing the official sources.
    checksums: replaces ``data.CHECKSUMS[name]`` (tests).
    urls: replaces ``data.URLS`` (tests).
    log: callable for one-line messages (default: print to stderr).

  Returns:
    the paths of the files, all verified.
  """
  if name not in data.IMAGE_DATASETS:
    raise data.DataError(f"unknown data set {name!r}; choose from "
                         f"{', '.join(data.IMAGE_DATASETS)} or all")
  log = log or (lambda s: print(s, file=sys.stderr, flush=True))
  table = data.CHECKSUMS[name] if checksums is None else checksums
  bases = [url_base] if url_base else list((urls or data.URLS)[name])
  folder = data.dataset_dir(name, data_dir)
  os.makedirs(folder, exist_ok=True)
  paths = []
  for fname in _file_names(name):
    dest = os.path.join(folder, fname)
    expected = table[fname]
    if os.path.isfile(dest):
      problem = data.checksum_problem(dest, expected)
      if problem:
        raise data.DataError(f"{dest}: exists but the file {problem}; delete "
                             "it and run the same command again")
      log(f"{dest}: present, checksum ok")
      paths.append(dest)
      continue
    errors = []
    for base in bases:
      url = base if base.endswith("/") else base + "/"
      url += fname
      try:
        download(url, dest, expected, timeout=timeout, progress=progress)
        break
      except DownloadError as e:
        errors.append(str(e))
        if len(bases) > 1:
          log(f"{fname}: {e}")
    else:
      raise DownloadError(errors[-1] if len(errors) == 1 else
                          f"{fname}: every source failed ({len(errors)} tried; "
                          f"last: {errors[-1]})")
    log(f"{dest}: downloaded, checksum ok")
    paths.append(dest)
  return paths


def main(argv):
  o = _OPTIONS(**_cli.flag_values(_SPEC))
  names = argv[1:]
  if len(names) != 1:
    raise _cli.UsageError("give one data set: python -m lossland.scripts.fetch_data "
                          f"NAME with NAME one of {', '.join(data.IMAGE_DATASETS)}, all")
  name = names[0]
  todo = list(data.IMAGE_DATASETS) if name == "all" else [name]
  if name != "all" and name not in data.IMAGE_DATASETS:
    raise _cli.UsageError(f"unknown data set {name!r}; choose from "
                          f"{', '.join(data.IMAGE_DATASETS)}, all")
  if o.url_base is not None and not re.match(r"(https?|file)://", o.url_base):
    raise _cli.UsageError(f"--url_base {o.url_base!r}: expected an http://, "
                          "https:// or file:// URL")
  if o.timeout <= 0:
    raise _cli.UsageError(f"--timeout must be positive, got {o.timeout}")
  for n in todo:
    try:
      fetch(n, o.data_dir, o.url_base, timeout=o.timeout)
    except (DownloadError, OSError) as e:
      raise _cli.UsageError(str(e)) from None
    print(data.dataset_dir(n, o.data_dir))


if __name__ == "__main__":
  _cli.run(main, interrupted="interrupted; run the same command to resume the download")
