"Papermill executions of the CheXpert experiment notebook, end to end, on the synthetic data."
import json
import os
import stat

import numpy as np
import pandas as pd
import pytest
from papermill.exceptions import PapermillExecutionError

from conftest import launch, refused_by_start_run, run_notebook, stream_outputs
import fairnb
from fairnb.chexpert import TASKS, synthetic_chexpert
from fairnb.core import read_json
from fairnb.results import read_results

# Every scheme, and both penalty_on values for the three penalties (smoke preset: seconds each).
RUNS = {
    'baseline': dict(scheme='baseline'),
    'minmax': dict(scheme='minmax'),
    'label_flip': dict(scheme='label_flip', flip_group='female', flip_rate=0.1),
    **{f'{p}_{on}': dict(scheme=p, alpha=1.0, penalty_on=on) for p in ('eq_loss', 'eq_odds', 'disp_impact') for on in ('train', 'holdout')},
    'balanced': dict(scheme='balanced'),
    'group_dro': dict(scheme='group_dro', eta=0.1, adjustment=1.0),
    'reweight': dict(scheme='reweight', reweight_by='group_label'),
    'jtt': dict(scheme='jtt', jtt_epochs=1, lambda_up=3),
    'dfr': dict(scheme='dfr', dfr_c=0.3),
    'oracle': dict(scheme='balanced', train_labels='true'),
}
SCHEMES = list(RUNS)
PENALTY_RUNS = [r for r in RUNS if r.startswith(('eq_', 'disp_'))]
NOTEBOOK_RUNS = ('baseline', 'eq_odds_holdout')   # executed through the notebook; the others by the launcher


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "One smoke run per entry of RUNS, each in its own folder: the notebook's report for NOTEBOOK_RUNS."
    out = {}
    for name, params in RUNS.items():
        d = tmp_path_factory.mktemp(name)
        if name in NOTEBOOK_RUNS: run_notebook('run_chexpert.ipynb', d, preset='smoke', out_dir=str(d / 'run'), **params)
        else: launch('chexpert', d / 'run', **params)
        out[name] = d
    return out


@pytest.mark.parametrize('scheme', SCHEMES)
@pytest.mark.slow
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
    shares = rows[rows.metric == 'share']                                   # Table 5: each sex's share per split
    assert len(shares) == 3 * 2 and set(shares.task) == {'images'} and set(shares.group) == {'male', 'female'}
    assert (shares.groupby('split').value.sum() - 1).abs().max() < 1e-9 and shares.value.between(0.05, 0.95).all()
    assert rec['config']['problem'] == 'chexpert'
    assert (rec['config']['world'], rec['config']['world_knobs']) == ('default', {})   # the world and its knobs,
    assert rec['data']['world'] == read_json(synthetic_chexpert() / 'world.json')       # and the data's manifest
    pens = rows[~rows.metric.isin(['auc', 'share'])]
    assert len(pens) == 3 * 3 and set(pens.metric) == {'eq_loss', 'eq_odds', 'disp_impact'}
    assert (pens.group == 'all').all() and (pens.attribute == 'sex').all() and set(pens.split) == {'train', 'validation', 'test'}
    assert pens[pens.metric == 'disp_impact'].value.between(-1, 0).all()
    assert (pens[pens.metric != 'disp_impact'].value >= 0).all()


@pytest.mark.parametrize('scheme', SCHEMES)
@pytest.mark.slow
def test_run_folder(runs, scheme):
    d = runs[scheme] / 'run'
    config = json.loads((d / 'config.json').read_text())
    rec, _ = read_results(d)
    assert config.pop('fairnb_version') == fairnb.__version__   # the mark of a fairnb run folder, in config.json only
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
    if scheme in NOTEBOOK_RUNS:
        executed = (runs[scheme] / 'run_chexpert.ipynb').read_text()
        assert 'AUC by sex' in executed and 'mean AUC gap (male - female)' in executed
    umask = os.umask(0); os.umask(umask)
    for f in ('config.json', 'history.csv', 'checkpoint.pt', 'model.pt', 'results.json'):   # as a plain write gives
        assert stat.S_IMODE((d / f).stat().st_mode) == 0o666 & ~umask, f


@pytest.mark.parametrize('scheme', NOTEBOOK_RUNS)
@pytest.mark.slow
def test_report_is_for_reading(runs, scheme):
    "The executed report holds no progress bars and no warnings: one line per epoch, then the results."
    report = runs[scheme] / 'run_chexpert.ipynb'
    assert stream_outputs(report, 'stderr') == []
    lines = ''.join(stream_outputs(report, 'stdout')).splitlines()
    epochs = [l for l in lines if l.startswith('training (')]
    assert len(epochs) == json.loads((runs[scheme] / 'run' / 'config.json').read_text())['epochs']
    assert len(lines) < 15, lines


@pytest.mark.slow
def test_penalty_rows_recomputed_from_the_saved_model(runs):
    "model.pt evaluated afresh, with the penalty functions themselves, gives results.json's penalties (1e-6)."
    import torch
    from torch.utils.data import DataLoader
    from fairnb.chexpert import chexpert_datasets, chexpert_frames
    from fairnb.losses import get_penalty, pos_weights, weighted_bce
    from fairnb.models import create_model
    d = runs['eq_odds_holdout'] / 'run'
    rec, rows = read_results(d)
    c = rec['config']
    ds = chexpert_datasets(chexpert_frames(c['data_dir'], seed=c['seed'], views=c['views']), c['img_size'], preload=False)
    net = create_model(c['model'], optional={'width': c['width']}, num_classes=len(TASKS))
    net.load_state_dict(torch.load(d / 'model.pt', weights_only=True)); net.eval()
    pw = pos_weights(ds['train'].targets)
    for split, key in (('train', 'train_eval'), ('validation', 'validation'), ('test', 'test')):
        batches = list(DataLoader(ds[key], batch_size=c['batch_size']))
        with torch.no_grad(): logits = torch.cat([net(x) for x, _, _ in batches])
        y, g = torch.cat([b[1] for b in batches]), torch.cat([b[2]['sex'] for b in batches])
        losses, probs = weighted_bce(logits, y, pos_weight=pw), torch.sigmoid(logits)
        for name in ('eq_loss', 'eq_odds', 'disp_impact'):
            want = rows[(rows.split == split) & (rows.metric == name)].value.item()
            got = float(get_penalty(name)(losses.double(), probs.double(), y.double(), g, 2))
            assert abs(got - want) < 1e-6, (split, name, got, want)


@pytest.mark.slow
def test_planted_disparity_shows_in_a_short_baseline(runs):
    "The synthetic CheXpert makes women's findings fainter and their labels noisier: a baseline sees it on every split."
    _, rows = read_results(runs['baseline'] / 'run')
    gap = rows[(rows.attribute == 'sex') & (rows.group == 'gap') & (rows.task == 'mean')].set_index('split').value
    assert (gap > 0).all(), gap


@pytest.mark.parametrize('scheme', SCHEMES[1:])
@pytest.mark.slow
def test_schemes_train_differently(runs, scheme):
    _, a = read_results(runs['baseline'] / 'run')
    _, b = read_results(runs[scheme] / 'run')
    assert (a.value - b.value).abs().max() > 1e-4


@pytest.mark.slow
def test_holdout_and_train_penalties_differ(runs):
    for p in ('eq_loss', 'eq_odds', 'disp_impact'):
        _, a = read_results(runs[f'{p}_train'] / 'run')
        _, b = read_results(runs[f'{p}_holdout'] / 'run')
        assert (a.value - b.value).abs().max() > 1e-4, p


@pytest.mark.slow
def test_same_seed_same_results(runs, tmp_path):
    "The same seed gives the same numbers, whether the notebook or the launcher runs the experiment."
    launch('chexpert', tmp_path / 'run', scheme='baseline')
    _, a = read_results(runs['baseline'] / 'run')
    _, b = read_results(tmp_path / 'run')
    pd.testing.assert_series_equal(a.value, b.value)


@pytest.mark.slow
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
    (dict(scheme='eq_loss', alpha='abc'), r"alpha must be a number or None, got 'abc' \(str\)"),
    (dict(alpha=1.0), r"scheme 'baseline' does not use alpha=1.0 \(a parameter of \['disp_impact', 'eq_loss'"),
    (dict(scheme='margins'), "scheme 'margins' is not for chexpert"),
    (dict(sensitive='young_old'), "sensitive='young_old' is not an attribute of chexpert"),
    (dict(preset='fast'), "Unknown preset 'fast'"),
    (dict(scheme='label_flip', flip_rate=1.5), r'flip_rate must lie in \[0, 1\]'),
    (dict(scheme='label_flip', flip_group='women'), "flip_group 'women' is not a group"),
    (dict(scheme='eq_odds', penalty_on='test'), "penalty_on must be one of"),
    (dict(views='AP'), "views must be one of"),
    (dict(seed='abc'), r"seed must be an integer, got 'abc' \(str\)"),
    (dict(resume='yes'), 'resume must be True or False'),
    (dict(lr='abc'), r"lr must be a number or None, got 'abc' \(str\)"),
    (dict(lr=-1.0), 'lr must be > 0, got -1.0'),
])
def test_bad_parameters_fail_before_training(tmp_path, params, message):
    "start_run refuses them (the notebook's first call) before any data is read, and records why."
    refused_by_start_run('chexpert', tmp_path / 'run', params, message)


@pytest.mark.slow
def test_a_bad_parameter_stops_the_notebook(tmp_path):
    "Through papermill: the notebook stops at start_run, whose failure is recorded in the run folder."
    with pytest.raises(PapermillExecutionError, match="Unknown scheme 'fair'; choose one of"):
        run_notebook('run_chexpert.ipynb', tmp_path, preset='smoke', out_dir=str(tmp_path / 'run'), scheme='fair')
    failed = json.loads((tmp_path / 'run' / 'failed.json').read_text())
    assert 'start_run' in failed['traceback'] and 'chexpert_data' not in failed['traceback']
    assert not (tmp_path / 'run' / 'results.json').exists() and not (tmp_path / 'run' / 'checkpoint.pt').exists()
