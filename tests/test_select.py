"""Model selection (`select`), end to end on smoke runs: each rule's epoch is where its validation column of
history.csv peaks (computed here, independently), the rows of each rule are its own epoch's model, results.json keeps
every rule's rows with `rows` the first rule's, readers pick a rule, resume keeps the picks, faces refuse
val_worst_class."""
import json

import nbformat
import pandas as pd
import pytest
import torch

from conftest import launch, refused_by_start_run, run_notebook
from test_images import USER, user_manifest
from fairnb.chexpert import TASKS
from fairnb.results import collect_runs, read_results
from fairnb.run import SelectionKeeper
from fairnb.train import load_checkpoint

ALL = 'last,val_mean,val_worst_group,val_worst_class'
SMOKE = dict(preset='smoke', epochs=3, bootstrap=0, device='cpu')
SEXES = ('male', 'female')


def picks(history, groups, tasks=(), metric='auc'):
    "Each rule's epoch from history.csv's columns, with pandas: the first epoch of each column's highest value."
    h = history.set_index('epoch')
    cols = {'val_mean': h[f'val_{metric}'],
            'val_worst_group': h[[f'val_{metric}_{g}' for g in groups]].min(axis=1),   # NaN groups skipped
            'val_worst_class': h[[f'val_task_{metric}_{t}' for t in tasks]].min(axis=1) if tasks else None}
    return {'last': int(h.index[-1]), **{r: int(s.idxmax()) for r, s in cols.items() if s is not None}}


def validation(rows, metric='auc', task='mean'):
    "A rule's rows: the validation figure of each sex."
    r = pd.DataFrame(rows)
    r = r[(r.split == 'validation') & (r.attribute == 'sex') & (r.metric == metric) & (r.task == task)]
    return r.set_index('group').value.reindex(SEXES)


def history_at(history, epoch, metric='auc'):
    return history.set_index('epoch').loc[epoch, [f'val_{metric}_{g}' for g in SEXES]].set_axis(SEXES)


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def cx(tmp_path_factory):
    "A smoke CheXpert run through its notebook, with every rule."
    d = tmp_path_factory.mktemp('cx')
    run_notebook('run_chexpert.ipynb', d, out_dir=str(d/'run'), select=ALL, **SMOKE)
    return d


@pytest.mark.slow
def test_each_rule_picks_the_epoch_where_its_column_peaks(cx):
    rec, _ = read_results(cx/'run')
    h = pd.read_csv(cx/'run'/'history.csv')
    assert rec['config']['select'] == ALL and list(rec['selected']) == ALL.split(',')
    want = picks(h, SEXES, TASKS)
    assert {r: s['epoch'] for r, s in rec['selected'].items()} == want, h.filter(like='val_')
    at = h.set_index('epoch')
    assert rec['selected']['val_mean']['score'] == pytest.approx(at.val_auc[want['val_mean']])
    assert rec['selected']['val_worst_class']['score'] == pytest.approx(
        at.loc[want['val_worst_class'], [f'val_task_auc_{t}' for t in TASKS]].min())
    assert rec['selected']['last']['score'] is None
    kept = load_checkpoint(cx/'run'/'selected.pt')   # the validation rules' states; 'last' is model.pt
    assert {r: k['epoch'] for r, k in kept.items()} == {r: e for r, e in want.items() if r != 'last'}


@pytest.mark.slow
def test_each_rules_rows_are_its_own_epochs_model(cx):
    "Each rule's validation AUC per sex is the history's at its epoch: the model evaluated is that epoch's."
    rec, rows = read_results(cx/'run')
    h = pd.read_csv(cx/'run'/'history.csv')
    for rule, s in rec['selected'].items():
        assert validation(s['rows']).to_numpy() == pytest.approx(history_at(h, s['epoch']).to_numpy(), abs=1e-9), rule
    assert rec['selected']['last']['rows'] == rec['rows']                  # the first rule's rows are `rows`
    kept, final = load_checkpoint(cx/'run'/'selected.pt'), torch.load(cx/'run'/'model.pt', weights_only=True)
    for rule, k in kept.items():                                          # model.pt: the first rule's, the last epoch
        assert same_state(k['model']['net'], final) == (k['epoch'] == 3), rule


@pytest.mark.slow
def test_the_notebook_shows_which_epoch_each_rule_picked(cx):
    nb = nbformat.read(str(cx/'run_chexpert.ipynb'), as_version=4)
    html = [o['data'].get('text/html', '') for c in nb.cells for o in c.get('outputs', []) if 'data' in o]
    table = next(t for t in html if 'model selection: the epoch each rule picked' in t)
    assert all(r in table for r in ALL.split(',')) and 'test auc gap' in table


@pytest.mark.slow
def test_readers_pick_a_rule(cx):
    rec, _ = read_results(cx/'run')
    for rule in ALL.split(','):
        assert read_results(cx/'run', select=rule)[1].value.tolist() == pytest.approx(
            pd.DataFrame(rec['selected'][rule]['rows']).value.tolist(), nan_ok=True)
    runs = collect_runs([cx/'run'], select=['val_mean', 'val_worst_group'])
    assert set(runs.selected) == {'val_mean', 'val_worst_group'} and len(runs) == 2 * len(rec['rows'])
    assert 'selected' not in collect_runs([cx/'run']).columns


@pytest.mark.slow
def test_resume_keeps_the_picks(tmp_path, monkeypatch):
    "Stopped in epoch 3 (after 2 checkpoints), resumed: the keeper reads selected.pt back, and the picks are right."
    out, params = tmp_path/'run', dict(select=ALL, **SMOKE)
    keep = SelectionKeeper.__call__
    def stop(self, epoch, row, net=None):
        if epoch == 3: raise RuntimeError('interrupted')
        return keep(self, epoch, row, net)
    monkeypatch.setattr(SelectionKeeper, '__call__', stop)
    with pytest.raises(RuntimeError, match='interrupted'): launch('chexpert', out, **params)
    before = load_checkpoint(out/'selected.pt')
    assert before and max(k['epoch'] for k in before.values()) <= 2 and not (out/'results.json').exists()
    monkeypatch.undo()
    loaded, init = [], SelectionKeeper.__init__
    def spy(self, *a, **kw): init(self, *a, **kw); loaded.append({r: k['epoch'] for r, k in self.best.items()})
    monkeypatch.setattr(SelectionKeeper, '__init__', spy)
    launch('chexpert', out, resume=True, **params)
    assert loaded == [{r: k['epoch'] for r, k in before.items()}]        # the picks of epochs 1-2 came back
    rec, _ = read_results(out)
    h = pd.read_csv(out/'history.csv')
    assert h.epoch.tolist() == [1, 2, 3]
    assert {r: s['epoch'] for r, s in rec['selected'].items()} == picks(h, SEXES, TASKS)
    after = load_checkpoint(out/'selected.pt')
    for rule, k in after.items():                                         # a pick of epoch 1 or 2: the kept state
        if k['epoch'] <= 2: assert same_state(k['model']['net'], before[rule]['model']['net']), rule


@pytest.mark.slow
def test_images_with_two_rules(tmp_path):
    """A manifest run selecting by worst group first: its rows, model.pt and each rule's validation figures are its
    epoch's. Its validation peaks before the last epoch (at 1 and 2 threads alike), so the epochs can be told apart."""
    csv = user_manifest(tmp_path/'study', n_images=160)
    launch('images', tmp_path/'run', manifest=str(csv), **USER, min_group=10, select='val_worst_group, last', **SMOKE)
    rec, rows = read_results(tmp_path/'run')
    c, h = rec['config'], pd.read_csv(tmp_path/'run'/'history.csv')
    assert c['select'] == 'val_worst_group,last' and list(rec['selected']) == ['val_worst_group', 'last']
    want = picks(h, c['groups'][c['sensitive']], c['tasks'])
    assert {r: s['epoch'] for r, s in rec['selected'].items()} == {r: want[r] for r in rec['selected']}
    assert rec['selected']['val_worst_group']['epoch'] < 3, h.filter(like='val_auc_')   # else the test tells nothing
    for rule, s in rec['selected'].items():
        assert validation(s['rows']).to_numpy() == pytest.approx(history_at(h, s['epoch']).to_numpy(), abs=1e-9), rule
    assert rec['selected']['val_worst_group']['rows'] == rec['rows']   # the first rule's rows are `rows`
    kept = load_checkpoint(tmp_path/'run'/'selected.pt')
    assert same_state(kept['val_worst_group']['model']['net'], torch.load(tmp_path/'run'/'model.pt', weights_only=True))
    with pytest.raises(ValueError, match=r"only for \['val_worst_group', 'last'\]: run it again with "
                                         r'-p select val_worst_group,last,val_worst_class -p overwrite True'):
        read_results(tmp_path/'run', select='val_worst_class')


@pytest.mark.slow
def test_faces_select_by_worst_group_and_refuse_worst_class(tmp_path):
    "Faces keep the head with the backbone; val_worst_class is refused before anything runs, saying why."
    refused_by_start_run('faces', tmp_path/'refused', {'select': 'last,val_worst_class'},
                         'val_worst_class is not for faces: their classes are the training identities')
    launch('faces', tmp_path/'run', select='val_worst_group,last', **SMOKE)
    rec, _ = read_results(tmp_path/'run')
    h = pd.read_csv(tmp_path/'run'/'history.csv')
    s = rec['selected']['val_worst_group']
    assert s['epoch'] == picks(h, SEXES, metric='acc')['val_worst_group']
    assert validation(s['rows'], 'accuracy', 'identification').to_numpy() == pytest.approx(
        history_at(h, s['epoch'], 'acc').to_numpy(), abs=1e-9)
    kept = load_checkpoint(tmp_path/'run'/'selected.pt')
    final = torch.load(tmp_path/'run'/'model.pt', weights_only=True)
    assert same_state(kept['val_worst_group']['model']['criterion'], final['head'])    # model.pt: the first rule's
    assert same_state(kept['val_worst_group']['model']['net'], final['backbone'])
