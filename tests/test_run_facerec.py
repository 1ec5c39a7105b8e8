"Papermill executions of the face-recognition notebook, each face scheme, on the synthetic CelebA."

import pandas as pd
import pytest
from papermill.exceptions import PapermillExecutionError

from conftest import launch, refused_by_start_run, run_notebook, stream_outputs
from fairnb.results import read_results

RUNS = {
    'baseline': dict(scheme='baseline'),
    'eq_loss_train': dict(scheme='eq_loss', alpha=1.0, penalty_on='train'),
    'eq_loss_holdout': dict(scheme='eq_loss', alpha=1.0, penalty_on='holdout'),
    'minmax': dict(scheme='minmax'),
    'label_flip': dict(scheme='label_flip', flip_group='male', flip_rate=0.3),
    'margins': dict(scheme='margins', margin=0.75, margin_group='female'),
    'balanced': dict(scheme='balanced', boost_group='female', boost=2.0),
    'group_dro': dict(scheme='group_dro', eta=0.1, adjustment=1.0),
    'reweight': dict(scheme='reweight'),
}
NOTEBOOK_RUNS = ('baseline', 'label_flip')   # executed through the notebook (label flipping prints what it did)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    out = {}
    for name, params in RUNS.items():
        d = tmp_path_factory.mktemp(f'face_{name}')
        if name in NOTEBOOK_RUNS: run_notebook('run_facerec.ipynb', d, preset='smoke', out_dir=str(d / 'run'), **params)
        else: launch('faces', d / 'run', **params)
        out[name] = d
    return out


@pytest.mark.parametrize('name', list(RUNS))
@pytest.mark.slow
def test_face_results(runs, name):
    rec, rows = read_results(runs[name] / 'run')
    assert {k: rec['config'][k] for k in RUNS[name]} == RUNS[name]
    sex = rows[(rows.attribute == 'sex') & (rows.metric != 'share')]
    assert set(sex.task) == {'identification'} and rec['config']['problem'] == 'faces'
    assert rec['config']['world_knobs'] == {'test_frac': 0.1} and rec['data']['world']['female_jitter'] == 1.5
    shares = rows[rows.metric == 'share'].pivot(index='split', columns='group', values='value')
    assert shares.shape == (3, 2) and ((shares.male + shares.female - 1).abs() < 1e-9).all()
    for metric, lo, hi in (('accuracy', 0, 1), ('intra_angle', 0, 180), ('inter_angle', 0, 180)):
        m = sex[sex.metric == metric]
        assert len(m) == 3 * 3 and set(m.split) == {'train', 'validation', 'test'}
        assert m[m.group != 'gap'].value.between(lo, hi).all(), m
        wide = m.pivot(index='split', columns='group', values='value')
        assert ((wide.male - wide.female - wide.gap).abs() < 1e-9).all()
    assert set(rows[(rows.attribute == 'young_old')].group) == {'young', 'old', 'gap'}
    hist = pd.read_csv(runs[name] / 'run' / 'history.csv')
    assert {'train_loss_male', 'train_loss_female', 'train_acc_gap', 'val_acc_male', 'val_acc_female', 'val_acc_gap'} <= set(hist.columns)
    assert (runs[name] / 'run' / 'model.pt').stat().st_size > 0
    if name == 'eq_loss_holdout':
        assert hist.train_penalty.notna().all()


@pytest.mark.slow
def test_every_arm_trains_on_the_same_images(runs):
    "The holdout is carved out for every scheme, so a baseline and a holdout penalty can be paired seed by seed."
    train = {name: read_results(runs[name] / 'run')[1].query("metric == 'accuracy' and split == 'train'").n.tolist()
             for name in RUNS}
    assert len({tuple(v) for v in train.values()}) == 1, train


@pytest.mark.slow
def test_same_seed_same_face_results(runs, tmp_path):
    "The same seed gives the same numbers, whether the notebook or the launcher runs the experiment."
    launch('faces', tmp_path / 'run', scheme='baseline')
    _, a = read_results(runs['baseline'] / 'run')
    _, b = read_results(tmp_path / 'run')
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize('name', NOTEBOOK_RUNS)
@pytest.mark.slow
def test_face_report_is_for_reading(runs, name):
    "No progress bars and no warnings in the executed report (e.g. NumPy's non-writable array warning)."
    report = runs[name] / 'run_facerec.ipynb'
    assert stream_outputs(report, 'stderr') == []
    assert sum(l.startswith('training (') for l in ''.join(stream_outputs(report, 'stdout')).splitlines()) == 1


@pytest.mark.slow
def test_label_flip_relabels_before_training(runs):
    text = (runs['label_flip'] / 'run_facerec.ipynb').read_text()
    assert 'relabelled' in text and ' male training images' in text


@pytest.mark.parametrize('name', [n for n in RUNS if n != 'baseline'])
@pytest.mark.slow
def test_face_schemes_train_differently(runs, name):
    "Runs are deterministic, so a scheme that changes training changes some figure (one smoke epoch moves them little)."
    _, a = read_results(runs['baseline'] / 'run')
    _, b = read_results(runs[name] / 'run')
    assert (a.value - b.value).abs().max() > 0


@pytest.mark.slow
def test_margins_raise_the_margin_groups_loss(runs):
    "A larger CosFace margin for women makes their training loss larger than under the baseline; men's barely move."
    base = pd.read_csv(runs['baseline'] / 'run' / 'history.csv').iloc[0]
    marg = pd.read_csv(runs['margins'] / 'run' / 'history.csv').iloc[0]
    assert marg.train_loss_female - base.train_loss_female > 5 * abs(marg.train_loss_male - base.train_loss_male)


@pytest.mark.parametrize('params,message', [
    (dict(scheme='eq_odds'), "scheme 'eq_odds' is not for faces"),
    (dict(scheme='fair_features'), "scheme 'fair_features' is not for faces"),
    (dict(scheme='minmax', margin=0.5), r"scheme 'minmax' does not use margin=0.5 \(a parameter of \['margins'\]\)"),
    (dict(scheme='margins', margin_group='women'), "margin_group 'women' is not a group"),
    (dict(scheme='margins', margin=1.2), r'margin must lie in \[0, 1\)'),
    (dict(backbone='resnet9'), "Unknown model 'resnet9'"),
    (dict(data_dir='no/such/celeba'), 'does not exist'),
])
def test_bad_face_parameters(tmp_path, params, message):
    refused_by_start_run('faces', tmp_path / 'run', params, message)
