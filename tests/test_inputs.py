"""Input as a new user's data brings it: 16-bit X-rays, an image listed twice or under two patients, one number
spelled several ways, a column of one group, a `;`-separated file, a 1x1 image. Each is read right or refused,
naming the input, the problem and the fix."""
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import launch, refused_by_start_run
from test_images import USER, user_manifest


def gray_copies(csv, bits):
    """The manifest's images as grayscale PNGs beside it, at `bits`: 8; 16 (each value times 257); 12 (the raw
    12-bit values a DICOM export writes into a 16-bit PNG, without sBIT). Returns the new CSV."""
    m = pd.read_csv(csv, dtype=str)
    out = csv.parent/f'gray{bits}'
    out.mkdir()
    new = {p: f'gray{bits}/{i}.png' for i, p in enumerate(dict.fromkeys(m.path))}   # a path listed twice: one copy
    for p, q in new.items():
        a = np.asarray(Image.open(csv.parent/p).convert('L'))
        wide = a.astype(np.uint16) * 257 if bits == 16 else np.rint(a * (4095 / 255)).astype(np.uint16)
        Image.fromarray(a if bits == 8 else wide).save(csv.parent/q)
    m['path'] = m.path.map(new)
    m.to_csv(csv.parent/f'gray{bits}.csv', index=False)
    return csv.parent/f'gray{bits}.csv'


def test_16_bit_xrays_give_the_8_bit_figures_and_a_repeated_row_is_merged(tmp_path):
    """The same pictures as 8-bit, as 16-bit PNGs and as raw 12-bit values (with image_bits=12) train and score alike
    (Pillow's own conversion made nearly every 16-bit pixel 255: test AUC .81 against 1.0); a row listed twice is
    merged, and results.json counts it."""
    csv = user_manifest(tmp_path/'study', n_images=160)
    m = pd.read_csv(csv, dtype=str)
    pd.concat([m, m.iloc[[4]]]).to_csv(csv, index=False)        # the fifth image listed again, every field equal
    rows = {}
    for bits in (8, 16, 12):
        launch('images', tmp_path/f'run{bits}', manifest=str(gray_copies(csv, bits)), **USER, min_group=10,
               device='cpu', bootstrap=20, image_bits=12 if bits == 12 else None)
        rec = json.loads((tmp_path/f'run{bits}'/'results.json').read_text())
        assert rec['data']['rows_dropped'] == {'duplicate rows, merged': 1}
        assert rec['data']['rows_dropped_examples']['duplicate rows, merged'] == [f'gray{bits}.csv line 162']
        rows[bits] = pd.DataFrame(rec['rows']).drop(columns=[c for c in ('seconds',) if c in rec['rows'][0]])
    pd.testing.assert_frame_equal(rows[8], rows[16])
    pd.testing.assert_frame_equal(rows[8], rows[12])
    test = rows[16][(rows[16].split == 'test') & (rows[16].metric == 'auc') & (rows[16].task == 'mean')]
    assert test[test.attribute == 'sex'].value.notna().all()   # figures, not NaN on both sides


def refuse(tmp_path, message, table=None, **edits):
    "A manifest with `edits` (or rewritten by `table`) is refused at the run's start with `message`."
    csv = user_manifest(tmp_path/'study', n_images=120, **edits)
    if table: table(csv)
    refused_by_start_run('images', tmp_path/'run', {'manifest': str(csv), **USER, 'min_group': 10}, message)


def test_an_image_under_two_patients_is_refused_naming_both(tmp_path):
    def second_patient(csv):   # image 3 listed again under another patient: splits by patient could part them
        m = pd.read_csv(csv, dtype=str)
        pd.concat([m, m.iloc[[3]].assign(patient_id='s99999')]).to_csv(csv, index=False)
    refuse(tmp_path, r"image '.*' is listed under two patient_ids, 's\d+' \(line 5\) and 's99999' \(line 122\)\. "
                     r"An image belongs to one patient_id: keep one row for it\.", second_patient)


def test_a_row_repeated_with_other_labels_is_refused(tmp_path):
    def relabelled(csv):
        m = pd.read_csv(csv, dtype=str)
        again = m.iloc[[3]].assign(effusion=str(1 - int(m.effusion[3])))
        pd.concat([m, again]).to_csv(csv, index=False)
    refuse(tmp_path, re.escape("is listed on lines [5, 122] with different ['effusion']. Keep one row per image."),
           relabelled)


def test_one_number_spelled_three_ways_is_refused(tmp_path):
    refuse(tmp_path, re.escape("attribute 'site' writes one number in several ways: ['01', '1', '1.0'] (lines [2, 3, "),
           site=['1', '1.0', '01'] + ['1', '2'] * 58 + ['2'])


def test_an_attribute_of_one_group_is_refused_naming_file_and_fix(tmp_path):
    refuse(tmp_path, r"my_study.csv: attribute 'site' has one group \('urban'\) in all 120 rows: a gap needs two\. "
                     r"Name another attribute column, or fix its values\.", site='urban')


def test_a_semicolon_separated_manifest_is_named_so(tmp_path):
    def semicolons(csv):
        pd.read_csv(csv, dtype=str).to_csv(csv, index=False, sep=';')
    refuse(tmp_path, r"my_study.csv is separated by ';', not by commas: its header reads 'path;patient_id;sex;",
           semicolons)


def test_a_column_named_patient_is_the_cluster_or_told_how_to_rename(tmp_path):
    def renamed(csv):
        pd.read_csv(csv, dtype=str).rename(columns={'site': 'patient'}).to_csv(csv, index=False)
    csv = user_manifest(tmp_path/'study', n_images=120)
    renamed(csv)
    refused_by_start_run('images', tmp_path/'run', {'manifest': str(csv), **USER, 'attributes': ['sex', 'patient'],
                                                    'min_group': 10},
                         r"\['patient'\] cannot be a label, attribute or cluster: fairnb reserves .* Rename the column "
                         r"in the CSV \(e.g. to 'patient_col'\), or, for the column naming each image's patient, pass it "
                         r"as cluster='patient'\.")


def test_a_1x1_image_is_refused_before_training(tmp_path):
    csv = user_manifest(tmp_path/'study', n_images=120)
    tiny = csv.parent/pd.read_csv(csv).path[7]
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    with pytest.raises(OSError, match=r"1 image\(s\) are missing, cannot be decoded or are too small .*"
                                      r"'too small \(1x1 pixels, below 8\)'"):
        launch('images', tmp_path/'run', manifest=str(csv), **USER, min_group=10, device='cpu', bootstrap=0)
    assert not (tmp_path/'run'/'results.json').exists()
