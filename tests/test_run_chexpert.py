"Papermill executions of the CheXpert experiment notebook, end to end, on the synthetic data."
import json

import pandas as pd
import pytest
from papermill.exceptions import PapermillExecutionError

from conftest import run_notebook
from fairnb.chexpert import TASKS
from fairnb.report import read_results

SCHEMES = ['baseline', 'minmax']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "One smoke run per scheme, each in its own folder."
    out = {}
    for s in SCHEMES:
        d = tmp_path_factory.mktemp(s)
        run_notebook('run_chexpert.ipynb', d, scheme=s, preset='smoke', out_dir=str(d / 'run'))
        out[s] = d
    return out


@pytest.mark.parametrize('scheme', SCHEMES)
def test_results_schema(runs, scheme):
    rec, rows = read_results(runs[scheme] / 'run')
    assert rec['config']['scheme'] == scheme and rec['config']['preset'] == 'smoke'
    assert rec['seconds'] > 0 and rec['fairnb_version']
    sex = rows[rows.attribute == 'sex']
    assert set(sex.split) == {'train', 'validation', 'test'}
    assert set(sex.group) == {'male', 'female', 'gap'}
    assert set(sex.task) == set(TASKS) | {'mean'}
    assert len(sex) == 3 * 3 * 6 and not sex.duplicated(['split', 'group', 'task']).any()
    assert (sex.metric == 'auc').all()
    per_group = sex[sex.group != 'gap'].value
    assert per_group.between(0, 1).all(), per_group.describe()
    wide = sex.pivot_table(index=['split', 'task'], columns='group', values='value')
    assert ((wide.male - wide.female - wide.gap).abs() < 1e-9).all()      # gap = male - female, signed
    assert set(rows[rows.attribute == 'age_group'].group) == {'<40', '40-59', '60-79', '80+'}


@pytest.mark.parametrize('scheme', SCHEMES)
def test_run_folder(runs, scheme):
    d = runs[scheme] / 'run'
    config = json.loads((d / 'config.json').read_text())
    rec, _ = read_results(d)
    assert config == rec['config']
    assert {'epochs', 'batch_size', 'lr', 'img_size', 'model', 'seed', 'device', 'out_dir'} <= set(config)
    hist = pd.read_csv(d / 'history.csv')
    assert len(hist) == config['epochs']
    assert {'train_loss_male', 'train_loss_female', 'val_auc_male', 'val_auc_female', 'val_auc_gap'} <= set(hist.columns)
    assert (d / 'model.pt').stat().st_size > 0
    executed = (runs[scheme] / 'run_chexpert.ipynb').read_text()
    assert 'AUC by sex' in executed and 'mean AUC gap (male - female)' in executed


def test_schemes_train_differently(runs):
    _, a = read_results(runs['baseline'] / 'run')
    _, b = read_results(runs['minmax'] / 'run')
    assert (a.value - b.value).abs().max() > 1e-4


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
    (dict(alpha=-1.0), 'alpha must be a number >= 0'),
    (dict(preset='fast'), "Unknown preset 'fast'"),
])
def test_bad_parameters_fail_before_training(tmp_path, params, message):
    with pytest.raises(PapermillExecutionError, match=message):
        run_notebook('run_chexpert.ipynb', tmp_path, **{'preset': 'smoke', 'out_dir': str(tmp_path / 'run'), **params})
    assert not (tmp_path / 'run' / 'history.csv').exists()
    assert not (tmp_path / 'run' / 'results.json').exists()
