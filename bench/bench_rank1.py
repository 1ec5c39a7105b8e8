"""Rank-1 leave-one-out identification on 20,000 x 512 embeddings (2,000 identities x 10 images: identity centres
plus noise, float32, seeded): `fairnb.search.rank1_search` against scikit-learn's brute-force cosine
`NearestNeighbors` (n_neighbors=2, the probe's own match dropped), the identity found for every probe checked equal.

The floor: the half-size similarity product the search cannot avoid (the matrix is symmetric), i.e. the sum over
tiles j >= i of `a_i @ a_j.T` on the normalised float32 embeddings, in tiles of fairnb's chunk size, written into
one reused buffer (a fresh 64 MiB tile per product costs its page faults). All three are
timed in this run, interleaved in rounds, median of `--repeats`. Targets: fairnb at least 5x faster than
scikit-learn, and at most 1.3x the floor. The peak extra resident memory of one fairnb search (psutil RSS, sampled)
is printed beside the size of one tile and of one chunk-wide block of rows, the bounds it should stay near."""
import argparse
import inspect

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from _common import PeakRSS, interleaved, table, threads_note
from fairnb.search import rank1_search


def embeddings(n_ids:int=2000, per_id:int=10, dim:int=512, noise:float=2.2, seed:int=0):
    "(emb (N, dim) float32, ids (N,)): identity centres plus Gaussian noise, rows shuffled."
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.repeat(np.arange(n_ids), per_id))
    centres = rng.standard_normal((n_ids, dim), dtype=np.float32)
    return centres[ids] + noise * rng.standard_normal((len(ids), dim), dtype=np.float32), ids


def sklearn_found(emb, ids):
    "Identity of each probe's nearest other embedding by brute-force cosine distance (scikit-learn)."
    idx = NearestNeighbors(n_neighbors=2, algorithm='brute', metric='cosine').fit(emb).kneighbors(emb)[1]
    own = idx[:, 0] == np.arange(len(emb))   # the probe itself first (distance 0), or a duplicate tied with it
    return ids[np.where(own, idx[:, 1], idx[:, 0])], np.where(own, idx[:, 1], idx[:, 0])


def floor_product(a:torch.Tensor, chunk:int):
    "The half-size similarity product: every tile a_i @ a_j.T with j >= i, into one reused buffer (no page faults)."
    tile = torch.empty(min(chunk, len(a)) ** 2)
    for i in range(0, len(a), chunk):
        ai = a[i:i + chunk]
        for j in range(i, len(a), chunk):
            aj = a[j:j + chunk]
            torch.mm(ai, aj.T, out=tile[:len(ai) * len(aj)].view(len(ai), len(aj)))


def check_same(found, sk_found, sk_index, emb, ids, tol:float=1e-6):
    "(differing probes, of which exact ties): where the identities differ, the two neighbours must tie."
    diff = np.flatnonzero(found != sk_found)
    if not len(diff): return 0, 0
    e = emb.astype(np.float64); e /= np.linalg.norm(e, axis=1, keepdims=True)
    ties = 0
    for i in diff:   # fairnb's neighbour: the most similar other embedding of the identity it found
        same = np.flatnonzero((ids == found[i]) & (np.arange(len(ids)) != i))
        best = (e[same] @ e[i]).max()
        ties += abs(best - e[sk_index[i]] @ e[i]) <= tol
    return len(diff), ties


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--ids', type=int, default=2000)
    ap.add_argument('--per-id', type=int, default=10)
    ap.add_argument('--dim', type=int, default=512)
    ap.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()
    emb, ids = embeddings(a.ids, a.per_id, a.dim)
    chunk = inspect.signature(rank1_search).parameters['chunk'].default
    normed = torch.nn.functional.normalize(torch.from_numpy(emb), dim=1)
    t, out = interleaved({'sklearn': lambda: sklearn_found(emb, ids), 'fairnb': lambda: rank1_search(emb, ids),
                          'floor': lambda: floor_product(normed, chunk)}, a.repeats)
    (correct, found), (sk_found, sk_index) = out['fairnb'], out['sklearn']
    n_diff, n_ties = check_same(found, sk_found, sk_index, emb, ids)
    assert n_diff == n_ties, f'{n_diff - n_ties} probes found another identity than scikit-learn (not ties)'
    with PeakRSS() as mem: rank1_search(emb, ids)
    n = len(emb)
    print(f'\nrank-1 leave-one-out, {n:,} x {a.dim} float32 embeddings ({a.ids:,} identities x {a.per_id}); '
          f'median of {a.repeats}, interleaved; {threads_note()}')
    print(f'fairnb chunk {chunk}; rank-1 accuracy {np.nanmean(correct):.3f}; identity found equal to scikit-learn '
          f'for all {n:,} probes' + (f' ({n_ties} exact ties between identities)' if n_ties else ''))
    rows = [dict(method='scikit-learn NearestNeighbors, brute cosine', seconds=t['sklearn']),
            dict(method='fairnb rank1_search', seconds=t['fairnb']),
            dict(method='floor: half-size product (tiles j >= i)', seconds=t['floor'])]
    for r in rows: r.update(per_fairnb=r['seconds'] / t['fairnb'], per_floor=r['seconds'] / t['floor'])
    speedup, over = t['sklearn'] / t['fairnb'], t['fairnb'] / t['floor']
    table(rows, ['method', 'seconds', 'per_fairnb', 'per_floor'],
          {'seconds': '.3f', 'per_fairnb': '.2f', 'per_floor': '.2f'})
    print(f'fairnb / scikit-learn speedup {speedup:.2f}x (target >= 5: {"ok" if speedup >= 5 else "not met"}); '
          f'fairnb / floor {over:.2f}x (target <= 1.3: {"ok" if over <= 1.3 else "not met"})')
    sizes = [min(chunk, n - i) for i in range(0, n, chunk)]
    gflop = sum(2 * p * q * a.dim for k, p in enumerate(sizes) for q in sizes[k:]) / 1e9
    print(f'floor at {gflop / t["floor"]:.0f} GFLOP/s; fairnb search peak extra memory {mem.peak / 2**20:.0f} MiB '
          f'(RSS); one {chunk} x {chunk} tile {chunk * chunk * 4 / 2**20:.0f} MiB, one {chunk} x {n:,} block '
          f'{chunk * n * 4 / 2**20:.0f} MiB, the embeddings {emb.nbytes / 2**20:.0f} MiB')


if __name__ == '__main__':
    main()
