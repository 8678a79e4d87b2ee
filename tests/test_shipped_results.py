"""The runs shipped in docs/results/ still restore, and still compute what their reports measured.

Their README tells a fresh clone to re-create each report with `python convert.py
--workdir=docs/results/<run>`: that needs the run's config.json to pass today's checks, its
checkpoint to restore into today's model, and the model to compute the function the report
measured. The last is pinned by the logits of a fixed random batch (tests/data/shipped_logits.json,
recorded on 2026-11-30 with the code that wrote the short run's report and re-creates its ANN
accuracy exactly): a change that moves them beyond float32 rounding changes what the shipped
reports describe, and they have to be re-created. After re-creating them, record the logits
again with `python -m tests.test_shipped_results` (every run in docs/results/ with a checkpoint).
"""

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from cos_jax import config_checks, report_rendering, run_state, workdir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'docs/results'
EXPECTED = json.loads((ROOT / 'tests/data/shipped_logits.json').read_text())
CHECKPOINTED_RUNS = sorted(p.parent.name for p in RESULTS.glob('*/checkpoints'))


def fixed_batch(config) -> np.ndarray:
  return np.random.default_rng(0).normal(size=(4, *config.input_shape)).astype(np.float32)


def shipped_config(run: str) -> ml_collections.ConfigDict:
  return workdir.read_config(RESULTS / run)


def shipped_logits(run: str) -> np.ndarray:
  """The logits of `fixed_batch` through the network shipped in docs/results/<run>."""
  config = shipped_config(run)
  model, variables = run_state.restore_variables(config, RESULTS / run)
  return jax.jit(model.apply)(variables, fixed_batch(config))


@pytest.mark.parametrize('run', sorted(EXPECTED))
def test_shipped_run_restores_and_computes_its_recorded_logits(run):
  np.testing.assert_allclose(shipped_logits(run), EXPECTED[run], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('run', sorted(p.parent.name for p in RESULTS.glob('*/config.json')))
def test_shipped_configs_pass_the_conversion_checks_with_relative_data_paths(run):
  config = shipped_config(run)
  config_checks.check_config(config, training=False)  # what convert.py checks
  assert not Path(config.data_dir).is_absolute(), 'a clone elsewhere could not find the data'


ACCURACY_HEADER = '| method | rho or tau | ANN | T=1 | T=2 | T=4 | T=8 | T=16 | T=32 |'


_README_NAMES = {'qcfs': 'QCFS (no shifts)', 'cos_rho': 'COS', 'srp_tau': 'SRP'}


def report_table_rows(report: dict) -> tuple[str, ...]:
  """The accuracy rows of a report.json as report.md writes them, named as the READMEs name the
  methods ('QCFS (no shifts)' for qcfs, 'COS' for cos_rho<N>, 'SRP' for srp_tau<N>)."""
  lines = report_rendering.to_markdown(report, title='').splitlines()
  start = lines.index(ACCURACY_HEADER) + 2
  rows = lines[start : start + len(report['methods'])]
  return tuple(
    f'| {_README_NAMES[name.rstrip("0123456789")]} |{row.split("|", 2)[2]}'
    for name, row in zip(report['methods'], rows, strict=True)
  )


def quoted_tables(markdown: str) -> list[tuple[str, ...]]:
  """The rows of every accuracy table with T up to 32 in `markdown`."""
  lines = markdown.splitlines() + ['']
  tables = []
  for start, line in enumerate(lines):
    if line == ACCURACY_HEADER:
      end = lines.index('', start)
      tables.append(tuple(lines[start + 2 : end]))
  return tables


def test_readme_accuracy_tables_are_those_of_the_shipped_reports():
  reports = {
    run.parent.name: report_table_rows(json.loads(run.read_text()))
    for run in RESULTS.glob('*/report.json')
  }
  results_tables = quoted_tables((RESULTS / 'README.md').read_text())
  for run, rows in reports.items():
    assert rows in results_tables, f"docs/results/README.md lacks {run}'s table"
  for readme in (ROOT / 'README.md', RESULTS / 'README.md'):
    for table in quoted_tables(readme.read_text()):
      assert table in reports.values(), f'{readme.name} quotes a table no report holds: {table}'


def test_every_shipped_checkpoint_has_recorded_logits():
  assert CHECKPOINTED_RUNS == sorted(EXPECTED), 'record them: python -m tests.test_shipped_results'


if __name__ == '__main__':
  logits = {
    run: np.round(np.asarray(shipped_logits(run), np.float64), 5).tolist()
    for run in CHECKPOINTED_RUNS
  }
  (ROOT / 'tests/data/shipped_logits.json').write_text(json.dumps(logits, indent=1) + '\n')
  print(f'recorded the logits of {", ".join(CHECKPOINTED_RUNS)} in tests/data/shipped_logits.json')
