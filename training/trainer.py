"""The one trainer every method uses: TrainConfig + Trainer(recipe, config).fit().

It owns seeding, device and process group, data order, optimizer, LR schedule, AMP, gradient clipping, EMA,
logging, time budget and checkpoints. Resuming restores every piece of state that affects the numbers (weights,
optimizer, scheduler, scaler, EMA, each rank's RNG streams, the loss generator and the position in the epoch),
so k steps + resume to N gives the same weights as N steps straight (CPU, num_workers=0).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import math
import random
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from MedDiffusionExtension import device as devices
from MedDiffusionExtension.errors import InputError

from .checkpoint import (
    capture_rng_state, checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, resolve_checkpoint,
    restore_rng_state, save_checkpoint,
)
from .data.slices import preparing_share
from .distributed import (
    DEFAULT_TIMEOUT_MINUTES, DistContext, any_rank, barrier, broadcast_from_main, gather_objects, init_distributed,
    mean_over_ranks, shutdown,
)
from .ema import build_ema
from .logs import RunLogger
from .recipes import Recipe
from .schedules import SCHEDULES, build_scheduler, schedule_factor

AMP_MODES = ("auto", "off", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw")


@dataclass
class TrainConfig:
    out_dir: str = field(metadata={"help": "folder for checkpoints, logs and TensorBoard events"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer updates to reach (counted across resumes)"})
    time_budget: float | None = field(
        default=None, metadata={"help": "seconds this invocation may run; then it checkpoints and stops"}
    )
    fit_to_budget: int = field(
        default=0,
        metadata={"help": "after this many steps, measure the step rate and lower --max-steps (and the LR decay with "
                          "it) to what fits in --time-budget, so the schedule ends with the budget on any machine; a "
                          "resume keeps the fitted count (resume without it to set another) (0: off)"},
    )
    batch_size: int = field(default=8, metadata={"help": "items per process per step"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=0.0, metadata={"help": "floor the linear/cosine decay ends at"})
    weight_decay: float = 0.0
    optimizer: str = field(default="adamw", metadata={"help": "adam | adamw"})
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = field(default=0, metadata={"help": "linear LR warm-up updates"})
    lr_schedule: str = field(default="constant", metadata={"help": "constant | linear | cosine"})
    schedule_steps: int | None = field(
        default=None, metadata={"help": "length of the LR decay (default: max_steps)"}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "max global gradient norm (0: off)"})
    ema_decay: float = field(default=0.0, metadata={"help": "EMA decay per update (0: no EMA)"})
    amp: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on GPUs of compute capability 8.0+, fp16 on older ones, off elsewhere) | off | bf16 "
                          "| fp16"},
    )
    seed: int = 0
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes per rank"})
    log_every: int = field(default=10, metadata={"help": "steps between log rows"})
    ckpt_every: int = field(default=1000, metadata={"help": "steps between checkpoints (one is always written at the end)"})
    keep_checkpoints: int = field(default=3, metadata={"help": "newest checkpoints kept (0: all)"})
    val_every: int = field(default=0, metadata={"help": "steps between validation losses (0: off)"})
    val_batches: int = field(default=8, metadata={"help": "batches per validation"})
    resume: str | None = field(default=None, metadata={"help": "checkpoint path, or 'auto' for the latest in out_dir"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N | mps"})
    dist_timeout: float = field(
        default=DEFAULT_TIMEOUT_MINUTES, metadata={"help": "minutes a rank may wait for the others under torchrun"}
    )
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar on rank 0"})

    def validate(self) -> None:
        checks = [
            (self.max_steps >= 0, "--max-steps must be >= 0"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.lr > 0, "--lr must be > 0"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.lr_schedule in SCHEDULES, f"--lr-schedule must be one of {', '.join(SCHEDULES)}"),
            (self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}"),
            (0 <= self.ema_decay < 1, "--ema-decay must be in [0, 1)"),
            (self.grad_clip >= 0, "--grad-clip must be >= 0"),
            (self.log_every >= 1 and self.ckpt_every >= 1, "--log-every and --ckpt-every must be >= 1"),
            (self.warmup_steps >= 0 and self.num_workers >= 0, "--warmup-steps and --num-workers must be >= 0"),
            (self.time_budget is None or self.time_budget > 0, "--time-budget must be > 0 seconds"),
            (self.fit_to_budget == 0 or self.fit_to_budget >= 2, "--fit-to-budget must be 0 (off) or >= 2 steps"),
            (not self.fit_to_budget or self.time_budget is not None, "--fit-to-budget needs a --time-budget to fit"),
            (not self.fit_to_budget or self.schedule_steps is None,
             "--fit-to-budget sets the decay length itself: leave out --schedule-steps"),
            (self.dist_timeout > 0, "--dist-timeout must be > 0 minutes"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)


@dataclass
class TrainResult:
    step: int
    checkpoint: Path | None
    stopped_by: str  # "max_steps" or "time_budget"
    wall_seconds: float


class _RecipeLoss(nn.Module):
    """Model and recipe loss as one module, so DistributedDataParallel's forward sees every use of the parameters."""

    def __init__(self, recipe: Recipe, model: nn.Module):
        super().__init__()
        self.model = model
        self.recipe = recipe

    def forward(self, batch: Any, generator: torch.Generator):
        return self.recipe.loss(self.model, batch, generator)


class _ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle per epoch) that can start an epoch part-way, after the consumed items."""

    start_index = 0

    def set_position(self, epoch: int, start_index: int) -> None:
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start_index, None)

    def __len__(self) -> int:
        return max(0, super().__len__() - self.start_index)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, None for full precision (the same choice as inference's precision, `off` being fp32)."""
    return devices.autocast_dtype(device, "fp32" if amp == "off" else amp)


def _window_mean(values: list) -> torch.Tensor:
    """Mean of one log window's values as a float64 host scalar (NaN when empty).

    Device tensors are summed in float32 where they live and cross to the host once: MPS has no float64.
    """
    if not values:
        return torch.tensor(math.nan, dtype=torch.float64)
    tensors = [v.detach().reshape(()).float() for v in values if isinstance(v, torch.Tensor)]
    total = torch.tensor(math.fsum(float(v) for v in values if not isinstance(v, torch.Tensor)), dtype=torch.float64)
    for device in {t.device for t in tensors}:
        total += torch.stack([t for t in tensors if t.device == device]).sum().cpu().to(torch.float64)
    return total / len(values)


def _stream_seed(*parts: int) -> int:
    """One 63-bit seed per (seed, rank, ...) so that ranks and epochs draw independent streams."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2**63)
    return value


class Trainer:
    """Trainer(recipe, config).fit() -> TrainResult. After fit, .model, .ema, .optimizer, .scheduler stay inspectable."""

    clock = staticmethod(time.monotonic)  # replaceable so tests can drive the time budget deterministically

    def __init__(self, recipe: Recipe, config: TrainConfig, command: str | None = None):
        config.validate()
        self.recipe = recipe
        self.config = config
        self.command = command or shlex.join([Path(sys.executable).name, *sys.argv])
        self.out_dir = Path(config.out_dir)
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self._wall_before = 0.0  # wall seconds of earlier invocations of this run
        self._saved_step: int | None = None
        self._iterator = None
        self.model: nn.Module | None = None
        self.resumed_from: Path | None = None
        self._fitted = False  # --fit-to-budget has set this run's step count
        self.ema = None
        self.logger: RunLogger | None = None

    # ---- set-up -------------------------------------------------------------------------------------------------

    def _resume_state(self) -> dict[str, Any] | None:
        resume, ctx = self.config.resume, self.ctx
        if not resume:
            # A fresh run would mix its checkpoints with an earlier run's (export takes the highest step, pruning
            # the oldest): refuse rather than lose either.
            earlier = latest_checkpoint(self.out_dir) if ctx.is_main else None
            earlier = broadcast_from_main(ctx, None if earlier is None else str(earlier))
            if earlier is not None:
                raise InputError(f"{self.out_dir} already holds an earlier run's checkpoints ({Path(earlier).name}): "
                                 "pass --resume auto to continue it, or another --out-dir")
            return None
        # Rank 0 decides for everyone: only rank 0 writes checkpoints, so with node-local out dirs the other
        # nodes' folders hold none (or stale ones), and ranks resolving `auto` each for itself would start at
        # different steps and hang in the first collective.
        choice = None
        if ctx.is_main:
            path = latest_checkpoint(self.out_dir) if resume == "auto" else resolve_checkpoint(resume)
            choice = None if path is None else (str(path), path.stat().st_size)
        choice = broadcast_from_main(ctx, choice)
        if choice is None:
            return None  # 'auto' on a fresh out dir starts from scratch
        path, size = Path(choice[0]), choice[1]
        readable = path.is_file() and path.stat().st_size == size
        state = load_checkpoint(path) if ctx.is_main or readable else None
        if ctx.distributed and not all(gather_objects(ctx, readable)):
            # Some rank cannot read rank 0's file (node-local storage): rank 0 sends the checkpoint itself.
            sent = broadcast_from_main(ctx, state if ctx.is_main else None)
            state = state if readable else sent
        self.resumed_from = path
        if state["recipe"]["name"] != self.recipe.name:
            trained_with = state["recipe"]["name"]
            raise InputError(f"{path} was trained with recipe {trained_with!r}; pass --recipe {trained_with}")
        saved = state["recipe"]["config"]
        changed = sorted(k for k in saved if k in self.recipe.config and saved[k] != self.recipe.config[k])
        if changed and self.ctx.is_main:
            warnings.warn(f"resuming with recipe options changed from the checkpoint: {', '.join(changed)}", stacklevel=3)
        # Values measured by on_start on the first run live only in the checkpoint's config.
        self.recipe.config.update({k: v for k, v in saved.items() if k not in self.recipe.config})
        return state

    def _build_data(self) -> None:
        cfg, ctx = self.config, self.ctx
        if ctx.distributed:
            # Every rank prepares its share of the slice cache first; building the datasets then finds nearly
            # everything cached (a rank that is done early takes over what is left). No rank waits in a collective
            # while the cache is built, so the process group's timeout need not cover preparing a whole dataset.
            with preparing_share(ctx.rank, ctx.world_size):
                self.recipe.train_dataset()
                if cfg.val_every:
                    self.recipe.val_dataset()
        dataset = self.recipe.train_dataset()
        val = self.recipe.val_dataset() if cfg.val_every else None
        self.data_description = self.recipe.describe_data(dataset)
        self.sampler = _ResumableSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed)
        # The loader's own generator (reseeded per epoch) keeps iterator creation off the global RNG.
        self.loader_generator = torch.Generator()
        self.loader = DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=True, num_workers=cfg.num_workers,
            collate_fn=self.recipe.collate_fn, pin_memory=ctx.device.type == "cuda",
            persistent_workers=cfg.num_workers > 0, generator=self.loader_generator,
        )
        self.batches_per_epoch = len(self.loader)
        if self.batches_per_epoch == 0:
            raise InputError(
                f"training set has {len(dataset)} items, too few for batch size {cfg.batch_size} x {ctx.world_size} "
                "process(es); lower --batch-size or add data"
            )
        self.val_loader = None
        if val is not None and len(val):
            val_sampler = DistributedSampler(val, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False)
            self.val_loader = DataLoader(
                val, batch_size=cfg.batch_size, sampler=val_sampler, num_workers=cfg.num_workers,
                collate_fn=self.recipe.collate_fn,
            )

    def _setup(self) -> None:
        cfg, ctx = self.config, self.ctx
        seed_everything(cfg.seed)  # same on every rank: identical initial weights
        state = self._resume_state()

        model = self.recipe.build_model().to(ctx.device)
        trainable = list(self.recipe.trainable_parameters(model))
        if not trainable:
            raise InputError(f"recipe {self.recipe.name} leaves no trainable parameters")
        chosen = {id(p) for p in trainable}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in chosen)
        model.train()
        self.model, self.trainable = model, trainable
        self._gradients_checked = False
        self._build_data()

        if state is None:
            measured = self.recipe.on_start(model, self.loader)
            self.recipe.config.update(broadcast_from_main(ctx, measured or {}))
        # DDP broadcasts rank 0's parameters and buffers, including any set by on_start.
        loss_module = _RecipeLoss(self.recipe, model)
        self.train_module = (
            DistributedDataParallel(
                loss_module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=self.recipe.find_unused_parameters,
            )
            if ctx.distributed else loss_module
        )

        optimizer_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer_class(trainable, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, **self._schedule(cfg.schedule_steps or cfg.max_steps))
        self.amp_dtype = resolve_amp(cfg.amp, ctx.device)
        if self.amp_dtype is not None and ctx.device.type == "mps":
            raise InputError("mixed precision training is not supported on Apple MPS; use --amp off")
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = build_ema(model, cfg.ema_decay)
        # On the CPU whatever the device: recipes draw noise there and move it (the same stream on CPU and GPU).
        self.generator = torch.Generator()

        if state is None:
            # Per-rank streams: ranks must not draw the same noise or dropout masks.
            seed_everything(_stream_seed(cfg.seed, ctx.rank, 1))
            self.generator.manual_seed(_stream_seed(cfg.seed, ctx.rank, 2))
        else:
            self._load_state(state)

    def _load_state(self, state: dict[str, Any]) -> None:
        ctx = self.ctx
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            elif ctx.is_main:
                warnings.warn("checkpoint has no EMA; the EMA starts from the resumed weights", stacklevel=3)
        self.step, self.epoch = state["step"], state["epoch"]
        self._wall_before = float(state["wall_seconds"])
        saved = state.get("train_config") or {}
        if self.config.fit_to_budget and saved.get("fit_to_budget") and saved["max_steps"] < self.config.max_steps:
            # The fit happens once per run: a resume (after a pre-emption, say) ends the decay fitted before.
            self.config.max_steps = int(saved["max_steps"])
            self.config.warmup_steps = int(saved.get("warmup_steps", self.config.warmup_steps))
            self.scheduler.lr_lambdas[0] = schedule_factor(**self._schedule(self.config.max_steps))
            self._fitted = True
        self._saved_step = self.step
        position = state["data_position"]
        consumed = position["batches_in_epoch"] * position["batch_size"] * position["world_size"]
        # Same per-step global batch: exact; otherwise the nearest batch boundary of the new layout.
        self.batches_in_epoch = consumed // (self.config.batch_size * ctx.world_size)
        if state["world_size"] == ctx.world_size:
            restore_rng_state(state["rng"][ctx.rank], self.generator, ctx.device)
        else:
            if ctx.is_main:
                warnings.warn(
                    f"checkpoint was written by {state['world_size']} process(es), this run has {ctx.world_size}: "
                    "RNG streams are reseeded, so the run continues but is not bit-identical", stacklevel=3,
                )
            seed_everything(_stream_seed(self.config.seed, ctx.rank, 1, self.step))
            self.generator.manual_seed(_stream_seed(self.config.seed, ctx.rank, 2, self.step))

    # ---- the loop -----------------------------------------------------------------------------------------------

    def _next_batch(self) -> Any:
        while True:
            if self._iterator is None:
                self.sampler.set_position(self.epoch, self.batches_in_epoch * self.config.batch_size)
                self.loader_generator.manual_seed(_stream_seed(self.config.seed, self.ctx.rank, 3, self.epoch))
                # Augmented datasets draw per (item, epoch): a resumed run repeats no earlier epoch's draws.
                getattr(self.loader.dataset, "set_epoch", lambda epoch: None)(self.epoch)
                self._iterator = iter(self.loader)
            try:
                batch = next(self._iterator)
            except StopIteration:
                self.epoch, self.batches_in_epoch, self._iterator = self.epoch + 1, 0, None
                continue
            self.batches_in_epoch += 1
            return batch

    def _autocast(self):
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _check_gradients(self) -> None:
        """Trainable parameters the loss never uses would stop DistributedDataParallel at its second iteration
        ("Expected to have finished reduction..."): name them at the first step, with or without torchrun."""
        if self.recipe.find_unused_parameters:
            return
        unused = [name for name, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        if unused:
            shown = ", ".join(unused[:4]) + (f" and {len(unused) - 4} more" if len(unused) > 4 else "")
            raise RuntimeError(
                f"recipe {self.recipe.name}: trainable parameter(s) {shown} got no gradient; leave them out of "
                "trainable_parameters(), or set find_unused_parameters = True if they sit out only some steps"
            )

    def _train_step(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor, bool]:
        """One update; returns the loss, the recipe's metrics, the gradient norm and whether the update was skipped
        (fp16: GradScaler skips steps whose scaled gradients overflowed, expected now and then and at the start)."""
        self.optimizer.zero_grad(set_to_none=True)
        batch = to_device(batch, self.ctx.device)
        with self._autocast():
            loss, metrics = self.train_module(batch, self.generator)
        self._lr_used = self.optimizer.param_groups[0]["lr"]
        self.scaler.scale(loss).backward()
        if not self._gradients_checked:
            self._check_gradients()
            self._gradients_checked = True
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip or math.inf)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # The scaler lowers its scale exactly when it skipped the step (GradScaler.step already synchronized).
        skipped = scale is not None and self.scaler.get_scale() < scale
        if not skipped:
            self.scheduler.step()  # the schedule counts updates made, not attempted
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        return loss.detach().float(), metrics, grad_norm.detach().float(), skipped

    def _elapsed(self) -> float:
        return self.clock() - self._start

    def _schedule(self, total_steps: int) -> dict:
        cfg = self.config
        return dict(schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps, total_steps=total_steps, base_lr=cfg.lr,
                    min_lr=cfg.min_lr)

    # Of the steps before --fit-to-budget, the first half warm up (CUDA kernels chosen, data workers started) and are
    # not timed; the rate is that of the second half. What the measured rate promises is kept at 95%.
    FIT_MARGIN = 0.95
    FIT_MAX_WARMUP = 0.2  # a fitted run shorter than 5x its warm-up gets a fifth of its steps as warm-up

    def _fit_to_budget(self, first_step: int, timed_from: float) -> None:
        """Lower max_steps (and the decay length) to what the step rate measured since timed_from fits in the time
        left; every rank takes rank 0's answer. Never raises max_steps."""
        cfg = self.config
        timed_steps = self.step - first_step - cfg.fit_to_budget // 2
        seconds_per_step = (self._elapsed() - timed_from) / max(1, timed_steps)
        left = cfg.time_budget - self._elapsed()
        fitted = self.step + max(1, int(self.FIT_MARGIN * left / max(seconds_per_step, 1e-9)))
        fitted = int(broadcast_from_main(self.ctx, {"max_steps": fitted})["max_steps"])
        self._fitted = True
        if fitted < cfg.max_steps:
            cfg.max_steps = fitted
            if cfg.warmup_steps > self.FIT_MAX_WARMUP * fitted:
                cfg.warmup_steps = int(self.FIT_MAX_WARMUP * fitted)
                if self.ctx.is_main:
                    print(f"fit to the time budget: warm-up shortened to {cfg.warmup_steps} steps", file=sys.stderr)
            factor = self.scheduler.lr_lambdas[0] = schedule_factor(**self._schedule(fitted))
            for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
                group["lr"] = base_lr * factor(self.scheduler.last_epoch)  # the next update already on the new decay
        if self.progress is not None:
            self.progress.total = cfg.max_steps
            self.progress.refresh()
        if self.ctx.is_main:
            print(f"fit to the time budget: {1 / max(seconds_per_step, 1e-9):.2f} steps/s over {timed_steps} steps, "
                  f"{left:.0f} s left: max_steps {cfg.max_steps}", file=sys.stderr, flush=True)

    def _log_window(self, window: dict[str, list]) -> None:
        if not window["loss"]:
            return
        names = sorted(n for n in window if n != "skipped")
        means = mean_over_ranks(self.ctx, torch.stack([_window_mean(window[n]) for n in names])).tolist()
        values = dict(zip(names, means))
        skipped = sum(window["skipped"])
        # With fp16, skipped steps' gradients overflowed by design and count in no mean: grad_norm is that of the
        # updates made (NaN if the scaler skipped the whole window); every other value must be finite.
        checked = {k: v for k, v in values.items() if not (k == "grad_norm" and self.scaler.is_enabled())}
        if not all(math.isfinite(v) for v in checked.values()):
            raise FloatingPointError(f"loss is not finite at step {self.step} ({values}); lower --lr or use --amp off")
        row = {
            "loss": values.pop("loss"),
            "lr": self._lr_used,  # the rate of the update just made, not of the next one
            "items": self.step * self.config.batch_size * self.ctx.world_size,
            "seconds": round(self._wall_before + self._elapsed(), 3),
            "grad_norm": values.pop("grad_norm"),
            **({"skipped_steps": skipped} if self.scaler.is_enabled() else {}),
            **values,
        }
        self.logger.log("train", self.step, row)
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.2e}")
        for values_list in window.values():
            values_list.clear()

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean recipe loss over up to val_batches validation batches (EMA weights when on), with fixed noise."""
        if self.val_loader is None:
            return None
        model = self.ema.module if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(_stream_seed(self.config.seed, self.ctx.rank, 4))
        total, count = torch.zeros((), dtype=torch.float64), 0
        # fork_rng: dropout-free eval should not draw, but a recipe might; training streams must not move.
        with torch.random.fork_rng(devices=[self.ctx.device] if self.ctx.device.type == "cuda" else []):
            for batch in itertools.islice(self.val_loader, self.config.val_batches):
                with self._autocast():
                    loss, _ = self.recipe.loss(model, to_device(batch, self.ctx.device), generator)
                total += loss.detach().float().cpu().to(torch.float64)  # float64 on the host only (MPS has none)
                count += 1
        model.train(was_training)
        mean = mean_over_ranks(self.ctx, torch.stack([total, torch.tensor(float(count), dtype=torch.float64)]))
        value = float(mean[0] / max(mean[1].item(), 1))
        self.logger.log("val", self.step, {"loss": value})
        return value

    def save(self) -> Path:
        """Checkpoint now (a collective: every rank contributes its RNG state; rank 0 writes)."""
        ctx = self.ctx
        rng = gather_objects(ctx, capture_rng_state(self.generator, ctx.device))
        path = checkpoint_path(self.out_dir, self.step)
        if ctx.is_main:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "data_position": {
                    "batches_in_epoch": self.batches_in_epoch,
                    "batch_size": self.config.batch_size,
                    "world_size": ctx.world_size,
                },
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "recipe": {"name": self.recipe.name, "config": self.recipe.config},
                "train_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.config).items()},
                "command": self.command,
                "world_size": ctx.world_size,
                "device": str(ctx.device) if ctx.device.type != "cuda" else f"cuda ({devices.CUDA.name(ctx.device.index)})",
                "data": self.data_description,
                "wall_seconds": self._wall_before + self._elapsed(),
            }
            save_checkpoint(state, path)
            prune_checkpoints(self.out_dir, self.config.keep_checkpoints)
        barrier(ctx)
        self._saved_step = self.step
        return path

    def _stop_reason(self) -> str | None:
        if self.step >= self.config.max_steps:
            return "max_steps"
        if self.config.time_budget is None:
            return None  # no collective and no host sync per step unless there is a budget to agree on
        over_budget = self._elapsed() > self.config.time_budget
        return "time_budget" if any_rank(self.ctx, over_budget) else None

    def fit(self) -> TrainResult:
        self._start = self.clock()
        self.ctx: DistContext = init_distributed(self.config.device, self.config.dist_timeout)
        self.progress = None
        try:
            self._setup()
            cfg = self.config
            self.logger = RunLogger(self.out_dir, enabled=self.ctx.is_main, resume_step=self.step)
            if self.ctx.is_main and cfg.progress:
                self.progress = tqdm(total=cfg.max_steps, initial=self.step, desc=f"train {self.recipe.name}", dynamic_ncols=True)
            window: dict[str, list] = {"loss": [], "grad_norm": [], "skipped": []}
            checkpoint = None
            first_step, timed_from = self.step, None
            while (stopped_by := self._stop_reason()) is None:
                loss, metrics, grad_norm, skipped = self._train_step(self._next_batch())
                self.step += 1
                if cfg.fit_to_budget and not self._fitted and self.step - first_step in (cfg.fit_to_budget // 2,
                                                                                         cfg.fit_to_budget):
                    if self.ctx.device.type == "cuda":
                        torch.cuda.synchronize(self.ctx.device)  # the steps queued so far count in the time
                    if self.step - first_step == cfg.fit_to_budget:
                        self._fit_to_budget(first_step, timed_from)
                    else:
                        timed_from = self._elapsed()
                window["loss"].append(loss)
                window["skipped"].append(skipped)
                if not skipped:
                    window["grad_norm"].append(grad_norm)
                for name, value in metrics.items():
                    window.setdefault(name, []).append(value.detach() if isinstance(value, torch.Tensor) else value)
                if self.progress is not None:
                    self.progress.update(1)
                if self.step % cfg.log_every == 0:
                    self._log_window(window)
                if cfg.val_every and self.step % cfg.val_every == 0:
                    self.validate()
                if self.step % cfg.ckpt_every == 0:
                    checkpoint = self.save()
            self._log_window(window)
            if cfg.fit_to_budget and not self._fitted and stopped_by == "time_budget" and self.ctx.is_main:
                print(f"the time budget ran out before step {cfg.fit_to_budget} of --fit-to-budget: the schedule was "
                      "not fitted (lower --fit-to-budget or raise --time-budget)", file=sys.stderr, flush=True)
            if self._saved_step != self.step:
                checkpoint = self.save()
            elif checkpoint is None:
                checkpoint = self.resumed_from  # resumed at max_steps: nothing new to write
            return TrainResult(self.step, checkpoint, stopped_by, self._wall_before + self._elapsed())
        finally:
            if self.progress is not None:
                self.progress.close()
            if self.logger is not None:
                self.logger.close()
            self._release_ddp()
            shutdown(self.ctx)

    def _release_ddp(self) -> None:
        """Drop the DDP wrapper before the process group ends. The wrapper holds the group: left to the interpreter's
        exit, gloo's threads are torn down with it after Python is half gone, which can abort a rank (SIGABRT) after
        a run that finished and saved."""
        wrapper = getattr(self, "train_module", None)
        if isinstance(wrapper, DistributedDataParallel):
            self.train_module = wrapper.module
            del wrapper
            gc.collect()  # the wrapper sits in reference cycles (hooks), which refcounting alone does not free
