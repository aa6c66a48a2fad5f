"""End-to-end: the landscape script writes a complete run directory; bad input exits 2."""
import json
import os

import pytest

import cli_runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, cwd):
  return cli_runner.run('lossland.scripts.landscape', args, cwd=ROOT, timeout=600,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_tiny_run_writes_everything(tmp_path):
  out = tmp_path / 'runs'
  p = _run(['--dataset', 'synthetic', '--d', '3', '--n_data', '20', '--width', '3',
            '--bh_chains', '2', '--bh_steps', '10', '--connect_budget', '2',
            '--out_dir', str(out)], ROOT)
  assert p.returncode == 0, p.stderr[-2000:]
  (run,) = os.listdir(out / 'landscape')
  d = out / 'landscape' / run
  for f in ('config.json', 'landscape.sqlite', 'disconnectivity.png', 'summary.json',
            'arrays.npz', 'metrics.jsonl', 'pathsample/min.data', 'pathsample/ts.data'):
    assert (d / f).exists(), f
  s = json.load(open(d / 'summary.json'))
  for k in ('n_minima', 'n_ts', 'global_min_loss', 'frustration', 'funnel_fraction'):
    assert k in s
  assert s['n_minima'] >= 1 and s['max_grad_rms_minima'] <= 1e-8
  assert json.load(open(d / 'config.json'))['flags']['depth'] == 1
  # Re-analysis of the database it wrote.
  p2 = _run(['--from_db', str(d / 'landscape.sqlite'), '--out_dir', str(tmp_path / 'r2')], ROOT)
  assert p2.returncode == 0, p2.stderr[-2000:]
  (run2,) = os.listdir(tmp_path / 'r2' / 'landscape')
  s2 = json.load(open(tmp_path / 'r2' / 'landscape' / run2 / 'summary.json'))
  assert s2['n_minima'] == s['n_minima'] and s2['n_ts'] == s['n_ts']
  for k in ('global_min_loss', 'frustration', 'funnel_fraction', 'test_accuracy_quantiles',
            'train_accuracy_quantiles', 'tree_dropped_minima'):
    assert s2[k] == s[k], k  # one figure + summary helper for the study and --from_db
  # The grid of graphs reads the run directory.
  g = cli_runner.run('lossland.scripts.landscape_grid', ['--out', str(tmp_path / 'grid.png'),
                     str(d)], cwd=ROOT, timeout=120)
  assert g.returncode == 0, g.stderr[-2000:]
  (cell,) = json.load(open(tmp_path / 'grid.json'))
  assert cell['n_minima'] == s['n_minima'] and cell['depth'] == 1 and cell['n_data'] == 20
  assert (tmp_path / 'grid.png').stat().st_size > 5000


@pytest.mark.parametrize('args,msg', [
    (['--depth', '0'], 'invalid depth'),
    (['--n_data', '600'], 'leaves no test points'),
    (['--no_such_flag', '1'], 'Unknown command line flag'),
    (['--lam', 'abc'], 'lam'),
    (['--from_db', '/nonexistent/x.sqlite'], 'no such file'),
    (['--out_dir', '{file}'], 'not a directory'),
    (['--out_dir', '{file}/sub'], 'not a directory'),
    (['--out_dir', '/proc/lossland_landscape'], 'not writable'),
])
def test_bad_flags_exit_2_and_write_nothing(tmp_path, args, msg):
  (tmp_path / 'a_file').write_text('')
  args = [a.replace('{file}', str(tmp_path / 'a_file')) for a in args]
  if '--out_dir' not in args:
    args += ['--out_dir', str(tmp_path / 'o')]
  p = _run(args, ROOT)
  assert p.returncode == 2
  assert msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
  assert sorted(os.listdir(tmp_path)) == ['a_file']


@pytest.mark.parametrize('args,msg', [
    (['--out', '{tmp}/missing/grid.png', '{tmp}'], 'does not exist'),
    (['--out', '{tmp}', '{tmp}'], 'is a directory'),
])
def test_grid_bad_out_exit_2(tmp_path, args, msg):
  args = [a.replace('{tmp}', str(tmp_path)) for a in args]
  p = cli_runner.run('lossland.scripts.landscape_grid', args, cwd=ROOT, timeout=120)
  assert p.returncode == 2 and msg in p.stderr, p.stderr
  assert len(p.stderr.strip().splitlines()) == 1
  assert os.listdir(tmp_path) == []


def test_corrupt_database_exits_2(tmp_path):
  bad = tmp_path / 'bad.sqlite'
  bad.write_bytes(b'\x00garbage' * 1000)
  p = _run(['--from_db', str(bad), '--out_dir', str(tmp_path / 'o')], ROOT)
  assert p.returncode == 2 and 'not a readable lossland landscape database' in p.stderr
  assert len(p.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'o').exists()


def test_study_width_is_the_brute_force_closest_count():
  """nets.width_for_n's closed form, shifted for biases, equals a search over h."""
  import numpy as np
  from lossland.landscape.study import width_for_params
  count = lambda d, h, depth, k: sum(a * b + b for a, b in zip(
      (d,) + (h,) * depth, (h,) * depth + (k,)))
  hs = np.arange(1, 1100)
  for d in (1, 5, 8):
    for depth in (1, 2, 3):
      for k in (2, 3, 10):
        counts = count(d, hs, depth, k)  # every layer's weights and biases
        for n in (10, 54, 57, 59, 130, 401, 2000):
          brute = int(hs[np.argmin(np.abs(counts - n))])  # first (smaller) on a tie
          assert width_for_params(d, depth, k, n) == brute, (d, depth, k, n)
  assert width_for_params(5, 1, 3, 57) == 6 and count(5, 6, 1, 3) == 57


def test_study_digits_split_is_the_classes_taking_turns():
  """data.interleave_classes gives the study's old split: a plain loop over classes."""
  import numpy as np
  from lossland import data
  from lossland.landscape import study
  cfg = study.StudyConfig(n_classes=3, d=5, n_data=30, n_test=40)
  xtr, ytr, xte, yte = study.make_data(cfg)
  _, labels = data.load_digits_raw()
  per_class = [np.nonzero(labels == c)[0] for c in range(3)]
  order = [i for k in range(min(map(len, per_class))) for c in range(3)
           for i in [per_class[c][k]]]
  np.testing.assert_array_equal(ytr, labels[order[:30]])
  np.testing.assert_array_equal(yte, labels[order[30:70]])
  assert xtr.shape == (30, 5) and xte.shape == (40, 5)
  np.testing.assert_allclose(xtr.mean(0), 0, atol=1e-12)  # PCA fitted on train
  np.testing.assert_allclose(np.cov(xtr.T), np.eye(5), atol=1e-10)  # whitened
