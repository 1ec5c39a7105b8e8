"""The methods after the paper on your data: Group DRO's weights move towards the group that does worse in training
and are recorded per epoch; reweighting weights each sample by its cell's inverse training frequency."""
import json

import pandas as pd

from conftest import launch
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
