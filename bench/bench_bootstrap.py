"""The bootstrap behind every interval, against the obvious way: per-group, per-task AUC for 5 tasks and
2 groups on a 40,000-image split (about 3 images per patient), once and with 1000 resamples of patients
within each group. Baseline: a loop over `sklearn.metrics.roc_auc_score` with the resample as sample
weights, timed on a subset of the same resamples and scaled per resample; the values are checked equal on
that subset. Prints seconds and ratios, all measured in this run (median of `repeats`)."""
import statistics
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from fairnb.metrics import cluster_index, group_resampled_auc, resample_counts


def data(n=40_000, tasks=5, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, tasks)) < rng.uniform(0.05, 0.4, tasks)).astype(float)
    groups, patients = rng.integers(0, 2, n), np.arange(n) // 3
    groups = groups[patients]                       # a patient has one sex
    probs = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.2, (n, tasks)))))
    return probs, y, groups, patients


def sklearn_loop(probs, y, groups, patients, resamples, seed, first=None):
    "(1 + R, 2, T) the slow way: one roc_auc_score per group, task and resample (only the `first` resamples)."
    local, sizes = cluster_index(groups, 2, patients)
    weights = [[c[k][local[groups == k]] for k in range(2)] for chunk in resample_counts(sizes, resamples, seed)
               for c in zip(*chunk)][:first]
    out = np.zeros((1 + len(weights), 2, y.shape[1]))
    for k in range(2):
        m = groups == k
        for t in range(y.shape[1]):
            out[0, k, t] = roc_auc_score(y[m, t], probs[m, t])
            for r, w in enumerate(weights): out[1 + r, k, t] = roc_auc_score(y[m, t], probs[m, t], sample_weight=w[k])
    return out


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(resamples=1000, subset=30, repeats=3):
    probs, y, groups, patients = data()
    t_once_sk, once_sk = timed(lambda: sklearn_loop(probs, y, groups, patients, 0, 0), repeats)
    t_once, once = timed(lambda: group_resampled_auc(probs, y, groups, 2, patients, 0, 0), repeats)
    t_sub_sk, sub_sk = timed(lambda: sklearn_loop(probs, y, groups, patients, resamples, 0, subset), 1)
    t_boot, boot = timed(lambda: group_resampled_auc(probs, y, groups, 2, patients, resamples, 0), repeats)
    assert np.allclose(once, once_sk, atol=1e-12) and np.allclose(boot[:1 + subset], sub_sk, atol=1e-12), 'differ'
    t_boot_sk = t_once_sk + (t_sub_sk - t_once_sk) / subset * resamples
    print(f'{len(y)} images, {y.shape[1]} tasks, 2 groups, {len(np.unique(patients))} patients; median of {repeats}')
    print(f'{"":44s}{"seconds":>10s}{"ratio":>10s}')
    print(f'{"one pass, roc_auc_score loop (baseline)":44s}{t_once_sk:10.3f}{1:10.1f}')
    print(f'{"one pass, fairnb":44s}{t_once:10.3f}{t_once_sk / t_once:10.1f}')
    print(f'{f"{resamples} resamples, roc_auc_score loop (baseline)":44s}{t_boot_sk:10.1f}{1:10.1f}'
          f'   (timed on {subset} resamples, scaled)')
    print(f'{f"{resamples} resamples, fairnb":44s}{t_boot:10.2f}{t_boot_sk / t_boot:10.1f}')
    print(f'values equal to roc_auc_score to 1e-12 on the data and on the first {subset} resamples')


if __name__ == '__main__':
    main()
