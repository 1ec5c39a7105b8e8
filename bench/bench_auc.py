"""Per-group, per-task AUC, the figure behind every CheXpert table, once and with the bootstrap behind its intervals:
5 tasks, 2 groups, 40,000 images (patients as clusters, about 3 images each, one group per patient).

(a) one pass: `fairnb.metrics.group_resampled_auc(..., resamples=0)` against a loop over
    `sklearn.metrics.roc_auc_score` per group and task; values equal to 1e-12.
(b) 1000 bootstrap resamples of patients within each group: fairnb against the same loop with
    `sample_weight` = the resample's draw counts, built from `fairnb.metrics.cluster_index` and
    `fairnb.metrics.resample_counts` (the generator fairnb uses), so both see the same resamples; values checked
    equal on the resamples scikit-learn is timed on. The scikit-learn loop over 1000 resamples takes minutes, so it
    is timed on the first `--subset` resamples and scaled linearly (per resample, plus its one pass on the data).
Everything is timed in this run, median of `--repeats`, interleaved (the short one pass: `--inner` calls a
timing). Targets: one pass at least 5x faster, the bootstrap at least 50x."""
import argparse
import itertools

import numpy as np
from sklearn.metrics import roc_auc_score

from _common import interleaved, table
from fairnb.metrics import cluster_index, group_resampled_auc, resample_counts


def data(n:int=40_000, tasks:int=5, per_patient:int=3, seed:int=0):
    "(probs, targets, groups, patients): a split with labels of varied prevalence and informative scores."
    rng = np.random.default_rng(seed)
    y = (rng.random((n, tasks)) < rng.uniform(0.05, 0.4, tasks)).astype(float)
    patients = np.arange(n) // per_patient
    groups = rng.integers(0, 2, patients.max() + 1)[patients]   # a patient has one sex
    probs = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.2, (n, tasks)))))
    return probs, y, groups, patients


def resample_weights(groups, patients, resamples:int, seed:int, first:int, n_groups:int=2):
    "Per resample (the `first` of `resamples`), per group: each of the group's samples' weight (its patient's draws)."
    local, sizes = cluster_index(groups, n_groups, patients)
    per_resample = (c for chunk in resample_counts(sizes, resamples, seed) for c in zip(*chunk))
    return [[c[k][local[groups == k]] for k in range(n_groups)] for c in itertools.islice(per_resample, first)]


def sklearn_loop(probs, y, groups, weights=(), n_groups:int=2):
    "(1 + len(weights), G, T): roc_auc_score per group and task, on the data then under each resample's weights."
    out = np.zeros((1 + len(weights), n_groups, y.shape[1]))
    for k in range(n_groups):
        m = groups == k
        for t in range(y.shape[1]):
            yt, pt = y[m, t], probs[m, t]
            out[0, k, t] = roc_auc_score(yt, pt)
            for r, w in enumerate(weights): out[1 + r, k, t] = roc_auc_score(yt, pt, sample_weight=w[k])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--images', type=int, default=40_000)
    ap.add_argument('--resamples', type=int, default=1000)
    ap.add_argument('--subset', type=int, default=50, help='resamples the scikit-learn loop is timed on')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--inner', type=int, default=10, help='calls per timing of the one pass')
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    probs, y, groups, patients = data(a.images)
    weights = resample_weights(groups, patients, a.resamples, a.seed, a.subset)
    k = a.inner   # the one pass is short: each timing is `k` calls
    t, out = interleaved({
        'sk_once': lambda: [sklearn_loop(probs, y, groups) for _ in range(k)][-1],
        'fairnb_once': lambda: [group_resampled_auc(probs, y, groups, 2, patients, 0, a.seed) for _ in range(k)][-1],
        'sk_subset': lambda: sklearn_loop(probs, y, groups, weights),
        'fairnb_boot': lambda: group_resampled_auc(probs, y, groups, 2, patients, a.resamples, a.seed)}, a.repeats)
    t['sk_once'] /= k; t['fairnb_once'] /= k
    once_err = np.abs(out['fairnb_once'] - out['sk_once']).max()
    boot_err = np.abs(out['fairnb_boot'][:1 + a.subset] - out['sk_subset']).max()
    assert out['fairnb_boot'].shape == (1 + a.resamples, 2, y.shape[1]), out['fairnb_boot'].shape
    assert once_err <= 1e-12 and boot_err <= 1e-12, \
        f'values differ: {once_err:.2e} (one pass), {boot_err:.2e} (resamples)'
    per_resample = (t['sk_subset'] - t['sk_once']) / a.subset
    t_sk_boot = t['sk_once'] + per_resample * a.resamples
    once, boot = t['sk_once'] / t['fairnb_once'], t_sk_boot / t['fairnb_boot']
    print(f'\nper-group, per-task AUC: {len(y):,} images, {y.shape[1]} tasks, 2 groups, '
          f'{len(np.unique(patients)):,} patients (clusters); median of {a.repeats}, interleaved '
          f'(one pass: {k} calls a timing)')
    rows = [dict(what='one pass', method='roc_auc_score loop (baseline)', seconds=t['sk_once'], speedup=1.0),
            dict(what='one pass', method='fairnb group_resampled_auc', seconds=t['fairnb_once'], speedup=once,
                 target='ok' if once >= 5 else '< 5x'),
            dict(what=f'{a.resamples} resamples', method=f'roc_auc_score loop (baseline)*', seconds=t_sk_boot,
                 speedup=1.0),
            dict(what=f'{a.resamples} resamples', method='fairnb group_resampled_auc', seconds=t['fairnb_boot'],
                 speedup=boot, target='ok' if boot >= 50 else '< 50x')]
    table(rows, ['what', 'method', 'seconds', 'speedup', 'target'], {'seconds': '.3f', 'speedup': '.1f'})
    print(f'* timed on the first {a.subset} resamples ({t["sk_subset"]:.2f} s with its one pass) and scaled: '
          f'{per_resample * 1e3:.1f} ms per resample x {a.resamples} + the one pass')
    print(f'values equal to roc_auc_score: max difference {once_err:.1e} on the data, {boot_err:.1e} on the first '
          f'{a.subset} resamples (tolerance 1e-12)')


if __name__ == '__main__':
    main()
