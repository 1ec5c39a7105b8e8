"""What a fairness scheme costs per training step: each scheme's step against the plain step (baseline), same model
and same batch, on the `cpu` preset models (CheXpert `small_cnn`; the face CNN with its CosFace head).

A step is what `fairnb.train.train_epoch` does per batch: `batch_out` (the scheme's labels, forward, per-sample
losses), `scheme(out)`, the finiteness check, zero_grad, backward, step, and the per-group loss bookkeeping. Each
variant has its own copy of the same initial model and optimizer, and they run in many short rounds (`--steps`
steps of each variant per round, `--rounds` rounds), so a load that comes and goes weighs on all alike. Reported:
the median per-step time; the ratio, the median over rounds of the variant's median step / the baseline's in the
same round (paired, so drifts in load cancel); q1/q3, the quartiles of those per-round ratios (the noise).
Penalties are on the training batch (penalty_on='train'). The issue's target: every ratio at most 1.03.

`--profile SCHEME` adds, for that scheme, the torch ops whose time differs most from the baseline step's."""
import argparse
import copy
import statistics
import time
from functools import partial

import torch

from _common import table, threads_note
from fairnb.chexpert import CHEXPERT_PRESETS, TASKS, chexpert_datasets, chexpert_frames
from fairnb.faces import FACE_PRESETS, face_datasets, face_splits, read_celeba, synthetic_celeba
from fairnb.losses import MarginLoss, group_losses, pos_weights, weighted_bce
from fairnb.models import CosFace, create_model
from fairnb.schemes import get_scheme, schemes_for
from fairnb.train import batch_out

SKIP = ('fair_features',)   # a game on frozen embeddings, not a step of these models


def first_batch(dataset, batch_size:int, seed:int=0):
    "One shuffled batch of `dataset`, as the training loader yields it."
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    return next(iter(loader))


def chexpert_problem(seed:int=0):
    "(batch, build): a cpu-preset batch of the synthetic CheXpert, and `build()` -> (net, criterion, optimizer)."
    p = CHEXPERT_PRESETS['cpu']
    ds = chexpert_datasets(chexpert_frames(seed=seed), p['img_size'], preload=False)['train']
    criterion = partial(weighted_bce, pos_weight=pos_weights(ds.targets))
    torch.manual_seed(seed)
    net = create_model(p['model'], optional={'width': p['width']}, num_classes=len(TASKS))
    def build():
        n = copy.deepcopy(net); return n, criterion, torch.optim.Adam(n.parameters(), lr=p['lr'])
    return first_batch(ds, p['batch_size'], seed), build


def face_problem(seed:int=0):
    "(batch, build): a cpu-preset batch of the synthetic CelebA, and `build()` -> (net, criterion, optimizer)."
    p = FACE_PRESETS['cpu']
    frames = face_splits(read_celeba(synthetic_celeba()), n_test_ids=p['n_test_ids'], seed=seed)
    ds = face_datasets(frames, ['sex'], p['img_size'], preload=False)['train']
    torch.manual_seed(seed)
    net = create_model(p['backbone'], optional={'width': p['width']}, emb_size=p['emb_size'], img_size=p['img_size'])
    head = MarginLoss(CosFace(p['emb_size'], int(frames['train'].label.max()) + 1, s=p['s'], m=p['m']), gamma=2.0)
    def build():
        n, c = copy.deepcopy(net), copy.deepcopy(head)
        return n, c, torch.optim.SGD([*n.parameters(), *c.parameters()], lr=p['lr'], momentum=0.9, weight_decay=5e-4)
    return first_batch(ds, p['batch_size'], seed), build


class Variant:
    "One scheme's training step on its own copy of the model, as `train_epoch` takes it."
    def __init__(self, name:str, problem:str, batch, build, seed:int=0):
        self.scheme = get_scheme(name, 'sex', problem, seed)
        self.net, self.criterion, self.optimizer = build()
        self.scheme.setup(self.criterion); self.net.train()
        self.batch, self.times = batch, []
        G = self.scheme.attribute.n_groups
        self.sums, self.counts, self.objective, self.logs = torch.zeros(G), torch.zeros(G), 0.0, {}
    def step(self):
        s, G = self.scheme, self.scheme.attribute.n_groups
        out = batch_out(self.net, self.criterion, self.batch, s.attribute, 'cpu', s)
        loss = s(out, None)
        if not torch.isfinite(loss): raise FloatingPointError(f'{s.name}: loss {loss.item()}')
        self.optimizer.zero_grad(set_to_none=True); loss.backward(); self.optimizer.step()
        m, c = group_losses(out.losses.detach().cpu(), out.groups.cpu(), G)
        self.sums += m * c; self.counts += c; self.objective += loss.item()
        for k, v in s.logs.items(): self.logs[k] = self.logs.get(k, 0.0) + v
    def run(self, steps:int):
        "Time `steps` steps one by one; returns their times."
        times = []
        for _ in range(steps):
            t = time.perf_counter(); self.step(); times.append(time.perf_counter() - t)
        self.times.append(times); return times


def measure(problem:str, batch, build, rounds:int, steps:int, warmup:int, seed:int=0):
    "Rows of the table for `problem`: every scheme of it against the baseline, interleaved in rounds."
    names = ['baseline'] + [n for n in schemes_for(problem) if n != 'baseline' and n not in SKIP]
    variants = {n: Variant(n, problem, batch, build, seed) for n in names}
    for v in variants.values(): v.run(warmup); v.times.clear()
    for _ in range(rounds):
        for v in variants.values(): v.run(steps)
    med = {n: statistics.median(t for r in v.times for t in r) for n, v in variants.items()}
    per_round = {n: [statistics.median(r) for r in v.times] for n, v in variants.items()}
    rows = []
    for n in names:   # paired: each round's median against the baseline's in the same round, then the median
        ratios = [a / b for a, b in zip(per_round[n], per_round['baseline'])]
        q1, ratio, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        rows.append(dict(problem=problem, scheme=n, ms=1e3 * med[n], ratio=ratio, q1=q1, q3=q3,
                         target='' if n == 'baseline' else 'ok' if ratio <= 1.03 else '> 1.03'))
    return rows, variants


def profile(variants:dict, name:str, steps:int=30, top:int=10):
    "Print where `name`'s step spends time the baseline step does not: fairnb's Python functions (cProfile,"
    " cumulative) and the torch ops whose self CPU time per step grows most (torch.profiler)."
    import cProfile, pstats
    from torch.profiler import ProfilerActivity, profile as torch_profile
    per_op, total = {}, {}
    for n in ('baseline', name):
        v = variants[n]; v.run(5)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps): v.step()
        per_op[n] = {e.key: (e.self_cpu_time_total / steps, e.count / steps) for e in prof.key_averages()}
        total[n] = sum(t for t, _ in per_op[n].values())
    print(f'\nprofile of {name} ({steps} steps): torch self CPU time per step {total[name] / 1e3:.2f} ms against '
          f'{total["baseline"] / 1e3:.2f} ms for the baseline step; the ops that grow most:')
    keys = set(per_op[name]) | set(per_op['baseline'])
    get = lambda n, k, i: per_op[n].get(k, (0, 0))[i]
    diff = sorted(((get(name, k, 0) - get('baseline', k, 0), k) for k in keys), reverse=True)[:top]
    table([dict(op=k, extra_us=d, calls_base=get('baseline', k, 1), calls_scheme=get(name, k, 1)) for d, k in diff],
          ['op', 'extra_us', 'calls_base', 'calls_scheme'], {'extra_us': '.0f', 'calls_base': '.0f',
                                                             'calls_scheme': '.0f'})
    pr = cProfile.Profile(); v = variants[name]
    pr.enable()
    for _ in range(steps): v.step()
    pr.disable()
    st = pstats.Stats(pr).stats   # (file, line, function) -> (calls, primitive, tottime, cumtime, callers)
    rows = [dict(function=f'{file.rsplit("fairnb", 1)[-1].lstrip("/")}:{fn}', us_per_step=1e6 * ct / steps,
                 calls=nc / steps) for (file, _, fn), (nc, _, _, ct, _) in st.items()
            if '/fairnb/' in file.replace('\\', '/') and fn not in ('step', 'run')]
    print(f'fairnb functions in the {name} step (cProfile, cumulative, per step; the profiler slows them):')
    table(sorted(rows, key=lambda r: -r['us_per_step'])[:top], ['function', 'us_per_step', 'calls'],
          {'us_per_step': '.0f', 'calls': '.1f'})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rounds', type=int, default=40)
    ap.add_argument('--steps', type=int, default=4, help='steps of each variant per round')
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--problems', nargs='+', default=['chexpert', 'faces'], choices=['chexpert', 'faces'])
    ap.add_argument('--profile', nargs='*', default=[], help='schemes to profile against the baseline step')
    a = ap.parse_args()
    torch.manual_seed(0)
    setups = {'chexpert': chexpert_problem, 'faces': face_problem}
    rows = []
    for problem in a.problems:
        batch, build = setups[problem]()
        r, variants = measure(problem, batch, build, a.rounds, a.steps, a.warmup)
        rows += r
        for n in a.profile:
            if n in variants: profile(variants, n)
    ch, fa = CHEXPERT_PRESETS['cpu'], FACE_PRESETS['cpu']
    print(f"\ntrain step / plain step, cpu presets: CheXpert {ch['model']} (width {ch['width']}) "
          f"at {ch['img_size']} px, "
          f"batch {ch['batch_size']}; faces {fa['backbone']} (width {fa['width']}) at {fa['img_size']} px, "
          f"batch {fa['batch_size']}, CosFace head")
    print(f'median per-step time over {a.rounds} rounds x {a.steps} steps per variant (after {a.warmup} warm-up '
          f'steps); ratio: median over rounds of the per-round ratio of medians, q1/q3 its quartiles; '
          f'{threads_note()}')
    table(rows, ['problem', 'scheme', 'ms', 'ratio', 'q1', 'q3', 'target'],
          {'ms': '.2f', 'ratio': '.3f', 'q1': '.3f', 'q3': '.3f'})


if __name__ == '__main__':
    main()
