"""notebooks/colab.ipynb runs: its code cells, but the Colab set-up (clone and install), execute
on the CPU with the digits config, shell lines (`!...`, IPython's `{name}` substitution) as
subprocesses from the repository root, and it shows the report it wrote."""

import json
import subprocess
import sys
import types

from tests.conftest import ROOT

FAST = (  # one epoch, and the report written once, by convert.py, at two steps
  '--config.num_epochs=1 --config.conversion.enabled=False --config.conversion.max_T=2 '
  "--config.conversion.statistics_T=2 --config.conversion.rhos='(2,)' "
  "--config.conversion.srp_taus='(2,)'"
)


def _python_of(cell_source: str) -> str:
  """IPython's shell lines as subprocess calls; the rest is Python already."""
  lines = []
  for line in cell_source.splitlines():
    if line.startswith('!'):
      lines.append(f'_shell(f{line[1:]!r})')
    else:
      lines.append(line)
  return '\n'.join(lines)


def test_the_colab_notebook_trains_converts_and_shows_the_report(tmp_path, monkeypatch):
  notebook = json.loads((ROOT / 'notebooks/colab.ipynb').read_text())
  cells = [
    ''.join(cell['source'])
    for cell in notebook['cells']
    if cell['cell_type'] == 'code' and 'colab-setup' not in cell['metadata'].get('tags', ())
  ]
  shown = []
  display = types.ModuleType('IPython.display')
  display.display = shown.append
  display.Markdown = lambda text: ('markdown', text)
  display.Image = lambda path: ('image', open(path, 'rb').read()[:4])
  monkeypatch.setitem(sys.modules, 'IPython', types.ModuleType('IPython'))
  monkeypatch.setitem(sys.modules, 'IPython.display', display)

  def shell(command: str) -> None:
    subprocess.run(
      command.replace('python ', f'{sys.executable} ', 1),
      shell=True,
      cwd=ROOT,
      check=True,
      capture_output=True,
      timeout=600,
    )

  namespace = {'_shell': shell}
  exec(compile(_python_of(cells[0]), 'colab.ipynb', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['CONFIG'] == 'configs/digits.py'
  namespace.update(WORKDIR=str(tmp_path / 'digits'), FLAGS=FAST)  # a short run of the same job
  for cell in cells[1:]:
    exec(compile(_python_of(cell), 'colab.ipynb', 'exec'), namespace)  # pylint: disable=exec-used
  assert [kind for kind, _ in shown] == ['markdown', 'image', 'image']
  assert '| cos_rho2 | 2 |' in shown[0][1]
  assert all(png == b'\x89PNG' for kind, png in shown[1:])
