"""fetch_data against a local HTTP server with Range support (127.0.0.1, a
thread) and file:// URLs: full download, resume of a partial .part, a server
that ignores Range, a connection cut mid-file, checksum refusal."""
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

from lossland import data
from lossland.scripts import fetch_data

import cli_runner

NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


class Handler(http.server.BaseHTTPRequestHandler):
  """Serves files from ``root``; ``Range: bytes=N-`` gives 206 (416 past the
  end) unless ``ignore_range``; ``cut_after`` bytes of a body then closes."""
  root = None
  ignore_range = False
  cut_after = None
  log = []

  def do_GET(self):  # noqa: N802
    path = os.path.join(self.root, os.path.basename(self.path))
    if not os.path.isfile(path):
      self.send_error(404)
      return
    blob = open(path, "rb").read()
    rng = self.headers.get("Range")
    type(self).log.append((os.path.basename(self.path), rng))
    start = 0
    if rng and not self.ignore_range:
      start = int(rng.split("=")[1].split("-")[0])
      if start >= len(blob):
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{len(blob)}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return
      self.send_response(206)
      self.send_header("Content-Range", f"bytes {start}-{len(blob) - 1}/{len(blob)}")
    else:
      self.send_response(200)
    body = blob[start:]
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if self.cut_after is not None:
      body = body[: self.cut_after]
      self.close_connection = True
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.fixture
def server(tmp_path):
  root = tmp_path / "served"
  root.mkdir()
  handler = type("H", (Handler,), {"root": str(root), "log": []})
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}/", root, handler
  httpd.shutdown()
  httpd.server_close()


def serve_files(root, seed=0, size=5000):
  rng = np.random.default_rng(seed)
  table = {}
  for i, n in enumerate(NAMES):
    blob = rng.integers(0, 256, size + 100 * i, dtype=np.uint8).tobytes()
    (root / n).write_bytes(blob)
    table[n] = {"md5": hashlib.md5(blob).hexdigest(),
                "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
  return table


def test_full_download_then_nothing_to_do(server, tmp_path):
  url, root, handler = server
  table = serve_files(root)
  out = tmp_path / "data"
  paths = fetch_data.fetch("mnist", str(out), url, checksums=table, progress=False,
                           log=lambda s: None)
  assert [os.path.basename(p) for p in paths] == list(NAMES)
  for n in NAMES:
    assert (out / "mnist" / n).read_bytes() == (root / n).read_bytes()
    assert not (out / "mnist" / (n + ".part")).exists()
  n_requests = len(handler.log)
  fetch_data.fetch("mnist", str(out), url, checksums=table, progress=False,
                   log=lambda s: None)
  assert len(handler.log) == n_requests  # present and verified: no request


def test_resume_from_a_partial_part(server, tmp_path):
  url, root, handler = server
  table = serve_files(root)
  folder = tmp_path / "data" / "mnist"
  folder.mkdir(parents=True)
  name = NAMES[0]
  blob = (root / name).read_bytes()
  (folder / (name + ".part")).write_bytes(blob[:1234])
  fetch_data.download(url + name, str(folder / name), table[name], progress=False)
  assert (folder / name).read_bytes() == blob
  assert handler.log == [(name, "bytes=1234-")]
  # A complete .part: verified and renamed without a request.
  (folder / name).unlink()
  (folder / (name + ".part")).write_bytes(blob)
  fetch_data.download(url + name, str(folder / name), table[name], progress=False)
  assert (folder / name).read_bytes() == blob and len(handler.log) == 1
  # A complete .part and a table without a size: the server answers 416.
  (folder / name).unlink()
  (folder / (name + ".part")).write_bytes(blob)
  no_size = {k: v for k, v in table[name].items() if k != "size"}
  fetch_data.download(url + name, str(folder / name), no_size, progress=False)
  assert (folder / name).read_bytes() == blob and handler.log[-1] == (name, f"bytes={len(blob)}-")


def test_server_ignoring_range_restarts(server, tmp_path):
  url, root, handler = server
  table = serve_files(root)
  handler.ignore_range = True
  name = NAMES[1]
  dest = tmp_path / name
  (tmp_path / (name + ".part")).write_bytes(b"garbage that must not stay")
  fetch_data.download(url + name, str(dest), table[name], progress=False)
  assert dest.read_bytes() == (root / name).read_bytes()


def test_cut_connection_keeps_part_then_resumes(server, tmp_path):
  url, root, handler = server
  table = serve_files(root)
  name = NAMES[2]
  dest = tmp_path / name
  handler.cut_after = 2000
  with pytest.raises(fetch_data.DownloadError, match="resume"):
    fetch_data.download(url + name, str(dest), table[name], progress=False)
  part = tmp_path / (name + ".part")
  assert part.stat().st_size == 2000 and not dest.exists()
  handler.cut_after = None
  fetch_data.download(url + name, str(dest), table[name], progress=False)
  assert dest.read_bytes() == (root / name).read_bytes()
  assert handler.log[-1] == (name, "bytes=2000-")


def test_checksum_mismatch_deletes_part(server, tmp_path):
  url, root, handler = server
  table = serve_files(root)
  name = NAMES[3]
  bad = dict(table[name], sha256="0" * 64)
  with pytest.raises(data.DataError) as e:
    fetch_data.download(url + name, str(tmp_path / name), bad, progress=False)
  assert "checksum mismatch" in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / (name + ".part")).exists() and not (tmp_path / name).exists()


def test_file_urls_and_mirror_fallback(tmp_path):
  root = tmp_path / "mirror"
  root.mkdir()
  table = serve_files(root)
  out = tmp_path / "data"
  urls = {"mnist": ((tmp_path / "nowhere").as_uri() + "/", root.as_uri() + "/")}
  msgs = []
  fetch_data.fetch("mnist", str(out), checksums=table, urls=urls, progress=False,
                   log=msgs.append)
  for n in NAMES:
    assert (out / "mnist" / n).read_bytes() == (root / n).read_bytes()
  assert any("nowhere" in m for m in msgs)  # the first source failed, the second served
  # A partial .part and a file:// source (no Range): downloaded again whole.
  (out / "mnist" / NAMES[0]).unlink()
  (out / "mnist" / (NAMES[0] + ".part")).write_bytes(b"xyz")
  fetch_data.fetch("mnist", str(out), root.as_uri(), checksums=table, progress=False,
                   log=msgs.append)
  assert (out / "mnist" / NAMES[0]).read_bytes() == (root / NAMES[0]).read_bytes()


def run_cli(args, env_extra=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", LOSSLAND_COMPILATION_CACHE="0")
  env.update(env_extra or {})
  return cli_runner.run("lossland.scripts.fetch_data", args, env=env, timeout=120)


def test_cli_checksum_refusal_and_bad_input(server, tmp_path):
  url, root, handler = server
  serve_files(root)  # not the official files: the real table refuses them
  out = tmp_path / "data"
  r = run_cli(["mnist", "--data_dir", str(out), "--url_base", url])
  assert r.returncode == 2, r.stderr
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "checksum mismatch" in last
  assert not list((out / "mnist").glob("*.part"))
  assert not (out / "mnist" / NAMES[0]).exists()
  for bad, needle in [(["imagenet"], "unknown data set"),
                      (["mnist", "--url_base", "ftp://x/"], "url_base")]:
    r = run_cli(bad + ["--data_dir", str(tmp_path / "bad")])
    assert r.returncode == 2 and needle in r.stderr, (bad, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "bad").exists()
  # Network failure: one line, exit 2.
  r = run_cli(["cifar10", "--data_dir", str(out), "--url_base", url + "missing/"])
  assert r.returncode == 2 and "HTTP 404" in r.stderr.strip().splitlines()[-1]


def test_fetched_files_load(tmp_path):
  """fetch (file://) then make_dataset from the same folder, checksums on."""
  from test_data_files import make_idx_set
  (x_tr, l_tr, x_te, l_te), table = make_idx_set(tmp_path / "src", "mnist")
  out = tmp_path / "data"
  fetch_data.fetch("mnist", str(out), (tmp_path / "src" / "mnist").as_uri(),
                   checksums=table, progress=False, log=lambda s: None)
  ds = data.mnist(10, 3, n_test=5, data_dir=str(out), checksums=table)
  assert ds.x_train.shape == (10, 3) and ds.x_test.shape == (5, 3)
  np.testing.assert_array_equal(data.load_raw("mnist", str(out), checksums=table)[1], l_tr)
