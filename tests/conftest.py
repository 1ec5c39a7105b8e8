import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: executes notebooks or starts processes (make test-fast leaves it out)')


@pytest.fixture(scope='session', autouse=True)
def _cache(tmp_path_factory):
    "Synthetic data goes to FAIRNB_CACHE (the Makefile points it into the repo); a temporary one otherwise."
    if 'FAIRNB_CACHE' not in os.environ:
        os.environ['FAIRNB_CACHE'] = str(tmp_path_factory.mktemp('fairnb-cache'))
    yield


def run_notebook(name, dest, **params):
    "Execute nbs/<name> with papermill into the folder dest (also the kernel's cwd); params as papermill's -p."
    import papermill as pm
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # A loaded 2-core runner can be slow to start a kernel and to flush a cell's output: generous timeouts
    # (nbclient's default wait for output after a cell is 4 s); a cell that hangs still fails, after 30 minutes.
    return pm.execute_notebook(str(NBS / name), str(dest / name), parameters=params, cwd=str(dest), progress_bar=False,
                               kernel_name='python3', start_timeout=300, iopub_timeout=120, execution_timeout=1800)


def launch(problem, out, **params):
    """Run an experiment in this process, as `python -m fairnb.launch` does (no kernel): for tests that need a finished
    run, not the notebook. Returns the path of its results.json."""
    from fairnb.launch import run_experiment
    return run_experiment(problem, {'preset': 'smoke', 'out_dir': str(out), **params})


def stream_outputs(notebook, name=None):
    "The text of every stream output of an executed notebook (name: 'stdout' or 'stderr'; None: both)."
    import nbformat
    nb = nbformat.read(str(notebook), as_version=4)
    return [o['text'] for c in nb.cells for o in c.get('outputs', [])
            if o['output_type'] == 'stream' and name in (None, o['name'])]


def refused_by_start_run(problem, out, params, message):
    "start_run (in this process, as a notebook's first call) refuses `params` with `message`, records it, writes no results."
    import json
    from fairnb.experiments import PROBLEMS
    from fairnb.run import start_run
    with pytest.raises((ValueError, FileNotFoundError, RuntimeError), match=message):
        start_run(PROBLEMS[problem], {'preset': 'smoke', 'device': 'cpu', 'out_dir': str(out), **params})
    failed = json.loads((Path(out) / 'failed.json').read_text())
    assert 'resolve_config' in failed['traceback'] or 'prepare_run_dir' in failed['traceback'], failed['traceback']
    assert not (Path(out) / 'results.json').exists() and not (Path(out) / 'checkpoint.pt').exists()
    assert not (Path(out) / 'run.lock').exists() or not _locked(Path(out) / 'run.lock')


def _locked(path):
    "Whether a process holds the flock on `path`."
    import fcntl
    with open(path) as f:
        try: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError: return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False
