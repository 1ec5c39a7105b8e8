"""Groups too small to measure: a group with fewer than `min_clusters` patients in a split gets no interval, its rows
say so, and no gap is computed across it; an AUC warning tells an empty group from a group of one class."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import refused_by_start_run, run_notebook, stream_outputs
from fairnb.manifest import write_synthetic_manifest
from fairnb.metrics import group_auc


def one_woman_in_test(folder):
    """A manifest as a user writes it, with a `split` column: the test split holds many men but a single woman
    (the issue's case), validation and train hold both sexes. Returns the CSV's path and the test woman's subject."""
    write_synthetic_manifest(folder, n_images=360, seed=5)
    m = pd.read_csv(folder/'manifest.csv', dtype=str)
    people = m.drop_duplicates('subject')[['subject', 'sex']]
    women = people[people.sex == 'female'].subject.tolist()
    men = people[people.sex == 'male'].subject.tolist()
    sizes = m.subject.value_counts()
    woman = next(w for w in women if sizes[w] >= 2)   # two images of one patient
    test = set(men[:25]) | {woman}
    val = set(men[25:40]) | set([w for w in women if w != woman][:15])
    m['split'] = np.where(m.subject.isin(test), 'test', np.where(m.subject.isin(val), 'validation', 'train'))
    m.to_csv(folder/'study.csv', index=False)
    return folder/'study.csv', woman


def test_a_group_of_one_patient_gets_no_interval_and_no_gap(tmp_path):
    "papermill on a manifest whose test split holds one woman: her rows are marked, no interval, and no sex gap."
    csv, _ = one_woman_in_test(tmp_path/'study')
    run_notebook('run_images.ipynb', tmp_path, manifest=str(csv), labels=['disc', 'ring', 'bar'],
                 attributes=['sex', 'skin_tone'], cluster='subject', preset='smoke', bootstrap=30,
                 out_dir=str(tmp_path/'run'))
    rec = json.loads((tmp_path/'run'/'results.json').read_text())
    rows = pd.DataFrame(rec['rows'])
    assert 'note' in rows, 'no row carries a note'
    auc = rows[rows.metric == 'auc']
    sex = auc[(auc.attribute == 'sex') & (auc.split == 'test')]
    women, gap = sex[sex.group == 'female'], sex[sex.group == 'gap']
    assert len(women) == 4 and (women.note == 'too few patients: 1 (min_clusters=5)').all(), women
    assert women[['low', 'high']].isna().all(axis=None)                  # no interval from one patient
    assert women.value.notna().any()                                     # her figure on the data is kept
    assert gap.value.isna().all() and (gap.note == 'no gap: too few patients in female').all(), gap
    assert gap[['low', 'high']].isna().all(axis=None)
    men = sex[sex.group == 'male']
    assert men.note.isna().all() and men[['low', 'high']].notna().all(axis=None)
    other = auc[(auc.attribute == 'sex') & (auc.split != 'test')]       # train and validation: enough of both
    assert other.note.isna().all() and other[other.task == 'mean'][['low', 'high']].notna().all(axis=None)
    for (split, attribute, task), d in auc.groupby(['split', 'attribute', 'task']):   # wherever the rule struck
        d = d.set_index('group')
        few = d.note.fillna('').str.startswith('too few patients')
        assert d.loc[few, ['low', 'high']].isna().all(axis=None), (split, attribute)
        kept = d.value.drop('gap')[~few.drop('gap')]
        if few.any() and len(kept) >= 2 and kept.notna().all():          # a gap of the others, never across
            assert abs(d.value['gap'] - (kept.max() - kept.min())) < 1e-12, (split, attribute, task)
    out = ''.join(stream_outputs(tmp_path/'run_images.ipynb'))
    assert 'test n/a (no gap: too few patients in female)' in out, out[-2000:]   # the notebook's last line
    assert rec['config']['min_clusters'] == 5                           # the default, recorded


def test_a_bad_min_clusters_is_refused(tmp_path):
    "min_clusters 0 stops the run before any data is read, naming the parameter and what it must be."
    refused_by_start_run('images', tmp_path/'run', {'min_clusters': 0}, 'min_clusters must be an integer >= 1')


def test_a_group_without_images_is_not_called_a_single_class():
    "The AUC warning says 'no images of this group in this split' for an empty group, 'a single class' otherwise."
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (60, 2)); p = y + rng.normal(0, 1, (60, 2))
    y[:, 1] = 0                                                          # task B: one class, for the men too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        group_auc(p, y, np.zeros(60, int), 'sex', tasks=('A', 'B'), split='test')   # no women in this split
    said = [str(w.message) for w in caught]
    assert 'AUC undefined for test female: no images of this group in this split; reported as NaN for every task.' \
        in said, said
    assert not any('female' in s and 'single class' in s for s in said), said
    assert any(s.startswith('AUC undefined for test male B (a single class in that group)') for s in said), said
