"""The option system (dataclass fields -> flags), the study engine and the
presets as values: parsing, rounds, run directories, and cells that stay
those of the runs made before the move (their ids and digests are pinned)."""
import dataclasses
import json
import os

import numpy as np
import pytest
from absl import flags

from lossland import io, job, sweep
from lossland.experiments import generalization_study, options, phase_study, study
from lossland.experiments.options import OptionError, option
from lossland.scripts import _cli


@dataclasses.dataclass(frozen=True)
class _Toy:
  n: int = option(3, "a count")
  x: float = option(0.5, "a number")
  on: bool = option(True, "a switch")
  name: str | None = option(None, "a name")
  kind: str = option("a", "a choice", ("a", "b"))
  sizes: tuple[int, ...] = option((1, 2), "counts")
  grid: tuple[float, ...] = option((), "numbers")
  extra: dict = option({}, "not a flag", flag=False)

  def __post_init__(self):
    options.check_fields(self, (("n", self.n > 0),))


def test_spec_of_turns_fields_into_flag_rows():
  spec = {o.name: o for o in options.spec_of(_Toy)}
  assert list(spec) == ["n", "x", "on", "name", "kind", "sizes", "grid"]  # extra: no flag
  assert [spec[k].type for k in spec] == ["int", "float", "bool", "str", "enum", "ints",
                                          "floats"]
  assert spec["kind"].choices == ("a", "b") and spec["name"].default is None
  assert spec["sizes"].default == (1, 2) and spec["n"].help == "a count"


def test_flags_from_fields_parse_and_override():
  fv = flags.FlagValues()
  spec = options.spec_of(_Toy)
  _cli.define_flags(spec, "toy", flag_values=fv)
  fv(["prog", "--sizes", "4,5", "--grid=0.5,1.5", "--noon", "--kind", "b"])
  given = _cli.given_values(spec, flag_values=fv)
  assert set(given) == {"sizes", "grid", "on", "kind"}  # only what was given
  cfg = options.override(_Toy(), given)
  assert cfg == _Toy(sizes=(4, 5), grid=(0.5, 1.5), on=False, kind="b")
  assert options.build(_Toy, {"n": 7}).n == 7


@pytest.mark.parametrize("given, msg", [({"sizes": "1,x"}, "--sizes must be integers"),
                                        ({"n": 0}, "invalid --n"),
                                        ({"kind": "c"}, "--kind must be one of a, b"),
                                        ({"nope": 1}, "unknown option")])
def test_bad_values_are_one_line_option_errors(given, msg):
  with pytest.raises(OptionError, match=msg):
    options.override(_Toy(), given)


def test_pass_through_hands_the_other_job_options_to_cells():
  rows = options.pass_through(job.SPEC, {"P", "lr"})
  names = [o.name for o in rows]
  assert "P" not in names and "lr" not in names and "activation" in names
  assert all(o.default is None for o in rows)
  assert len(rows) == len(job.SPEC) - 2
  # the job's option rows are JobOptions' fields, in order, with their defaults
  assert [o.name for o in job.SPEC] == [f.name for f in dataclasses.fields(job.JobOptions)]
  assert job.defaults() == {f.name: f.default for f in dataclasses.fields(job.JobOptions)}


def test_run_rounds_feeds_every_record_back_and_stops():
  seen = []

  def propose(pairs):
    seen.append(len(pairs))
    if not pairs:
      return [{"x": 1}, {"x": 2}]
    last = pairs[-1][0]["x"]
    return [{"x": last + 1}] if last < 4 else []

  pairs = study.run_rounds(propose, lambda cells: [c["x"] ** 2 for c in cells], n_rounds=5)
  assert [c["x"] for c, _ in pairs] == [1, 2, 3, 4] and [r for _, r in pairs] == [1, 4, 9, 16]
  assert seen == [0, 2, 3, 4]  # the 4th proposal is empty: no more rounds
  # n_rounds bounds the proposals after the initial grid
  assert len(study.run_rounds(propose, lambda cs: [0] * len(cs), n_rounds=1)) == 3


def test_run_study_writes_one_run_directory(tmp_path):
  def analyze(pairs):
    return ({"total": sum(r for _, r in pairs)},
            {"arrays": {"r": np.array([r for _, r in pairs])},
             "log": [{"x": c["x"]} for c, _ in pairs]})

  def plot(result, extras, path):
    open(os.path.join(path, "fig.png"), "wb").close()
    return ["fig.png"]

  s = study.Study(lambda pairs: [] if pairs else [{"x": 1}, {"x": 3}], analyze, plot)
  result, run_dir = study.run_study(s, lambda cs: [c["x"] for c in cs], n_rounds=2,
                                    out_dir=str(tmp_path), name="toy", config={"a": 1})
  assert result == {"total": 4, "figures": ["fig.png"]}
  run = io.load_run(run_dir)
  assert json.load(open(os.path.join(run_dir, "summary.json"))) == result
  np.testing.assert_array_equal(run.arrays["r"], [1, 3])
  assert os.path.exists(os.path.join(run_dir, "fig.png"))
  # a shard runs its cells and writes nothing
  assert study.run_study(s, lambda cs: [0] * len(cs), n_rounds=0, out_dir=str(tmp_path / "b"),
                         name="toy", config={}, analyze=False) is None
  assert not (tmp_path / "b").exists()


def test_phase_presets_keep_their_cells():
  """The cpu preset's initial cells keep their ids (so existing sweep
  directories resume): those of its run recorded in docs/jamming.md (the
  preset of 2026-12-05, d = 4, h = 16 with biases, lr 1e-3, with
  --scale_to_sat since 2026-12-07, the run runs/cpu22; a preset change
  changes them on purpose)."""
  from lossland.configs import phase as presets
  cfg = presets.cpu()
  groups = phase_study.cell_groups(cfg, phase_study.widths_for(cfg))
  cells = phase_study.transition_proposer(groups, cfg.p_over_n)([])
  assert [sweep.cell_id(job.validate(dict(c))) for c in cells] == [
      "62b45c53933e", "41c74c4681ef", "2cc9ad90f25c", "7218d1051d6b", "aa35e54cd20e",
      "4136ff7f177a", "f9026bf559f9", "ce614045c332", "b4c82e974df8"]
  assert all(c["record_unsat"] and c["n_test"] == 0 for c in cells)


def test_phase_job_options_reach_every_cell_and_override_the_net():
  cfg = phase_study.PhaseConfig(depths=(2, 3), widths=(4,), p_over_n=(1.0,), net="authors",
                                job={"activation": "tanh", "bias": False, "lr": 0.5})
  groups = phase_study.cell_groups(cfg, phase_study.widths_for(cfg))
  assert [g["width"] for g in groups] == [4, 4]
  for g in groups:
    assert (g["activation"], g["bias"], g["lr"], g["init"]) == ("tanh", False, 0.5,
                                                                "orthogonal_gain1")


@pytest.mark.parametrize("kw, msg", [(dict(depths=()), "give --preset or --depths"),
                                     (dict(widths=(3, 4, 5)), "one width per depth"),
                                     (dict(sizes=(100,)), "--sizes replaces"),
                                     (dict(shard="2/2"), "--shard must be"),
                                     (dict(p_over_n=()), "--p_over_n")])
def test_phase_config_rejects_bad_settings(kw, msg):
  base = dict(depths=(2, 3), widths=(4, 5), p_over_n=(1.0,))
  with pytest.raises(OptionError, match=msg):
    phase_study.PhaseConfig(**{**base, **kw})


def test_generalization_preset_keeps_its_sweep_directory(tmp_path):
  """The cpu preset's cells hash to a pinned sweep directory: the widths of the
  runs made before the option system moved still hash to theirs (the preset
  with ``widths=NEAR_WIDTHS`` resumes them), and the preset with its tail
  widths (issue 19) to the directory of its recorded run."""
  from lossland.configs import generalization as presets
  near = dataclasses.replace(presets.cpu(), out_dir=str(tmp_path), widths=presets.NEAR_WIDTHS)
  assert os.path.basename(generalization_study.sweep_dir(
      near, generalization_study.cells(near))) == "e857974cb3e0"
  cfg = dataclasses.replace(presets.cpu(), out_dir=str(tmp_path))
  cells = generalization_study.cells(cfg)
  assert os.path.basename(generalization_study.sweep_dir(cfg, cells)) == "95dbb37beeaa"
  assert [c["width"] for c in cells] == sorted(presets.cpu().widths)
  noisy = generalization_study.noisy_data(cfg, cells[0])
  assert noisy["label_noise"] == 0.05 and noisy["data_seed"] == 0
