"The synthetic worlds across modules: runs record theirs, refuse a bad one, and never mix two in one table cell."
import json

import pytest

from conftest import refused_by_start_run
from fairnb.chexpert import write_synthetic_chexpert
from fairnb.results import collect_runs, write_results
from fairnb.tables import cell, cell_runs
from fairnb.sweep import main as sweep_main


def test_an_unknown_world_is_refused_naming_the_worlds(tmp_path):
    refused_by_start_run('chexpert', tmp_path / 'a', {'world': 'harsh'},
                         r"world must be one of \['default', 'findings', 'null'\]")
    refused_by_start_run('faces', tmp_path / 'b', {'world': 'harsh'},
                         r"world must be one of \['default', 'findings', 'null'\]")


def test_a_world_or_the_true_labels_with_real_data_is_refused(tmp_path):
    real = write_synthetic_chexpert(tmp_path / 'CheXpert-v1.0-small', n_train=20, n_test=10, img_size=16)
    refused_by_start_run('chexpert', tmp_path / 'a', {'data_dir': str(real), 'world': 'findings'},
                         "world='findings' describes the synthetic data")
    refused_by_start_run('chexpert', tmp_path / 'b', {'data_dir': str(real), 'train_labels': 'true'},
                         "train_labels='true' trains on the synthetic CheXpert's true labels")


def _run(folder, world, knobs, seed):
    "A finished toy run of the table cell BASELINE in `world`."
    cfg = {'problem': 'chexpert', 'scheme': 'baseline', 'world': world, 'world_knobs': knobs, 'preset': 'smoke',
           'sensitive': 'sex', 'seed': seed}
    rows = [dict(split='test', attribute='sex', group=g, task='mean', metric='auc', value=v, n=10, low=v, high=v)
            for g, v in (('male', .9), ('female', .8), ('gap', .1))]
    write_results(folder, cfg, rows, 1.0)
    return folder


def test_runs_of_two_worlds_are_refused_as_one_table_cell(tmp_path):
    _run(tmp_path / 'a', 'default', {}, 0)
    _run(tmp_path / 'b', 'null', {'female_contrast': 1.0}, 1)
    with pytest.raises(ValueError, match=r"differ in \['world', 'world_knobs'\], not only in the seed"):
        cell_runs(collect_runs(tmp_path), cell('BASELINE', 'chexpert', scheme='baseline'), {'preset': 'smoke'})
    assert len(cell_runs(collect_runs([tmp_path / 'a']), cell('BASELINE', 'chexpert', scheme='baseline'))) == 3


def test_sweep_sets_the_world_of_every_run(tmp_path, capsys):
    assert sweep_main(['oracle_chexpert', '--preset', 'smoke', '--seeds', '1', '--set', 'world=findings',
                       '--out', str(tmp_path), '--dry-run']) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if 'papermill' in l]
    assert len(lines) == 3 and all('-r world findings' in l for l in lines), lines
    assert sum('-r train_labels true' in l for l in lines) == 1
