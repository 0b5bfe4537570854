import pytest
import torch
import torch.nn.functional as F

from data2vec.nn import linear as lin

pytestmark = pytest.mark.skipif(not lin.onednn_available(), reason="this PyTorch build has no oneDNN")


@pytest.fixture
def onednn():
    lin.set_cpu_matmul("onednn")
    yield
    lin.set_cpu_matmul("auto")


@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_matches_float64_forward_and_gradients(onednn, with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 17, 24, generator=g, requires_grad=True)
    w = torch.randn(40, 24, generator=g, requires_grad=True)
    b = torch.randn(40, generator=g, requires_grad=True) if with_bias else None
    up = torch.randn(3, 17, 40, generator=g)
    out = lin.linear(x, w, b)
    assert out.grad_fn.name().endswith("_OneDNNLinearBackward")  # the oneDNN path was taken
    (out * up).sum().backward()

    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if with_bias else None
    want = F.linear(x64, w64, b64)
    (want * up.double()).sum().backward()
    torch.testing.assert_close(out.double(), want.detach(), rtol=1e-5, atol=1e-5)
    for got, ref in [(x.grad, x64.grad), (w.grad, w64.grad)] + ([(b.grad, b64.grad)] if with_bias else []):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_strided_input_and_frozen_weight(onednn):
    x = torch.randn(24, 10).t().requires_grad_()  # [10, 24], not contiguous
    w = torch.randn(6, 24)  # no gradient wanted
    out = lin.linear(x, w)
    out.sum().backward()
    torch.testing.assert_close(out, x.detach() @ w.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, torch.ones(10, 6) @ w, rtol=1e-5, atol=1e-5)


# Awkward layouts, each a view made from a leaf tensor: (leaf shape, view of the leaf). The oneDNN path must run
# them all, forward and backward, as a float64 F.linear does; gradients are checked on the leaves.
X_LAYOUTS = {
    # the first conv of the speech feature encoder (one input channel): windows of 12 samples every 5 share samples
    "conv windows, batch 1": ((1, 203, 1), lambda t: t.unfold(1, 12, 5).reshape(1, -1, 12)),
    "conv windows, batch 3": ((3, 203, 1), lambda t: t.unfold(1, 12, 5).reshape(3, -1, 12)),
    "one row": ((1, 1, 12), lambda t: t),
    "sliced columns": ((5, 30), lambda t: t[:, 3:27:2]),  # non-contiguous, gaps between rows and elements
    "transposed": ((12, 7), lambda t: t.t()),
    "batch-second": ((7, 2, 12), lambda t: t.transpose(0, 1)),
    "broadcast": ((1, 12), lambda t: t.expand(6, 12)),  # stride 0
    "empty batch": ((0, 12), lambda t: t),
}
W_LAYOUTS = {
    "dense": ((10, 12), lambda t: t),
    "transposed": ((12, 10), lambda t: t.t()),
    "overlapping": ((34,), lambda t: t.as_strided((10, 12), (2, 1))),  # rows share elements
    "sliced": ((10, 25), lambda t: t[:, ::2][:, :12]),
}
B_LAYOUTS = {"dense": ((10,), lambda t: t), "strided": ((20,), lambda t: t[::2])}


@pytest.mark.parametrize("b_layout", B_LAYOUTS)
@pytest.mark.parametrize("w_layout", W_LAYOUTS)
@pytest.mark.parametrize("x_layout", X_LAYOUTS)
def test_onednn_linear_matches_float64_on_awkward_layouts(onednn, x_layout, w_layout, b_layout):
    """Every layout F.linear takes, the oneDNN path takes too, with the same values and gradients: batch 1
    of the conv feature encoder's overlapping windows once crashed the backward product, and a strided bias
    was read as if dense."""
    g = torch.Generator().manual_seed(0)
    layouts = X_LAYOUTS[x_layout], W_LAYOUTS[w_layout], B_LAYOUTS[b_layout]
    leaves = [torch.randn(shape, generator=g) for shape, _ in layouts]
    views = [view for _, view in layouts]
    results = []
    for dtype in (torch.float32, torch.float64):
        ins = [leaf.to(dtype, copy=True).requires_grad_() for leaf in leaves]
        x, w, b = (view(t) for view, t in zip(views, ins))
        if x_layout.startswith("conv windows"):
            assert x.stride()[-2:] == (5, 1)  # a view whose rows overlap, as nn/audio.py makes them
        out = lin.linear(x, w, b) if dtype == torch.float32 else F.linear(x, w, b)
        if dtype == torch.float32:
            assert out.grad_fn.name().endswith("_OneDNNLinearBackward")  # the oneDNN path was taken
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        (out * up.to(dtype)).sum().backward()
        results.append((out.detach().double(), [t.grad.double() for t in ins]))
    (out, grads), (want, want_grads) = results
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_products_with_nothing_to_sum_give_zeros(onednn):
    """K = 0 (and, in the backward weight product, an empty batch) has no oneDNN primitive: F.linear's zeros."""
    x, w, b = torch.randn(3, 0, requires_grad=True), torch.randn(4, 0, requires_grad=True), torch.randn(4)
    out = lin.linear(x, w, b)
    out.sum().backward()
    torch.testing.assert_close(out, b.expand(3, 4))
    assert x.grad.shape == (3, 0) and w.grad.shape == (4, 0)


def test_bf16_autocast_and_default_choice_use_f_linear(onednn):
    x, w = torch.randn(4, 8), torch.randn(5, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin.linear(x, w).dtype == torch.bfloat16  # autocast's bf16 F.linear, not our fp32 path
    lin.set_cpu_matmul("default")
    assert "OneDNN" not in lin.linear(x, w).grad_fn.name()


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="auto, onednn or default"):
        lin.set_cpu_matmul("mkl")


@pytest.mark.parametrize("recorded", ["onednn", "default"])
def test_checkpoint_state_keeps_the_kernel_choice(monkeypatch, recorded):
    """A resumed run uses the kernel the interrupted one chose, whatever its own timing would say: the two
    round differently, and exact resume is promised."""
    from data2vec.train.harness import rng_state, set_rng_state

    monkeypatch.setattr(lin, "_choice", "auto")
    monkeypatch.setattr(lin, "_onednn_faster", recorded == "onednn")
    state = rng_state()
    assert state["cpu_matmul"] == recorded
    monkeypatch.setattr(lin, "_onednn_faster", recorded != "onednn")  # a new process that timed the other way
    set_rng_state(state)
    assert lin.use_onednn() == (recorded == "onednn")
    monkeypatch.setattr(lin, "_onednn_faster", None)  # not timed yet: nothing recorded, nothing restored
    assert rng_state()["cpu_matmul"] is None
    set_rng_state({**state, "cpu_matmul": None})
    assert lin._onednn_faster is None
    lin.set_cpu_matmul("default")  # told explicitly: the checkpoint does not override it
    set_rng_state(state)
    assert not lin.use_onednn()
    lin.set_cpu_matmul("auto")


def test_environment_variable_sets_the_choice_for_a_process():
    import subprocess
    import sys

    code = "from data2vec.nn import linear; print(linear._choice)"
    env = {**__import__("os").environ, "DATA2VEC_CPU_MATMUL": "default"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "default"
    env["DATA2VEC_CPU_MATMUL"] = "mkl"  # a bad value: the command says so in one line, the API at first use
    bad = subprocess.run([sys.executable, "-m", "data2vec", "recipes"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("data2vec: error: environment variable DATA2VEC_CPU_MATMUL") and "'mkl'" in bad.stderr
    code = "import torch; from data2vec.nn import linear; linear.linear(torch.ones(2, 2), torch.ones(2, 2))"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "Data2VecError: environment variable DATA2VEC_CPU_MATMUL" in bad.stderr


def test_kernel_timing_leaves_the_global_rng_alone():
    """The once-per-process timing runs inside the first forward: drawing its operands from the global RNG
    would change what a seeded run draws next (found by the fairseq parity test's decoder noise)."""
    torch.manual_seed(5)
    state = torch.get_rng_state()
    lin._time_kernels(n=8, reps=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_layers_choose_their_kernel_when_built_and_hooks_see_the_product():
    """Blocks call their Linear modules: a forward hook on fc1 sees the product that runs, print(model) names
    the kernel, and the choice is made at construction (a later set_cpu_matmul leaves built layers alone)."""
    from data2vec.config import build_config
    from data2vec.model import Data2VecEncoder

    cfg = build_config("image-tiny", ["model.dim=32", "model.depth=1", "model.heads=2", "objective.top_k=1"])
    lin.set_cpu_matmul("onednn")
    try:
        encoder = Data2VecEncoder(cfg)
        lin.set_cpu_matmul("default")
        fc1 = encoder.encoder.blocks[0].mlp.fc1
        assert isinstance(fc1, lin.Linear) and fc1.cpu_kernel == "onednn" and "cpu_kernel=onednn" in repr(encoder)
        seen = []
        fc1.register_forward_hook(lambda module, args, out: seen.append(out))
        encoder(torch.randn(2, 3, cfg.image.image_size, cfg.image.image_size)).last_hidden_state.sum().backward()
        assert len(seen) == 1 and seen[0].grad_fn.name().endswith("_OneDNNLinearBackward")
        assert lin.Linear(4, 3).cpu_kernel == "default"
    finally:
        lin.set_cpu_matmul("auto")


def test_linear_layers_keep_nn_linear_state_dict_keys():
    layer = lin.Linear(4, 3)
    plain = torch.nn.Linear(4, 3)
    assert layer.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(5, 4)
    torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x, bias=torch.zeros(3)), x @ layer.weight.t(), rtol=1e-5, atol=1e-5)
