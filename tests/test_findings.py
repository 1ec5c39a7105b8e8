"""The findings report end to end (papermill on a smoke sweep, reused on a second execution, exported to HTML and read
back in headless Chromium) and each finding's verdict rule on constructed numbers."""
import functools
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from conftest import launch
from fairnb.findings import FINDINGS, VERDICTS, assess, finding_verdicts, planted_runs

NBS = Path(__file__).resolve().parent.parent / 'nbs'


@functools.lru_cache(maxsize=None)
def _verdicts(effect, seed=0):
    return finding_verdicts(assess(planted_runs(effect, seeds=4, seed=seed), 'toy')).set_index('finding').verdict


@pytest.mark.parametrize('key', list(FINDINGS))
def test_planted_effect_is_reproduced_and_its_opposite_contradicted(key):
    for seed in range(3):
        assert _verdicts(0.1, seed)[key] == 'reproduced'
        assert _verdicts(-0.1, seed)[key] == 'contradicted'


@pytest.mark.parametrize('key', list(FINDINGS))
def test_null_effect_is_mostly_inconclusive(key):
    calls = pd.Series([_verdicts(0.0, seed)[key] for seed in range(20)])
    assert (calls == 'inconclusive').mean() >= 0.8, calls.value_counts()   # a 95% interval misses 0 by chance


def test_one_seed_gives_no_verdict():
    v = finding_verdicts(assess(planted_runs(0.1, seeds=1), 'toy'))
    assert v.verdict.tolist() == ['inconclusive'] * 8 and (v.seeds == 1).all()


def _papermill(out, runs):
    cmd = [sys.executable, '-m', 'papermill', str(NBS / 'findings.ipynb'), str(out), '--log-level', 'WARNING',
           '-r', 'runs_dir', str(runs), '-r', 'preset', 'smoke', '-p', 'seeds', '2', '-p', 'jobs', '2']
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return nbformat.read(out, as_version=4)


@pytest.fixture(scope='module')
def reported(tmp_path_factory):
    """The report on a smoke sweep of 2 seeds: the 22 runs made in this process first (the sweep's own running is
    test_sweep's), so the report finds them finished, as it would a sweep run before."""
    from fairnb.tables import table_jobs
    d = tmp_path_factory.mktemp('findings')
    for t in ('findings_chexpert', 'findings_faces'):
        for j in table_jobs(t, 'smoke', 2): launch(j.problem, d / 'runs' / j.folder, **j.kw)
    first = _papermill(d / 'findings.ipynb', d / 'runs')
    parts = pd.read_csv(d / 'runs' / 'findings.csv')
    second = _papermill(d / 'again.ipynb', d / 'runs')
    return dict(dir=d, first=first, second=second, parts=parts)


def _text(nb):
    kinds = ('text/plain', 'text/markdown', 'text/html')
    return '\n'.join(o.get('text', '') + ''.join(str(o.get('data', {}).get(k, '')) for k in kinds)
                     for c in nb.cells for o in c.get('outputs', []))


@pytest.mark.slow
def test_report_has_a_verdict_per_finding(reported):
    parts = reported['parts']
    assert list(dict.fromkeys(parts.finding)) == list(FINDINGS)
    assert set(parts.verdict) <= set(VERDICTS) and (parts.seeds == 2).all() and (parts.preset == 'smoke').all()
    assert parts[['value', 'low', 'high']].notna().all().all(), parts   # two seeds: every part has an interval
    text = _text(reported['first'])
    for key in FINDINGS: assert f'{key}: ' in text
    assert 'The baselines' in text and ' 0 failed' in text
    assert len(list((reported['dir'] / 'runs' / 'smoke').glob('*/results.json'))) == 22
    figures = [o for c in reported['first'].cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
    assert len(figures) == len(FINDINGS)


@pytest.mark.slow
def test_second_execution_reuses_the_runs(reported):
    text = _text(reported['second'])
    assert 'pass 1: 0 run(s) finished, 22 already finished (skipped), 0 failed' in text and 'pass 2' not in text
    again = pd.read_csv(reported['dir'] / 'runs' / 'findings.csv')
    pd.testing.assert_frame_equal(again, reported['parts'])


@pytest.mark.slow
def test_html_export_renders_in_chromium(reported):
    nb = reported['dir'] / 'findings.ipynb'
    done = subprocess.run([sys.executable, '-m', 'nbconvert', '--to', 'html', '--embed-images', str(nb)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    assert chromium, 'chromium is missing: `make system` installs it (Debian package chromium)'
    dom = subprocess.run([chromium, '--headless', '--no-sandbox', '--disable-gpu', '--dump-dom',
                          nb.with_suffix('.html').as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'The verdicts' in dom and 'F8' in dom and dom.count('<img') >= len(FINDINGS)


@pytest.mark.slow
def test_a_cell_whose_every_run_failed_is_listed_and_its_claims_have_no_runs(reported, tmp_path):
    "Every min-max run fails (someone's crashed runs of another configuration sit in its folders): the report ends."
    from fairnb.core import write_json
    runs = tmp_path / 'runs'
    shutil.copytree(reported['dir'] / 'runs', runs)
    for d in (runs / 'smoke').glob('chexpert-minmax-*'):
        shutil.rmtree(d); write_json(d / 'config.json', {'problem': 'chexpert', 'scheme': 'minmax', 'lr': 0.5})
    text = _text(_papermill(tmp_path / 'findings.ipynb', runs))
    assert '2 run(s) failed twice' in text and 'cells without a finished run: chexpert: MIN-MAX LOSS' in text, text
    verdicts = finding_verdicts(pd.read_csv(runs / 'findings.csv')).set_index('finding')
    assert verdicts.verdict['F3'] == 'no runs' and verdicts.seeds['F3'] == 0
    assert (verdicts.drop('F3').seeds == 2).all()
