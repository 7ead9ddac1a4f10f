#!/usr/bin/env python3
"""One SDCH training epoch in cmh (Rust, tch) vs the same model and loss written in PyTorch, on the
CPU, same data, batch size and widths, in the same script run.

    .venv/bin/python scripts/bench_sdch.py                      # paper widths (4096, 4096), k 256
    .venv/bin/python scripts/bench_sdch.py --hidden 1024,1024 --n 1280 --rounds 3

Both sides: image MLP (X -> hidden -> hidden -> k) and text MLP (Y -> ... -> k) on standardised
inputs, a shared hash layer fc4 (k -> bits), loss L_f + gamma L_h (eqs. 4 and 7 of SDCH, the
all-parameters phase), Adam (lr 1e-3 networks, 1e-2 hash layer), mini-batches of 64 over a random
permutation, three scalar reads per batch (loss, L_f, L_h). Each side runs one warm-up epoch, then
--reps timed epochs; the script alternates cmh and PyTorch for --rounds rounds and reports the
median epoch time of each and their ratio (cmh / PyTorch; goal <= 1.0).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_data(out, n, dx, dy, classes, seed):
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, classes, size=n)
    px = rng.normal(size=(classes, dx)).astype(np.float32)
    py = rng.random(size=(classes, dy)).astype(np.float32)
    x = (px[cls] + rng.normal(size=(n, dx))).astype(np.float32)
    y = (rng.random(size=(n, dy)) < 0.05 + 0.2 * py[cls]).astype(np.float32)  # bag of words
    labels = np.zeros((n, classes), dtype=np.uint8)
    labels[np.arange(n), cls] = 1
    extra = rng.random(size=(n, classes)) < 0.1  # some multi-label rows
    labels[extra] = 1
    np.save(os.path.join(out, "X.npy"), x)
    np.save(os.path.join(out, "Y.npy"), y)
    np.save(os.path.join(out, "L.npy"), labels)
    return x, y, labels


def mlp(d_in, hidden, k):
    layers, dims = [], [d_in] + hidden + [k]
    for i in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def loss_f(fx, fy, s):  # eq. 4
    theta = fx @ fy.t()
    return (torch.nn.functional.softplus(theta) - s * theta).sum()


def loss_h(z, b, sh, beta, r):  # eq. 7, one item per row, decorrelation scaled by N
    n = z.shape[0]
    sim = ((z @ z.t()) / r - sh).pow(2).sum()
    quant = (z - b).pow(2).sum()
    decor = ((z.t() @ z) / n - torch.eye(r)).pow(2).sum()
    return sim + beta[0] * quant + beta[1] * decor + beta[2] / r * z.pow(2).sum()


def torch_epochs(x, y, labels, hidden, k, bits, batch, reps, gamma=0.01, beta=(1.0, 1.0, 0.1)):
    torch.manual_seed(0)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    mx, sx = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-12)
    my, sy = y.mean(0), y.std(0, unbiased=False).clamp_min(1e-12)
    lab = torch.from_numpy(labels).float()
    img, txt = mlp(x.shape[1], hidden, k), mlp(y.shape[1], hidden, k)
    fc4 = torch.nn.Linear(k, bits)
    opt = torch.optim.Adam([
        {"params": list(img.parameters()) + list(txt.parameters()), "lr": 1e-3},
        {"params": fc4.parameters(), "lr": 1e-2},
    ])
    n = x.shape[0]
    with torch.no_grad():
        b_all = torch.sign(fc4(img((x - mx) / sx)) + fc4(txt((y - my) / sy)))
        b_all[b_all == 0] = 1
    gen = torch.Generator().manual_seed(0)

    def epoch():
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            lx = lab.index_select(0, idx)
            fx, fy = img((xb - mx) / sx), txt((yb - my) / sy)
            lf = loss_f(fx, fy, (lx @ lx.t() > 0).float())
            z = fc4(torch.cat([fx, fy], 0))
            bb = b_all.index_select(0, idx)
            l2 = torch.cat([lx, lx], 0)
            sh = (l2 @ l2.t() > 0).float() * 2 - 1
            lh = loss_h(z, torch.cat([bb, bb], 0), sh, beta, bits)
            loss = lf + gamma * lh
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item(), lf.item(), lh.item()

    epoch()  # warm-up
    secs = []
    for _ in range(reps):
        t = time.perf_counter()
        epoch()
        secs.append(time.perf_counter() - t)
    return secs


def cmh_binary():
    # LIBTORCH comes from the environment or .cargo/config.toml, as for every other cargo command
    # here (a different value would make torch-sys rebuild).
    out = subprocess.run(["cargo", "bench", "--bench", "sdch_epoch", "--no-run", "--message-format=json"],
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("building benches/sdch_epoch.rs failed:\n" + out.stderr[-3000:])
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "sdch_epoch" and msg.get("executable"):
            return msg["executable"]
    sys.exit("could not find the sdch_epoch bench binary")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1280, help="training items (batches of --batch)")
    ap.add_argument("--image-dim", type=int, default=512)
    ap.add_argument("--text-dim", type=int, default=1386)
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--hidden", default="4096,4096")
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, help="intra-op threads for both sides (default: torch's choice)")
    args = ap.parse_args()
    hidden = [int(h) for h in args.hidden.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    binary = cmh_binary()
    with tempfile.TemporaryDirectory() as d:
        x, y, labels = make_data(d, args.n, args.image_dim, args.text_dim, args.classes, 0)
        cmd = [binary, "--data", d, "--hidden", args.hidden, "--k", str(args.k), "--bits", str(args.bits),
               "--batch", str(args.batch), "--reps", str(args.reps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        cmh_secs, torch_secs, threads = [], [], None
        for _ in range(args.rounds):
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit("cmh bench failed:\n" + out.stderr[-3000:])
            res = json.loads(out.stdout.strip().splitlines()[-1])
            cmh_secs += res["epoch_secs"]
            threads = res["torch_threads"]
            torch_secs += torch_epochs(x, y, labels, hidden, args.k, args.bits, args.batch, args.reps)
    c, t = statistics.median(cmh_secs), statistics.median(torch_secs)
    print(f"SDCH epoch, CPU: n={args.n} batch={args.batch} image {args.image_dim}-d text {args.text_dim}-d "
          f"hidden {hidden} k={args.k} bits={args.bits}; threads cmh {threads} / torch {torch.get_num_threads()}")
    print(f"cmh     epoch seconds: {' '.join(f'{s:.3f}' for s in cmh_secs)}  median {c:.3f}")
    print(f"PyTorch epoch seconds: {' '.join(f'{s:.3f}' for s in torch_secs)}  median {t:.3f}")
    print(f"ratio cmh / PyTorch (median): {c / t:.3f}   (min/min: {min(cmh_secs) / min(torch_secs):.3f})")


if __name__ == "__main__":
    main()
