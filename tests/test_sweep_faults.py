"""fairnb-sweep under fault: a cold cache shared by parallel runs, two sweeps into one folder, a sweep killed with
SIGKILL, and a --set value that every run would refuse."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fairnb.core import lock_run_dir

BIN = Path(sys.executable).parent
SWEEP = [str(BIN / 'fairnb-sweep'), 'table10', '--preset', 'smoke', '--seeds', '1', '--threads', '1', '--set',
         'bootstrap=20']


def _until(check, proc=None, timeout=300, what=''):
    t0 = time.time()
    while not check():
        assert proc is None or proc.poll() is None, f'the sweep ended before {what}:\n{proc.stdout.read()}'
        assert time.time() - t0 < timeout, f'no {what} in {timeout} s'
        time.sleep(0.2)


def _alive(pids):
    def up(p):
        try: return psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess: return False
    return [p for p in pids if up(p)]


@pytest.mark.slow
def test_cold_cache_parallel_sweep_and_a_second_sweep_refused(tmp_path):
    "Two runs at once build the same cold cache entry; a second sweep into the same --out is refused meanwhile."
    env = {**os.environ, 'FAIRNB_CACHE': str(tmp_path / 'empty-cache')}
    out = tmp_path / 'runs'
    first = subprocess.Popen(SWEEP + ['--out', str(out), '--jobs', '2'], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    _until(lambda: (out / 'sweep.lock').exists() and (out / 'sweep.lock').read_text(), first, what='sweep.lock')
    second = subprocess.run(SWEEP + ['--out', str(out), '--jobs', '1'], env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f'{out} is in use by another fairnb-sweep (process {first.pid}' in second.stderr, second.stderr
    first_out, _ = first.communicate(timeout=900)
    assert first.returncode == 0, first_out
    assert '2 run(s) finished, 0 already finished (skipped), 0 failed.' in first_out
    assert sorted(p.parent.name for p in (out / 'smoke').glob('*/results.json')) == [
        'chexpert-baseline-bootstrap=20-seed0', 'chexpert-minmax-bootstrap=20-seed0']
    assert not (out / 'sweep.lock').exists()
    cache = tmp_path / 'empty-cache'
    entries = [p for p in cache.iterdir() if p.is_dir() and p.name != 'decoded']   # one build, complete, no leftovers
    assert [p.name.split('-')[:3] for p in entries] == [['synthetic', 'chexpert', 'v2']]
    assert (entries[0] / 'params.json').exists()
    stores = sorted(p.name for p in (cache / 'decoded').iterdir())   # the images decoded once, by either run
    assert len(stores) == 2 and {s.rsplit('.', 1)[1] for s in stores} == {'npy', 'txt'}, stores   # no lock or temporary


@pytest.mark.slow
def test_sigkilled_sweep_leaves_no_process_and_resumes(tmp_path):
    out = tmp_path / 'runs'
    first = subprocess.Popen(SWEEP + ['--out', str(out), '--jobs', '1'], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    started = out / 'smoke' / 'chexpert-baseline-bootstrap=20-seed0' / 'config.json'
    _until(started.exists, first, what='a started run')
    tree = [p.pid for p in psutil.Process(first.pid).children(recursive=True)]   # papermill and its kernel
    assert len(tree) >= 2, tree
    first.send_signal(signal.SIGKILL); first.wait()
    _until(lambda: not _alive(tree), timeout=30, what='end of the killed sweep\'s papermill and kernel')
    again = subprocess.run(SWEEP + ['--out', str(out), '--jobs', '1'], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert '2 run(s) finished, 0 already finished (skipped), 0 failed.' in again.stdout
    assert len(list((out / 'smoke').glob('*/results.json'))) == 2


def test_a_value_every_run_would_refuse_stops_the_sweep_before_it_starts(tmp_path):
    bad = subprocess.run(SWEEP[:-1] + ['epochs=abc', '--out', str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "epochs must be an integer or None, got 'abc'" in bad.stderr, bad.stderr
    unknown = subprocess.run(SWEEP[:-1] + ['epoch=2', '--out', str(tmp_path)], capture_output=True, text=True,
                             timeout=300)
    assert unknown.returncode == 2 and "run_chexpert has no parameter(s) ['epoch']" in unknown.stderr
    assert not list(tmp_path.glob('smoke/*'))   # nothing started
