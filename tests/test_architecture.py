"""docs/architecture.md stays true: every module of cos_jax has its row, and each row names
exactly the cos_jax modules that module imports."""

import ast
import re

from tests.conftest import ROOT


def _imports(path) -> set[str]:
  """The cos_jax modules a module imports (`from cos_jax import x`, `from cos_jax.x import ...`)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module == 'cos_jax':
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('cos_jax.'):
      found.add(node.module.split('.')[1])
  return found


def _documented() -> dict[str, set[str]]:
  rows = re.findall(
    r'^\| `(\w+)` \| .* \| ([\w, -]+) \|$', (ROOT / 'docs/architecture.md').read_text(), re.M
  )
  return {name: set() if imports == '-' else set(imports.split(', ')) for name, imports in rows}


def test_the_architecture_page_lists_every_module_and_its_imports():
  actual = {path.stem: _imports(path) for path in sorted((ROOT / 'cos_jax').glob('*.py'))}
  assert _documented() == actual
