"""Training configuration: one dataclass, the paper's presets, validation.

All hyperparameters live here with their units and the reason for their value (airbench-style).
Step sizes and eps are fractions of 255 (pixel values in [0, 1]). Epochs are 1-based.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from virkit.data import AUGMENTATIONS, DATASETS
from virkit.errors import VirkitError, check_choice, check_range
from virkit.evaluation.settings import DEFAULT_ATTACKS
from virkit.models import MODELS
from virkit.training.methods import METHODS

__all__ = ["TrainConfig", "PRESETS", "resolve_config", "preset_names", "config_hash", "burnin_key"]


@dataclass
class TrainConfig:
    # --- what -------------------------------------------------------------------------------
    dataset: str = "cifar10"
    model: str = "resnet18"
    method: str = "vir-at"
    seed: int = 0
    data_root: str | None = None  # default: $VIRKIT_DATA or ~/.cache/virkit/data
    train_subset: int | None = None  # seeded class-balanced subset of the training split
    test_subset: int | None = None  # first N of a seeded subset of the test split (final eval)
    holdout: int = 1000  # validation images evaluated every epoch (natural + PGD); best.pt is
    # the best of them. Carved from the training split (fixed seeded,
    # class-balanced draw per dataset; the run trains on the rest)
    holdout_from: str = "train"  # "train" (a validation split: no test image selects best.pt) or
    # "test" (held-out test images, the only choice before commit
    # 61386ed, for runs from then)
    normalize: str = "dataset"  # "dataset": per-channel mean/std inside the model; "none"
    augment: str = "crop-flip"  # training images: "crop-flip" (random crop, zero padding 4, and
    # horizontal flip, as every baseline's code), "flip", or "none"

    # --- optimisation (Sec. 5.1) ----------------------------------------------------------------
    epochs: int = 115  # Sec. 5.1: 115 epochs
    batch_size: int = 128  # Sec. 5.1
    lr: float = 0.01  # Sec. 5.1: 0.01 for ResNet-18 (0.1 for WRN-34-10)
    momentum: float = 0.9  # Sec. 5.1
    weight_decay: float = 3.5e-3  # Sec. 5.1: 3.5e-3 for ResNet-18 (7e-4 for WRN-34-10)
    lr_milestones: tuple = (75, 90)  # lr /10 after epoch 75 and after epoch 90 (Sec. 5.1)
    lr_gamma: float = 0.1
    lr_schedule: str = "step"  # "step": lr * lr_gamma after each milestone (Sec. 5.1), constant
    # within an epoch; "onecycle": per step, linear from 0 to lr over the
    # first lr_peak of training, then linear to 0 at the end (no
    # milestones; short CPU presets converge in a few epochs with it)
    lr_peak: float = 0.3  # onecycle: fraction of training at which lr peaks
    nesterov: bool = False

    # --- training attack (Sec. 5.1): PGD-10, eps 8/255, step 2/255 -----------------------------
    eps: float = 8 / 255
    step_size: float = 2 / 255
    attack_steps: int = 10
    random_start: str | None = None  # None: the method's own (see virkit.training.methods.METHODS)

    # --- reweighting ------------------------------------------------------------------------------
    reweight_start: int | None = None  # first epoch (1-based) with weights != 1; None: the method's
    # own, the first lr milestone + MethodSpec.reweight_delay: 76 of
    # 115 for VIR (Sec. 5.1: "on the 76th epoch"; Algorithm 1 line 12
    # reads "w=1 if epoch <= 76", i.e. 77: set 77 for that reading)
    # and GAIRAT (its code starts at its first lr drop), 77 for MAIL
    # (its code: 0-based epoch > 75)
    alpha: float | None = None  # VIR S_v scale (None: the method's default, Sec. 5.3)
    gamma: float | None = None  # VIR S_v exponent / MAIL slope
    beta: float | None = None  # VIR additive floor / MAIL bias
    trades_beta: float | None = None  # 1/lambda of TRADES, VIR-TRADES, MAIL-TRADES; MART's beta
    gairat_lambda: float = -1.0  # GAIRAT's Lambda (official default -1, 'fixed' schedule)
    weight_logits: str = "eval"  # logits for the weights: "eval" = extra no-grad forwards in eval
    # mode (weights never touch BatchNorm statistics); "train" = the
    # detached training-forward logits (VIR-AT then runs one extra
    # natural forward in train mode)
    weight_norm: str = "none"  # "none" (Algorithm 1 sums w_i * L_i) or "mean1" (batch mean 1)
    batch_reduction: str = "mean"  # "mean": (1/M) sum_i w_i L_i as every baseline's code does, so
    # the lr means the same across methods; "sum": Algorithm 1 literally
    trades_forwards: int = 3  # train-mode forwards per TRADES-family step: 3 (x, x', x) as the
    # official trades.py, so BatchNorm statistics see x twice (cost not
    # measurable, under 3% at PGD-10: BENCHMARKS.md, "TRADES' third
    # forward"); 2 (x', x): virkit's order before commit 5bfc2f1

    # --- engineering ------------------------------------------------------------------------------
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | fp32 | bf16: autocast for training forward/backward and the
    # training attack; evaluation is always fp32. auto: bf16 on a CPU that
    # runs it natively (AMX, AVX512-BF16), fp32 elsewhere (devices.py);
    # config.json records what ran
    channels_last: bool | None = None  # None: auto (on a CPU: yes, oneDNN convs are faster in NHWC)
    compile: bool = False  # torch.compile the model (falls back to eager on failure)
    holdout_pgd_steps: int = 10  # per-epoch held-out robust accuracy: PGD-10, step 2/255
    eval_attacks: tuple = DEFAULT_ATTACKS["Linf"]  # run after training, into eval.json (virkit evaluate's default)
    eval_batch_size: int = 256
    eval_checkpoint: str = "last"  # which checkpoint the final evaluation uses: last | best
    preset: str = "paper"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.reweight_start is None and self.method in METHODS:
            self.reweight_start = default_reweight_start(self.method, self.lr_milestones, self.epochs)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["eval_attacks"] = list(self.eval_attacks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise VirkitError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
        d = dict(d)
        for k in ("lr_milestones", "eval_attacks"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    # resolved method hyperparameters ---------------------------------------------------------
    def hp(self, name: str) -> Any:
        """The value of a method hyperparameter: the explicit setting, else the method default."""
        v = getattr(self, name)
        return METHODS[self.method].defaults.get(name) if v is None else v


def default_reweight_start(method: str, lr_milestones: Sequence[int], epochs: int) -> int:
    """The method's first reweighted epoch: the first lr milestone + ``MethodSpec.reweight_delay``
    (without milestones: 76/115 of the epochs, the paper's fraction)."""
    first = min(lr_milestones) if lr_milestones else round(75 / 115 * epochs)  # onecycle: no milestones
    return int(first) + METHODS[method].reweight_delay


def scaled_schedule(epochs: int) -> dict[str, Any]:
    """The paper's schedule (Sec. 5.1: 115 epochs, lr/10 after 75 and 90, reweighting from 76) scaled
    to ``epochs`` by its fractions, in one place for every scaled preset: milestones
    ``round(75/115 E)`` and ``round(90/115 E)`` (kept distinct), and reweighting from the epoch after
    the first (each method's rule, :func:`default_reweight_start`), i.e. with the first lr drop."""
    m1 = max(1, round(75 / 115 * epochs))
    m2 = max(m1 + 1, round(90 / 115 * epochs))
    return {"epochs": int(epochs), "lr_milestones": (m1, m2) if m2 < epochs else (m1,)}


# Presets: overrides on top of the dataclass defaults. ``paper`` follows Sec. 5.1/5.3; ``quick`` runs
# on 2 CPU cores in a few minutes per method on the CIFAR-10 stand-in.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "paper-wrn": {"model": "wrn-34-10", "lr": 0.1, "weight_decay": 7e-4},  # Sec. 5.1, WRN-34-10
    "quick": {
        "model": "small-cnn",
        "train_subset": 10000,  # 1/5 of CIFAR-10: ~30 s an epoch of PGD-3 AT on 2 cores
        "test_subset": 1000,
        "holdout": 500,
        **scaled_schedule(10),  # 10 epochs: lr/10 after epochs 7 and 8, VIR reweights from epoch 8
        "lr": 0.05,  # the small CNN with BatchNorm tolerates a larger lr than RN-18
        "weight_decay": 5e-4,
        "attack_steps": 3,  # PGD-3 with step 2.5*eps/3 keeps training affordable on a CPU
        "step_size": 2.5 * 8 / 255 / 3,
        "holdout_pgd_steps": 10,
        "eval_attacks": ("natural", "fgsm", "pgd20", "cw"),
    },
    # A CPU regime where AT overfits robustly (issue 25), on one core: validation PGD-20 accuracy peaks
    # and then falls while training adversarial accuracy keeps rising (Rice et al. 2020), so that best.pt
    # (picked on validation) is above last.pt. The quick preset (10 epochs) shows none. Measured (docs/
    # RESULTS.md, "Robust overfitting regime (search)"): here the peak comes in the first lr phase, before
    # the drop, and the reweighted epochs (from the drop on) start from an already overfitted model, unlike
    # the paper's 115 epochs where the peak is at the drop. Units: images, 1-based epochs, fractions of 255.
    "overfit": {
        "model": "small-cnn",  # 0.39M params: fits 2,000 images to 64-68% PGD-5 training accuracy in 40 epochs
        "train_subset": 2000,  # small, so that the model can memorise it within a one-core budget
        "augment": "none",  # crop and flip delay memorisation, i.e. overfitting
        "test_subset": 1000,  # final evaluation: 1,000 class-balanced test images
        "holdout": 500,  # validation images (from the training split) picking best.pt; their
        # PGD-20 costs about as much as the epoch's training
        "holdout_pgd_steps": 20,  # per-epoch validation PGD-20 (step 2/255): the overfitting measure
        **scaled_schedule(40),  # 40 epochs: lr/10 after epochs 26 and 31, VIR reweights from epoch 27
        "batch_size": 64,  # 32 steps an epoch: twice the steps of 128 for the same images
        "lr": 0.05,  # lr / batch as 0.1 at 128
        "weight_decay": 5e-4,
        "attack_steps": 5,  # PGD-5, step 2.5*eps/5 = 4/255: half PGD-10's cost on a CPU
        "step_size": 2.5 * 8 / 255 / 5,
        "eval_attacks": ("natural", "pgd20", "aa"),
    },
    "tiny": {  # tests and notebooks' smoke runs: seconds
        "model": "small-cnn",
        "train_subset": 512,
        "test_subset": 256,
        "holdout": 128,
        "epochs": 2,
        "lr": 0.05,
        "weight_decay": 5e-4,
        "lr_milestones": (2,),
        "reweight_start": 2,
        "attack_steps": 2,
        "step_size": 4 / 255,
        "holdout_pgd_steps": 3,
        "batch_size": 128,
        "eval_attacks": ("natural", "fgsm", "pgd10"),
        # tests compare runs bit for bit and against set tolerances: the same kernels on every CPU
        "precision": "fp32",
        "channels_last": False,
    },
    # The notebooks' budgets: `virkit notebooks run --preset demo` trains every run with this preset,
    # exactly what `virkit train --preset demo` trains. Units: images (subsets), 1-based epochs, step
    # sizes as fractions of 255; everything not named is the dataclass default (eps 8/255, momentum 0.9).
    "demo": {  # `make demo`'s largest tier: all nine notebooks, 9 runs of this, in under 10 minutes on 2 CPU
        # cores that train it fast enough (bf16 on an AVX512-BF16 EPYC; a GPU) (docs/NOTEBOOKS.md: the budgets tried)
        "model": "small-cnn",  # as quick: ResNet-18 is too slow for minutes on a CPU
        "train_subset": 8750,  # 17.5% of CIFAR-10 (class-balanced): 134 steps of 64 an epoch; 10,000 took 10.7 min
        # for the whole demo on an AVX512-BF16 EPYC (bf16), too close to 10
        "augment": "none",  # 8 short epochs fit better without crop and flip: AT at 7,500 images
        # 49.9% / 26.6% (natural / PGD-10) unaugmented, 46.5% / 25.8% crop-flip
        "test_subset": 1000,  # final evaluation: 1,000 class-balanced test images (100 a class)
        "holdout": 200,  # per-epoch validation images (natural accuracy only, see below)
        "holdout_pgd_steps": 0,  # no per-epoch PGD: best.pt = last.pt, one final evaluation
        "epochs": 8,
        "batch_size": 64,  # more steps per image than 128 (measured: +1 point PGD-10 at equal images)
        "lr": 0.1,  # onecycle peak: measured better than 0.2 for this model
        "lr_schedule": "onecycle",  # linear up to 0.1 at 30% of training, then down to 0: converges in 8 epochs
        "lr_milestones": (),  # (onecycle: no milestones) VIR reweights epochs 6-8, MAIL 7-8
        "weight_decay": 5e-4,
        "attack_steps": 2,  # PGD-2, step 4/255: two steps reach the eps = 8/255 ball's surface
        "step_size": 4 / 255,
        "eval_attacks": ("natural", "fgsm", "pgd10"),  # PGD-10 is the notebooks' robust attack here
    },
    "smoke": {  # the test suite's notebook run: seconds per run, models barely trained
        "model": "small-cnn",
        "train_subset": 128,  # two batches of 64 an epoch
        "test_subset": 64,
        "holdout": 32,
        "epochs": 2,  # two, so that epoch 2 reweights (reweight_start 2)
        "batch_size": 64,
        "lr": 0.05,
        "weight_decay": 5e-4,
        "lr_milestones": (2,),
        "reweight_start": 2,
        "attack_steps": 1,  # single-step PGD (step 8/255 = eps): the cheapest attack that moves
        "step_size": 8 / 255,
        "holdout_pgd_steps": 1,
        "eval_attacks": ("natural", "fgsm"),  # FGSM is the notebooks' robust attack here
        "precision": "fp32",
        "channels_last": False,  # the same kernels on every CPU (tests)
    },
}

# The demo's smaller tiers (`make demo` picks the largest this machine finishes in 10 minutes, by measurement:
# virkit.notebooks.presets.choose_demo_tier): everything as demo but the training images a run.
PRESETS["demo-mid"] = {**PRESETS["demo"], "train_subset": 5000}  # 79 steps of 64 an epoch
PRESETS["demo-lite"] = {**PRESETS["demo"], "train_subset": 2500}  # 40 steps of 64 an epoch; weaker models
PRESETS["demo-min"] = {**PRESETS["demo"], "train_subset": 1500}  # 24 steps of 64 an epoch; weakest

# Paper-scale per-dataset/model adjustments (Sec. 5.1 and 5.3)
_MODEL_HP = {"wrn-34-10": {"lr": 0.1, "weight_decay": 7e-4}, "wrn-28-10": {"lr": 0.1, "weight_decay": 7e-4}}


def preset_names() -> list[str]:
    return list(PRESETS)


#: settings added after runs were recorded: left out of the hashes while they hold these values, so
#: older runs keep their config hash (and reuse / resume / burn-in sharing keep finding them)
_QUIET_DEFAULTS = {"lr_schedule": "step", "lr_peak": 0.3, "augment": "crop-flip"}


def _without_quiet_defaults(d: dict) -> dict:
    return {k: v for k, v in d.items() if not (k in _QUIET_DEFAULTS and v == _QUIET_DEFAULTS[k])}


def config_hash(cfg: TrainConfig | dict) -> str:
    """A short hash of the settings that change the result (not device, paths or eval options)."""
    import hashlib

    d = _without_quiet_defaults(cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg))
    # num_workers: a field of older configs (data lives on the device), dropped from their hash too
    for k in ("device", "data_root", "eval_attacks", "eval_batch_size", "eval_checkpoint", "num_workers", "compile"):
        d.pop(k, None)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


#: settings that only act once reweighting starts (or not on training at all): two configs that agree
#: on everything else train epochs 1 .. reweight_start-1 identically
_AFTER_BURNIN = (
    "method",
    "alpha",
    "beta",
    "gamma",
    "gairat_lambda",
    "weight_logits",
    "weight_norm",
    "reweight_start",
    "epochs",
    "preset",
    "extra",
)


def burnin_key(cfg: TrainConfig) -> str:
    """A short hash of everything that shapes epochs 1 .. ``reweight_start - 1``: the training
    pipeline of the method (family, attack loss, resolved random start, 1/lambda), seed, data,
    model, schedule, attack, precision. Runs with the same key share their burn-in
    (:func:`virkit.training.trainer.train` with ``branch_from``). VIR-AT, its ablations and controls and
    MAIL-AT follow the AT pipeline with the 0.001 N(0, I) start (``vir-at-w1``), GAIRAT the one with
    the uniform start (``at``); VIR-TRADES and MAIL-TRADES (1/lambda 5) share with each other."""
    import hashlib

    spec = METHODS[cfg.method]
    d = {k: v for k, v in _without_quiet_defaults(cfg.to_dict()).items() if k not in _AFTER_BURNIN}
    d.update(
        family=spec.family,
        attack_loss=spec.attack_loss,
        random_start=cfg.random_start or spec.random_start,
        trades_beta=cfg.hp("trades_beta") if spec.family in ("trades", "mart") else None,
    )
    for k in ("device", "data_root", "eval_attacks", "eval_batch_size", "eval_checkpoint", "compile"):
        d.pop(k, None)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def resolve_config(preset: str = "paper", **overrides: Any) -> TrainConfig:
    """Dataclass defaults <- preset <- model-specific paper values <- explicit overrides; validated.

    ``overrides`` with value ``None`` are ignored (so CLI flags left unset keep the preset's value).
    """
    check_choice("preset", preset, PRESETS)
    values: dict[str, Any] = dict(PRESETS[preset])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    model = overrides.get("model", values.get("model", TrainConfig.model))
    if preset.startswith("paper"):
        for k, v in _MODEL_HP.get(model, {}).items():
            values.setdefault(k, v)
        if overrides.get("dataset") == "tiny-imagenet" and overrides.get("method", "vir-at") == "vir-at":
            values.setdefault("gamma", 3.0)  # Sec. 5.3: gamma=3 for Tiny-ImageNet with VIR-AT
        if model.startswith("wrn") and overrides.get("method") in ("trades",):
            values.setdefault("trades_beta", 6.0)  # Sec. 5.3: 1/lambda = 6 for WRN-34-10 TRADES
    values.update(overrides)
    if overrides.get("lr_schedule") == "onecycle" and "lr_milestones" not in overrides:
        values["lr_milestones"] = ()  # a step preset's milestones do not apply to onecycle
    values["preset"] = preset
    cfg = TrainConfig.from_dict(values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every value; raise :class:`VirkitError` naming the bad one and the valid range."""
    check_choice("dataset", cfg.dataset, DATASETS)
    check_choice("model", cfg.model, MODELS)
    check_choice("method", cfg.method, METHODS)
    check_choice("precision", cfg.precision, ["auto", "fp32", "bf16"])
    check_choice("normalize", cfg.normalize, ["dataset", "none"])
    check_choice("augment", cfg.augment, AUGMENTATIONS)
    check_choice("weight_logits", cfg.weight_logits, ["eval", "train"])
    check_choice("weight_norm", cfg.weight_norm, ["none", "mean1"])
    check_choice("batch_reduction", cfg.batch_reduction, ["mean", "sum"])
    check_choice("eval_checkpoint", cfg.eval_checkpoint, ["last", "best"])
    check_choice("holdout_from", cfg.holdout_from, ["train", "test"])
    if cfg.trades_forwards not in (2, 3):
        raise VirkitError(
            f"trades_forwards={cfg.trades_forwards} must be 2 or 3 (3: x, x', x as the official trades.py)"
        )
    if cfg.random_start is not None:
        check_choice("random_start", cfg.random_start, ["uniform", "normal", "none"])
    check_range("epochs", cfg.epochs, 1, 10000)
    check_range("batch_size", cfg.batch_size, 1, 65536)
    check_range("lr", cfg.lr, 0.0, 10.0, low_open=True)
    check_range("momentum", cfg.momentum, 0.0, 1.0, high_open=True)
    check_range("weight_decay", cfg.weight_decay, 0.0, 1.0)
    check_range("eps", cfg.eps, 0.0, 1.0, hint=" (eps is a fraction of the [0,1] pixel range: 8/255 = 0.0314)")
    check_range("step_size", cfg.step_size, 0.0, 1.0, low_open=True, hint=" (e.g. 2/255 = 0.00784)")
    check_range("attack_steps", cfg.attack_steps, 0, 1000)
    check_range("holdout", cfg.holdout, 0, 10**7)
    check_range("seed", cfg.seed, 0, 2**31 - 1)
    if cfg.train_subset is not None:
        check_range("train_subset", cfg.train_subset, 1, 10**8)
    if cfg.test_subset is not None:
        check_range("test_subset", cfg.test_subset, 1, 10**8)
    for m in cfg.lr_milestones:
        check_range("lr_milestones", m, 1, 10000)
    check_choice("lr_schedule", cfg.lr_schedule, ("step", "onecycle"))
    if cfg.lr_schedule == "onecycle" and cfg.lr_milestones:
        raise VirkitError(
            f"lr_milestones {list(cfg.lr_milestones)} do not apply to the onecycle schedule; "
            "pass --lr-milestones '' with --lr-schedule onecycle (or use --lr-schedule step)"
        )
    check_range("lr_peak", cfg.lr_peak, 0.0, 1.0, low_open=True, high_open=True)
    if cfg.reweight_start > cfg.epochs and METHODS[cfg.method].reweighted:
        raise VirkitError(
            f"reweight_start={cfg.reweight_start} is after the last epoch ({cfg.epochs}), so the "
            f"method {cfg.method!r} would never reweight; use --reweight-start <= {cfg.epochs}"
        )
    check_range("reweight_start", cfg.reweight_start, 1, 10000)
    for name, low, high in (("alpha", 0.0, 1e4), ("gamma", 0.0, 1e3), ("beta", -1e3, 1e3), ("trades_beta", 0.0, 1e3)):
        v = cfg.hp(name)
        if v is not None:
            check_range(name, v, low, high)
    from virkit.attacks import attack_names

    valid_attacks = attack_names()
    for a in cfg.eval_attacks:
        check_choice("attack", a, valid_attacks)
    return cfg
