"torchrun (DDP) on the CPU with gloo: 2 processes against 1 on the same global batch, and a smoke run end to end."
import pytest
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import NBS
from fairnb.ddp import global_mean, wrap_ddp
from fairnb.losses import PENALTIES, minmax_loss
from fairnb.schemes import BatchOut, get_scheme

TOL = 1e-6
SCHEMES = {'baseline': {}, 'minmax': {}, 'eq_loss': {}, 'eq_odds': {}, 'disp_impact': {},
           'eq_loss_holdout': {'penalty_on': 'holdout'}}


def _batch(groups, seed):
    "A float64 batch (x, y, groups) of len(groups) samples, 6 inputs and 3 tasks."
    g = torch.Generator().manual_seed(seed)
    n = len(groups)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), (torch.rand(n, 3, generator=g) < 0.4).double(), \
        torch.tensor(groups)


# Each case: the global training and holdout batches, where rank 0's share ends, and the number of groups.
_g = torch.Generator().manual_seed(1)
CASES = {
    'uneven shares': dict(train=_batch(torch.randint(0, 2, (20,), generator=_g).tolist(), 2), cut=7,
                          hold=_batch(torch.randint(0, 2, (11,), generator=_g).tolist(), 3), hcut=8, n_groups=2),
    'group 1 absent on rank 1': dict(train=_batch([0, 1, 1, 0, 1, 0, 1, 1, 0] + [0] * 7, 4), cut=9,
                                     hold=_batch([1, 0, 1] + [0] * 6, 5), hcut=3, n_groups=2),
    'three groups, group 2 on rank 0 only': dict(train=_batch([2, 0, 1, 2, 1, 0] + [0, 1] * 6, 6), cut=6,
                                                 hold=None, hcut=None, n_groups=None),
}


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def _out(model, batch):
    x, y, g = batch
    logits = model(x)   # float64 throughout (weighted_bce computes in float32)
    return BatchOut(F.binary_cross_entropy_with_logits(logits, y, reduction='none').mean(1), logits, y, g)


def _objectives(case):
    "name -> objective(out, holdout): the schemes for two groups; each penalty with its mean loss for more."
    if case['n_groups'] == 2:
        return {k: get_scheme(k.removesuffix('_holdout'), 'sex', 'chexpert', **p) for k, p in SCHEMES.items()}
    objs = {k: (lambda o, h, f=f: global_mean(o.losses) + f(o.losses, torch.sigmoid(o.logits), o.targets, o.groups))
            for k, f in PENALTIES.items()}
    return objs | {'minmax': lambda o, h: minmax_loss(o.losses, o.groups, 3)}


def _figures(case, r=None):
    "Penalty values, and gradients of each objective through (DDP when distributed); r: the rank's share or all."
    share = lambda b, cut: None if b is None else tuple(t[:cut] if r == 0 else t[cut:] if r == 1 else t for t in b)
    train, hold = share(case['train'], case['cut']), share(case['hold'], case['hcut'])
    out, figs = _out(_net(), train), {}
    G = case['n_groups']
    for k, f in PENALTIES.items():
        figs[k] = f(out.losses, torch.sigmoid(out.logits), out.targets, out.groups, G).item()
    figs['minmax'] = minmax_loss(out.losses, out.groups, G or 3).item()
    figs['mean'] = global_mean(out.losses).item()
    for k, obj in _objectives(case).items():
        net = _net()
        model = wrap_ddp(net, 'cpu')
        loss = obj(_out(model, train), _out(model, hold) if hold is not None else None)
        loss.backward()
        figs[f'{k} objective'] = loss.item()
        figs[f'{k} gradient'] = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    return figs


def _worker(r, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=r, world_size=2)
    try: torch.save({name: _figures(case, r) for name, case in CASES.items()}, Path(out)/f'rank{r}.pt')
    finally: dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _max_diff(a, b):
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    "Every penalty, min-max, the mean loss and each scheme's gradient through DDP: 2 gloo processes = 1, to 1e-6."
    one = {name: _figures(case) for name, case in CASES.items()}
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    worst = 0.0
    for r in (0, 1):
        two = torch.load(tmp_path/f'rank{r}.pt')
        for name in CASES:
            assert set(two[name]) == set(one[name])
            for k, v in one[name].items():
                d = _max_diff(two[name][k], v)
                assert d <= TOL, f'{name}, {k}, rank {r}: 2 processes differ from 1 by {d}'
                worst = max(worst, d)
    print(f'largest difference, 2 processes against 1: {worst:.2e}')
    assert not any(torch.as_tensor(v).eq(0).all() for v in one['uneven shares'].values()
                   if isinstance(v, torch.Tensor))   # the gradients compared are not all zero


def _torchrun_cmd(out, *params):
    return [str(Path(sys.executable).parent/'torchrun'), '--standalone', '--nproc_per_node', '2', '-m',
            'fairnb.launch', 'chexpert', '-p', 'preset', 'smoke', '-p', 'bootstrap', '0', '-p', 'device', 'cpu',
            '-p', 'scheme', 'eq_loss', '-p', 'penalty_on', 'holdout', '-p', 'out_dir', str(out), *params]


def _torchrun(out, *params):
    env = os.environ | {'OMP_NUM_THREADS': '1'}
    p = subprocess.run(_torchrun_cmd(out, *params), capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


@pytest.mark.slow
def test_torchrun_smoke_chexpert(tmp_path):
    "torchrun, 2 processes, gloo: rank 0 alone writes the run; a resumed run continues from its checkpoint."
    out = tmp_path/'run'
    stdout = _torchrun(out)
    assert stdout.count('results: ') == 1   # printed by rank 0 only
    files = {f.name for f in out.iterdir()}
    assert {'config.json', 'results.json', 'checkpoint.pt', 'history.csv', 'model.pt', 'predictions'} <= files
    first = pd.read_csv(out/'history.csv')
    assert len(first) == 1 and first.train_loss.notna().all()
    _torchrun(out, '-p', 'resume', 'True', '-p', 'overwrite', 'True')   # every process loads the checkpoint
    pd.testing.assert_frame_equal(pd.read_csv(out/'history.csv'), first)   # nothing left to train: the same history
    assert json.loads((out/'config.json').read_text())['scheme'] == 'eq_loss'


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_others_and_the_run_resumes(tmp_path):
    "SIGKILL to rank 1 mid-run: torchrun ends rank 0 too, soon, with no results; the same command with resume finishes."
    import psutil
    out = tmp_path/'run'
    p = subprocess.Popen(_torchrun_cmd(out, '-p', 'epochs', '6'), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=os.environ | {'OMP_NUM_THREADS': '1'})
    t0 = time.time()
    while not (out/'checkpoint.pt').exists():   # the first epoch is done
        assert p.poll() is None and time.time() - t0 < 300, p.stdout.read()[-3000:] if p.poll() is not None else 'slow'
        time.sleep(0.1)
    tree = psutil.Process(p.pid).children(recursive=True)
    rank1 = [c for c in tree if c.environ().get('RANK') == '1']
    assert len(rank1) == 1, [c.cmdline() for c in tree]
    rank1[0].kill(); killed = time.time()
    log = p.communicate(timeout=120)[0]
    assert p.returncode != 0 and time.time() - killed < 60, log[-3000:]
    assert not [c for c in tree if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]   # nothing left running
    assert not (out/'results.json').exists()
    _torchrun(out, '-p', 'epochs', '6', '-p', 'resume', 'True')
    history = pd.read_csv(out/'history.csv')
    assert history.epoch.tolist() == list(range(1, 7)) and (out/'results.json').exists()
