"Audits: interval coverage on simulated data, and the audit notebook through papermill on two pairs of smoke runs."
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from papermill.exceptions import PapermillExecutionError

from conftest import launch, run_notebook
from fairnb.audit import paired_predictions
from fairnb.results import read_predictions
from fairnb.metrics import group_auc, group_mean_rows
from fairnb.results import read_results

REPS, RESAMPLES = 200, 400


def covered(rows, truth):
    "Per group (not the gap): does the row's interval hold the true value?"
    r = rows[rows.group != 'gap'].set_index('group')
    return [(r.low[g] <= truth[g] <= r.high[g]) for g in truth]


def test_auc_intervals_cover_the_true_auc_at_about_the_nominal_rate():
    # Binormal scores with a patient effect shared by a patient's two images: a group's true AUC is
    # Phi(d / sqrt(2 var)), with var the patient effect's plus the image noise's variance.
    rng, d, hits = np.random.default_rng(0), {0: 1.0, 1: 0.6}, []
    truth = {'male': stats.norm.cdf(1.0 / np.sqrt(2 * 1.25)), 'female': stats.norm.cdf(0.6 / np.sqrt(2 * 1.25))}
    for rep in range(REPS):
        patients = np.repeat(np.arange(300), 2); sex = patients % 2
        y = rng.integers(0, 2, 600)
        s = y * np.where(sex == 0, d[0], d[1]) + rng.normal(0, 0.5, 300)[patients] + rng.normal(0, 1, 600)
        rows = group_auc(s, y, sex, 'sex', clusters=patients, resamples=RESAMPLES, seed=rep)
        hits += covered(rows[rows.task == 'task0'], truth)
    coverage = np.mean(hits)
    # 2 x 200 intervals: a binomial standard error of about 1.1 points around 95%
    assert 0.91 <= coverage <= 0.99, coverage


def test_accuracy_intervals_resampling_identities_cover_and_image_resampling_does_not():
    # Identities differ in how recognisable they are (a shared effect): resampling identities keeps the
    # nominal rate; resampling images as if independent gives intervals that are too narrow.
    rng, truth, by_id, by_image = np.random.default_rng(1), {'male': 0.8, 'female': 0.7}, [], []
    for rep in range(REPS):
        ids = np.repeat(np.arange(120), 6); sex = ids % 2
        p_id = np.clip(np.where(np.arange(120) % 2 == 0, 0.8, 0.7) + rng.normal(0, 0.25, 120), 0, 1)[ids]
        # the truth is the mean of the clipped identity probabilities (TRUTH_ACC, by simulation)
        correct = (rng.random(720) < p_id).astype(float)
        by_id += covered(group_mean_rows(correct, sex, 'sex', clusters=ids, resamples=RESAMPLES, seed=rep), TRUTH_ACC)
        by_image += covered(group_mean_rows(correct, sex, 'sex', resamples=RESAMPLES, seed=rep), TRUTH_ACC)
    assert 0.91 <= np.mean(by_id) <= 0.99, np.mean(by_id)
    assert np.mean(by_image) < 0.88, np.mean(by_image)


def _true_clipped_means(n=2_000_000, seed=123):
    rng = np.random.default_rng(seed)
    return {g: float(np.clip(m + rng.normal(0, 0.25, n), 0, 1).mean()) for g, m in (('male', 0.8), ('female', 0.7))}


TRUTH_ACC = _true_clipped_means()

PAIRS = {'chexpert': (dict(scheme='baseline'), dict(scheme='eq_loss', alpha=1.0)),
         'faces': (dict(scheme='baseline'), dict(scheme='margins'))}


@pytest.fixture(scope='module')
def audits(tmp_path_factory):
    "Per problem: a baseline and a fair smoke run, and the audit notebook executed on them."
    out = {}
    for problem, (base, fair) in PAIRS.items():
        d = tmp_path_factory.mktemp(problem)
        for name, params in (('base', base), ('fair', fair)):
            launch(problem, d / name / 'run', **params)   # finished runs; the notebook under test is audit.ipynb
        run_notebook('audit.ipynb', d / 'audit', baseline_run=str(d / 'base' / 'run'), fair_run=str(d / 'fair' / 'run'),
                     resamples=200, out_dir=str(d / 'audit'))
        out[problem] = d
    return out


@pytest.mark.parametrize('problem', list(PAIRS))
@pytest.mark.slow
def test_runs_keep_predictions_and_intervals(audits, problem):
    run = audits[problem] / 'base' / 'run'
    rec, rows = read_results(run)
    test = rows[(rows.split == 'test') & (rows.attribute == 'sex') & rows.metric.isin(['auc', 'accuracy'])]
    assert test[['n', 'low', 'high']].notna().all(axis=None) and (test.low <= test.high).all()
    config, pred, emb = read_predictions(run, 'test')
    assert config == rec['config'] and len(pred) == test.n[test.group == 'gap'].iloc[0] + (
        pred.correct.isna().sum() if problem == 'faces' else 0)
    assert (emb is not None) == (problem == 'faces')


@pytest.mark.parametrize('problem', list(PAIRS))
@pytest.mark.slow
def test_audit_report(audits, problem):
    d = audits[problem]
    audit = pd.read_csv(d / 'audit' / 'audit.csv')
    task = 'mean' if problem == 'chexpert' else 'identification'
    sex = audit[(audit.attribute == 'sex') & (audit.task == task)].set_index('group')
    # the baseline and fair columns are the runs' own test figures; abs_gap's change is the change of the gap's size
    for name in ('base', 'fair'):
        _, rows = read_results(d / name / 'run')
        gap = rows[(rows.split == 'test') & (rows.attribute == 'sex') & (rows.group == 'gap') & (rows.task == task)
                   & rows.metric.isin(['auc', 'accuracy'])].value.item()
        assert sex.loc['gap', 'baseline' if name == 'base' else 'fair'] == pytest.approx(gap, abs=1e-9)
    assert sex.loc['abs_gap', 'change'] == pytest.approx(abs(sex.loc['gap', 'fair']) - abs(sex.loc['gap', 'baseline']))
    assert (audit.dropna(subset=['low']).eval('low <= high')).all() and audit.p_value.between(0, 1).all()
    other = 'age_group' if problem == 'chexpert' else 'young_old'
    assert {other, f'sex&{other}'} <= set(audit.attribute)
    if problem == 'faces':
        race = audit[audit.attribute == 'race (BUPT)']
        assert set(race.group) == {'African', 'Asian', 'Caucasian', 'Indian', 'gap', 'abs_gap'}
    nb = json.loads((d / 'audit' / 'audit.ipynb').read_text())
    text = ''.join(json.dumps(o) for c in nb['cells'] for o in c.get('outputs', []))
    assert 'beyond chance' in text or 'not distinguishable from no change' in text
    assert 'image/png' in text                                   # the Figure 3 panels
    assert ('to_incorrect' in text) == (problem == 'faces')      # the flip table, faces only


@pytest.mark.slow
def test_runs_of_different_problems_or_images_are_refused(audits):
    c, f = audits['chexpert'], audits['faces']
    with pytest.raises(ValueError, match='is a chexpert run and .* a faces run'):
        paired_predictions(c / 'base' / 'run', f / 'base' / 'run')
    with pytest.raises(FileNotFoundError, match='is not a finished run'):
        paired_predictions(c / 'base', c / 'fair' / 'run')
    with pytest.raises(ValueError, match='baseline_run and fair_run are the same run'):
        paired_predictions(c / 'base' / 'run', c / 'base' / 'run' / '.')
    with pytest.raises(FileNotFoundError, match='does not exist: pass the folder of a finished run'):
        paired_predictions(c / 'nowhere', c / 'fair' / 'run')


@pytest.mark.slow
def test_runs_scored_on_other_images_are_refused_naming_one(audits, tmp_path):
    launch('faces', tmp_path / 'seed1', scheme='baseline', seed=1)   # another seed: other test identities
    with pytest.raises(ValueError, match=r'scored on different test images \(\d+ and \d+; \d+ in only one, e\.g\. '):
        paired_predictions(audits['faces'] / 'base' / 'run', tmp_path / 'seed1')


@pytest.mark.slow
def test_audit_notebook_refuses_the_same_run_twice(audits, tmp_path):
    run = str(audits['chexpert'] / 'base' / 'run')
    with pytest.raises(PapermillExecutionError, match='baseline_run and fair_run are the same run'):
        run_notebook('audit.ipynb', tmp_path, baseline_run=run, fair_run=run, resamples=20, out_dir=str(tmp_path))
    assert not (tmp_path / 'audit.csv').exists()
