"BUPT-Balancedface: the synthetic set in the real layout, read back from each accepted root, loaded, and damaged."
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fairnb.bupt import bupt_dataset, find_bupt_dir, read_bupt, read_bupt_image, synthetic_bupt, write_synthetic_bupt
from fairnb.data import RACE, find_bad_images


@pytest.fixture(scope='module')
def bupt(tmp_path_factory):
    "A synthetic BUPT-Balancedface/images/race_per_7000."
    root = tmp_path_factory.mktemp('bupt') / 'BUPT-Balancedface' / 'images' / 'race_per_7000'
    return write_synthetic_bupt(root, n_ids=3, min_images=2, max_images=4, seed=3)


def test_written_in_the_real_layout(bupt):
    assert sorted(p.name for p in bupt.iterdir()) == list(RACE.groups)
    files = sorted(bupt.glob('*/*/*'))
    assert len(files) == len(list(bupt.rglob('*.jpg')))                    # nothing deeper, nothing else
    for f in files:
        race, mid = f.parent.parent.name, f.parent.name
        assert mid.startswith('m.0syn') and f.name.startswith(mid + '_') and f.suffix == '.jpg'
        with Image.open(f) as im:
            assert (im.format, im.size, im.mode) == ('JPEG', (112, 112), 'RGB')
    assert all(3 == sum(1 for _ in (bupt / r).iterdir()) for r in RACE.groups)


def test_read_from_each_root_and_load(bupt):
    frames = [read_bupt(r) for r in (bupt, bupt.parent, bupt.parent.parent)]
    for df in frames[1:]:
        assert df.equals(frames[0])
    df = frames[0]
    assert find_bupt_dir(bupt.parent.parent) == bupt
    assert df.groupby('race').mid.nunique().tolist() == [3, 3, 3, 3]
    assert df.groupby('mid').size().between(2, 4).all()
    assert sorted(df.identity.unique()) == list(range(12))
    assert (df.groupby('identity').race.nunique() == 1).all() and (df.groupby('identity').mid.nunique() == 1).all()
    assert [RACE.groups[r] for r in df.race] == [i.split('/')[0] for i in df.image]
    assert list(df.file) == [str(bupt / i) for i in df.image]
    ds = bupt_dataset(df, img_size=48, preload=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False)
    seen = 0
    for x, y, a in loader:
        assert x.shape[1:] == (3, 48, 48) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert torch.equal(y, a['identity']) and set(a) == {'race', 'identity'}
        assert a['race'].tolist() == df.race.tolist()[seen:seen + len(y)]
        seen += len(y)
    assert seen == len(df)
    assert torch.equal(pickle.loads(pickle.dumps(ds))[1][0], ds[1][0])              # fit for spawned workers


def test_sample_of_identities_is_seeded_and_whole(bupt):
    full = read_bupt(bupt)
    s = read_bupt(bupt, max_ids_per_race=2, seed=5)
    assert s.equals(read_bupt(bupt, max_ids_per_race=2, seed=5))
    assert s.groupby('race').mid.nunique().tolist() == [2, 2, 2, 2]
    assert set(s.image) == set(full[full.mid.isin(s.mid)].image)
    assert sorted(s.identity.unique()) == list(range(8))


def test_skin_darker_for_african_faces(bupt):
    df = read_bupt(bupt)
    cheek = [read_bupt_image(f)[:, 60:66, 29:41].float().mean().item() for f in df.file]   # below the left eye
    means = df.assign(b=cheek).groupby('race').b.mean()
    assert means[RACE.code('African')] < means[RACE.code('Indian')] < means[RACE.code('Caucasian')]


def _move_race(r):
    shutil.move(str(r / 'Asian'), str(r / 'asian'))


DAMAGE = {   # name -> (damage, exception, what the message says)
    'unknown race folder': (_move_race, ValueError, r"'asian', which is not a race folder.*\['African', 'Asian'"),
    'race missing': (lambda r: shutil.rmtree(r / 'Indian'), FileNotFoundError,
                     r"lacks the race folder\(s\) \['Indian'\]"),
    'image in race folder': (lambda r: (r / 'African' / 'stray.jpg').write_bytes(b''), ValueError,
                             r'stray\.jpg lies directly in the race folder African/'),
    'identity in two races': (lambda r: shutil.copytree(r / 'Asian' / 'm.0synas1', r / 'Indian' / 'm.0synas1'),
                              ValueError, r"identity 'm\.0synas1' appears under both Asian/ and Indian/"),
    'non-image file': (lambda r: (r / 'Indian' / 'm.0synin0' / 'notes.txt').write_bytes(b'x'), ValueError,
                       r'm\.0synin0/notes\.txt is not an image file'),
}


@pytest.mark.parametrize('case', DAMAGE, ids=str)
def test_malformed_layouts_fail_naming_the_problem(bupt, tmp_path, case):
    damage, error, match = DAMAGE[case]
    root = shutil.copytree(bupt, tmp_path / 'race_per_7000')
    read_bupt(root)                                                         # the copy is good
    damage(root)
    with pytest.raises(error, match=match):
        read_bupt(tmp_path)


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        read_bupt(tmp_path / 'nope')
    with pytest.raises(FileNotFoundError, match='holds no race_per_7000 folder'):
        read_bupt(tmp_path)


def test_corrupt_jpeg_is_found_by_find_bad_images(bupt, tmp_path):
    root = shutil.copytree(bupt, tmp_path / 'race_per_7000')
    df = read_bupt(root)
    cut = df.file[3]
    data = open(cut, 'rb').read()
    open(cut, 'wb').write(data[:len(data) // 2])                            # header intact, data cut short
    assert read_bupt(root).equals(df)                                       # reading the layout does not decode
    bad = find_bad_images(df.file)
    assert [f for f, _ in bad] == [cut] and 'cannot be decoded' in bad[0][1]
    with pytest.raises(OSError, match='cannot be read'):
        read_bupt_image(cut)


def test_built_once_in_the_cache(tmp_path):
    a = synthetic_bupt(tmp_path, n_ids=1, min_images=1, max_images=1)
    assert a.name == 'race_per_7000' and synthetic_bupt(tmp_path, n_ids=1, min_images=1, max_images=1) == a
    assert len(read_bupt(a)) == 4
    assert np.array_equal(read_bupt_image(next(a.glob('*/*/*.jpg')), 8).shape, (3, 8, 8))


def test_hidden_files_empty_folders_and_lone_images_are_counted_not_fatal(bupt, tmp_path):
    "Copied from a Mac or Windows: .DS_Store, ._* and Thumbs.db skipped; an empty identity skipped; a lone image kept."
    from fairnb.audit import race_audit
    root = shutil.copytree(bupt, tmp_path / 'race_per_7000')
    for f in (root / '.DS_Store', root / 'African' / 'Thumbs.db', root / 'Asian' / 'm.0synas1' / '._m.0synas1_0000.jpg'):
        f.write_bytes(b'\0')
    (root / 'Caucasian' / 'm.0empty').mkdir()
    lone = sorted((root / 'Indian' / 'm.0synin0').iterdir())
    for f in lone[1:]: f.unlink()
    frame = read_bupt(tmp_path)
    assert frame.attrs['skipped'] == {'hidden files': 3, 'empty identity folders': ['Caucasian/m.0empty'],
                                      'one-image identities': 1}
    emb = np.random.default_rng(0).normal(size=(len(frame), 8)).astype(np.float32)
    rows, pred = race_audit(emb, frame, resamples=0)
    indian = rows[(rows.group == 'Indian') & (rows.metric == 'accuracy')]
    assert indian.n.iloc[0] == (frame.race == RACE.code('Indian')).sum() - 1   # the lone image is not scored
