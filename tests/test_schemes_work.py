"Schemes do their job: penalties fall when trained on, face labels flip as stated, rank-1 per split in its own mode."
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fairnb.data import SEX, ImageTable
from fairnb.evaluate import evaluate_faces
from fairnb.losses import MarginLoss, get_penalty, group_losses, weighted_bce
from fairnb.models import CosFace
from fairnb.schemes import get_scheme
from fairnb.train import fit



@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    "Tiny tensors train faster on one thread; set for this module only (a run's numbers depend on its thread count)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ---------------------------------------------------------------- 1. training under a scheme lowers what it targets

D, EPOCHS, ALPHA = 4, 150, 5.0
BEST = {'eq_loss': 0.0, 'eq_odds': 0.0, 'disp_impact': -1.0}   # each penalty's fairest value (a lower bound)


def toy_tasks(seed, n=300):
    "Two binary tasks; female (code 1) a ~30% minority with other directions, more positives and noisier labels."
    rng = np.random.default_rng(seed)
    sex = (rng.random(n) < 0.3).astype(np.int64)
    x = rng.normal(size=(n, D)).astype(np.float32)
    w = rng.normal(size=(2, 2, D))                                   # (group, task, feature)
    s = (np.einsum('nd,ntd->nt', x, w[sex]) + np.array([-1.0, 1.0])[sex, None]
         + np.array([0.3, 1.5])[sex, None] * rng.normal(size=(n, 2)))
    return ImageTable(lambda i, x=torch.from_numpy(x): x[i], (s > 0).astype(np.float32), {'sex': sex})


@pytest.fixture(scope='module')
def tasks():
    return toy_tasks(0), toy_tasks(1)   # training set, holdout set


def train_under(name, train, holdout=None, **params):
    "Per-sample losses, probabilities, targets and groups on the whole training set after training under `name`."
    torch.manual_seed(0)   # the same initialisation for every scheme
    model = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    loader = lambda ds: DataLoader(ds, batch_size=len(ds) // 2, shuffle=True,   # two batches, the same order
                                   generator=torch.Generator().manual_seed(0))
    fit(model, loader(train), weighted_bce, get_scheme(name, 'sex', 'chexpert', **params),
        torch.optim.Adam(model.parameters(), lr=0.03), EPOCHS, 'cpu',
        holdout=None if holdout is None else loader(holdout))
    x, y, g = next(iter(DataLoader(train, batch_size=len(train))))
    with torch.no_grad(): logits = model(x)
    return weighted_bce(logits, y), torch.sigmoid(logits), y, g['sex']


@pytest.fixture(scope='module')
def baseline(tasks): return train_under('baseline', tasks[0])


@pytest.mark.parametrize('name,on', [('eq_loss', 'train'), ('eq_odds', 'train'), ('disp_impact', 'train'),
                                     ('eq_loss', 'holdout')])
def test_penalty_scheme_lowers_its_penalty(tasks, baseline, name, on):
    "Training under a penalty scheme removes at least half of the baseline's unfairness by that penalty, on train."
    pen = lambda out: get_penalty(name)(*out, 2).item()
    train, holdout = tasks
    base = pen(baseline)
    fair = pen(train_under(name, train, holdout if on == 'holdout' else None, alpha=ALPHA, penalty_on=on))
    print(f'{name} (penalty on {on}): baseline {base:.4f}, scheme {fair:.4f}')
    assert fair - BEST[name] < 0.5 * (base - BEST[name]), (base, fair)


def test_minmax_lowers_the_worst_group_loss(tasks, baseline):
    "Training under minmax lowers the worst group's mean training loss below the baseline's."
    worst = lambda out: group_losses(out[0], out[3], 2)[0].max().item()
    base, fair = worst(baseline), worst(train_under('minmax', tasks[0]))
    print(f'minmax worst-group loss: baseline {base:.4f}, scheme {fair:.4f}')
    assert fair < base, (base, fair)


def test_reweight_lowers_the_minority_groups_loss(tasks, baseline):
    "Reweighting by group lowers the minority's (women, 30%) mean training loss below the baseline's."
    women = lambda out: group_losses(out[0], out[3], 2)[0][1].item()
    train = tasks[0]
    s = get_scheme('reweight', 'sex', 'chexpert'); s.prepare(train)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    loader = DataLoader(train, batch_size=len(train) // 2, shuffle=True, generator=torch.Generator().manual_seed(0))
    fit(model, loader, weighted_bce, s, torch.optim.Adam(model.parameters(), lr=0.03), EPOCHS, 'cpu')
    x, y, g = next(iter(DataLoader(train, batch_size=len(train))))
    with torch.no_grad(): fair = women((weighted_bce(model(x), y), None, y, g['sex']))
    print(f"reweight women's training loss: baseline {women(baseline):.4f}, scheme {fair:.4f}")
    assert fair < women(baseline), (women(baseline), fair)


def test_group_dro_lowers_the_worst_group_loss(tasks, baseline):
    "Training under Group DRO lowers the worst group's mean training loss below the baseline's, as min-max does."
    worst = lambda out: group_losses(out[0], out[3], 2)[0].max().item()
    base, fair = worst(baseline), worst(train_under('group_dro', tasks[0], eta=1.0))
    print(f'group_dro worst-group loss: baseline {base:.4f}, scheme {fair:.4f}')
    assert fair < base, (base, fair)


# ---------------------------------------------------------------- 2. face label flipping

def identity_table(n_male=49, n_female=31, seed=0):
    "Identity labels (male identities 0-6, female 7-11) with a sex attribute; 49 * 0.3 = 14.7 rounds up."
    rng = np.random.default_rng(seed)
    sex = np.r_[np.zeros(n_male, np.int64), np.ones(n_female, np.int64)]
    labels = np.r_[rng.integers(0, 7, n_male), rng.integers(7, 12, n_female)]
    return ImageTable(lambda i: torch.zeros(1), labels, {'sex': sex})


def test_face_label_flip_relabels_the_stated_share_of_the_group():
    "Faces: prepare relabels exactly round(rate * n) of flip_group's images, to that group's labels, by seed."
    table, rate = identity_table(), 0.3
    old, sex = table.targets.numpy().copy(), table.attrs['sex']
    male = sex == SEX.code('male')
    changed = {}
    for seed in (0, 1):
        scheme = get_scheme('label_flip', 'sex', 'faces', seed=seed, flip_group='male', flip_rate=rate)
        new = scheme.prepare(table).targets.numpy()
        changed[seed] = new != old
        assert changed[seed][male].sum() == round(rate * male.sum()) and not changed[seed][~male].any()
        assert set(new[changed[seed]]) <= set(old[male])
        y = torch.as_tensor(new)
        assert torch.equal(scheme.targets(y, torch.as_tensor(sex)), y)   # faces flip once, not again per batch
    assert (table.targets.numpy() == old).all()                           # the original table is left alone
    assert (changed[0] != changed[1]).any()


# ---------------------------------------------------------------- 3. rank-1 accuracy: each split in its own mode

def unit(deg): return np.stack([np.cos(np.radians(deg)), np.sin(np.radians(deg))], 1).astype(np.float32)

# Train identities 0-3 (0, 1 male; 2, 3 female) in tight pairs at 0, 90, 180, 270 degrees. The head is right for the
# men and swaps the women (class 2's weight sits at 270 degrees, class 3's at 180). Validation: each train identity at
# its centre +-40 degrees, 10 degrees from the next identity's image. Test: unseen identities (label -1), one of
# them split around another.
SPLITS = {
    'train': (unit([0, 2, 90, 92, 180, 182, 270, 272]), [0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 1, 1, 2, 2, 3, 3],
              [0, 0, 0, 0, 1, 1, 1, 1]),
    'validation': (unit([40, 320, 130, 50, 220, 140, 310, 230]), [0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 1, 1, 2, 2, 3, 3],
                   [0, 0, 0, 0, 1, 1, 1, 1]),
    'test': (unit([45, 47, 135, 137, 225, 315, 270, 272]), [-1] * 8, [10, 10, 11, 11, 12, 12, 13, 13],
             [0, 0, 1, 1, 1, 1, 1, 1]),
}
HEAD = unit([0, 90, 270, 180])   # class k's weight


def nn_index(probes, gallery, exclude_self):
    "Index of each probe's most cosine-similar gallery row (its own row skipped when `exclude_self`)."
    unit_rows = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)
    sim = unit_rows(probes) @ unit_rows(gallery).T
    if exclude_self: np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def by_group(correct, sex):
    "(male, female) mean of the per-image figures, NaN ignored; NaN for a group with none."
    correct, sex = np.asarray(correct, float), np.asarray(sex)
    return tuple(float(np.nanmean(correct[sex == g])) if (~np.isnan(correct[sex == g])).any() else np.nan
                 for g in (0, 1))


def mode_accuracy(split, mode):
    "(male, female) accuracy of `split` read in `mode`, computed here with NumPy."
    emb, labels, ids, sex = (np.asarray(v) for v in SPLITS[split])
    if mode == 'head': return by_group(nn_index(emb, HEAD, False) == labels, sex)
    gal_emb, gal_ids = (emb, ids) if mode == 'loo' else (SPLITS['train'][0], np.asarray(SPLITS['train'][2]))
    known = [(gal_ids == i).sum() - (mode == 'loo') > 0 for i in ids]
    hit = gal_ids[nn_index(emb, gal_emb, mode == 'loo')] == ids
    return by_group(np.where(known, hit, np.nan), sex)


def test_rank1_accuracy_reads_each_split_in_its_own_mode():
    "Train: the head's argmax; validation: nearest neighbour in the train gallery; test: leave-one-out within test."
    own = {'train': 'head', 'validation': 'gallery', 'test': 'loo'}
    for split, mode in own.items():   # the toy separates the modes: any other mode gives other figures
        for other in {'head', 'gallery', 'loo'} - {mode}:
            assert mode_accuracy(split, other) != pytest.approx(mode_accuracy(split, mode), nan_ok=True), (split, other)
    head = CosFace(2, 4)
    with torch.no_grad(): head.weight.copy_(torch.from_numpy(HEAD))
    loaders = {s: DataLoader(ImageTable(lambda i, e=torch.from_numpy(e): e[i], y, {'identity': ids, 'sex': sex}),
                             batch_size=3)
               for s, (e, y, ids, sex) in SPLITS.items()}
    df = evaluate_faces(torch.nn.Identity(), MarginLoss(head), loaders, 'cpu', ['sex'], 'sex')
    acc = df[(df.metric == 'accuracy') & (df.attribute == 'sex')].set_index(['split', 'group']).value
    for split, mode in own.items():
        got = (acc[split, 'male'], acc[split, 'female'])
        print(split, 'got', got, 'expected', mode_accuracy(split, mode))
        assert got == pytest.approx(mode_accuracy(split, mode), nan_ok=True), split
