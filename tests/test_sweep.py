"""fairnb-sweep end to end: a smoke table through the command line, stopped with SIGTERM and resumed, a failing run
reported while the others finish, the report (CSV, notebook, HTML read back in headless Chromium), and Ray."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from fairnb.core import write_json
from fairnb.results import read_results

BIN = Path(sys.executable).parent
SWEEP = [str(BIN / 'fairnb-sweep'), 'table10', '--preset', 'smoke', '--seeds', '2', '--threads', '1']


def _alive(procs):
    "The processes of `procs` still running (not ended, not zombies)."
    def up(p):
        try: return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess: return False
    return [p for p in procs if up(p)]


def _wait_for(path, proc, timeout=600):
    t0 = time.time()
    while not Path(path).exists():
        assert proc.poll() is None, f'the sweep ended before {path} appeared:\n{proc.stdout.read()}'
        assert time.time() - t0 < timeout, f'{path} did not appear in {timeout} s'
        time.sleep(0.2)


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
    "Table 10 (smoke, 2 seeds): one run planted to fail, the sweep stopped with SIGTERM mid-run, then run again."
    out = tmp_path_factory.mktemp('sweep') / 'runs'
    runs = out / 'smoke'
    # someone ran minmax seed 1 by hand into the sweep's folder with another learning rate, and it crashed
    write_json(runs / 'chexpert-minmax-seed1' / 'config.json', {'problem': 'chexpert', 'scheme': 'minmax', 'lr': 0.5})
    first = subprocess.Popen(SWEEP + ['--out', str(out), '--jobs', '1'], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    _wait_for(runs / 'chexpert-baseline-seed0' / 'results.json', first)
    _wait_for(runs / 'chexpert-minmax-seed0' / 'config.json', first)    # the second run is under way
    tree = psutil.Process(first.pid).children(recursive=True)          # papermill, its kernel, their children
    assert any('ipykernel' in ' '.join(p.cmdline()) for p in tree), [p.cmdline() for p in tree]
    first.send_signal(signal.SIGTERM)
    first_out, _ = first.communicate(timeout=120)
    left = _alive(tree)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob('*/results.json')}
    second = subprocess.run(SWEEP + ['--out', str(out), '--jobs', '2', '--report'], capture_output=True, text=True,
                            timeout=1200)
    return dict(out=out, runs=runs, first=first, first_out=first_out, left=left, finished=finished, second=second)


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_its_runs(swept):
    assert swept['first'].returncode == 128 + signal.SIGTERM, swept['first_out']
    assert 'Stopped: run the same command again to resume' in swept['first_out']
    assert '[stop] smoke/chexpert-minmax-seed0' in swept['first_out']
    assert not swept['left'], f'runs still alive after the sweep was stopped: {swept["left"]}'
    assert list(swept['finished']) == ['chexpert-baseline-seed0']     # the stopped run left no results.json


@pytest.mark.slow
def test_resume_skips_finished_runs_and_reports_the_failure(swept):
    second, runs = swept['second'], swept['runs']
    assert second.returncode == 1, second.stdout + second.stderr       # one run failed: non-zero, the rest went on
    assert '2 run(s) finished, 1 already finished (skipped), 1 failed.' in second.stdout
    base = runs / 'chexpert-baseline-seed0' / 'results.json'
    assert base.stat().st_mtime_ns == swept['finished']['chexpert-baseline-seed0']   # not redone
    for name in ('chexpert-minmax-seed0', 'chexpert-baseline-seed1'):
        rec, rows = read_results(runs / name)
        assert rec['config']['seed'] == int(name[-1]) and len(rows)
        assert (runs / name / 'report.ipynb').exists()
    failed = runs / 'chexpert-minmax-seed1' / 'failed.json'
    line = next(l for l in second.stdout.splitlines() if l.startswith('failed: '))
    assert 'smoke/chexpert-minmax-seed1' in line and 'resume=True but' in line and 'lr' in line, line
    assert str(failed) in line and 'resume=True but' in json.loads(failed.read_text())['error']
    assert not (runs / 'chexpert-minmax-seed1' / 'results.json').exists()


@pytest.mark.slow
def test_report_csv_has_the_tables_rows_and_columns(swept):
    out = swept['out']
    assert f'report: {out}/table10.ipynb, {out}/table10.csv, {out}/table10.html' in swept['second'].stdout
    t = pd.read_csv(out / 'table10.csv')
    assert list(t.block.unique()) == ['BASELINE', 'MIN-MAX LOSS']
    assert list(t.row.unique()) == ['CA', 'ED', 'CO', 'AT', 'PE', 'AVG']
    assert set(zip(t.split, t.column)) == {(s, g) for s in ('train', 'validation', 'test')
                                           for g in ('male', 'female', 'gap')}
    assert len(t) == 2 * 6 * 9 and t.paper.notna().all()
    assert set(t[t.block == 'BASELINE'].n) == {2} and set(t[t.block == 'MIN-MAX LOSS'].n) == {1}   # seed 1 failed
    base = t[t.block == 'BASELINE'].set_index(['row', 'split', 'column'])
    seeds = [read_results(swept['runs'] / f'chexpert-baseline-seed{k}')[1] for k in (0, 1)]
    auc = [r.query("attribute == 'sex' and metric == 'auc' and task == 'Consolidation' and split == 'test' "
                   "and group == 'female'").value.item() for r in seeds]
    assert base.loc[('CO', 'test', 'female'), 'mean'] == pytest.approx(np.mean(auc))
    assert base.loc[('CO', 'test', 'female'), 'low'] < np.mean(auc) < base.loc[('CO', 'test', 'female'), 'high']


@pytest.mark.slow
def test_html_report_renders_in_chromium(swept):
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    assert chromium, 'chromium is missing: `make system` installs it (Debian package chromium)'
    html = swept['out'] / 'table10.html'
    dom = subprocess.run([chromium, '--headless', '--no-sandbox', '--disable-gpu', '--dump-dom', html.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'Table 10: CheXpert: min-max (worst-group) training' in dom
    cells = re.findall(r'<th[^>]*>([^<]*)</th>', dom)
    assert {'BASELINE', 'MIN-MAX LOSS', 'CO', 'AVG', 'TRAIN', 'TEST', 'GAP'} <= set(cells)
    assert dom.count('paper 0.') >= 2 * 6 * 9
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', dom)) >= 2    # curves and the age figure


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def ray_head():
    "A local Ray instance: `ray start --head`, as on a cluster's head node; stopped afterwards."
    port, ray = _free_port(), str(BIN / 'ray')
    env = {**os.environ, 'RAY_USAGE_STATS_ENABLED': '0'}
    subprocess.run([ray, 'start', '--head', '--port', str(port), '--num-cpus', '2', '--include-dashboard=false',
                    '--object-store-memory', str(100 * 2**20), '--disable-usage-stats'], check=True, env=env,
                   capture_output=True, timeout=300)
    yield f'127.0.0.1:{port}'
    subprocess.run([ray, 'stop', '--force'], capture_output=True, timeout=120)


@pytest.mark.slow
def test_ray_backend_gives_the_local_results(swept, ray_head, tmp_path):
    out = tmp_path / 'ray-runs'
    r = subprocess.run(SWEEP[:4] + ['--seeds', '1', '--threads', '1', '--out', str(out), '--backend', 'ray',
                                    '--address', ray_head], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f'Ray at {ray_head}: 2 CPU slot(s)' in r.stdout and '2 run(s) finished' in r.stdout
    for name in ('chexpert-baseline-seed0', 'chexpert-minmax-seed0'):
        ours, local = read_results(out / 'smoke' / name)[1], read_results(swept['runs'] / name)[1]
        assert ours[['split', 'attribute', 'group', 'task', 'metric']].equals(
            local[['split', 'attribute', 'group', 'task', 'metric']])
        np.testing.assert_allclose(ours.value, local.value, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_ray_worker_that_dies_is_never_counted_finished(ray_head, tmp_path):
    "SIGKILL to the Ray worker running a job: Ray retries it, or the sweep reports it failed; never 'done' without results."
    out = tmp_path / 'ray-runs'
    sweep = subprocess.Popen(SWEEP[:4] + ['--seeds', '1', '--threads', '1', '--out', str(out), '--backend', 'ray',
                                          '--address', ray_head], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    _wait_for(out / 'smoke' / 'chexpert-baseline-seed0' / 'config.json', sweep)
    workers = [p for p in psutil.process_iter(['cmdline']) if 'ray::_ray_task' in ' '.join(p.info['cmdline'] or [])]
    assert workers, 'no Ray worker is running a job'
    for w in workers: w.kill()
    log, _ = sweep.communicate(timeout=1200)
    done = re.findall(r'\[done\] (\S+)', log)
    assert done, log
    for name in done:   # whatever it reports finished is finished
        assert read_results(out / name)[0]['config']['preset'] == 'smoke'
    failed = re.findall(r'\[FAIL\] (\S+)', log)
    assert sorted(done + failed) == ['smoke/chexpert-baseline-seed0', 'smoke/chexpert-minmax-seed0'], log
    assert all(not (out / name / 'results.json').exists() for name in failed)
    assert (sweep.returncode == 0) == (not failed), log
