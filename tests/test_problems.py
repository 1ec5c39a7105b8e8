"An experiment is one registry entry: its notebook's parameters cell says what its Problem says; layers stay apart."
import ast
import json
import re
import subprocess
import sys
import typing

import pandas as pd
import pytest

from conftest import NBS, ROOT
from fairnb.experiments import PROBLEMS
from fairnb.run import Param, Problem, Run, start_run


def parameters_cell(notebook):
    "A notebook's papermill parameters as {name: Param(default, type, comment)}, in the cell's order."
    nb = json.loads((NBS/f'{notebook}.ipynb').read_text())
    cell = ''.join(next(c for c in nb['cells'] if 'parameters' in c['metadata'].get('tags', []))['source'])
    out, lines = {}, cell.splitlines()
    for node in ast.parse(cell).body:
        assert isinstance(node, ast.AnnAssign), f'{notebook}: line {node.lineno} is not `name: type = value  # what`'
        comment = re.search(r'#\s*(.*)$', lines[node.lineno - 1])
        ann = eval(ast.unparse(node.annotation), {'Optional': typing.Optional})
        args = typing.get_args(ann)
        kind = tuple(None if a is type(None) else a for a in args) if args else ann
        out[node.target.id] = Param(ast.literal_eval(node.value), kind, comment.group(1) if comment else '')
    return out


@pytest.mark.parametrize('name', sorted(PROBLEMS))
def test_parameters_cell_is_the_problems(name):
    "Names, order, defaults, types and comments of the parameters cell are the Problem's, one for one."
    p = PROBLEMS[name]
    cell = parameters_cell(p.notebook)
    assert list(cell) == list(p.params), f'{p.notebook}: the parameters differ in name or order from {name}.params'
    for k, want in p.params.items():
        assert cell[k] == want, f'{p.notebook}, {k}: the cell says {cell[k]}, {name}.params says {want}'


def test_a_changed_parameters_cell_is_caught(tmp_path, monkeypatch):
    "The check fails when a notebook's default drifts from its Problem (so it can fail)."
    src = (NBS/'run_chexpert.ipynb').read_text()
    (tmp_path/'run_chexpert.ipynb').write_text(src.replace("preset: str = 'cpu'", "preset: str = 'smoke'"))
    monkeypatch.setattr(sys.modules[__name__], 'NBS', tmp_path)
    with pytest.raises(AssertionError, match='preset'):
        test_parameters_cell_is_the_problems('chexpert')


@pytest.mark.parametrize('name', sorted(PROBLEMS))
def test_notebook_starts_its_problem(name):
    "The notebook hands its parameters to start_run through its Problem, not by retyping them."
    p = PROBLEMS[name]
    nb = json.loads((NBS/f'{p.notebook}.ipynb').read_text())
    code = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'code')
    const = next(k for k, v in vars(sys.modules[p.flow.__module__]).items() if v is p)
    assert f'start_run({const}, {const}.params_in(globals()))' in code


def _imports():
    "fairnb's modules and the fairnb modules each imports (at any depth of the file)."
    mods = {f.stem: f for f in (ROOT/'fairnb').glob('*.py') if not f.stem.startswith('_')}
    g = {m: set() for m in mods}
    for m, f in mods.items():
        for n in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(n, ast.ImportFrom):
                names = [n.module or ''] if n.level == 0 else [f'fairnb.{n.module or ""}']
                if n.module is None and n.level: names = [f'fairnb.{a.name}' for a in n.names]
            elif isinstance(n, ast.Import): names = [a.name for a in n.names]
            g[m] |= {x.split('.')[1] for x in names if x.startswith('fairnb.') and x.split('.')[1] in mods} - {m}
    return g


LAYERS = [('core', 'ddp', 'models', 'stats', 'search'),                       # ground
          ('data', 'losses', 'results'),                                          # data
          ('chexpert', 'faces', 'bupt', 'manifest', 'layouts'),                   # sources
          ('schemes', 'metrics', 'train', 'evaluate', 'audit', 'report', 'worlds'),   # method
          ('run',),                                                               # the run API
          ('after_paper', 'exp_chexpert', 'exp_faces', 'exp_fair_features', 'exp_images',   # experiments
           'experiments'),
          ('tables', 'jobs', 'figures', 'claims', 'verdicts', 'findings'),        # results: tables, runs, claims
          ('backends', 'sweep', 'launch')]                                        # top: the command lines


def test_no_import_circle_and_none_upwards():
    "Every module sits on a layer of DESIGN.md, and imports only its own layer or those below, without a circle."
    g, layer = _imports(), {m: i for i, ms in enumerate(LAYERS) for m in ms}
    assert set(g) == set(layer), f'modules without a layer: {set(g) ^ set(layer)}'
    up = [(m, x) for m, xs in g.items() for x in xs if layer[x] > layer[m]]
    assert not up, f'imports from a lower layer to a higher one: {up}'
    seen, stack = set(), []
    def visit(m):
        assert m not in stack, 'import circle: ' + ' -> '.join(stack[stack.index(m):] + [m])
        if m in seen: return
        seen.add(m); stack.append(m)
        for x in sorted(g[m]): visit(x)
        stack.pop()
    for m in sorted(g): visit(m)


def test_a_fourth_experiment_is_one_registry_entry(tmp_path, monkeypatch):
    "A new Problem, added to the registry alone, runs through the launcher (and so the sweep's checks) unchanged."
    from fairnb import launch, experiments
    from fairnb.exp_chexpert import CHEXPERT

    def flow(run: Run):   # an experiment's own module would hold this: here, one results row of its own
        rows = pd.DataFrame([dict(split=s, attribute='sex', group=g, task='mean', metric='auc', value=0.5)
                             for s in ('train', 'validation', 'test') for g in ('male', 'female')])
        return lambda: run.finish({}, rows)
    params = {k: v for k, v in CHEXPERT.params.items() if k not in ('alpha', 'penalty_on', 'flip_group', 'flip_rate')}
    toy = Problem(name='chexpert', notebook='run_toy', params=params, presets=CHEXPERT.presets, dataset='chexpert',
                  audit=('sex',), model_key='model', out_dir='reports/toy', metric='auc', task='mean', flow=flow)
    monkeypatch.setitem(experiments.PROBLEMS, 'toy', toy)
    path = launch.run_experiment('toy', launch.parse_params('toy', [('preset', 'smoke'), ('device', 'cpu'),
                                                                     ('out_dir', str(tmp_path/'toy'))]))
    assert path.exists() and json.loads(path.read_text())['config']['problem'] == 'chexpert'
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['alpha'\]"):
        launch.parse_params('toy', [('alpha', '1')])


def test_launcher_command_line_refuses_bad_input():
    "python -m fairnb.launch: an unknown problem or parameter stops with the choices, before anything runs."
    run = lambda *a: subprocess.run([sys.executable, '-m', 'fairnb.launch', *a], capture_output=True, text=True)
    p = run('xray')
    assert p.returncode == 2 and "invalid choice: 'xray'" in p.stderr
    p = run('faces', '-p', 'views', 'all')
    assert p.returncode == 1 and "faces has no parameter(s) ['views']" in p.stderr
