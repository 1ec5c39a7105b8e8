"Reliability end to end: a killed run resumes exactly; bad data is refused clearly or skipped and counted."
import json
import os
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
from papermill.exceptions import PapermillExecutionError

from conftest import NBS, run_notebook
from fairnb.chexpert import write_synthetic_chexpert
from fairnb.report import read_results
from fairnb.train import load_checkpoint

SMOKE = dict(preset='smoke', epochs=4)


def _kill_tree(pid):
    proc = psutil.Process(pid)
    for p in proc.children(recursive=True) + [proc]:
        try: p.kill()
        except psutil.NoSuchProcess: pass


def test_killed_run_resumes_exactly(tmp_path):
    ref = tmp_path / 'ref'
    run_notebook('run_chexpert.ipynb', ref, out_dir=str(ref / 'run'), **SMOKE)
    cut = tmp_path / 'cut'; cut.mkdir(); out = cut / 'run'
    args = [a for k, v in SMOKE.items() for a in ('-p', k, str(v))]
    proc = subprocess.Popen([sys.executable, '-m', 'papermill', str(NBS / 'run_chexpert.ipynb'), str(cut / 'nb.ipynb'),
                             *args, '-p', 'out_dir', str(out)], cwd=cut, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (out / 'checkpoint.pt').exists() and load_checkpoint(out / 'checkpoint.pt')['epoch'] >= 2:
            time.sleep(0.5); break                                  # now inside epoch 3
        time.sleep(0.05)
    _kill_tree(proc.pid); proc.wait()                               # SIGKILL, the kernel too
    assert not (out / 'results.json').exists(), 'the run finished before it could be killed'
    assert load_checkpoint(out / 'checkpoint.pt')['epoch'] in (2, 3)
    run_notebook('run_chexpert.ipynb', cut / 'resumed', out_dir=str(out), resume=True, **SMOKE)
    _, a = read_results(ref / 'run')
    _, b = read_results(out)
    assert ((a.value - b.value).abs().fillna(0) <= 1e-6).all()
    ha, hb = (pd.read_csv(d / 'history.csv').drop(columns='seconds') for d in (ref / 'run', out))
    pd.testing.assert_frame_equal(ha, hb, rtol=0, atol=1e-6)


def test_resume_refuses_another_configuration(tmp_path):
    out = tmp_path / 'run'; out.mkdir()
    (out / 'config.json').write_text(json.dumps({'lr': 1.0}))            # an interrupted run of another configuration
    with pytest.raises(PapermillExecutionError, match=r"other values for \[.*'lr'"):
        run_notebook('run_chexpert.ipynb', tmp_path / 'b', out_dir=str(out), preset='smoke', resume=True)


def test_failure_is_recorded_not_half_written(tmp_path):
    out = tmp_path / 'run'
    with pytest.raises(PapermillExecutionError, match='does not exist'):
        run_notebook('run_chexpert.ipynb', tmp_path, out_dir=str(out), preset='smoke', data_dir=str(tmp_path / 'none'))
    failed = json.loads((out / 'failed.json').read_text())
    assert 'FileNotFoundError' in failed['error'] and 'Traceback' in failed['traceback']
    assert not (out / 'results.json').exists()


@pytest.fixture()
def small_chexpert(tmp_path):
    return write_synthetic_chexpert(tmp_path / 'data' / 'CheXpert-v1.0-small', n_train=400, n_test=200, img_size=32, seed=5)


def test_corrupt_image_stops_or_is_skipped_and_counted(tmp_path, small_chexpert):
    victim = sorted((small_chexpert / 'valid').rglob('*.jpg'))[3]
    victim.write_bytes(victim.read_bytes()[:40])                     # truncated JPEG
    with pytest.raises(PapermillExecutionError, match=f"1 test image.*{victim.parent.name}"):
        run_notebook('run_chexpert.ipynb', tmp_path / 'a', out_dir=str(tmp_path / 'a' / 'run'), preset='smoke', data_dir=str(small_chexpert))
    run_notebook('run_chexpert.ipynb', tmp_path / 'b', out_dir=str(tmp_path / 'b' / 'run'), preset='smoke',
                 data_dir=str(small_chexpert), on_bad_image='skip')
    rec = json.loads((tmp_path / 'b' / 'run' / 'results.json').read_text())
    assert rec['data']['images_skipped']['test'] == [str(victim)]
    assert rec['data']['rows_dropped_missing_sex_or_age'] == 5


def test_one_group_in_a_split_is_refused_before_training(tmp_path, small_chexpert):
    valid = small_chexpert / 'valid.csv'
    valid.write_text(valid.read_text().replace(',Male,', ',Female,'))
    with pytest.raises(PapermillExecutionError, match=r"The test split holds only \['female'\] for sex"):
        run_notebook('run_chexpert.ipynb', tmp_path, out_dir=str(tmp_path / 'run'), preset='smoke', data_dir=str(small_chexpert))
    assert not (tmp_path / 'run' / 'history.csv').exists()


def test_crafted_checkpoint_is_refused(tmp_path):
    import pickle
    class Evil:
        def __reduce__(self): return (os.system, (f'touch {tmp_path}/pwned',))
    with open(tmp_path / 'checkpoint.pt', 'wb') as f: pickle.dump({'epoch': Evil()}, f)
    with pytest.raises(ValueError, match='loaded safely'):
        load_checkpoint(tmp_path / 'checkpoint.pt')
    assert not (tmp_path / 'pwned').exists()


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    "A loss that turns NaN in epoch 2 stops training naming the batch; the checkpoint still holds epoch 1."
    import torch
    from torch.utils.data import DataLoader
    from fairnb.data import ImageTable
    from fairnb.losses import weighted_bce
    from fairnb.schemes import get_scheme
    from fairnb.train import fit
    x, y = torch.randn(64, 2), (torch.rand(64, 2) > 0.5).float()
    ds = ImageTable(lambda i: x[i], y.numpy(), {'sex': (torch.arange(64) % 2).numpy()})
    calls = {'n': 0}
    def criterion(out, t, g):
        calls['n'] += 1
        loss = weighted_bce(out, t)
        return loss * float('nan') if calls['n'] == 6 else loss        # epoch 2 (4 batches an epoch), second batch
    m = torch.nn.Linear(2, 2)
    with pytest.raises(FloatingPointError, match='at epoch 2, batch 1'):
        fit(m, DataLoader(ds, batch_size=16), criterion, get_scheme('baseline', 'sex'), torch.optim.SGD(m.parameters(), 0.1), 3, 'cpu',
            checkpoint=tmp_path / 'checkpoint.pt')
    state = load_checkpoint(tmp_path / 'checkpoint.pt')
    assert state['epoch'] == 1 and len(state['history']) == 1
    assert all(torch.isfinite(v).all() for v in state['model'].values())
