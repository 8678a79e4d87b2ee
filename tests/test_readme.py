"""The README's API example runs as written, and its quick start matches .ci/run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_api_example_runs():
  readme = (ROOT / 'README.md').read_text()
  blocks = re.findall(r'```python\n(.*?)```', readme, re.S)
  assert blocks, 'the README has no python example'
  exec(compile(blocks[0], 'README.md', 'exec'), {})  # pylint: disable=exec-used


def test_ci_runs_the_readme_test_command():
  readme = (ROOT / 'README.md').read_text()
  quick_start = re.search(r'## Quick start.*?```bash\n(.*?)```', readme, re.S).group(1)
  test_command = quick_start.strip().splitlines()[-1]
  assert test_command in (ROOT / '.ci' / 'run').read_text()
