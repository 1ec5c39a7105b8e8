"The notebooks are the source: they must stay clean, unique and papermill-ready."
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'nbs').glob('*.ipynb'))
REPORTS = ('tables.ipynb', 'audit.ipynb', 'findings.ipynb')
RUN_NOTEBOOKS = [p for p in NOTEBOOKS if p.name.startswith('run_') or p.name in REPORTS]   # papermill reports
LIBRARY = [p for p in NOTEBOOKS if p not in RUN_NOTEBOOKS]


def cells(p):
    return json.loads(p.read_text())['cells']


def source(c):
    return ''.join(c['source'])


@pytest.mark.parametrize('nb', RUN_NOTEBOOKS, ids=lambda p: p.name)
def test_experiment_notebook_has_one_parameters_cell(nb):
    tagged = [c for c in cells(nb) if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1
    assert not any(re.search(r'#\|\s*(default_exp|export)', source(c)) for c in cells(nb))


def test_default_exp_values_are_unique():
    exps = [m.group(1) for p in LIBRARY for c in cells(p) for m in [re.search(r'#\|\s*default_exp\s+(\S+)', source(c))] if m]
    assert len(exps) == len(set(exps)), exps
    assert {'core', 'data', 'chexpert', 'faces', 'models', 'losses', 'schemes', 'train', 'metrics', 'evaluate', 'report',
            'run'} <= set(exps)


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_clean(nb):
    for c in cells(nb):
        if c['cell_type'] == 'code':
            assert c['outputs'] == [] and c['execution_count'] is None, f'{nb.name} has outputs: run nbdev_clean'


def test_no_machine_paths():
    "No file of the project names this machine's folders (the checkout's parent, the home folder)."
    places = {str(ROOT.parent) + '/', str(Path.home()) + '/'}
    files = NOTEBOOKS + [p for d in ('fairnb', 'tests', 'bench') for p in sorted((ROOT / d).glob('*.py'))]
    files += [ROOT / f for f in ('README.md', 'Makefile', 'settings.ini', 'setup.py')]
    hits = [f'{p.name}: {place}' for p in files for place in places if place in p.read_text()]
    assert not hits


def test_readme_is_index_notebook():
    "README.md is kept in step with nbs/index.ipynb by hand (no Quarto here): same text."
    md = '\n\n'.join(source(c) for c in cells(ROOT / 'nbs' / 'index.ipynb') if c['cell_type'] == 'markdown')
    assert (ROOT / 'README.md').read_text().strip() == md.strip()


def code_lines(nb):
    return [l for c in cells(nb) if c['cell_type'] == 'code' for l in source(c).splitlines()]


def test_code_lines_are_at_most_120_characters():
    """House style, for the library modules and every notebook's code cells. nbdev writes `_modidx.py` and the first
    line of each `__all__` itself (it wraps the list at 120 characters, then prefixes `__all__ = `): not ours to format."""
    files = [p for p in sorted((ROOT / 'fairnb').glob('*.py')) if p.name != '_modidx.py']
    long = [f'{p.name}:{i}' for p in files for i, l in enumerate(p.read_text().splitlines(), 1)
            if len(l) > 120 and not l.startswith('__all__ = [')]
    long += [f'{nb.name}: {l[:40]}...' for nb in NOTEBOOKS for l in code_lines(nb) if len(l) > 120]
    assert not long


@pytest.mark.parametrize('nb', RUN_NOTEBOOKS, ids=lambda p: p.name)
def test_experiment_notebooks_define_nothing_and_never_branch_on_the_scheme(nb):
    "An experiment notebook is prose, parameters, calls and displays: no helpers, no `if` on the scheme's name."
    code = '\n'.join(code_lines(nb))
    assert not re.search(r'^\s*(def|class)\s', code, re.M)
    assert not re.search(r'^\s*\w+\s*=\s*lambda\b', code, re.M)
    assert not re.search(r"\bif\b[^\n]*\bscheme\b", code)
    assert not re.search(r"scheme\s*(==|!=|\bin\b)", code)
