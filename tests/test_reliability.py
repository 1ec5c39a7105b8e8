"Reliability end to end: a killed run resumes exactly; bad data is refused clearly or skipped and counted."
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from papermill.exceptions import PapermillExecutionError

from conftest import NBS, launch, run_notebook, stream_outputs
from fairnb.chexpert import write_synthetic_chexpert
from fairnb.results import read_results
from fairnb.train import load_checkpoint

SMOKE = dict(preset='smoke', epochs=4)


def _kill_tree(pid):
    proc = psutil.Process(pid)
    for p in proc.children(recursive=True) + [proc]:
        try: p.kill()
        except psutil.NoSuchProcess: pass


@pytest.mark.slow
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
    saved = load_checkpoint(out / 'checkpoint.pt')
    assert saved['epoch'] in (2, 3)
    assert (out / 'run.lock').exists()                              # the killed run could not release its lock
    run_notebook('run_chexpert.ipynb', cut / 'resumed', out_dir=str(out), resume=True, **SMOKE)
    assert any('taking over the lock of process' in t for t in stream_outputs(cut / 'resumed' / 'run_chexpert.ipynb'))
    _, a = read_results(ref / 'run')
    _, b = read_results(out)
    assert (a.value.isna() == b.value.isna()).all()                 # NaN where NaN, and nowhere else
    assert np.allclose(a.value.to_numpy(float), b.value.to_numpy(float), rtol=0, atol=1e-6, equal_nan=True)
    hist = pd.read_csv(out / 'history.csv')
    # the epochs before the kill are the checkpoint's own rows (timings too): not trained again
    pd.testing.assert_frame_equal(hist.iloc[:saved['epoch']], pd.DataFrame(saved['history']), check_dtype=False)
    ha, hb = (pd.read_csv(d / 'history.csv').drop(columns='seconds') for d in (ref / 'run', out))
    pd.testing.assert_frame_equal(ha, hb, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_resume_refuses_another_configuration(tmp_path):
    out = tmp_path / 'run'; out.mkdir()
    (out / 'config.json').write_text(json.dumps({'lr': 1.0, 'fairnb_version': '0.0.1'}))   # an interrupted fairnb run
                                                                                          # of another configuration
    with pytest.raises(PapermillExecutionError, match=r"other values for \[.*'lr'"):
        run_notebook('run_chexpert.ipynb', tmp_path / 'b', out_dir=str(out), preset='smoke', resume=True)


@pytest.mark.slow
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


def _cut_and_remove(folder):
    "Cut one training JPEG to half its bytes (its header intact) and delete one test image; returns both."
    cut = sorted((folder / 'train').rglob('*.jpg'))[7]
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) // 2])
    gone = sorted((folder / 'valid').rglob('*.jpg'))[3]
    gone.unlink()
    return cut, gone


@pytest.mark.slow
def test_bad_images_of_every_split_stop_the_run_or_are_skipped(tmp_path, small_chexpert):
    cut, gone = _cut_and_remove(small_chexpert)
    out = tmp_path / 'a' / 'run'
    with pytest.raises(PapermillExecutionError, match=r"2 image\(s\) are missing, cannot be decoded or are too small \(train: 1"):
        run_notebook('run_chexpert.ipynb', tmp_path / 'a', out_dir=str(out), preset='smoke', data_dir=str(small_chexpert))
    failed = json.loads((out / 'failed.json').read_text())         # a failure of the data cell is recorded too
    assert str(gone) in failed['error'] and 'truncated' in failed['error'] and 'chexpert_data' in failed['traceback']
    assert not (out / 'results.json').exists()
    run_notebook('run_chexpert.ipynb', tmp_path / 'b', out_dir=str(tmp_path / 'b' / 'run'), preset='smoke',
                 data_dir=str(small_chexpert), on_bad_image='skip')
    rec = json.loads((tmp_path / 'b' / 'run' / 'results.json').read_text())
    skipped = rec['data']['images_skipped']
    assert skipped['test'] == [str(gone)] and sum(map(len, skipped.values())) == 2
    assert str(cut) in skipped['train'] + skipped['validation']
    assert rec['data']['rows_dropped'] == {'sex not Male or Female': 5, 'age missing': 0}


def test_lazy_reading_skips_what_the_check_found(small_chexpert):
    "The paper presets read images lazily: the files the check dropped are never opened."
    from fairnb.chexpert import chexpert_datasets, chexpert_frames
    from fairnb.data import drop_bad_images
    _cut_and_remove(small_chexpert)
    with pytest.warns(UserWarning, match='skipping 2 missing, corrupt or too small'):
        frames = drop_bad_images(chexpert_frames(small_chexpert), 'skip')
    ds = chexpert_datasets(frames, img_size=16, preload=False)
    for split in ('train_eval', 'validation', 'test'):
        assert all(ds[split][i][0].shape == (3, 16, 16) for i in range(len(ds[split])))


def _damage(csv, how):
    "Damage a CheXpert CSV as files are damaged in the wild; returns the line the reader must name."
    text = csv.read_text(); lines = text.splitlines(keepends=True)
    if how == 'cut_in_row':
        csv.write_text(''.join(lines[:30]) + lines[30][:len(lines[30]) // 2 + 8]); return 31
    if how == 'cut_in_path':
        csv.write_text(''.join(lines[:30]) + lines[30][:25]); return 31
    if how == 'not_utf8':
        csv.write_bytes(''.join(lines[:12]).encode() + lines[12].replace('Frontal', 'Fr\xe4ntal').encode('latin-1')
                        + ''.join(lines[13:]).encode()); return 13
    if how == 'header_only':
        csv.write_text(lines[0]); return None
    if how == 'age_not_a_number':
        fields = lines[20].split(','); fields[2] = 'sixty'
        csv.write_text(''.join(lines[:20]) + ','.join(fields) + ''.join(lines[21:])); return 21


@pytest.mark.parametrize('how,message', [
    ('cut_in_row', r'line {n} has \d+ fields where the header has 19 and the file ends inside it: it was cut short'),
    ('cut_in_path', r'line {n} has 1 fields where the header has 19 and the file ends inside it'),
    ('not_utf8', r'train.csv line {n}: byte 0xe4 is not UTF-8 text'),
    ('header_only', r'train.csv holds a header but no rows'),
    ('age_not_a_number', r"1 Age value\(s\) that are not an age in years \(line {n}: 'sixty'\)"),
])
@pytest.mark.slow
def test_damaged_csv_is_refused_naming_file_and_line(tmp_path, small_chexpert, how, message):
    line = _damage(small_chexpert / 'train.csv', how)
    out = tmp_path / 'run'
    with pytest.raises(PapermillExecutionError, match=message.format(n=line)):
        run_notebook('run_chexpert.ipynb', tmp_path, out_dir=str(out), preset='smoke', data_dir=str(small_chexpert))
    assert 'Re-extract it from the CheXpert archive' in json.loads((out / 'failed.json').read_text())['error']
    assert not (out / 'results.json').exists() and not (out / 'checkpoint.pt').exists()


@pytest.mark.slow
def test_celeba_line_without_identity_is_refused(tmp_path):
    from fairnb.faces import write_synthetic_celeba
    celeba = write_synthetic_celeba(tmp_path / 'celeba', n_ids=30, min_images=7, max_images=8, seed=2)
    ids = (celeba / 'identity_CelebA.txt').read_text().splitlines()
    ids[4] = ids[4].split()[0]                                      # a file name, no identity
    (celeba / 'identity_CelebA.txt').write_text('\n'.join(ids) + '\n')
    out = tmp_path / 'run'
    with pytest.raises(PapermillExecutionError, match=r"identity_CelebA.txt line 5: '\d+.jpg' is not an image name and its identity"):
        run_notebook('run_facerec.ipynb', tmp_path, out_dir=str(out), preset='smoke', data_dir=str(celeba))
    assert 'identity_CelebA.txt line 5' in json.loads((out / 'failed.json').read_text())['error']


@pytest.mark.slow
def test_unsafe_weights_fail_in_the_model_cell_and_are_recorded(tmp_path):
    import pickle
    class Evil:
        def __reduce__(self): return (os.system, (f'touch {tmp_path}/pwned',))
    with open(tmp_path / 'weights.pth', 'wb') as f: pickle.dump({'w': Evil()}, f)
    out = tmp_path / 'run'
    with pytest.raises(PapermillExecutionError, match='is not a plain weights file that can be loaded safely'):
        run_notebook('run_chexpert.ipynb', tmp_path / 'nb', out_dir=str(out), preset='smoke', model='densenet121',
                     weights_path=str(tmp_path / 'weights.pth'))
    failed = json.loads((out / 'failed.json').read_text())
    assert 'chexpert_model' in failed['traceback'] and not (tmp_path / 'pwned').exists()


@pytest.mark.slow
def test_two_runs_into_one_folder_never_both_write(tmp_path):
    "Started together, one run takes the folder; the other fails at once, naming it, and touches nothing."
    out = tmp_path / 'run'
    procs = {seed: subprocess.Popen([sys.executable, '-m', 'papermill', str(NBS / 'run_chexpert.ipynb'),
                                     str(tmp_path / f'nb{seed}.ipynb'), '-p', 'preset', 'smoke', '-p', 'seed', str(seed),
                                     '-p', 'out_dir', str(out), '-k', 'python3'],
                                    cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for seed in (0, 1)}
    errors = {seed: p.communicate(timeout=900)[1] for seed, p in procs.items()}
    won = [seed for seed, p in procs.items() if p.returncode == 0]
    assert len(won) == 1, errors
    lost = 1 - won[0]
    assert re.search(rf'{out} is in use by another run \(process \d+ on |{out} already holds a finished run', errors[lost])
    rec, _ = read_results(out)
    assert rec['config']['seed'] == won[0]
    assert not (out / 'failed.json').exists() and not (out / 'run.lock').exists()


@pytest.mark.slow
def test_one_group_in_a_split_is_refused_before_training(tmp_path, small_chexpert):
    valid = small_chexpert / 'valid.csv'
    valid.write_text(valid.read_text().replace(',Male,', ',Female,'))
    with pytest.raises(PapermillExecutionError, match=r"The test split holds only \['female'\] for sex"):
        run_notebook('run_chexpert.ipynb', tmp_path, out_dir=str(tmp_path / 'run'), preset='smoke', data_dir=str(small_chexpert))
    failed = json.loads((tmp_path / 'run' / 'failed.json').read_text())
    assert 'check_groups' in failed['traceback'] and not (tmp_path / 'run' / 'checkpoint.pt').exists()


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


def test_a_full_disk_at_the_last_write_fails_clearly_and_leaves_no_results(tmp_path):
    "The disk fills as results.json is written: a clear error, the run marked failed, no partial results.json."
    import errno
    from unittest import mock
    real = os.replace
    def replace(src, dst):
        if Path(dst).name == 'results.json': raise OSError(errno.ENOSPC, 'No space left on device')
        return real(src, dst)
    with mock.patch('os.replace', side_effect=replace), \
            pytest.raises(OSError, match=r'cannot write .*results\.json \(No space left on device\): is .* full or '
                                         r'read-only\? Free space or fix its permissions'):
        launch('chexpert', tmp_path / 'run', scheme='baseline', bootstrap=10)
    assert not (tmp_path / 'run' / 'results.json').exists()
    assert not [p.name for p in (tmp_path / 'run').iterdir() if p.name.endswith('.tmp')]
    assert 'No space left on device' in json.loads((tmp_path / 'run' / 'failed.json').read_text())['error']


def test_an_unwritable_output_folder_stops_a_run_and_a_sweep_with_a_clear_message(tmp_path):
    (tmp_path / 'a-file').write_text('')   # a folder that cannot be made: its parent is a file
    with pytest.raises(OSError, match=r"out_dir '.*a-file/run' cannot be a folder: '.*a-file' is a file\. .*"
                                      r"choose another out_dir, or move the file\."):
        launch('chexpert', tmp_path / 'a-file' / 'run')
    done = subprocess.run([str(Path(sys.executable).parent / 'fairnb-sweep'), 'table10', '--preset', 'smoke',
                           '--seeds', '1', '--out', str(tmp_path / 'a-file' / 'runs')], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "--out '" in done.stderr and 'is a file' in done.stderr, done.stderr
    assert 'choose another --out, or move the file' in done.stderr, \
        done.stderr
