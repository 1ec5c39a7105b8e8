"""The GPU fast path, for one GPU machine (prepared to finish in under 5 minutes on an H200): images per second of
a training step of the paper's models, fp32 against bf16 autocast + channels-last, and against that +
`torch.compile`, and the projected time of one epoch.

- CheXpert: DenseNet121 at 256 x 256, batch 56, 5 outputs, BCE (`fairnb.losses.weighted_bce`), Adam;
- CelebA: ResNet-18 face backbone (`fairnb.models.FaceResNet`) at 112 x 112, batch 512, with the CosFace head
  (`fairnb.models.CosFace`, 10,000 classes) and focal loss (`fairnb.losses.MarginLoss`), SGD with momentum.

The modes use fairnb's own options (`fairnb.train.speed_up`, `fairnb.train.autocast`: what the `paper` presets'
`precision`, `channels_last` and `compile_model` switch on). Random inputs already on the device (the model's throughput, not the loader's), fresh weights (nothing
downloads), cudnn.benchmark on, library defaults otherwise (TF32 as torch sets it). Each mode: `--warmup` untimed
steps (compilation happens there), then `--repeats` blocks of `--steps` steps, synchronised; the median block
gives the per-step time. Projected epochs: 179,000 CheXpert training images, 180,000 CelebA images.
`--smoke` runs tiny sizes for a few steps (on the CPU too, there without compile unless `--modes` asks) to check
the script; `--out FILE` writes the table as CSV.
"""
import argparse
import csv
import statistics
import time

import torch

from _common import table
from fairnb.losses import MarginLoss, weighted_bce
from fairnb.models import CosFace, create_model
from fairnb.train import autocast, speed_up

EPOCH_IMAGES = {'densenet121': 179_000, 'resnet18_cosface': 180_000}   # CheXpert training split, CelebA
MODES = ('fp32', 'bf16+cl', 'bf16+cl+compile')


def workloads(smoke:bool):
    "name -> dict(batch, img, build): `build(device)` -> (model, loss_fn(out, y), optimizer, make_batch())."
    def densenet(device, img, batch):
        net = create_model('densenet121', num_classes=5).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        x = torch.randn(batch, 3, img, img, device=device); y = (torch.rand(batch, 5, device=device) < 0.3).float()
        return net, lambda out, y: weighted_bce(out, y).mean(), opt, (x, y)
    def face(device, img, batch, classes):
        net = create_model('resnet18', emb_size=512, img_size=img).to(device)
        head = MarginLoss(CosFace(512, classes), gamma=2.0).to(device)
        opt = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.1, momentum=0.9, weight_decay=5e-4)
        x, y = torch.randn(batch, 3, img, img, device=device), torch.randint(0, classes, (batch,), device=device)
        return net, lambda out, y: head(out.float(), y).mean(), opt, (x, y)
    if smoke:
        return {'densenet121': dict(batch=4, img=32, build=lambda d: densenet(d, 32, 4)),
                'resnet18_cosface': dict(batch=8, img=32, build=lambda d: face(d, 32, 8, 100))}
    return {'densenet121': dict(batch=56, img=256, build=lambda d: densenet(d, 256, 56)),
            'resnet18_cosface': dict(batch=512, img=112, build=lambda d: face(d, 112, 512, 10_000))}


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def measure(build, mode:str, device, warmup:int, steps:int, repeats:int):
    "(seconds per step, warm-up seconds, peak GiB) of the training step in `mode`."
    torch.manual_seed(0)
    net, loss_fn, opt, (x, y) = build(device)
    net.train()
    bf16 = mode.startswith('bf16')    # fairnb's own options, as the paper presets set them
    fwd = speed_up(net, channels_last=bf16, compile_model=mode.endswith('compile'))
    if bf16: x = x.contiguous(memory_format=torch.channels_last)
    def step():
        with autocast(device, 'bf16' if bf16 else 'fp32'):
            loss = loss_fn(fwd(x), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup): step()
    sync(device); t_warm = time.perf_counter() - t0
    blocks = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps): step()
        sync(device); blocks.append((time.perf_counter() - t) / steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else float('nan')
    del net, fwd, opt
    if device.type == 'cuda': torch.cuda.empty_cache()
    return statistics.median(blocks), t_warm, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--smoke', action='store_true', help='tiny sizes and few steps: checks the script, on CPU too')
    ap.add_argument('--out', help='also write the table to this CSV file')
    ap.add_argument('--steps', type=int, help='timed steps per block (default 10; smoke 2)')
    ap.add_argument('--repeats', type=int, help='timed blocks, the median reported (default 3; smoke 1)')
    ap.add_argument('--warmup', type=int, help='untimed steps first, compilation included (default 5; smoke 1)')
    ap.add_argument('--modes', nargs='+', choices=MODES,
                    help='default: all; with --smoke on a CPU, all but compile (minutes on a CPU)')
    ap.add_argument('--models', nargs='+', default=list(EPOCH_IMAGES), choices=list(EPOCH_IMAGES))
    a = ap.parse_args()
    steps, repeats, warmup = (a.steps or (2 if a.smoke else 10), a.repeats or (1 if a.smoke else 3),
                              a.warmup or (1 if a.smoke else 5))
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    a.modes = a.modes or [m for m in MODES if not (a.smoke and device.type == 'cpu' and m.endswith('compile'))]
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    print(f'{name}, torch {torch.__version__}{", smoke sizes" if a.smoke else ""}; median of {repeats} blocks of '
          f'{steps} steps after {warmup} warm-up steps', flush=True)
    rows, t_start = [], time.perf_counter()
    for model, w in {k: v for k, v in workloads(a.smoke).items() if k in a.models}.items():
        base = None
        for mode in a.modes:
            row = dict(model=model, mode=mode, batch=w['batch'], img=w['img'])
            try:
                sec, warm, peak = measure(w['build'], mode, device, warmup, steps, repeats)
            except Exception as e:   # one mode failing (e.g. no compiler for torch.compile) keeps the others
                rows.append(row | dict(error=f'{type(e).__name__}: {str(e).splitlines()[0][:80]}'))
                print(f'{model} {mode}: failed: {rows[-1]["error"]}', flush=True); continue
            base = base or (sec if mode == 'fp32' else None)
            ips = w['batch'] / sec
            row |= dict(step_ms=1e3 * sec, images_s=ips, speedup=base / sec if base else float('nan'),
                        epoch_images=EPOCH_IMAGES[model], epoch_min=EPOCH_IMAGES[model] / ips / 60,
                        warmup_s=warm, peak_gib=peak)
            rows.append(row)
            print(f'{model} {mode}: {1e3 * sec:.1f} ms/step, {ips:.0f} images/s (warm-up {warm:.1f} s; '
                  f'{time.perf_counter() - t_start:.0f} s so far)', flush=True)
    cols = ['model', 'mode', 'batch', 'img', 'step_ms', 'images_s', 'speedup', 'epoch_images', 'epoch_min',
            'warmup_s', 'peak_gib', 'error']
    fmt = dict(step_ms='.1f', images_s='.0f', speedup='.2f', epoch_min='.1f', warmup_s='.1f', peak_gib='.1f')
    print('\nspeedup: against fp32 of the same model; epoch_min: epoch_images / images_s (the model alone, no '
          'loader); warmup_s includes compilation')
    table(rows, [c for c in cols if any(c in r for r in rows)], fmt)
    print(f'total {time.perf_counter() - t_start:.0f} s')
    if a.out:
        with open(a.out, 'w', newline='') as f:
            wr = csv.DictWriter(f, fieldnames=cols); wr.writeheader(); wr.writerows(rows)
        print(f'table written to {a.out}')


if __name__ == '__main__':
    main()
