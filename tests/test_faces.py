"CelebA-format reading, the paper's face splits and the face metrics, across modules."
import numpy as np
import pandas as pd
import pytest
import torch

from fairnb.data import relabel_within_group
from fairnb.faces import CELEBA_ATTRS, LANDMARKS, face_splits, read_celeba, read_face, write_synthetic_celeba
from fairnb.search import class_angles, rank1_correct


@pytest.fixture(scope='module')
def celeba(tmp_path_factory):
    return write_synthetic_celeba(tmp_path_factory.mktemp('faces') / 'celeba', n_ids=40, min_images=4, max_images=10, seed=2)


def test_files_are_in_torchvision_celeba_layout(celeba):
    attr = (celeba / 'list_attr_celeba.txt').read_text().splitlines()
    n = int(attr[0])
    assert attr[1] == ' '.join(CELEBA_ATTRS) + ' '                      # the real header's trailing space
    assert len(attr) == n + 2 and all(len(l.split()) == 41 for l in attr[2:])
    assert attr[2].startswith('000001.jpg') and set(attr[2].split()[1:]) <= {'1', '-1'}
    assert '  1' in attr[2] or ' -1' in attr[2]                          # values padded to the width of -1
    marks = (celeba / 'list_landmarks_align_celeba.txt').read_text().splitlines()
    assert int(marks[0]) == n and marks[1].split() == list(LANDMARKS)
    ident = (celeba / 'identity_CelebA.txt').read_text().split()
    assert len(ident) == 2 * n and ident[0] == '000001.jpg'
    part = pd.read_csv(celeba / 'list_eval_partition.txt', sep=r'\s+', header=None)
    assert list(part[1]) == sorted(part[1]) and set(part[1]) == {0, 1, 2}
    from PIL import Image
    im = Image.open(celeba / 'img_align_celeba' / '000001.jpg')
    assert im.size == (178, 218) and im.mode == 'RGB'


def test_split_rules(celeba):
    df = read_celeba(celeba.parent)
    s = face_splits(df, n_test_ids=8, holdout_frac=0.1, seed=1)
    seen = set(s['train'].identity) | set(s['holdout'].identity) | set(s['validation'].identity)
    assert set(s['test'].identity).isdisjoint(seen)
    assert s['test'].identity.nunique() == 8
    counts = df.identity.value_counts()
    val = s['validation'].identity.value_counts()
    eligible = set(counts[counts > 6].index) - set(s['test'].identity)
    assert set(val.index) == eligible and (val == 3).all()
    assert abs(len(s['holdout']) - 0.1 * (len(s['holdout']) + len(s['train']))) <= 1
    assert sum(len(v) for v in s.values()) == len(df)
    # every image of a training identity has the class index of that identity, whatever the split
    lab = pd.concat([s['train'], s['validation'], s['holdout']]).groupby('identity').label.nunique()
    assert (lab == 1).all()


def test_bad_celeba_inputs(celeba, tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        read_celeba(tmp_path / 'nope')
    (tmp_path / 'celeba').mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks \['identity_CelebA.txt'"):
        read_celeba(tmp_path)
    with pytest.raises(FileNotFoundError, match='000001.jpg.gone is missing'):
        read_face(str(celeba / 'img_align_celeba' / '000001.jpg') + '.gone', 32)


def test_rank1_matches_brute_force_with_chunks():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(300, 16, generator=g)
    ids = torch.randint(0, 60, (300,), generator=g).numpy()
    fast = rank1_correct(emb, ids, chunk=37)
    sim = torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(emb, dim=1).T
    sim.fill_diagonal_(-2)
    brute = (ids[sim.argmax(1).numpy()] == ids).astype(float)
    alone = np.array([(ids == i).sum() == 1 for i in ids])
    assert np.array_equal(fast[~alone], brute[~alone]) and np.isnan(fast[alone]).all()


def test_angles_follow_spread():
    "Identities whose images spread more have larger intra-class angles."
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(40, 32, generator=g)
    ids = np.repeat(np.arange(40), 5)
    noise = torch.where(torch.as_tensor(ids % 2 == 1)[:, None], 0.6, 0.2)
    emb = centres[ids] + noise * torch.randn(200, 32, generator=g)
    a = class_angles(emb, ids, ids % 2, chunk=7)
    assert a[a.group == 1].intra_angle.mean() > 1.5 * a[a.group == 0].intra_angle.mean()
    assert ((a.inter_angle > 0) & (a.inter_angle < 180)).all()


def test_flip_identities_keeps_groups(celeba):
    s = face_splits(read_celeba(celeba), n_test_ids=8, seed=0)
    labels, flipped = relabel_within_group(s['train'].label, s['train'].sex, group=0, rate=0.3, seed=0)
    sex_of = s['train'].drop_duplicates('label').set_index('label').sex
    assert flipped.sum() == round(0.3 * (s['train'].sex == 0).sum())
    assert (sex_of[labels[flipped]].values == 0).all() and (labels[flipped] != s['train'].label[flipped]).all()


def test_attribute_file_without_male_column(celeba, tmp_path):
    import shutil
    bad = tmp_path / 'celeba'
    shutil.copytree(celeba, bad)
    text = (bad / 'list_attr_celeba.txt').read_text().replace(' Male ', ' Masculine ', 1)
    (bad / 'list_attr_celeba.txt').write_text(text)
    with pytest.raises(ValueError, match=r"lacks attribute column\(s\) \['Male'\]"):
        read_celeba(bad)
