"Papermill executions of the fair-features game (the paper's Section 5, Table 3) on the synthetic CelebA."

import json

import numpy as np
import pandas as pd
import pytest
import torch
from papermill.exceptions import PapermillExecutionError

from conftest import launch, refused_by_start_run, run_notebook
from fairnb.results import read_results
from fairnb.tables import sirn_table

SMOKE = dict(preset='smoke')


@pytest.fixture(scope='module')
def own(tmp_path_factory):
    "A fair-features run that trains its own backbone first."
    d = tmp_path_factory.mktemp('ff_own')
    run_notebook('run_fair_features.ipynb', d, **SMOKE, alpha=1.0, penalized_group='male', out_dir=str(d / 'run'))
    return d


@pytest.fixture(scope='module')
def on_backbone(own, tmp_path_factory):
    "Runs on the frozen backbone of `own`: alpha 0 with each penalised group, and alpha 3 penalising men."
    out = {}
    for name, params in {'a0_male': dict(alpha=0.0, penalized_group='male'), 'a0_female': dict(alpha=0.0, penalized_group='female'),
                         'a3_male': dict(alpha=3.0, penalized_group='male')}.items():
        d = tmp_path_factory.mktemp(f'ff_{name}')
        launch('fair_features', d / 'run', **params, backbone_checkpoint=str(own / 'run'))   # the notebook: `own`
        out[name] = d / 'run'
    return out


@pytest.mark.slow
def test_results_of_a_fair_features_run(own):
    run = own / 'run'
    rec, rows = read_results(run)
    assert rec['config']['scheme'] == 'fair_features' and rec['config']['penalized_group'] == 'male'
    sex = rows[rows.attribute == 'sex']
    assert set(sex.task) == {'identification', 'pretrained'}
    acc = sex[sex.metric == 'accuracy']
    for task in ('identification', 'pretrained'):
        t = acc[acc.task == task]
        assert len(t) == 9 and t[t.group != 'gap'].value.between(0, 1).all()
    sens = sex[sex.metric == 'sensitive_accuracy']
    assert set(sens.split) == {'train', 'validation', 'test'} and set(sens.group) == {'male', 'female', 'gap', 'all'}
    wide = sens.pivot(index='split', columns='group', values='value')
    assert wide[['male', 'female', 'all']].stack().between(0, 1).all()
    assert ((wide.male - wide.female - wide.gap).abs() < 1e-9).all()
    # 'all' is the image-weighted mean of the two groups' accuracies
    assert min(wide.male['test'], wide.female['test']) - 1e-9 <= wide['all']['test'] <= max(wide.male['test'], wide.female['test']) + 1e-9
    probe = sex[sex.metric == 'probe_accuracy']             # a fresh classifier, on phi(x) and on the pretrained x
    assert set(probe.task) == {'identification', 'pretrained'} and len(probe) == 2 * 3 * 4
    assert probe[probe.group != 'gap'].value.between(0, 1).all()
    hist = pd.read_csv(run / 'history.csv')
    assert len(hist) == rec['config']['sirn_epochs']
    assert {'train_loss', 'train_penalty', 'train_disc_loss', 'train_disc_acc', 'val_sens_acc', 'val_sens_acc_male',
            'val_sens_acc_female', 'val_acc_male', 'val_acc_female'} <= set(hist.columns)
    assert hist[['train_penalty', 'train_disc_loss']].gt(0).all().all()
    assert len(pd.read_csv(run / 'backbone_history.csv')) == rec['config']['epochs']
    parts = torch.load(run / 'model.pt', weights_only=True)
    assert set(parts) == {'backbone', 'head', 'sirn', 'sirn_head', 'discriminator'}
    text = (own / 'run_fair_features.ipynb').read_text()
    assert 'Table 3' in text and 'paper (ResNet-152, CelebA)' in text


@pytest.mark.slow
def test_a_given_backbone_is_loaded_not_retrained(own, on_backbone):
    "The frozen embeddings x are the same model's: the 'pretrained' rows match those of the run that trained it."
    _, base = read_results(own / 'run')
    for run in on_backbone.values():
        _, rows = read_results(run)
        pre = lambda r: r[r.task == 'pretrained'].set_index(['split', 'group', 'metric']).value.sort_index()
        pd.testing.assert_series_equal(pre(rows), pre(base), rtol=0, atol=1e-6)
        assert not (run / 'backbone_history.csv').exists()


@pytest.mark.slow
def test_alpha_zero_is_recognition_alone(on_backbone):
    "With alpha = 0 the penalised group cannot matter: the SIRN, its figures and its discriminator are the same."
    _, a = read_results(on_backbone['a0_male'])
    _, b = read_results(on_backbone['a0_female'])
    assert np.allclose(a.value.to_numpy(dtype=float), b.value.to_numpy(dtype=float), equal_nan=True, atol=1e-7)
    pa = torch.load(on_backbone['a0_male'] / 'model.pt', weights_only=True)
    pb = torch.load(on_backbone['a0_female'] / 'model.pt', weights_only=True)
    for part in ('sirn', 'discriminator'):
        assert all(torch.equal(pa[part][k], pb[part][k]) for k in pa[part])
    _, c = read_results(on_backbone['a3_male'])
    assert (a.value - c.value).abs().max() > 0       # alpha > 0 does change the figures


@pytest.mark.slow
def test_sirn_table_reads_runs(on_backbone):
    t = sirn_table(on_backbone.values())
    assert t.index.tolist() == [('female', 0.0), ('male', 0.0), ('male', 3.0)]
    assert t.columns.tolist() == ['MALE', 'FEMALE', 'GAP', 'SENS ACC', 'PROBE ACC']
    assert ((t.MALE - t.FEMALE - t.GAP).abs() < 1e-6).all() and t.stack().between(-100, 100).all()


@pytest.mark.slow
def test_resume_reuses_both_checkpoints(own, tmp_path):
    "An interrupted fair-features run continues from its checkpoints: same figures, no training repeated."
    import shutil
    run = tmp_path / 'run'
    shutil.copytree(own / 'run', run)
    (run / 'results.json').unlink()                              # as if killed after the game, before the results
    cfg = json.loads((run / 'config.json').read_text())
    cfg['out_dir'] = str(run); (run / 'config.json').write_text(json.dumps(cfg))
    run_notebook('run_fair_features.ipynb', tmp_path, **SMOKE, alpha=1.0, penalized_group='male', out_dir=str(run), resume=True)
    _, a = read_results(own / 'run')
    _, b = read_results(run)
    assert (a.value.isna() == b.value.isna()).all()
    assert np.allclose(a.value.to_numpy(dtype=float), b.value.to_numpy(dtype=float), equal_nan=True, atol=1e-6)
    for f in ('backbone_history.csv', 'history.csv'):     # the checkpoints' rows, timings too: nothing trained again
        pd.testing.assert_frame_equal(pd.read_csv(own / 'run' / f), pd.read_csv(run / f))


@pytest.mark.parametrize('params,message', [
    (dict(penalized_group='women'), "penalized_group 'women' is not a group"),
    (dict(adversary_on='men'), "adversary_on must be one of"),
    (dict(disc_steps=0), 'disc_steps must be an integer >= 1'),
    (dict(sirn_lr=-1.0), 'sirn_lr must be > 0'),
    (dict(backbone_checkpoint='no/such/run'), "backbone_checkpoint 'no/such/run' does not exist"),
])
def test_bad_fair_features_parameters(tmp_path, params, message):
    refused_by_start_run('fair_features', tmp_path / 'run', params, message)


@pytest.mark.slow
def test_backbone_from_another_split_is_refused(own, tmp_path):
    "A backbone trained with another split seed may have seen this run's test identities."
    refused_by_start_run('fair_features', tmp_path / 'run', {**SMOKE, 'seed': 1, 'backbone_checkpoint': str(own / 'run')},
                         r'trained with other seed=0 \(here 1\)')
