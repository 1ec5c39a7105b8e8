"nbs/tables.ipynb on folders with holes: an empty cell, a cell whose every run failed, one seed, one group in a split."
import json
import shutil

import pytest

from conftest import launch, run_notebook, stream_outputs
from fairnb.core import write_json
from fairnb.results import read_results, write_results


def _html(nb):
    import nbformat
    return '\n'.join(str(o.get('data', {}).get('text/html', '')) for c in nbformat.read(str(nb), as_version=4).cells
                     for o in c.get('outputs', []))


@pytest.fixture(scope='module')
def minmax(tmp_path_factory):
    "One finished smoke run of Table 10's MIN-MAX cell, seed 0."
    d = tmp_path_factory.mktemp('minmax') / 'chexpert-minmax-seed0'
    launch('chexpert', d, scheme='minmax', bootstrap=20)
    return d


@pytest.mark.slow
def test_empty_cell_and_a_cell_whose_runs_all_failed_are_listed(minmax, tmp_path):
    runs = tmp_path / 'runs'; shutil.copytree(minmax, runs / minmax.name)
    failed = runs / 'chexpert-baseline-seed0'   # BASELINE: its only run failed
    write_json(failed / 'config.json', {'problem': 'chexpert', 'scheme': 'baseline', 'preset': 'smoke', 'seed': 0})
    write_json(failed / 'failed.json', {'error': 'RuntimeError: out of memory', 'traceback': ''})
    nb = run_notebook('tables.ipynb', tmp_path / 'report', runs_dir=str(runs), table='table10')
    text = ''.join(stream_outputs(tmp_path / 'report' / 'tables.ipynb', 'stdout'))
    assert f'unfinished runs under {runs}: [' in text and 'chexpert-baseline-seed0' in text, text
    assert 'cells without a finished run (shown as "no run" below): BASELINE' in text, text
    html = _html(tmp_path / 'report' / 'tables.ipynb')
    assert 'no run' in html and 'MIN-MAX LOSS' in html            # one seed: a figure without an interval
    figures = [o for c in nb.cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
    assert len(figures) == 2                                        # the curves and the ages of what exists
    assert (runs / 'table10.csv').exists()


@pytest.mark.slow
def test_a_split_with_one_group(minmax, tmp_path):
    "A run (of real data, say) whose test split holds only women: the men's and the gap's cells say 'no run'."
    rec, rows = read_results(minmax)
    keep = ~((rows.split == 'test') & (rows.attribute == 'sex') & rows.group.isin(['male', 'gap']))
    write_results(tmp_path / 'runs' / 'one-group', rec['config'], rows[keep], 1.0)
    run_notebook('tables.ipynb', tmp_path / 'report', runs_dir=str(tmp_path / 'runs'), table='table10')
    text = ''.join(stream_outputs(tmp_path / 'report' / 'tables.ipynb', 'stdout'))
    assert 'cells without a finished run (shown as "no run" below): BASELINE' in text
    assert 'curves: not drawn, no finished run of this table holds what it shows.' in text   # no history.csv here
    assert _html(tmp_path / 'report' / 'tables.ipynb').count('no run') >= 3


@pytest.mark.slow
def test_audit_of_runs_whose_split_holds_one_group(tmp_path):
    "Predictions of a test split of women only (real data can be so): the men's rows are empty and flagged, not a crash."
    import pandas as pd
    for name, params in (('base', dict(scheme='baseline')), ('fair', dict(scheme='eq_loss', alpha=1.0))):
        launch('chexpert', tmp_path / name, bootstrap=20, **params)
        f = tmp_path / name / 'predictions' / 'test.csv'
        p = pd.read_csv(f); p[p.sex == 1].to_csv(f, index=False)
    run_notebook('audit.ipynb', tmp_path / 'audit', baseline_run=str(tmp_path / 'base'),
                 fair_run=str(tmp_path / 'fair'), resamples=20, out_dir=str(tmp_path / 'audit'))
    audit = pd.read_csv(tmp_path / 'audit' / 'audit.csv')
    men = audit[(audit.attribute == 'sex') & (audit.group == 'male')]
    assert len(men) and (men.n == 0).all() and men.small.all() and men.change.isna().all()
    women = audit[(audit.attribute == 'sex') & (audit.group == 'female')]
    assert (women.n > 0).all() and women.change.notna().all()
