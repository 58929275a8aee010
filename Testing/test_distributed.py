"""torchrun on the CPU (gloo, 2 processes): every stage of every recipe trains and resumes exactly, ranks build one
slice cache at the same time, and the README's multi-GPU commands (one node; two nodes with shared or node-local
storage) run as written, with tiny models and a few steps.

Run as a script (by torchrun) this file is the worker of the tests that need one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "Testing"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tiny_models import MICRO_CDM, MICRO_SDSEG  # noqa: E402
from training.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow

MICRO_SEGUNET = {"image_size": 32, "unet": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                            "attention_levels": [], "mid_attention": False, "num_heads": 1, "dropout": 0.0}}
STAGES = {
    "cdm": [("mrm", MICRO_CDM, {}), ("mdn", MICRO_CDM, {"mdn_source_condition": True}), ("cunet", MICRO_CDM, {}),
            ("unet", MICRO_CDM, {})],
    "sdseg": [("autoencoder", MICRO_SDSEG, {}), ("ldm", MICRO_SDSEG, {}), ("segunet", MICRO_SEGUNET, {})],
}
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "Testing")]))


def _stage_name(stage: str, extra: dict) -> str:
    return stage + ("-source" if extra else "")


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory):
    from training.phantoms import write_brats_case

    root = tmp_path_factory.mktemp("brats")
    for number in range(3):
        write_brats_case(root, number, seed=number, shape=(40, 40, 24))
    return root


@pytest.fixture(scope="module")
def btcv_root(tmp_path_factory):
    from training.phantoms import write_btcv_dataset

    root = tmp_path_factory.mktemp("btcv")
    write_btcv_dataset(root, 3, seed=0, shape=(64, 64, 10))
    return root


def _run(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    return done


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def _same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _same_run_state(a: dict, b: dict) -> None:
    _same_tensors(a["model"], b["model"])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for index in a["optimizer"]["state"]:
        _same_tensors(a["optimizer"]["state"][index], b["optimizer"]["state"][index])


# ---- every stage of every recipe --------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", sorted(STAGES))
def test_every_stage_trains_and_resumes_exactly_under_torchrun(recipe, request, tmp_path):
    data_root = request.getfixturevalue("brats_root" if recipe == "cdm" else "btcv_root")
    _run(_torchrun("--standalone", "--nproc-per-node", "2", str(Path(__file__)), "stages", recipe, str(data_root),
                   str(tmp_path)), timeout=180)
    for stage, _, extra in STAGES[recipe]:
        folder = tmp_path / _stage_name(stage, extra)
        straight, resumed = load_checkpoint(folder / "straight"), load_checkpoint(folder / "resumed")
        assert straight["step"] == resumed["step"] == 2 and straight["world_size"] == 2, stage
        _same_run_state(straight, resumed)


def _train_every_stage(recipe: str, data_root: Path, work: Path) -> None:
    """One process group for all the runs: the trainer uses a group it finds and leaves it open."""
    import gc

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from training.recipes import build_recipe
    from training.trainer import Trainer, TrainConfig

    dist.init_process_group("gloo")
    for stage, architecture, extra in STAGES[recipe]:
        config = {"stage": stage, "architecture": architecture, "data_root": str(data_root),
                  "cache_dir": str(work / "cache"), **extra}
        folder = work / _stage_name(stage, extra)
        settings = dict(max_steps=2, batch_size=2, lr=1e-3, log_every=1, ckpt_every=1, keep_checkpoints=0,
                        device="cpu", progress=False)
        straight = Trainer(build_recipe(recipe, config), TrainConfig(out_dir=str(folder / "straight"), **settings))
        straight.fit()
        resume = str(checkpoint_path(folder / "straight", 1))
        Trainer(build_recipe(recipe, config), TrainConfig(out_dir=str(folder / "resumed"), resume=resume, **settings)).fit()
        assert dist.is_initialized()
        # A DDP wrapper alive after fit holds the group, even while the trainer object lives on (as in the CLI until
        # it returns, or to the interpreter's exit in a caller's cycle), and gloo's teardown there can abort a rank.
        assert not isinstance(straight.train_module, DistributedDataParallel), stage
        del straight
        assert not [obj for obj in gc.get_objects() if isinstance(obj, DistributedDataParallel)], stage
    dist.destroy_process_group()


# ---- one cache, written by several processes at once -----------------------------------------------------------

def test_ranks_building_one_cache_at_once_do_not_collide(brats_root, tmp_path):
    _run(_torchrun("--standalone", "--nproc-per-node", "2", str(Path(__file__)), "cache", str(brats_root),
                   str(tmp_path)))
    for folder in sorted(tmp_path.iterdir()):
        assert len(list(folder.glob("*.npy"))) == 3 and not list(folder.glob(".*")), sorted(folder.iterdir())


def _build_one_cache_together(data_root: Path, work: Path, rounds: int = 4) -> None:
    import torch.distributed as dist

    from MedDiffusionExtension.volume.slices import ModelGrid
    from training.data import TranslationSlices, read_brats

    dist.init_process_group("gloo")
    cases = read_brats(data_root)
    for number in range(rounds):
        dist.barrier()  # start together: the old fixed temporary name made one of the two renames fail
        dataset = TranslationSlices(cases, ModelGrid(32, None), work / f"round{number}", min_foreground=0.0)
        assert len(dataset) == 3 * 24
    dist.destroy_process_group()


# ---- the README's commands ----------------------------------------------------------------------------------------

def _recipe_flags(brats_root: Path, cache: Path) -> list[str]:
    return ["--recipe", "cdm", "--set", f"data_root={brats_root}", "--set", f"cache_dir={cache}",
            "--set", f"architecture={json.dumps(MICRO_CDM)}"]


def _train_flags(out_dir: Path, steps: int) -> list[str]:
    return ["--set", "stage=mrm", "--out-dir", str(out_dir), "--max-steps", str(steps), "--batch-size", "2",
            "--ckpt-every", "2", "--keep-checkpoints", "0", "--resume", "auto", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def one_node_run(brats_root, tmp_path_factory):
    """README, one node: prepare the cache with every GPU's process, then train (CDM stage 1) with them."""
    work = tmp_path_factory.mktemp("one_node")
    launch = ["--standalone", "--nproc-per-node", "2"]
    prepared = _run(_torchrun(*launch, "-m", "training", "prepare", *_recipe_flags(brats_root, work / "cache")))
    _run(_torchrun(*launch, "-m", "training", "train", *_recipe_flags(brats_root, work / "cache"),
                   *_train_flags(work / "run", 4)))
    return work, prepared.stdout


def test_one_node_prepares_in_shares_and_trains_cdm_stage_1(one_node_run):
    work, printed = one_node_run
    # 2 of the 3 phantom volumes are CDM's training split: one each.
    assert "rank 0/2: prepared 1 case(s), 0 already cached" in printed
    assert "rank 1/2: prepared 1 case(s), 0 already cached" in printed
    assert len(list((work / "cache").glob("*.npy"))) == 2 and not list((work / "cache").glob(".*"))
    state = load_checkpoint(work / "run")
    assert state["step"] == 4 and state["world_size"] == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _on_two_nodes(*args_of_node) -> None:
    """Both nodes' torchrun at once, as on two machines: static rendezvous at node 0."""
    port = str(_free_port())
    processes = []
    for node, args in enumerate(args_of_node):
        command = _torchrun("--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
                            "--master-addr", "127.0.0.1", "--master-port", port, "-m", "training", *args)
        processes.append(subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=90))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, (out[-2000:], err[-4000:])


@pytest.fixture(scope="module")
def two_nodes_shared(brats_root, tmp_path_factory):
    """README, several nodes with shared storage: one cache and one out dir for all (2 steps)."""
    shared = tmp_path_factory.mktemp("shared")
    _on_two_nodes(*[["train", *_recipe_flags(brats_root, shared / "cache"), *_train_flags(shared / "run", 2)]] * 2)
    return shared


def test_two_nodes_with_shared_storage_prepare_and_train(two_nodes_shared):
    # No `prepare` first: train's ranks prepare the cache in shares, as `prepare` would.
    assert len(list((two_nodes_shared / "cache").glob("*.npy"))) == 2
    state = load_checkpoint(checkpoint_path(two_nodes_shared / "run", 2))
    assert state["step"] == 2 and state["world_size"] == 2


def test_two_nodes_with_node_local_storage_resume_from_node_0(brats_root, one_node_run, two_nodes_shared, tmp_path):
    """README, several nodes with node-local storage. Node 0's disk holds the checkpoints of the first 2 steps (only
    rank 0 writes them), node 1's is empty, cache included: `--resume auto` must start both at node 0's step, and
    the result must be the one-node run's, bit for bit. (`prepare --split local` is checked in test_training_data.)"""
    node0, node1 = two_nodes_shared, tmp_path / "node1"
    _on_two_nodes(*[["train", *_recipe_flags(brats_root, node / "cache"), *_train_flags(node / "run", 4)]
                    for node in (node0, node1)])
    assert [p.name for p in list_checkpoints(node0 / "run")] == ["step_00000002.pt", "step_00000004.pt"]
    assert list_checkpoints(node1 / "run") == [] and len(list((node1 / "cache").glob("*.npy"))) == 2
    _same_run_state(load_checkpoint(node0 / "run"), load_checkpoint(one_node_run[0] / "run"))


if __name__ == "__main__":
    task, *arguments = sys.argv[1:]
    if task == "stages":
        _train_every_stage(arguments[0], Path(arguments[1]), Path(arguments[2]))
    elif task == "cache":
        _build_one_cache_together(Path(arguments[0]), Path(arguments[1]))
    else:
        raise SystemExit(f"unknown task {task}")
