"""A run writes only into a folder of its own: someone's files in out_dir are refused and left as they were;
overwrite leaves nothing of the old run behind, even when the new run fails."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from papermill.exceptions import PapermillExecutionError

from conftest import launch, run_notebook
from fairnb.core import read_json


def _tree(d):
    "Every file under `d`, by path relative to it, with its bytes."
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(Path(d).rglob('*')) if p.is_file()}


@pytest.mark.slow
def test_someone_elses_run_files_are_refused_and_untouched(tmp_path):
    out = tmp_path / 'mine'                                      # a folder of the user's own experiment
    (out / 'predictions').mkdir(parents=True)
    (out / 'config.json').write_text(json.dumps({'lr': 0.01, 'model': 'resnet50', 'epochs': 30}, indent=2) + '\n')
    torch.save({'fc.weight': torch.ones(2, 3)}, out / 'model.pt')
    pd.DataFrame({'epoch': [1, 2], 'loss': [0.91, 0.72]}).to_csv(out / 'history.csv', index=False)
    pd.DataFrame({'image': ['a.png', 'b.png'], 'p': [0.2, 0.8]}).to_csv(out / 'predictions' / 'test.csv', index=False)
    before = _tree(out)
    with pytest.raises(PapermillExecutionError) as e:
        run_notebook('run_chexpert.ipynb', tmp_path / 'nb', preset='smoke', out_dir=str(out))
    assert e.value.evalue.startswith(f'{out} is not a fairnb run folder: it holds config.json, history.csv, model.pt, '
                                     'predictions/test.csv, which a run would replace. Choose another out_dir, '
                                     'or move those files out of it'), e.value.evalue
    assert _tree(out) == before                                  # byte for byte, and nothing added: no failed.json
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'history.csv', 'model.pt', 'predictions']


@pytest.mark.slow
def test_overwrite_then_a_failing_run_leaves_nothing_of_the_old_run(tmp_path):
    out = tmp_path / 'run'
    launch('chexpert', out)                                      # a finished run, with its predictions
    assert (out / 'results.json').exists() and (out / 'predictions' / 'test.csv').exists()
    (out / 'notes.txt').write_text('mine')                       # a file no run writes
    bad = str(tmp_path / 'none.pt')   # small_cnn takes no weights_path: refused when the model is built, after
                                      # start_run has prepared the folder
    with pytest.raises(PapermillExecutionError) as e:
        run_notebook('run_chexpert.ipynb', tmp_path / 'nb', preset='smoke', out_dir=str(out), overwrite=True,
                     weights_path=bad)
    assert "takes no ['weights_path']" in e.value.evalue, e.value.evalue
    config = read_json(out / 'config.json')
    assert config['weights_path'] == bad and config['overwrite'], 'the new run failed before it prepared its folder'
    assert "takes no ['weights_path']" in read_json(out / 'failed.json')['error']
    for old in ('results.json', 'model.pt', 'checkpoint.pt', 'history.csv', 'predictions'):
        assert not (out / old).exists(), f'{old} of the old run is still there'
    assert (out / 'notes.txt').read_text() == 'mine'
    assert sorted(p.name for p in out.iterdir() if p.name != 'run.lock') == ['config.json', 'failed.json', 'notes.txt']


def test_an_out_dir_that_is_a_file_is_named_so(tmp_path):
    "An out_dir that is an existing file (a report, say) is refused as such, not as a read-only or full disk."
    (tmp_path/'report.ipynb').write_text('{}')
    with pytest.raises(NotADirectoryError, match=r"out_dir '.*report.ipynb' cannot be a folder: '.*report.ipynb' is "
                                                 r"a file\. A run writes several files into a folder of its own"):
        launch('chexpert', tmp_path/'report.ipynb', device='cpu')
    assert (tmp_path/'report.ipynb').read_text() == '{}'
