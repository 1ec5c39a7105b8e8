"The CheXpert reader and the synthetic writer, on files in CheXpert's own on-disk format."
import csv

import numpy as np
import pytest
from PIL import Image

from fairnb.chexpert import (CHEXPERT_COLUMNS, TASKS, chexpert_datasets, chexpert_frames, read_chexpert_csv,
                             select_views, synthetic_chexpert, write_synthetic_chexpert)


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    return write_synthetic_chexpert(tmp_path_factory.mktemp('cx') / 'CheXpert-v1.0-small', n_train=120, n_test=40, img_size=32, seed=3)


def test_synthetic_files_are_in_chexpert_format(small):
    with open(small / 'train.csv', newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(CHEXPERT_COLUMNS)
    assert all(len(r) == 19 for r in rows)
    assert all(r[0].startswith('CheXpert-v1.0-small/train/patient') and r[0].endswith('/view1_frontal.jpg') for r in rows[1:])
    labels = {v for r in rows[1:] for v in r[5:]}
    assert labels <= {'1.0', '0.0', '-1.0', ''} and {'1.0', '0.0', '-1.0', ''} <= labels
    with open(small / 'valid.csv', newline='') as f:
        valid = list(csv.reader(f))[1:]
    assert {v for r in valid for v in r[5:]} == {'0.0', '1.0'}
    assert all(r[0].startswith('CheXpert-v1.0-small/valid/patient6') for r in valid)
    img = Image.open(small.parent / rows[1][0])
    assert img.mode == 'L' and img.format == 'JPEG'


def test_missing_column_is_named(small, tmp_path):
    text = (small / 'train.csv').read_text().replace('Pleural Effusion', 'Effusion', 1)
    (tmp_path / 'train.csv').write_text(text)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['Pleural Effusion'\].*Path,Sex,Age"):
        read_chexpert_csv(tmp_path / 'train.csv')


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist.*data_dir=None'):
        chexpert_frames(tmp_path / 'CheXpert-v1.0-small')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks \['train.csv', 'valid.csv'\]"):
        chexpert_frames(tmp_path / 'empty')


def test_missing_image_is_named(small, tmp_path):
    frames = chexpert_frames(small)
    victim = frames['test'].file.iloc[0]
    frames['test'] = frames['test'].assign(file=frames['test'].file.replace(victim, victim + '.gone'))
    with pytest.raises(FileNotFoundError, match='view1_frontal.jpg.gone is missing'):
        chexpert_datasets(frames, img_size=16)


def test_splits_and_attributes(small):
    frames = chexpert_frames(small, seed=0)
    assert set(frames['train'].patient).isdisjoint(frames['validation'].patient)
    assert frames['train'].attrs['n_dropped'] == 5                          # the planted Sex=Unknown rows
    n = len(frames['train']) + len(frames['validation'])
    assert 0.1 < len(frames['validation']) / n < 0.3
    assert (frames['test'].patient.str[7:].astype(int) >= 64541).all()
    for df in frames.values():
        assert set(df.sex) == {0, 1} and set(df.age_group) <= {0, 1, 2, 3}
        assert set(np.unique(df[list(TASKS)].values)) <= {0.0, 1.0}


def test_the_planted_disparity_is_documented_behaviour(tmp_path):
    "Female pathology patterns are fainter: the mean image difference sick - healthy is smaller for women."
    from fairnb.chexpert import draw_chest
    def effect(contrast):
        d = [draw_chest({t: 1 for t in TASKS}, contrast, 32, np.random.default_rng(i)).astype(float)
             - draw_chest({t: 0 for t in TASKS}, contrast, 32, np.random.default_rng(i)) for i in range(20)]
        return np.mean(d)
    assert effect(0.5) < 0.7 * effect(1.0)


def test_synthetic_cache_is_shared(tmp_path):
    a = synthetic_chexpert(tmp_path, n_train=30, n_test=10, img_size=16)
    b = synthetic_chexpert(tmp_path, n_train=30, n_test=10, img_size=16)
    assert a == b and (a / 'train.csv').exists()
    assert [p.name for p in tmp_path.iterdir()] == [a.parent.name]


def test_full_version_folder_with_lateral_views(small, tmp_path):
    "The full CheXpert-v1.0 layout (other folder name, lateral views) reads alike; data_dir may be its parent."
    import shutil
    full = tmp_path / 'CheXpert-v1.0'
    shutil.copytree(small, full, ignore=shutil.ignore_patterns('true_labels.csv', 'world.json'))   # as Stanford ships it
    lines = (full / 'train.csv').read_text().splitlines()
    first = next(l.split(',') for l in lines[1:] if l.split(',')[1] in ('Male', 'Female'))
    lateral = [first[0].replace('view1_frontal', 'view2_lateral'), *first[1:3], 'Lateral', '', *first[5:]]
    Image.open(small.parent / first[0]).save(full / lateral[0].split('/', 1)[1])
    text = '\n'.join([lines[0], lines[1], ','.join(lateral), *lines[2:]]) + '\n'
    (full / 'train.csv').write_text(text.replace('CheXpert-v1.0-small/', 'CheXpert-v1.0/'))
    (full / 'valid.csv').write_text((full / 'valid.csv').read_text().replace('CheXpert-v1.0-small/', 'CheXpert-v1.0/'))
    every = chexpert_frames(tmp_path)                                   # the parent folder works too
    n_all = sum(len(every[s]) for s in ('train', 'validation'))
    frontal = chexpert_frames(tmp_path, views='frontal')
    assert n_all - sum(len(frontal[s]) for s in ('train', 'validation')) == 1
    with pytest.raises(ValueError, match="valid.csv holds no lateral images"):       # valid.csv has none here
        chexpert_frames(full, views='lateral')
    lat = select_views(read_chexpert_csv(full / 'train.csv'), 'lateral')
    assert len(lat) == 1 and lat.file.iloc[0].endswith('view2_lateral.jpg')
    assert chexpert_datasets({'train': lat}, img_size=16)['train'][0][0].shape == (3, 16, 16)
