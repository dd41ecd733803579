"""Training speed of the main recipe's model with 1 vs 2 torch threads, idle and next to a CPU hog.

    python benchmarks/bench_threads.py                       # pro_scale.yaml, threads 1 and 2
    python benchmarks/bench_threads.py --threads 1 2 4 --steps 10 --budget-s 40

Each measurement runs in its own process (``OMP_NUM_THREADS`` = ``--threads`` there): the recipe
is built by the CLI (:class:`segblocks.lightning.cli.SegblocksCLI`, no logger, no checkpoints, no
validation), trains ``--warmup`` steps, then times up to ``--steps`` training steps, stopping early
after ``--budget-s`` seconds. "Contended" runs start one CPU-bound competitor process (a pure
Python busy loop, killed after the measurement and bounded by a deadline in any case), i.e. the
situation of a shared machine. The table gives it/s and the ratios; the CLI's default thread
count (:func:`segblocks.lightning.cli.default_num_threads`) is chosen from such figures. The
machine's load average is printed: figures from a machine that is not otherwise idle are lower.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HOG = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def worker(ns: argparse.Namespace) -> None:
    """One measurement in this process; prints one JSON line."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import torch
    from lightning.pytorch import Callback, LightningDataModule, LightningModule

    from segblocks.lightning.cli import SegblocksCLI, expand_config_args

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.times.append(time.perf_counter() - self.start)
            measured = self.times[ns.warmup:]
            if len(measured) >= ns.steps or sum(measured) > ns.budget_s:
                trainer.should_stop = True

    args = expand_config_args([
        "-c", ns.recipe, f"--threads={ns.threads}", f"--data.cache_dir={ns.cache_dir}",
        f"--data.synthetic_num_train={ns.num_train}", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0", f"--trainer.max_steps={ns.warmup + ns.steps}", "--trainer.max_epochs=-1",
    ])
    cli = SegblocksCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       run=False, args=args, save_config_callback=None)
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    measured = timer.times[ns.warmup:]
    print(json.dumps({"threads": torch.get_num_threads(), "steps": len(measured), "seconds": sum(measured),
                      "its": len(measured) / sum(measured) if measured else float("nan")}))


def measure(ns: argparse.Namespace, threads: int, contended: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore", "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--recipe", ns.recipe, "--steps", str(ns.steps),
           "--warmup", str(ns.warmup), "--budget-s", str(ns.budget_s), "--cache-dir", ns.cache_dir, "--num-train", str(ns.num_train)]
    hog = None
    if contended:  # bounded even if this script dies: the loop ends by itself
        hog = subprocess.Popen([sys.executable, "-c", HOG.format(seconds=ns.budget_s * 2 + 120)])
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=ns.budget_s * 2 + 300)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({threads} threads):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="recipes/pro_scale.yaml")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=8, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--budget-s", type=float, default=30.0, help="stop timing a measurement after this many seconds")
    p.add_argument("--num-train", type=int, default=64, help="synthetic training images (generated once)")
    p.add_argument("--cache-dir", default=None, help="dataset cache (default: a temporary folder)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.worker:
        ns.threads = ns.threads[0]
        worker(ns)
        return
    with tempfile.TemporaryDirectory() as tmp:
        ns.cache_dir = ns.cache_dir or tmp
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"{ns.recipe}: {cores} usable cores, load average {os.getloadavg()[0]:.2f} at start; "
              f"{ns.steps} timed steps (or {ns.budget_s:.0f} s) after {ns.warmup} warm-up steps")
        results = {}
        for threads in ns.threads:
            for contended in (False, True):
                r = measure(ns, threads, contended)
                results[threads, contended] = r["its"]
                print(f"  threads={threads} {'contended' if contended else 'idle     '}: {r['its']:.3f} it/s "
                      f"({r['steps']} steps, {r['seconds']:.1f} s; load {os.getloadavg()[0]:.2f})", flush=True)
        print("ratios:")
        for threads in ns.threads:
            print(f"  threads={threads}: contended / idle = {results[threads, True] / results[threads, False]:.2f}")
        base = ns.threads[0]
        for threads in ns.threads[1:]:
            for contended in (False, True):
                tag = "contended" if contended else "idle"
                print(f"  {tag}: threads={threads} / threads={base} = {results[threads, contended] / results[base, contended]:.2f}")


if __name__ == "__main__":
    main()
