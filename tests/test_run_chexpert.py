"Papermill executions of the CheXpert experiment notebook, end to end, on the synthetic data."
import json

import pandas as pd
import pytest
from papermill.exceptions import PapermillExecutionError

from conftest import run_notebook
from fairnb.chexpert import TASKS
from fairnb.report import read_results

# Every scheme, and both penalty_on values for the three penalties (smoke preset: seconds each).
RUNS = {
    'baseline': dict(scheme='baseline'),
    'minmax': dict(scheme='minmax'),
    'label_flip': dict(scheme='label_flip', flip_group='female', flip_rate=0.1),
    **{f'{p}_{on}': dict(scheme=p, alpha=1.0, penalty_on=on) for p in ('eq_loss', 'eq_odds', 'disp_impact') for on in ('train', 'holdout')},
}
SCHEMES = list(RUNS)
PENALTY_RUNS = [r for r in RUNS if r.startswith(('eq_', 'disp_'))]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "One smoke run per entry of RUNS, each in its own folder."
    out = {}
    for name, params in RUNS.items():
        d = tmp_path_factory.mktemp(name)
        run_notebook('run_chexpert.ipynb', d, preset='smoke', out_dir=str(d / 'run'), **params)
        out[name] = d
    return out


@pytest.mark.parametrize('scheme', SCHEMES)
def test_results_schema(runs, scheme):
    rec, rows = read_results(runs[scheme] / 'run')
    assert {k: rec['config'][k] for k in RUNS[scheme]} == RUNS[scheme] and rec['config']['preset'] == 'smoke'
    assert rec['seconds'] > 0 and rec['fairnb_version']
    sex = rows[(rows.attribute == 'sex') & (rows.metric == 'auc')]
    assert set(sex.split) == {'train', 'validation', 'test'}
    assert set(sex.group) == {'male', 'female', 'gap'}
    assert set(sex.task) == set(TASKS) | {'mean'}
    assert len(sex) == 3 * 3 * 6 and not sex.duplicated(['split', 'group', 'task']).any()
    assert (sex.metric == 'auc').all()
    per_group = sex[sex.group != 'gap'].value
    assert per_group.between(0, 1).all(), per_group.describe()
    wide = sex.pivot_table(index=['split', 'task'], columns='group', values='value')
    assert ((wide.male - wide.female - wide.gap).abs() < 1e-9).all()      # gap = male - female, signed
    assert set(rows[rows.attribute == 'age_group'].group) == {'<40', '40-59', '60-79', '80+', 'gap'}   # gap: highest - lowest
    pens = rows[rows.metric != 'auc']
    assert len(pens) == 3 * 3 and set(pens.metric) == {'eq_loss', 'eq_odds', 'disp_impact'}
    assert (pens.group == 'all').all() and (pens.attribute == 'sex').all() and set(pens.split) == {'train', 'validation', 'test'}
    assert pens[pens.metric == 'disp_impact'].value.between(-1, 0).all()
    assert (pens[pens.metric != 'disp_impact'].value >= 0).all()


@pytest.mark.parametrize('scheme', SCHEMES)
def test_run_folder(runs, scheme):
    d = runs[scheme] / 'run'
    config = json.loads((d / 'config.json').read_text())
    rec, _ = read_results(d)
    assert config == rec['config']
    assert {'epochs', 'batch_size', 'lr', 'img_size', 'model', 'seed', 'device', 'out_dir'} <= set(config)
    hist = pd.read_csv(d / 'history.csv')
    assert len(hist) == config['epochs']
    assert {'train_loss_male', 'train_loss_female', 'val_auc_male', 'val_auc_female', 'val_auc_gap', 'train_auc_gap',
            'train_eq_loss', 'val_eq_loss', 'train_eq_odds', 'val_eq_odds', 'train_disp_impact', 'val_disp_impact'} <= set(hist.columns)
    if scheme in PENALTY_RUNS:
        assert hist.train_penalty.notna().all()        # the penalty as optimised, on train or holdout batches
    if scheme == 'label_flip':
        assert (hist.train_flipped > 0).all()
    assert (d / 'model.pt').stat().st_size > 0
    executed = (runs[scheme] / 'run_chexpert.ipynb').read_text()
    assert 'AUC by sex' in executed and 'mean AUC gap (male - female)' in executed


@pytest.mark.parametrize('scheme', SCHEMES[1:])
def test_schemes_train_differently(runs, scheme):
    _, a = read_results(runs['baseline'] / 'run')
    _, b = read_results(runs[scheme] / 'run')
    assert (a.value - b.value).abs().max() > 1e-4


def test_holdout_and_train_penalties_differ(runs):
    for p in ('eq_loss', 'eq_odds', 'disp_impact'):
        _, a = read_results(runs[f'{p}_train'] / 'run')
        _, b = read_results(runs[f'{p}_holdout'] / 'run')
        assert (a.value - b.value).abs().max() > 1e-4, p


def test_same_seed_same_results(runs, tmp_path):
    run_notebook('run_chexpert.ipynb', tmp_path, scheme='baseline', preset='smoke', out_dir=str(tmp_path / 'run'))
    _, a = read_results(runs['baseline'] / 'run')
    _, b = read_results(tmp_path / 'run')
    pd.testing.assert_series_equal(a.value, b.value)


def test_refuses_to_overwrite_a_finished_run(runs):
    d = runs['baseline']
    before = (d / 'run' / 'results.json').read_bytes()
    with pytest.raises(PapermillExecutionError, match='already holds a finished run'):
        run_notebook('run_chexpert.ipynb', d / 'again', preset='smoke', out_dir=str(d / 'run'))
    assert (d / 'run' / 'results.json').read_bytes() == before


@pytest.mark.parametrize('params,message', [
    (dict(data_dir='no/such/CheXpert-v1.0-small'), 'does not exist'),
    (dict(scheme='fair'), "Unknown scheme 'fair'; choose one of"),
    (dict(epochs=0), 'epochs must be an integer >= 1'),
    (dict(scheme='eq_loss', alpha=-1.0), 'alpha must be a number >= 0'),
    (dict(scheme='eq_loss', alpha='abc'), 'alpha must be a number >= 0'),
    (dict(alpha=1.0), r"scheme 'baseline' does not use alpha=1.0 \(a parameter of \['disp_impact', 'eq_loss'"),
    (dict(scheme='margins'), "scheme 'margins' is not for chexpert"),
    (dict(sensitive='young_old'), "sensitive='young_old' is not an attribute of chexpert"),
    (dict(preset='fast'), "Unknown preset 'fast'"),
    (dict(scheme='label_flip', flip_rate=1.5), r'flip_rate must lie in \[0, 1\]'),
    (dict(scheme='label_flip', flip_group='women'), "flip_group 'women' is not a group"),
    (dict(scheme='eq_odds', penalty_on='test'), "penalty_on must be one of"),
    (dict(views='AP'), "views must be one of"),
])
def test_bad_parameters_fail_before_training(tmp_path, params, message):
    with pytest.raises(PapermillExecutionError, match=message):
        run_notebook('run_chexpert.ipynb', tmp_path, **{'preset': 'smoke', 'out_dir': str(tmp_path / 'run'), **params})
    assert not (tmp_path / 'run' / 'history.csv').exists()
    assert not (tmp_path / 'run' / 'results.json').exists()
