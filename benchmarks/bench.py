#!/usr/bin/env python
"""Training and AutoAttack throughput of virkit against reference-style code, in one process on one device.

For every (model, method) it times two loops on the same images, the same architecture and the same
initial weights, batch 128, PGD-10 (eps 8/255, step 2/255) training attacks:

* **virkit**: ``virkit.training.methods.method_step`` + zero_grad/backward/optimizer step, on device-resident
  uint8 data with on-device crop/flip (``DeviceLoader``), training statistics accumulated on the device.
  CPU mode: fp32 with channels_last (``--no-channels-last``: NCHW; ``--precision bf16``: bf16 autocast).
  GPU mode adds what ``virkit.training.trainer.train`` does on CUDA: bf16 autocast, channels_last, fused SGD and
  ``torch.compile`` (with the trainer's fallback to eager mode).
* **reference**: the loop of the baselines' public code, written here: a torchvision-style dataset over
  the same uint8 images as PIL images with ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``,
  ``ToTensor`` and a ``DataLoader``; fp32; the attack takes ``loss.backward()`` on ``x_adv`` (parameter
  gradients accumulate and are zeroed afterwards); TRADES-style methods recompute ``model(x_natural)``
  inside every attack step and twice in the training loss, as the official TRADES code does.

Both loops craft in eval mode and train in train mode with the same losses (VIR weights from eval-mode
logits, reweighting active), so the two compute the same algorithm. Warm-up iterations are excluded.
The measured iterations are split into rounds that alternate between virkit and the reference (order
reversed each round), so load from other processes on a shared machine hits both; the reported img/s
is the median over rounds, and the ratio is virkit/reference of those medians.

Then AutoAttack (standard, L-inf 8/255) on N test images: ``virkit.attacks.autoattack`` against
``torchattacks.AutoAttack``, time and robust accuracy of both (skipped with a message when either is
absent). Its model is an AT model trained briefly here (or ``--aa-checkpoint``).

    python benchmarks/bench.py --mode cpu                      # small-cnn, a few minutes on 2 cores
    python benchmarks/bench.py --mode gpu --json benchmarks/out/h100.json   # ResNet-18 + WRN-34-10

Prints one JSON object (also written to ``--json``) and Markdown rows for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from virkit.data import DeviceLoader, Split, load_dataset, subset  # noqa: E402
from virkit.environment import environment_record  # noqa: E402
from virkit.errors import VirkitError  # noqa: E402
from virkit.models import build_model  # noqa: E402
from virkit.training.config import resolve_config  # noqa: E402
from virkit.training.methods import METHODS, method_step  # noqa: E402

ALL_METHODS = ("at", "vir-at", "trades", "vir-trades")
MODE_DEFAULTS = {
    "cpu": dict(
        models=("small-cnn",),
        device="cpu",
        precision="fp32",
        channels_last=True,
        compile=False,
        warmup=4,
        steps=24,
        rounds=4,
        ref_workers=0,
        data_n=5120,
        aa_n=100,
        aa_batch=100,
        aa_train_steps=60,
        aa_train_attack_steps=3,
    ),
    "gpu": dict(
        models=("resnet18", "wrn-34-10"),
        device="cuda",
        precision="bf16",
        channels_last=True,
        compile=True,
        warmup=15,
        steps=120,
        rounds=4,
        ref_workers=2,
        data_n=50000,
        aa_n=1000,
        aa_batch=1000,
        aa_train_steps=1500,
        aa_train_attack_steps=10,
    ),
}


# ---------------------------------------------------------------------------------------------
# environment and measurement helpers
def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def environment(device: torch.device) -> dict:
    """The one environment record (:func:`virkit.environment.environment_record`: versions, machine,
    device) plus what this benchmark adds: cuDNN's version on a GPU, torchattacks' version, and the
    cores and threads under the names earlier result files use (``cpu_count``, ``torch_threads``)."""
    env = {**environment_record(device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["cudnn"] = torch.backends.cudnn.version()
    try:
        import torchattacks

        env["torchattacks"] = torchattacks.__version__
    except Exception:
        pass
    return env


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Peak memory during a block: CUDA ``max_memory_allocated`` on a GPU, else the process's resident
    set size sampled every 5 ms by a thread (the whole process: data, model, Python included)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0.0
        self.kind = "cuda_max_allocated_mib" if device.type == "cuda" else "process_peak_rss_mib"

    @contextlib.contextmanager
    def measure(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            try:
                yield
            finally:
                torch.cuda.synchronize(self.device)
                self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) / 2**20)
            return
        stop = threading.Event()
        peak = [_rss_mb()]

        def sample():
            while not stop.wait(0.005):
                peak[0] = max(peak[0], _rss_mb())

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
            self.peak = max(self.peak, peak[0], _rss_mb())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# data
def synthetic_split(n: int, seed: int = 0, size: int = 32, classes: int = 10) -> Split:
    """uint8 images with a little class structure (class-dependent mean colour plus noise)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    base = torch.rand(classes, 3, 1, 1, generator=g) * 160 + 48
    x = (base[y] + torch.randn(n, 3, size, size, generator=g) * 40).clamp(0, 255).to(torch.uint8)
    s = Split(x, y, [str(i) for i in range(classes)], "synthetic", "synthetic uint8 images (benchmark only)")
    xf = x.float() / 255
    s.mean, s.std = tuple(xf.mean(dim=(0, 2, 3)).tolist()), tuple(xf.std(dim=(0, 2, 3)).tolist())
    return s


def _default_root(root: str | None) -> str | None:
    """``--data-root``, else ``$VIRKIT_DATA``, else the CIFAR-10 stand-in beside the checkout (as the
    Makefile and the tests do), else virkit's default."""
    if root or os.environ.get("VIRKIT_DATA"):
        return root
    shared = ROOT.parent / "shared" / "datasets"
    return str(shared) if (shared / "cifar10-jpeg.tar.gz").is_file() else None


def load_data(kind: str, root: str | None, n_train: int, n_test: int) -> tuple[Split, Split, str]:
    """(train, test, note). ``auto``: the CIFAR-10 (stand-in) when found, else synthetic images."""
    root = _default_root(root)
    if kind in ("auto", "cifar10"):
        try:
            train = load_dataset("cifar10", root, "train")
            test = load_dataset("cifar10", root, "test")
            return (
                subset(train, min(n_train, len(train)), seed=0),
                subset(test, min(n_test, len(test)), seed=1),
                train.source,
            )
        except VirkitError as e:
            if kind == "cifar10":
                raise
            note = f"CIFAR-10 not found ({str(e)[:80]}...); synthetic images"
    else:
        note = "synthetic images"
    pool = synthetic_split(n_train + n_test, 0)  # one draw: test images share the classes' colours
    train = Split(pool.x[:n_train], pool.y[:n_train], pool.classes, pool.name, pool.source, pool.mean, pool.std)
    test = Split(pool.x[n_train:], pool.y[n_train:], pool.classes, pool.name, pool.source, pool.mean, pool.std)
    return train, test, note


class ReferenceDataset(torch.utils.data.Dataset):
    """What ``torchvision.datasets.CIFAR10`` does per item: a uint8 HWC array -> PIL image -> transform."""

    def __init__(self, split: Split, transform):
        self.data = split.x.cpu().permute(0, 2, 3, 1).contiguous().numpy()  # N x H x W x C, as torchvision keeps it
        self.targets = split.y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.data[i])
        return self.transform(img), self.targets[i]


def _forever(make_iter):
    while True:
        yield from make_iter()


# ---------------------------------------------------------------------------------------------
# the two training loops
class VirkitLoop:
    """virkit's training step as ``virkit.training.trainer.train`` runs it (one batch per call)."""

    name = "virkit"

    def __init__(self, model_name, method, split, device, args, seed=0, trades_forwards=None, name="virkit"):
        from virkit.training.trainer import _autocast_factory, _maybe_compile

        self.device, self.name = device, name
        self.cfg = resolve_config(
            "paper",
            model=model_name,
            method=method,
            device=str(device),
            precision=args.precision,
            channels_last=args.channels_last,
            compile=args.compile,
            attack_steps=args.attack_steps,
            step_size=args.step_size,
            eps=args.eps,
            batch_size=args.batch_size,
            trades_forwards=trades_forwards,
        )
        self.epoch = self.cfg.reweight_start  # reweighting active: the expensive branch of VIR-*
        torch.manual_seed(seed)
        model = build_model(model_name, split.num_classes, split.mean, split.std).to(device)
        self.channels_last = self.cfg.channels_last and device.type in ("cuda", "cpu")  # as the trainer
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        kw = dict(
            lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay, nesterov=self.cfg.nesterov
        )
        if device.type == "cuda":
            kw["fused"] = True
        self.model, self.opt = model, torch.optim.SGD(model.parameters(), **kw)
        self.autocast = _autocast_factory(self.cfg, device)
        self.log: list[str] = []
        example = split.float_images(torch.arange(2, device=split.x.device)).to(device)
        self.run_model = _maybe_compile(model, self.cfg, example, self.log.append)
        self.compiled = "off" if not self.cfg.compile else ("fallback-eager" if self.run_model is model else "compiled")
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed + 2)
        loader = DeviceLoader(split, args.batch_size, shuffle=True, augment=True, drop_last=True)
        counter = iter(range(10**9))
        self.batches = _forever(lambda: loader.epoch(next(counter)))
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.adv_correct = torch.zeros((), device=device, dtype=torch.int64)
        self.model.train()

    def step(self):
        x, y, _ = next(self.batches)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        res = method_step(self.run_model, x, y, self.cfg, self.epoch, autocast=self.autocast, generator=self.gen)
        self.opt.zero_grad(set_to_none=True)
        res.loss.backward()
        self.opt.step()
        self.loss_sum += res.loss.detach().double() * x.shape[0]  # device-side statistics, no host sync
        if res.logits_adv is not None:
            self.adv_correct += (res.logits_adv.argmax(1) == y).sum()

    def finite(self) -> bool:
        return bool(torch.isfinite(self.loss_sum))


class ReferenceLoop:
    """Reference-style loop (fp32, PIL + DataLoader, ``loss.backward()`` in the attack)."""

    name = "reference"

    def __init__(self, model_name, method, split, device, args, seed=0):
        from torchvision import transforms

        split = split.to("cpu")  # the reference's dataset lives in host memory, as torchvision's
        spec = METHODS[method]
        self.cfg = resolve_config(
            "paper",
            model=model_name,
            method=method,
            attack_steps=args.attack_steps,
            step_size=args.step_size,
            eps=args.eps,
            batch_size=args.batch_size,
        )
        self.method, self.family, self.device = method, spec.family, device
        self.vir = spec.weighting == "vir"
        torch.manual_seed(seed)
        self.model = build_model(model_name, split.num_classes, split.mean, split.std).to(device)
        self.opt = torch.optim.SGD(
            self.model.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay
        )
        tf = transforms.Compose(
            [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
        )
        nw = args.ref_workers
        self.loader = torch.utils.data.DataLoader(
            ReferenceDataset(split, tf),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=nw,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=nw > 0,
        )
        self.batches = _forever(lambda: iter(self.loader))
        self.eps, self.step_size, self.k = self.cfg.eps, self.cfg.step_size, self.cfg.attack_steps
        self.beta = self.cfg.hp("trades_beta")
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)

    def _weights(self, x, x_adv, y):
        """VIR weights w = alpha exp(-gamma p_y(x)) KL(p(x) || p(x')) + beta from eval-mode logits."""
        with torch.no_grad():
            ln, la = self.model(x), self.model(x_adv)
            p = F.softmax(ln, dim=1)
            sv = self.cfg.hp("alpha") * torch.exp(-self.cfg.hp("gamma") * p.gather(1, y.view(-1, 1)).squeeze(1))
            sd = (p * (F.log_softmax(ln, dim=1) - F.log_softmax(la, dim=1))).sum(1).clamp_min(0)
            return sv * sd + self.cfg.hp("beta")

    def step(self):
        x, y = next(self.batches)
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        model, eps, step = self.model, self.eps, self.step_size
        model.eval()
        if self.family == "at":
            if self.vir:  # Algorithm 1, line 5
                x_adv = x.detach() + 0.001 * torch.randn_like(x)
            else:  # Madry et al.: uniform start
                x_adv = (x.detach() + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
            for _ in range(self.k):
                x_adv.requires_grad_()
                with torch.enable_grad():
                    loss = F.cross_entropy(model(x_adv), y)
                loss.backward()
                x_adv = x_adv.detach() + step * x_adv.grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
        else:  # TRADES official code: KL to softmax(model(x_natural)), recomputed in every step
            criterion_kl = torch.nn.KLDivLoss(reduction="sum")
            x_adv = x.detach() + 0.001 * torch.randn_like(x)
            for _ in range(self.k):
                x_adv.requires_grad_()
                with torch.enable_grad():
                    loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
                loss_kl.backward()
                x_adv = x_adv.detach() + step * x_adv.grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
        w = self._weights(x, x_adv, y) if self.vir else None
        model.train()
        self.opt.zero_grad()
        if self.family == "at":
            lvec = F.cross_entropy(model(x_adv), y, reduction="none")
            loss = (w * lvec).mean() if w is not None else lvec.mean()
        else:
            logits = model(x)
            loss_natural = F.cross_entropy(logits, y)
            kl = torch.nn.KLDivLoss(reduction="none")(
                F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1)
            ).sum(1)
            loss = loss_natural + self.beta * ((w * kl).mean() if w is not None else kl.mean())
        loss.backward()
        self.opt.step()
        self.loss_sum += loss.detach().double() * x.shape[0]

    def finite(self) -> bool:
        return bool(torch.isfinite(self.loss_sum))


def bench_pair(model_name: str, method: str, split: Split, device: torch.device, args) -> dict:
    loops, warm = [], {}
    for cls in (VirkitLoop, ReferenceLoop):
        if cls is ReferenceLoop and args.no_reference:
            continue
        t0 = time.perf_counter()
        if cls is ReferenceLoop and args.versus_forwards:
            # the same virkit step with 2 train-mode TRADES forwards (x', x) in the reference's place
            loop = VirkitLoop(
                model_name, method, split, device, args, trades_forwards=args.versus_forwards, name="reference"
            )
        else:
            loop = cls(model_name, method, split, device, args)
        for _ in range(args.warmup):
            loop.step()
        sync(device)
        warm[loop.name] = time.perf_counter() - t0
        loops.append(loop)
    per_round = max(1, args.steps // args.rounds)
    rates = {lp.name: [] for lp in loops}
    mem = {lp.name: PeakMemory(device) for lp in loops}
    load_before = load_average()
    for r in range(args.rounds):
        for lp in loops if r % 2 == 0 else loops[::-1]:
            with mem[lp.name].measure():
                sync(device)
                t = time.perf_counter()
                for _ in range(per_round):
                    lp.step()
                sync(device)
                dt = time.perf_counter() - t
            rates[lp.name].append(per_round * args.batch_size / dt)
    v = loops[0]
    res = {
        "model": model_name,
        "method": method,
        "batch_size": args.batch_size,
        "attack_steps": args.attack_steps,
        "measured_steps": per_round * args.rounds,
        "rounds": args.rounds,
        "virkit_img_s": statistics.median(rates["virkit"]),
        "virkit_img_s_rounds": rates["virkit"],
        "virkit_peak_mem_mib": mem["virkit"].peak,
        "virkit_warmup_s": warm["virkit"],
        "virkit_compile": v.compiled,
        "virkit_precision": v.cfg.precision,
        "virkit_trades_forwards": v.cfg.trades_forwards,
        "reference_kind": (
            f"virkit with trades_forwards={args.versus_forwards}" if args.versus_forwards else "reference-style loop"
        ),
        "virkit_channels_last": v.channels_last,
        "virkit_finite": v.finite(),
        "mem_kind": mem["virkit"].kind,
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
    }
    if v.log:
        res["virkit_log"] = v.log
    if "reference" in rates:
        res.update(
            {
                "reference_img_s": statistics.median(rates["reference"]),
                "reference_img_s_rounds": rates["reference"],
                "reference_peak_mem_mib": mem["reference"].peak,
                "reference_warmup_s": warm["reference"],
                "reference_finite": loops[1].finite(),
            }
        )
        res["ratio"] = res["virkit_img_s"] / res["reference_img_s"]
        # per-round ratios (the two loops of a round ran back to back) as a spread indicator
        res["ratio_rounds"] = [a / b for a, b in zip(rates["virkit"], rates["reference"])]
    del loops
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


# ---------------------------------------------------------------------------------------------
# AutoAttack
def _aa_model(args, model_name: str, train: Split, device: torch.device):
    """The model AutoAttack runs on: ``--aa-checkpoint``, else a briefly PGD-AT-trained ``model_name``
    (virkit's fast training step, fp32 or --precision), in eval mode, fp32."""
    if args.aa_checkpoint:
        from virkit.models.checkpoint import load_checkpoint

        model, _ = load_checkpoint(args.aa_checkpoint, device=device)
        return model.eval(), f"checkpoint {args.aa_checkpoint}"
    k = args.aa_train_attack_steps
    ns = argparse.Namespace(
        **{**vars(args), "compile": False, "attack_steps": k, "step_size": max(2 / 255, 2.5 * args.eps / k)}
    )
    loop = VirkitLoop(model_name, "at", train, device, ns, seed=1)
    t = time.perf_counter()
    for _ in range(args.aa_train_steps):
        loop.step()
    sync(device)
    return loop.model.eval(), (
        f"{model_name} trained here with virkit PGD-{k} AT for "
        f"{args.aa_train_steps} steps of {args.batch_size} ({time.perf_counter() - t:.0f} s)"
    )


@torch.no_grad()
def _accuracy(model, x, y, bs) -> float:
    return sum(int((model(x[i : i + bs]).argmax(1) == y[i : i + bs]).sum()) for i in range(0, len(y), bs)) / len(y)


def bench_autoattack(args, model_name: str, train: Split, test: Split, device: torch.device) -> dict:
    n = min(args.aa_n, len(test))
    if n <= 0:
        return {"skipped": "--aa-n 0"}
    try:
        from virkit.attacks.autoattack import AutoAttack as VirkitAA
    except Exception as e:
        msg = f"virkit.attacks.autoattack not importable ({type(e).__name__}: {e}); AutoAttack part skipped"
        print(msg, file=sys.stderr)
        return {"skipped": msg}
    try:
        import torchattacks
    except Exception as e:
        torchattacks = None
        ta_skip = f"torchattacks not importable ({type(e).__name__}: {e})"
    model, origin = _aa_model(args, model_name, train, device)
    for p in model.parameters():
        p.requires_grad_(False)
    # contiguous NCHW: torchattacks' FAB calls .view() on input gradients, which fails for the
    # channels-last strides of images decoded from virkit's HWC uint8 storage
    x = test.float_images(torch.arange(n)).contiguous().to(device)
    y = test.y[:n].to(device)
    bs = args.aa_batch
    out = {
        "n": n,
        "eps": args.eps,
        "model": model_name,
        "model_origin": origin,
        "batch_size": bs,
        "natural_acc": _accuracy(model, x, y, bs),
        "load_avg_before": load_average(),
    }

    def run(fn):
        mem = PeakMemory(device)
        with mem.measure():
            sync(device)
            t = time.perf_counter()
            xs = [fn(x[i : i + bs], y[i : i + bs]) for i in range(0, n, bs)]
            sync(device)
            dt = time.perf_counter() - t
        x_adv = torch.cat(xs).detach()
        linf = float((x_adv - x).abs().amax())
        return {
            "seconds": dt,
            "robust_acc": _accuracy(model, x_adv, y, bs),
            "max_linf": linf,
            "peak_mem_mib": mem.peak,
            "mem_kind": mem.kind,
        }

    atk = VirkitAA(eps=args.eps, seed=0)
    out["virkit"] = run(lambda xb, yb: atk(model, xb, yb))
    if torchattacks is not None:
        # torchattacks.AutoAttack builds its components with torchattacks' defaults, 10 steps for
        # APGD-CE, APGD-T and FAB-T, a tenth of the standard AutoAttack budget (100). The reference
        # for the comparison is therefore the same composition at the standard budget; the shipped
        # class is timed too and recorded as such.
        k = test.num_classes
        ta = torchattacks.MultiAttack(
            [
                torchattacks.APGD(model, norm="Linf", eps=args.eps, steps=100, n_restarts=1, loss="ce", seed=0),
                torchattacks.APGDT(model, norm="Linf", eps=args.eps, steps=100, n_restarts=1, n_classes=k, seed=0),
                torchattacks.FAB(
                    model, norm="Linf", eps=args.eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=k, seed=0
                ),
                torchattacks.Square(model, norm="Linf", eps=args.eps, n_queries=5000, n_restarts=1, seed=0),
            ]
        )
        out["torchattacks"] = run(lambda xb, yb: ta(xb, yb))
        out["torchattacks"]["what"] = "MultiAttack(APGD-CE, APGD-T, FAB-T at 100 steps, Square 5000): standard budget"
        out["speedup"] = out["torchattacks"]["seconds"] / out["virkit"]["seconds"]
        out["robust_acc_diff_points"] = 100 * (out["virkit"]["robust_acc"] - out["torchattacks"]["robust_acc"])
        shipped = torchattacks.AutoAttack(model, norm="Linf", eps=args.eps, version="standard", n_classes=k, seed=0)
        out["torchattacks_autoattack_class"] = run(lambda xb, yb: shipped(xb, yb))
        out["torchattacks_autoattack_class"]["what"] = (
            "torchattacks.AutoAttack as shipped: APGD-CE, APGD-T, FAB-T at 10 steps, Square 5000"
        )
    else:
        out["torchattacks"] = {"skipped": ta_skip}
    out["load_avg_after"] = load_average()
    return out


# ---------------------------------------------------------------------------------------------
def markdown_rows(result: dict) -> list[str]:
    date, dev = result["date"][:10], result["env"].get("gpu") or result["env"]["cpu"]
    dev = f"{dev} ({result['env']['torch_threads']} threads)" if result["mode"] == "cpu" else dev
    rows = []
    for r in result["training"]:
        ref = f"{r['reference_img_s']:.1f}" if "reference_img_s" in r else "-"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        mem = f"{r['virkit_peak_mem_mib']:.0f} / {r.get('reference_peak_mem_mib', float('nan')):.0f}"
        rows.append(
            f"| {date} | {dev} | {r['model']} | {r['method']} | {r['virkit_precision']}"
            f"{', channels_last' if r['virkit_channels_last'] else ''}, compile {r['virkit_compile']} | "
            f"{r['virkit_img_s']:.1f} | {ref} | {ratio} | {mem} | {r['load_avg_before']} |"
        )
    aa = result.get("autoattack", {})
    if "virkit" in aa and "seconds" in aa.get("torchattacks", {}):
        rows.append(
            f"| {date} | {dev} | AutoAttack {aa['model']} n={aa['n']} | virkit {aa['virkit']['seconds']:.1f} s "
            f"(robust {100 * aa['virkit']['robust_acc']:.1f}%) | torchattacks "
            f"{aa['torchattacks']['seconds']:.1f} s (robust {100 * aa['torchattacks']['robust_acc']:.1f}%) | "
            f"{aa['speedup']:.2f}x | nat {100 * aa['natural_acc']:.1f}% | {aa['load_avg_before']} |"
        )
        if "seconds" in aa.get("torchattacks_autoattack_class", {}):
            c = aa["torchattacks_autoattack_class"]
            rows.append(
                f"| {date} | {dev} | (torchattacks.AutoAttack as shipped, 10-step APGD/FAB) | | "
                f"{c['seconds']:.1f} s (robust {100 * c['robust_acc']:.1f}%) | "
                f"{c['seconds'] / aa['virkit']['seconds']:.2f}x | | |"
            )
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    p.add_argument(
        "--models",
        type=lambda s: tuple(v for v in s.split(",") if v),
        help="comma-separated (cpu: small-cnn; gpu: resnet18,wrn-34-10)",
    )
    p.add_argument("--methods", type=lambda s: tuple(v for v in s.split(",") if v), default=ALL_METHODS)
    p.add_argument("--steps", type=int, help="measured iterations per loop (split over --rounds)")
    p.add_argument("--warmup", type=int, help="iterations per loop before timing (include compilation)")
    p.add_argument("--rounds", type=int, help="alternating virkit/reference timing rounds")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--step-size", type=float, default=2 / 255)
    p.add_argument("--precision", choices=["fp32", "bf16"], help="virkit loop (cpu: fp32, gpu: bf16)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", dest="compile", action="store_true", default=None)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--ref-workers", type=int, help="DataLoader workers of the reference (cpu 0, gpu 2)")
    p.add_argument("--no-reference", action="store_true", help="time virkit only")
    p.add_argument(
        "--versus-forwards",
        type=int,
        choices=[2],
        help="TRADES-family methods: time virkit's step (3 train-mode forwards, x, x', x, as trades.py) "
        "against the same step with 2 (x', x) in the reference's place, in the same alternating "
        "rounds: the ratio is the third forward's cost",
    )
    p.add_argument("--data", choices=["auto", "cifar10", "synthetic"], default="auto")
    p.add_argument("--data-root", help="as virkit's --data-root (default $VIRKIT_DATA)")
    p.add_argument("--data-n", type=int, help="training images used (cpu 5120, gpu 50000)")
    p.add_argument("--aa-n", type=int, help="AutoAttack test images (cpu 100, gpu 1000; 0 skips)")
    p.add_argument("--aa-batch", type=int)
    p.add_argument("--aa-model", help="model for AutoAttack (default: the first of --models)")
    p.add_argument("--aa-checkpoint", help="virkit checkpoint/run dir for AutoAttack instead of training one here")
    p.add_argument("--aa-train-steps", type=int, help="PGD-AT steps to train the AutoAttack model (cpu 60, gpu 1500)")
    p.add_argument("--aa-train-attack-steps", type=int, help="PGD steps of that training (cpu 3, gpu 10)")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default from --mode)")
    p.add_argument("--json", help="also write the JSON result here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    d = MODE_DEFAULTS[args.mode]
    for k, v in d.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    for m in args.methods:
        if m not in ALL_METHODS:
            p.error(f"--methods: {m!r} is not one of {', '.join(ALL_METHODS)}")
    if args.versus_forwards and not all(m in ("trades", "vir-trades") for m in args.methods):
        p.error("--versus-forwards compares TRADES-family steps: --methods trades and/or vir-trades")
    if args.versus_forwards and args.no_reference:
        p.error("--versus-forwards needs the second loop: drop --no-reference")
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--steps and --rounds must be >= 1, --warmup >= 0")
    args.rounds = min(args.rounds, args.steps)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench.py: --mode gpu needs CUDA, which is not available here; use --mode cpu")
        torch.backends.cudnn.benchmark = True  # both loops
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    train, test, data_note = load_data(args.data, args.data_root, args.data_n, max(args.aa_n, 1))
    train_dev = train.to(device)
    result = {
        "benchmark": "virkit bench.py",
        "mode": args.mode,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else "bench.py " + " ".join(argv),
        "env": environment(device),
        "data": data_note,
        "data_n": len(train),
        "load_avg_start": load_average(),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "training": [],
    }
    for model_name in args.models:
        for method in args.methods:
            r = bench_pair(model_name, method, train_dev, device, args)
            result["training"].append(r)
            ratio = f", ratio {r['ratio']:.2f}x" if "ratio" in r else ""
            print(
                f"[bench] {model_name:10s} {method:10s} virkit {r['virkit_img_s']:8.1f} img/s"
                + (
                    f", {'2 forwards' if args.versus_forwards else 'reference'} {r['reference_img_s']:8.1f} img/s"
                    if "reference_img_s" in r
                    else ""
                )
                + f"{ratio} (load {r['load_avg_before']})",
                file=sys.stderr,
                flush=True,
            )
    try:
        result["autoattack"] = bench_autoattack(args, args.aa_model or args.models[0], train_dev, test, device)
    except Exception as e:
        result["autoattack"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"[bench] AutoAttack part failed: {type(e).__name__}: {e}", file=sys.stderr)
    result["load_avg_end"] = load_average()
    result["seconds"] = time.perf_counter() - t_start
    result["markdown"] = markdown_rows(result)
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    print("\n".join(result["markdown"]), file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
