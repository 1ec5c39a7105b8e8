"""The methods after the paper, end to end: Group DRO's weights move towards the group that does worse in training
and are recorded per epoch; reweighting weights each sample by its cell's inverse training frequency; JTT upweights
the errors of its first stage, recomputed here from that stage's saved model; DFR refits only the last layer, with
the C that did best on the other half of the holdout; faces refuse the two, saying why."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import launch
from fairnb.tables import AFTER_METHODS

BIN = Path(sys.executable).parent
from test_images import USER, user_manifest


def test_group_dro_runs_on_a_manifest_and_records_its_weights(tmp_path):
    csv = user_manifest(tmp_path/'study', n_images=160)
    launch('images', tmp_path/'run', manifest=str(csv), **USER, min_group=10, device='cpu', bootstrap=0,
           scheme='group_dro', eta=0.5, epochs=2)
    rec = json.loads((tmp_path/'run'/'results.json').read_text())
    assert (rec['config']['scheme'], rec['config']['eta'], rec['config']['adjustment']) == ('group_dro', 0.5, 0.0)   # the default, resolved
    h = pd.read_csv(tmp_path/'run'/'history.csv')
    q = h[['train_q_male', 'train_q_female']]
    assert ((q.sum(axis=1) - 1).abs() < 1e-6).all() and (q > 0).all(axis=None)   # weights, averaged over batches
    worse = (h.train_loss_female - h.train_loss_male).sum()     # the weights follow the summed group losses
    assert q.train_q_female.iloc[-1] != q.train_q_male.iloc[-1]
    assert (q.train_q_female.iloc[-1] > q.train_q_male.iloc[-1]) == (worse > 0), (h.filter(like='train_'), worse)


def test_reweight_runs_on_a_manifest_by_group_and_label(tmp_path):
    csv = user_manifest(tmp_path/'study', n_images=160)
    launch('images', tmp_path/'run', manifest=str(csv), **USER, min_group=10, device='cpu', bootstrap=0,
           scheme='reweight', reweight_by='group_label')
    rec = json.loads((tmp_path/'run'/'results.json').read_text())
    assert (rec['config']['scheme'], rec['config']['reweight_by']) == ('reweight', 'group_label')
    assert (pd.DataFrame(rec['rows']).query("split == 'test' and metric == 'auc'").value.notna().any())


def _stage1_errors(out, params):
    """JTT's error set recomputed outside the run: the run's data read again, stage 1's saved model on the unaugmented
    training images, its thresholds on validation (Youden's J), any task wrong."""
    import torch
    from fairnb.after_paper import jtt_errors, youden_thresholds
    from fairnb.evaluate import predict
    from fairnb.exp_chexpert import CHEXPERT, chexpert_data, chexpert_model
    from fairnb.core import release_run_dir
    from fairnb.run import start_run, unwatch_failures
    run = start_run(CHEXPERT, {'preset': 'smoke', 'device': 'cpu', 'out_dir': str(out), **params})
    data = chexpert_data(run); model = chexpert_model(run, data)
    model.net.load_state_dict(torch.load(out.parent/'run'/'stage1_checkpoint.pt', weights_only=True)['model'])
    (lt, yt, at), (lv, yv, _) = [predict(model.net, run.loader(data.datasets[s]), 'cpu', activation=None)
                                 for s in ('train_eval', 'validation')]
    unwatch_failures(); release_run_dir(out)
    return jtt_errors(lt, yt, youden_thresholds(lv, yv)), at['sex']


def test_jtt_upweights_the_error_set_of_its_first_stage_on_chexpert(tmp_path):
    params = dict(scheme='jtt', jtt_epochs=1, lambda_up=4, epochs=2, bootstrap=0)
    launch('chexpert', tmp_path/'run', device='cpu', **params)
    rec = json.loads((tmp_path/'run'/'results.json').read_text())
    assert (rec['config']['jtt_epochs'], rec['config']['lambda_up']) == (1, 4)
    assert len(pd.read_csv(tmp_path/'run'/'stage1_history.csv')) == 1     # stage 1: jtt_epochs
    assert len(pd.read_csv(tmp_path/'run'/'history.csv')) == 2             # stage 2: epochs
    jtt = rec['data']['jtt']
    errors, sex = _stage1_errors(tmp_path/'again', params)
    assert jtt['train_images'] == len(errors) and jtt['error_set'] == errors.sum() and 0 < errors.sum() < len(errors)
    assert [jtt['by_group'][g]['errors'] for g in ('male', 'female')] == [errors[sex == k].sum() for k in (0, 1)]
    assert f'{len(errors)} -> {len(errors) + 3 * errors.sum()}' in jtt['summary']   # N + (lambda_up - 1) |E|


def test_dfr_refits_only_the_last_layer_with_the_c_it_chose(tmp_path):
    import torch
    from fairnb.schemes import DFR
    launch('chexpert', tmp_path/'run', device='cpu', scheme='dfr', epochs=2, bootstrap=0)
    rec = json.loads((tmp_path/'run'/'results.json').read_text())
    dfr = rec['data']['dfr']
    scores = {float(c): v for c, v in dfr['worst_group_auc_by_C'].items()}
    assert set(scores) == set(DFR.C_GRID) and dfr['C'] == max(scores, key=scores.get)   # the best on the other half
    assert dfr['balanced_subset'] > 0 and dfr['tuning_half'] > 0 and dfr['tasks_refitted'] == 5
    trained = torch.load(tmp_path/'run'/'checkpoint.pt', weights_only=True)['model']
    refit = torch.load(tmp_path/'run'/'model.pt', weights_only=True)
    last = [k for k in trained if k.endswith('.weight')][-1].removesuffix('.weight')
    for k in trained:
        same = torch.equal(trained[k], refit[k])
        assert same != k.startswith(last), k          # the features kept, the last layer refitted
    if dfr['C'] <= 0.1: assert (refit[f'{last}.weight'] == 0).any()   # L1 at a small C: some weights zero


def test_jtt_and_dfr_run_on_a_manifest(tmp_path):
    csv = user_manifest(tmp_path/'study', n_images=160)
    for scheme in ('jtt', 'dfr'):
        launch('images', tmp_path/scheme, manifest=str(csv), **USER, min_group=10, device='cpu', bootstrap=0,
               scheme=scheme, epochs=2)
        rec = json.loads((tmp_path/scheme/'results.json').read_text())
        assert rec['config']['scheme'] == scheme and scheme in rec['data']
        assert pd.DataFrame(rec['rows']).query("split == 'test' and metric == 'auc'").value.notna().any()


def test_faces_refuse_jtt_and_dfr_saying_why(tmp_path):
    from conftest import refused_by_start_run
    refused_by_start_run('faces', tmp_path/'jtt', {'scheme': 'jtt'}, "is not for faces: JTT upweights")
    refused_by_start_run('faces', tmp_path/'dfr', {'scheme': 'dfr'}, "is not for faces: DFR refits")


@pytest.mark.slow
def test_the_after_paper_table_through_the_sweep_one_sub_table_per_rule(tmp_path):
    """fairnb-sweep after_paper (smoke, one seed) and its report: seven methods, four selection rules, each rule's
    figures those of the epoch it picked, read back from the runs; the HTML opened in headless Chromium."""
    out = tmp_path/'runs'
    done = subprocess.run([str(BIN/'fairnb-sweep'), 'after_paper', '--preset', 'smoke', '--seeds', '1', '--threads',
                           '1', '--jobs', '2', '--out', str(out), '--report', '--set', 'epochs=2'],
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    t = pd.read_csv(out/'after_paper.csv')
    assert list(t.block.unique()) == ['BASELINE', 'MIN-MAX', 'GROUP DRO', 'REWEIGHTING', 'BALANCED', 'JTT', 'DFR']
    assert list(t['select'].unique()) == ['last', 'val_mean', 'val_worst_group', 'val_worst_class']
    assert set(zip(t.split, t.column)) == {(s, c) for s in ('train', 'validation', 'test')
                                           for c in ('male', 'female', 'gap', 'worst')}
    assert len(t) == 7 * 4 * 12 and set(t.n) == {1}
    for folder in sorted((out/'smoke').iterdir()):
        rec = json.loads((folder/'results.json').read_text())
        block = t[t.block == next(b for b, s in AFTER_METHODS if s == rec['config']['scheme'])]
        for rule, picked in rec['selected'].items():
            rows = pd.DataFrame(picked['rows']).query("attribute == 'sex' and metric == 'auc' and task == 'mean'")
            test = rows[rows.split == 'test'].set_index('group').value
            mine = block[(block['select'] == rule) & (block.split == 'test')].set_index('column')['mean']
            assert mine['female'] == pytest.approx(test['female']) and mine['gap'] == pytest.approx(test['gap'])
            assert mine['worst'] == pytest.approx(min(test['male'], test['female']))
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    dom = subprocess.run([chromium, '--headless', '--no-sandbox', '--disable-gpu', '--dump-dom',
                          (out/'after_paper.html').as_uri()], capture_output=True, text=True, timeout=120).stdout
    for rule in ('last', 'val_mean', 'val_worst_group', 'val_worst_class'): assert f'select={rule}' in dom
    cells = re.findall(r'<th[^>]*>([^<]*)</th>', dom)
    assert {'BASELINE', 'JTT', 'DFR', 'AVG', 'TRAIN', 'VALIDATION', 'TEST', 'WORST', 'GAP'} <= set(cells)
    assert 'Traceback (most recent call last)' not in dom and '>no run' not in dom   # every cell filled
