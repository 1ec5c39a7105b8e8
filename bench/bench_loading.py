"""Who is the bottleneck, the loader or the model? Images per second of the CheXpert training loader (augmentation
included) reading and decoding the JPEGs every epoch (`preload=False`) against the decoded uint8 cache
(`preload=True`), each with 0 and 2 workers, set against the images per second the `cpu` preset train step consumes
(small_cnn forward + backward + Adam step at the preset batch, the baseline scheme), and against whole training
epochs (loader and step together). Synthetic CheXpert at the preset image size, written to a temporary folder.
A loader row's ratio = loader images/s / train-step images/s: above 1, the loader keeps up and the model is the
bottleneck; below 1, the model waits for data. All measured in this run, median of `--repeats`, interleaved.
Note: worker processes share the machine's cores with the training process in a real epoch."""
import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from _common import interleaved, median_time, table, threads_note
from fairnb.chexpert import CHEXPERT_PRESETS, TASKS, chexpert_datasets, chexpert_frames, synthetic_chexpert
from fairnb.losses import pos_weights, weighted_bce
from fairnb.models import create_model
from fairnb.schemes import get_scheme
from fairnb.train import batch_out


def loader(ds, batch_size:int, workers:int, seed:int=0):
    return DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed))


def one_pass(dl):
    "Iterate one epoch of `dl`, doing nothing with the batches."
    for _ in dl: pass


class Trainer:
    "The cpu preset's CheXpert model, criterion and optimizer, and its training step (baseline scheme)."
    def __init__(self, preset:dict, targets, seed:int=0):
        torch.manual_seed(seed)
        self.net = create_model(preset['model'], optional={'width': preset['width']}, num_classes=len(TASKS)).train()
        self.criterion = partial(weighted_bce, pos_weight=pos_weights(targets))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=preset['lr'])
        self.scheme = get_scheme('baseline', 'sex', 'chexpert', seed)
    def step(self, batch):
        out = batch_out(self.net, self.criterion, batch, self.scheme.attribute, 'cpu', self.scheme)
        loss = self.scheme(out)
        self.optimizer.zero_grad(set_to_none=True); loss.backward(); self.optimizer.step()
        return loss.item()
    def epoch(self, dl):
        for batch in dl: self.step(batch)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--train-images', type=int, default=800, help='train.csv rows of the synthetic CheXpert')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--workers', type=int, nargs='+', default=[0, 2])
    a = ap.parse_args()
    p = CHEXPERT_PRESETS['cpu']; size, bs = p['img_size'], p['batch_size']
    with tempfile.TemporaryDirectory() as d:
        root = synthetic_chexpert(Path(d), n_train=a.train_images, n_test=100, img_size=size)
        frames = chexpert_frames(root)
        jpeg = chexpert_datasets(frames, size, preload=False)['train']
        t_preload, cached = median_time(lambda: chexpert_datasets(frames, size, preload=True)['train'], 1)
        trainer = Trainer(p, jpeg.targets)
        batch = next(iter(loader(cached, bs, 0)))
        for _ in range(5): trainer.step(batch)   # warm-up
        steps = []
        for _ in range(a.repeats):   # the model alone, on one batch already in memory
            for _ in range(10):
                t = time.perf_counter(); trainer.step(batch); steps.append(time.perf_counter() - t)
        t_step = statistics.median(steps)
        fns = {(src, w): partial(one_pass, loader(ds, bs, w)) for src, ds in (('JPEG', jpeg), ('cache', cached))
               for w in a.workers}
        fns |= {('epoch', src, w): partial(trainer.epoch, loader(ds, bs, w))
                for src, ds, w in (('cache', cached, 0), ('JPEG', jpeg, max(a.workers)))}
        t, _ = interleaved(fns, a.repeats)
    n, model_ips = len(jpeg), bs / t_step
    print(f'\nCheXpert cpu preset: {n:,} synthetic training images at {size} px, batch {bs}, {p["model"]} '
          f'(width {p["width"]}); median of {a.repeats}, interleaved; {threads_note()}')
    rows = [dict(what='train step (model only)', source='batch in memory', workers=None, images_s=model_ips,
                 ratio=1.0, bottleneck='')]
    for (src, w) in [(s, w) for s in ('JPEG', 'cache') for w in a.workers]:
        ips = n / t[src, w]
        rows.append(dict(what='loader (one epoch)', source='JPEG decoded each epoch' if src == 'JPEG' else
                         'decoded cache (preload)', workers=w, images_s=ips, ratio=ips / model_ips,
                         bottleneck='model' if ips > model_ips else 'loader'))
    for (_, src, w) in [k for k in t if k[0] == 'epoch']:
        ips = n / t['epoch', src, w]
        rows.append(dict(what='training epoch (loader + step)', source='JPEG decoded each epoch' if src == 'JPEG'
                         else 'decoded cache (preload)', workers=w, images_s=ips, ratio=ips / model_ips,
                         bottleneck=''))
    table(rows, ['what', 'source', 'workers', 'images_s', 'ratio', 'bottleneck'],
          {'images_s': '.0f', 'ratio': '.2f'})
    print(f'ratio: images/s over the train step\'s; one-off decode of the cache {t_preload:.2f} s '
          f'({n / t_preload:.0f} images/s); loader epochs include worker start-up (no persistent workers)')


if __name__ == '__main__':
    main()
