"""Data-parallel training launched by torchrun on CPU (gloo): same results at any world size."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

TINY = ["model.dim=32", "model.depth=2", "model.heads=2", "image.image_size=16", "image.patch_size=4",
        "objective.top_k=2", "masking.min_block=2", "train.warmup_steps=2", "train.log_every=1",
        "data.num_workers=0", "train.batch_size=16", "train.save_every=3", "train.keep_last=5", "--no-progress"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env():
    # One fp32 kernel for every process: timed per process on a busy machine, the choice can differ between the
    # runs compared here and round differently (runs with the same kernel match to the bit).
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", DATA2VEC_CPU_MATMUL="default")
    e.pop("WORLD_SIZE", None)
    return e


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", *args, "-m", "data2vec"]


def single(*args):
    return [sys.executable, "-m", "data2vec", *args]


def run(cmd, timeout=240):
    """Run torchrun / data2vec; on a timeout (a hang) kill the whole process group, workers included."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"timed out after {timeout} s (hung): {' '.join(cmd[-4:])}")
    assert proc.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-4, msg=key)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    run(torchrun("--nproc_per_node=2", f"--master_port={free_port()}") +
        ["pretrain", "image-tiny", *TINY, "train.max_steps=6", f"out={out}"])
    return out


def test_two_processes_match_one_process_with_the_global_batch(two_process_run, tmp_path):
    one = tmp_path / "one"
    run(single("pretrain", "image-tiny", *TINY, "train.max_steps=6", f"out={one}"))
    assert losses(one) == pytest.approx(losses(two_process_run), rel=1e-4, abs=1e-6)
    assert_same_weights(weights(one, 6), weights(two_process_run, 6))


def test_accumulation_matches_the_full_batch(two_process_run, tmp_path):
    accum = tmp_path / "accum"  # one process, at most 4 samples per forward: 4 micro-batches per update
    run(single("pretrain", "image-tiny", *TINY, "train.max_steps=6", "train.device_batch_size=4", f"out={accum}"))
    assert losses(accum) == pytest.approx(losses(two_process_run), rel=1e-4, abs=1e-6)
    assert_same_weights(weights(accum, 6), weights(two_process_run, 6))


def test_resume_a_two_process_checkpoint_in_one_process(two_process_run, tmp_path):
    resumed = tmp_path / "resumed"
    run(single("pretrain", "image-tiny", *TINY, "train.max_steps=6",
               f"resume={two_process_run / 'checkpoints' / 'step_00000003'}", f"out={resumed}"))
    assert losses(resumed) == pytest.approx(losses(two_process_run)[3:], rel=1e-4, abs=1e-6)
    assert_same_weights(weights(resumed, 6), weights(two_process_run, 6))


def test_two_nodes_on_localhost_train_and_checkpoint(tmp_path):
    out = tmp_path / "nodes"
    port = free_port()
    common = ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
              "--rdzv_id=d2v-test"]
    args = ["pretrain", "image-tiny", *TINY, "train.max_steps=3", f"out={out}"]
    nodes = [subprocess.Popen(torchrun(*common, f"--node_rank={rank}") + args, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=240)
        assert node.returncode == 0, err[-3000:]
    assert (out / "checkpoints" / "step_00000003" / "manifest.json").exists()
    assert len(losses(out)) == 3


def test_fsdp_matches_ddp_and_its_checkpoint_loads_anywhere(two_process_run, tmp_path):
    sharded = tmp_path / "fsdp"
    run(torchrun("--nproc_per_node=2", f"--master_port={free_port()}") +
        ["pretrain", "image-tiny", *TINY, "train.max_steps=6", "train.strategy=fsdp", f"out={sharded}"])
    assert losses(sharded) == pytest.approx(losses(two_process_run), rel=1e-4, abs=1e-6)
    assert_same_weights(weights(sharded, 6), weights(two_process_run, 6))
    resumed = tmp_path / "resumed"  # an FSDP checkpoint continues in a single plain process
    run(single("pretrain", "image-tiny", *TINY, "train.max_steps=6",
               f"resume={sharded / 'checkpoints' / 'step_00000003'}", f"out={resumed}"))
    assert_same_weights(weights(resumed, 6), weights(two_process_run, 6))


def test_v2_trains_under_ddp_although_the_mask_token_is_unused(tmp_path):
    out = tmp_path / "v2"
    v2 = ["objective.version=2", "objective.clones=2", "masking.inverse=true", "masking.block_size=2",
          "masking.ratio=0.75", "image.pos_embed=sincos", "image.rel_pos_bias=none", "objective.decoder_dim=16",
          "objective.decoder_layers=1", "objective.decoder_groups=4"]
    run(torchrun("--nproc_per_node=2", f"--master_port={free_port()}") +
        ["pretrain", "image-tiny", *TINY, *v2, "train.max_steps=3", f"out={out}"])
    start, end = weights(out, 3), load_file(str(out / "checkpoints" / "step_00000003" / "model.safetensors"))
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses(out)) and len(losses(out)) == 3
    assert torch.equal(start["student.frontend.mask_token"], end["teacher.frontend.mask_token"])  # frozen in v2


def test_a_process_whose_whole_batch_is_unreadable_does_not_stall_the_others(tmp_path):
    """Rank 1's share of step 0 is all corrupt files, rank 0's is fine: both skip step 0 together (a rank
    that went on would wait forever in the gradient all-reduce) and train the other steps."""
    import numpy as np
    from PIL import Image

    from data2vec.data.sampler import StepBatchSampler

    data = tmp_path / "data"
    data.mkdir()
    names = [f"img{i}.png" for i in range(8)]  # sorted, so the data set's index i is names[i]
    batches = {rank: list(StepBatchSampler(8, 8, 0, max_steps=3, rank=rank, world_size=2)) for rank in (0, 1)}
    bad = {names[i] for i, _ in batches[1][0]}
    rng = np.random.default_rng(0)
    for name in names:
        if name in bad:
            (data / name).write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(data / name)
    skipped_steps = [s for s in range(3) if any(all(names[i] in bad for i, _ in batches[r][s]) for r in (0, 1))]
    assert 0 in skipped_steps and len(skipped_steps) < 3
    out = tmp_path / "run"
    proc = run(torchrun("--nproc_per_node=2", f"--master_port={free_port()}") +
               ["pretrain", "image-tiny", *TINY, "train.batch_size=8", "train.max_steps=3", "train.seed=0",
                f"data.path={data}", f"out={out}"], timeout=120)
    assert "this process's batch was unreadable" in proc.stderr
    assert "another process's batch was unreadable" in proc.stderr
    assert len(losses(out)) == 3 - len(skipped_steps)  # one metrics row per update actually made


FT = ["train.batch_size=16", "train.max_steps=4", "train.warmup_steps=1", "train.log_every=1", "train.save_every=2",
      "train.keep_last=5", "finetune.eval_every=2", "finetune.drop_path=0", "finetune.freeze_encoder_steps=1",
      "finetune.freeze_frontend_steps=3", "data.num_workers=0", "--no-progress"]


def test_fine_tuning_in_two_processes_matches_one_process_with_the_global_batch(two_process_run, tmp_path):
    """Gradients averaged over processes while parts of the encoder freeze and unfreeze (which DDP cannot
    follow): the same weights, losses and validation scores as one process; the main process writes."""
    checkpoint = f"checkpoint={two_process_run}"
    one, two = tmp_path / "one", tmp_path / "two"
    run(single("finetune", "image-tiny-ft", checkpoint, *FT, f"out={one}"))
    result = run(torchrun("--nproc_per_node=2", f"--master_port={free_port()}") +
                 ["finetune", "image-tiny-ft", checkpoint, *FT, f"out={two}"])
    assert result.stdout.count("best validation accuracy") == 1
    rows = {run_dir: [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            for run_dir in (one, two)}
    train = {k: [r["loss"] for r in v if "split" not in r] for k, v in rows.items()}
    assert len(train[one]) == 4 and train[one] == pytest.approx(train[two], rel=1e-4, abs=1e-6)
    valid = {k: [r["accuracy"] for r in v if r.get("split") == "valid"] for k, v in rows.items()}
    assert len(valid[one]) == 2 and valid[one] == pytest.approx(valid[two], abs=1e-9)
    for name in ("model.safetensors", "head.safetensors"):
        a, b = (load_file(str(d / "checkpoints" / "step_00000004" / name)) for d in (one, two))
        assert_same_weights(a, b)
    start = weights(two_process_run, 6)
    at_one = weights(two, 2)  # encoder frozen at step 0 only, its front-end until step 3
    assert torch.equal(at_one["student.frontend.patch_embed.weight"], start["student.frontend.patch_embed.weight"])
    assert not torch.equal(at_one["student.encoder.blocks.0.mlp.fc1.weight"], start["student.encoder.blocks.0.mlp.fc1.weight"])


def _average_worker(rank, init_file, out_dir):
    import torch.distributed as dist

    from data2vec.train.distributed import DistInfo, average_gradients

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
    params[0].grad = torch.full((3,), float(rank + 1))  # every process: the mean
    if rank == 0:
        params[1].grad = torch.tensor([4.0, 6.0, 8.0])  # one process only: the others count zeros
    import data2vec.train.distributed as d

    d.GRADIENT_BUCKET = 4  # several buckets, one parameter each
    average_gradients(params, DistInfo(rank=rank, world_size=2))
    torch.save([p.grad for p in params], f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_average_gradients_over_processes(tmp_path):
    torch.multiprocessing.spawn(_average_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(grads[0], torch.full((3,), 1.5))
        assert torch.equal(grads[1], torch.tensor([2.0, 3.0, 4.0]))
        assert grads[2] is None  # no gradient anywhere: none after, so AdamW skips it as in one process


def test_layer_drop_trains_under_ddp_and_fsdp_is_refused(tmp_path):
    from data2vec.config import build_config
    from data2vec.errors import Data2VecError
    from data2vec.model import Data2Vec
    from data2vec.train.distributed import DistInfo, wrap_model

    out = tmp_path / "layer-drop"  # the processes skip different blocks: DDP must not wait for their gradients
    run(torchrun("--nproc_per_node=2", f"--master_port={free_port()}") +
        ["pretrain", "image-tiny", *TINY, "model.depth=4", "model.layer_drop=0.5", "train.max_steps=3", f"out={out}"])
    assert len(losses(out)) == 3 and all(torch.isfinite(torch.tensor(loss)) for loss in losses(out))
    model = Data2Vec(build_config("image-tiny", TINY[:-1] + ["model.layer_drop=0.05"]))
    with pytest.raises(Data2VecError, match="model.layer_drop"):  # before any collective: no hang
        wrap_model(model, "fsdp", DistInfo(rank=0, world_size=2), torch.device("cpu"))
