"""Your own data: a user's manifest trains, evaluates with intervals, audits and sweeps through the same commands as
CheXpert; three public layouts run from synthetic copies in their own files; every refusal of a bad manifest."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import numpy as np
import pytest
from PIL import Image

from conftest import launch, refused_by_start_run, run_notebook, stream_outputs
from fairnb.manifest import write_synthetic_manifest

BIN = Path(sys.executable).parent
USER_COLUMNS = {'subject': 'patient_id', 'skin_tone': 'site', 'disc': 'effusion', 'ring': 'nodule', 'bar': 'mass'}
USER = dict(labels=['effusion', 'nodule', 'mass'], attributes=['sex', 'site'], cluster='patient_id')


def user_manifest(folder:Path, n_images:int=480, **edits):
    """A study as a user writes it: images in a folder of their own, a manifest CSV beside it with the user's own
    column names (the images come from fairnb's synthetic writer). Returns the CSV's path."""
    write_synthetic_manifest(folder, n_images=n_images, seed=3)
    m = pd.read_csv(folder/'manifest.csv', dtype=str).rename(columns=USER_COLUMNS)
    for k, v in edits.items(): m[k] = v
    m.to_csv(folder/'my_study.csv', index=False)
    return folder/'my_study.csv'


@pytest.mark.parametrize('layout', ['nih', 'ham10000', 'fitzpatrick17k'])
def test_public_layout_runs_from_its_own_files(tmp_path, layout):
    "papermill on a synthetic copy in the dataset's exact layout: tasks and groups from its files, intervals, counts."
    run_notebook('run_images.ipynb', tmp_path, layout=layout, preset='smoke', bootstrap=50, out_dir=str(tmp_path/'run'))
    rec = json.loads((tmp_path/'run'/'results.json').read_text())
    c, rows = rec['config'], pd.DataFrame(rec['rows'])
    want = {'nih': (['Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Effusion'], ['sex', 'age_group']),
            'ham10000': (['akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc'], ['sex', 'age_group']),
            'fitzpatrick17k': (['benign', 'malignant', 'non-neoplastic'], ['skin_type'])}[layout]
    assert (c['tasks'], list(c['groups'])) == want
    assert set(rows[rows.metric == 'auc'].task) == {*want[0], 'mean'}
    test = rows[(rows.split == 'test') & (rows.metric == 'auc') & (rows.task == 'mean')]
    assert set(test.attribute) == set(want[1]) and test[['low', 'high']].notna().all(axis=None)
    assert sum(rec['data']['rows_dropped'].values()) > 0   # each synthetic copy plants the rows its dataset has
    assert (rows.metric == 'accuracy').any() == (layout != 'nih')   # multi-class labels: accuracy per group
    pred = pd.read_csv(tmp_path/'run'/'predictions'/'test.csv')
    assert {f'p_{t}' for t in want[0]} <= set(pred.columns) and pred.patient.notna().all()
    out = ''.join(stream_outputs(tmp_path/'run_images.ipynb'))
    assert 'rows dropped, ' in out


@pytest.mark.slow
def test_user_manifest_sweeps_reports_and_audits(tmp_path):
    """The README's ten minutes: a sweep of every scheme over the user's manifest with its table report, then the audit
    of two of its runs in a fresh kernel (the manifest's attributes come back from the runs' config.json)."""
    csv = user_manifest(tmp_path/'study')
    sets = [f'--set=manifest={csv}', '--set=labels=[effusion, nodule, mass]', '--set=attributes=[sex, site]',
            '--set=cluster=patient_id', '--set=bootstrap=50']
    r = subprocess.run([str(BIN/'fairnb-sweep'), 'images', '--preset', 'smoke', '--seeds', '1', '--jobs', '2',
                        '--threads', '1', '--out', str(tmp_path/'runs'), *sets, '--report'],
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = sorted(p.parent for p in (tmp_path/'runs').rglob('results.json'))
    assert len(runs) == 9
    report = tmp_path/'runs'/'images.ipynb'
    assert report.exists(), sorted(p.name for p in (tmp_path/'runs').iterdir())
    html = ''.join(''.join(o.get('data', {}).get('text/html', '')) for c in json.loads(report.read_text())['cells']
                   for o in c.get('outputs', []))
    assert 'MIN-MAX LOSS' in html and 'RANDOM FLIP' in html and 'no run' not in html
    base = next(p for p in runs if p.name.startswith('images-baseline'))
    flip = next(p for p in runs if p.name.startswith('images-label_flip'))
    assert json.loads((flip/'results.json').read_text())['config']['flip_group'] == 'female'   # sex's last group
    run_notebook('audit.ipynb', tmp_path/'audit', baseline_run=str(base), fair_run=str(flip), resamples=50,
                 out_dir=str(tmp_path/'audit'))
    audit = pd.read_csv(tmp_path/'audit'/'audit.csv')
    assert {'sex', 'site'} <= set(audit.attribute)
    assert audit[audit.group == 'gap'].p_value.notna().all()


def refuse(tmp_path, message, **edits):
    "A manifest with `edits` is refused at the run's start, with `message`, recorded in failed.json."
    csv = user_manifest(tmp_path/'study', n_images=120, **edits)
    refused_by_start_run('images', tmp_path/'run', {'manifest': str(csv), **USER, 'min_group': 10}, message)


def test_a_label_outside_its_vocabulary_is_refused(tmp_path):
    labels = ['0'] * 5 + ['yes'] + ['1'] * 114
    refuse(tmp_path, r"my_study.csv has 1 nodule value\(s\) outside the vocabulary of a binary label \(0 or 1\) "
                     r"\(line 7: 'yes'\)", nodule=labels)


def test_a_group_below_the_minimum_is_refused(tmp_path):
    refuse(tmp_path, r"attribute 'site' has group\(s\) below the minimum of 10 images: 'rural' \(3\)",
           site=['rural'] * 3 + ['urban'] * 117)


def test_a_cluster_in_two_given_splits_is_refused(tmp_path):
    csv = user_manifest(tmp_path/'study', n_images=120)
    m = pd.read_csv(csv, dtype=str)
    m['split'] = ['test' if i % 4 == 0 else 'train' for i in range(len(m))]   # splits drawn by image, not patient
    m.to_csv(csv, index=False)
    refused_by_start_run('images', tmp_path/'run', {'manifest': str(csv), **USER, 'min_group': 10},
                         r"patient_id\(s\) appear in two splits: 's\d+' in \['test', 'train'\] \(lines \[\d+, \d+")


def test_a_missing_or_cut_short_image_stops_or_is_skipped(tmp_path):
    "The image check names both files; with on_bad_image='skip' the run ends and results.json lists them."
    csv = user_manifest(tmp_path/'study', n_images=120)
    files = pd.read_csv(csv).path
    (csv.parent/files[0]).unlink()
    cut = csv.parent/files[5]; cut.write_bytes(cut.read_bytes()[:60])
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError,
                       match=r"2 image\(s\) are missing, cannot be decoded or are too small .*'missing'"):
        run_notebook('run_images.ipynb', tmp_path, manifest=str(csv), **USER, min_group=10, preset='smoke',
                     out_dir=str(tmp_path/'stop'))
    error = json.loads((tmp_path/'stop'/'failed.json').read_text())['error']
    assert error.startswith('OSError') and 'cannot be decoded' in error and "on_bad_image='skip'" in error
    launch('images', tmp_path/'skip', manifest=str(csv), **USER, min_group=10, device='cpu', on_bad_image='skip',
           bootstrap=0)
    skipped = json.loads((tmp_path/'skip'/'results.json').read_text())['data']['images_skipped']
    assert sorted(Path(f).name for s in skipped.values() for f in s) == sorted(Path(f).name for f in files[[0, 5]])


def test_a_torchvision_backbone_by_name_with_local_weights(tmp_path):
    "Any torchvision classifier by name; its ImageNet weights from a local file (nothing is downloaded)."
    import torch, torchvision
    weights = tmp_path/'mobilenet_v3_small-imagenet.pth'
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), weights)
    csv = user_manifest(tmp_path/'study', n_images=120)
    launch('images', tmp_path/'run', manifest=str(csv), **USER, min_group=10, device='cpu', bootstrap=0,
           model='torchvision:mobilenet_v3_small', weights_path=str(weights))
    c = json.loads((tmp_path/'run'/'results.json').read_text())['config']
    assert (c['model'], c['weights_path']) == ('torchvision:mobilenet_v3_small', str(weights))
    state = torch.load(tmp_path/'run'/'model.pt', weights_only=True)
    assert state['classifier.3.weight'].shape[0] == 3   # its head: one logit per task
    refused_by_start_run('images', tmp_path/'bad', {'manifest': str(csv), **USER, 'model': 'torchvision:resnet9'},
                         'any torchvision classification network')


@pytest.mark.slow
def test_the_findings_machinery_reads_your_data(tmp_path):
    """F1, F2, F7 and F8 on the images family: confirmation runs of each arm where the findings report puts them,
    gathered, assessed against the baseline and given verdicts; a sensitive attribute of six groups (skin type)."""
    from fairnb.claims import findings_table, gather_stage
    from fairnb.figures import run_folder
    from fairnb.verdicts import arm_verdicts, assess, fit_check
    over = {'images': {'layout': 'fitzpatrick17k', 'bootstrap': 0}}
    chosen = {'im_eo_train': 10.0, 'im_di_train': 10.0, 'im_eq_train': 1.0, 'im_eq_holdout': 1.0}
    cells = findings_table('images', 'confirm', chosen).cells
    assert len(cells) == 5
    for c in cells:
        for s in (0, 1):
            launch('images', run_folder(tmp_path, 'smoke', c, s, over['images']), **c.kw, **over['images'], seed=s,
                   device='cpu')
    figs = gather_stage(tmp_path, 'smoke', ('images',), 'confirm', [0, 1], over, chosen, resamples=20)
    assert not figs.missing and len(figs) == 10
    one = figs[cells[0], 0]
    assert {'gap', 'signed_gap', 'score', 'train_worst', '1', '6'} <= set(one)
    assert np.isnan(one['other_gap']).all()   # one attribute only: the gap along a next one is undefined
    parts = assess(figs, chosen, families=('images',))
    mine = parts[parts.family == 'images']
    assert set(mine.arm) == {'im_eo_train', 'im_di_train', 'im_eq_train', 'im_eq_holdout'}
    assert (mine.blocked.isna() & (mine.seeds == 2)).all() and mine.value.notna().any()
    f7 = mine[(mine.finding == 'F7') & (mine.role == 'claim')]
    assert f7.value.isna().all() and set(f7.verdict) == {'undefined'}   # fitzpatrick17k has one attribute
    v = arm_verdicts(parts)
    assert set(v[v.arm.str.startswith('im_')].verdict) <= {'reproduced', 'contradicted', 'inconclusive', 'not testable'}
    f7v = v[(v.finding == 'F7') & v.arm.str.startswith('im_')]
    assert (f7v.verdict == 'not testable').all()   # every arm: the condition, the premise, or the undefined gap
    fit = fit_check(figs, [0, 1], ('images',))
    assert fit.group.tolist() == ['worst'] and 0 < fit.train_score.iloc[0] <= 1
