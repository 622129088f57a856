"""Every Monitor statistic against a direct float64 computation on the same tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from analysis.hooks import Monitor, one_pass, statistics


class Block(nn.Module):
    """Residual block with an in-place add on the branch output."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.shortcut = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        out += self.shortcut(x)
        return self.relu(out)


class Net(nn.Module):
    """Conv stem with an in-place ReLU, a residual block, and a Tanh called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.block = Block(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(4, 6)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)
        with torch.no_grad():  # a dead conv channel and a dead feature
            self.stem[0].weight[0] = 0.0
            self.stem[0].bias[0] = -1.0
            self.fc1.weight[2] = 0.0
            self.fc1.bias[2] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(self.stem(x))).flatten(1)
        return self.out(self.act(self.fc2(self.act(self.fc1(x)))))


class Recorder:
    """Independent plain hooks: clones of every module output and output gradient."""

    def __init__(self, model: nn.Module) -> None:
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}
        self.grads: dict[tuple[str, int], torch.Tensor] = {}
        self.order: list[str] = []
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in model.named_modules()]

    def _hook(self, name):
        def hook(module, args, output):
            call = sum(1 for key in self.outputs if key[0] == name)
            self.outputs[(name, call)] = output.detach().cpu().clone()
            if name not in self.order:
                self.order.append(name)
            if output.requires_grad:
                output.register_hook(lambda g: self.grads.__setitem__((name, call), g.detach().cpu().clone()))
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def reference_activation(t: torch.Tensor, channel_dim: int) -> dict[str, float]:
    a = t.double().numpy()
    per_channel = np.moveaxis(a, channel_dim, 0).reshape(a.shape[channel_dim], -1)
    return {
        "mean": a.mean(), "std": a.std(), "rms": math.sqrt((a ** 2).mean()), "absmax": np.abs(a).max(),
        "zero_fraction": (a == 0).mean(), "dead_fraction": np.all(per_channel == 0, axis=1).mean(),
        "nonfinite": float((~np.isfinite(a)).sum()),
    }


def reference_grad(t: torch.Tensor) -> dict[str, float]:
    a = t.double().numpy()
    return {"rms": math.sqrt((a ** 2).mean()), "absmax": np.abs(a).max(),
            "nonfinite": float((~np.isfinite(a)).sum())}


def run_recorded(dtype: torch.dtype, device: str = "cpu", steps: int = 2, image: int = 8):
    torch.manual_seed(0)
    model = Net().to(device, dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, 3, image, image, dtype=dtype).to(device)
    y = torch.tensor([0, 1, 2, 0], device=device)
    captured = []
    with Monitor(model, optimizer=optimizer, every=1) as monitor:
        params = dict(model.named_parameters())
        for _ in range(steps):
            recorder = Recorder(model)
            snapshot = {}

            def before(opt, args, kwargs):
                snapshot["grads"] = {n: p.grad.detach().cpu().clone() for n, p in params.items()}
                snapshot["weights"] = {n: p.detach().cpu().clone() for n, p in params.items()}
                snapshot["lr"] = opt.param_groups[0]["lr"]

            handle = optimizer.register_step_pre_hook(before)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            handle.remove()
            recorder.remove()
            snapshot["after"] = {n: p.detach().cpu().clone() for n, p in params.items()}
            captured.append((recorder, snapshot))
    return monitor.frame(), captured


def check(actual: float, expected: float, scale: float, rtol: float, atol: float) -> None:
    assert actual == pytest.approx(expected, rel=rtol, abs=atol * max(scale, 1e-300)), (actual, expected)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("image", [8, 182])  # 182: conv outputs of at least one_pass.MIN_NUMEL elements, one pass
def test_every_statistic_matches_direct_computation(dtype, atol, device, image, monkeypatch):
    one_pass_results = []
    monkeypatch.setattr(statistics, "one_pass_rows", lambda *args: one_pass_results.append(
        one_pass.rows(*args)) or one_pass_results[-1])
    frame, captured = run_recorded(dtype, device, image=image)
    # 9 conv-sized outputs a step: the stem's 3, the branch's 5 and block.relu (the others repeat a tensor)
    assert len(one_pass_results) == (0 if image == 8 else 2 * 9)
    assert all(rows is not None for rows in one_pass_results)
    rtol = 1e-4 if image > 8 and dtype == torch.float32 else 1e-5  # float32 sums of 530 thousand elements
    assert sorted(frame.step.unique()) == [0, 1]
    for step, (recorder, snap) in enumerate(captured):
        rows = frame[frame.step == step]
        counts = rows.groupby("kind").size().to_dict()

        activation = rows[rows.kind == "activation"]
        assert len(activation) == counts["activation"] > 0
        for (module, call), group in activation.groupby(["module", "call"]):
            out = recorder.outputs[(module, call)]
            ref = reference_activation(out, 1)
            scale = ref["rms"]
            for stat, value in zip(group.stat, group.value):
                check(value, ref[stat], scale if stat in ("mean", "std") else abs(ref[stat]), rtol, atol)
        assert set(activation.module) == {
            "stem.0", "stem.1", "stem.2", "block.branch", "block.branch.0", "block.branch.1",
            "block.branch.2", "block.branch.3", "block.branch.4", "block.shortcut", "block.relu",
            "fc1", "act", "fc2", "out",
        }
        assert sorted(activation[activation.module == "act"].call.unique()) == [0, 1]
        dead = activation[activation.stat == "dead_fraction"].set_index(["module", "call"]).value
        if step == 0:
            assert dead[("stem.2", 0)] == 0.25 and dead[("act", 0)] == pytest.approx(1 / 6)

        grads = rows[rows.kind == "activation_grad"]
        assert len(grads) == 3 * len(activation) // 7
        for (module, call), group in grads.groupby(["module", "call"]):
            ref = reference_grad(recorder.grads[(module, call)])
            for stat, value in zip(group.stat, group.value):
                check(value, ref[stat], abs(ref[stat]), rtol, atol)

        for kind in ("param_grad", "weight", "update"):
            part = rows[rows.kind == kind]
            assert len(part.param.unique()) == 2 and len(part) == len(STAT_NAMES[kind]) * len(snap["grads"])
            for (module, param), group in part.groupby(["module", "param"]):
                name = f"{module}.{param}"
                g = snap["grads"][name].double().numpy()
                w = snap["weights"][name].double().numpy()
                delta = snap["after"][name].double().numpy() - w
                ref = {
                    ("param_grad", "norm"): np.linalg.norm(g),
                    ("param_grad", "rms"): np.linalg.norm(g) / math.sqrt(g.size),
                    ("param_grad", "absmax"): np.abs(g).max(),
                    ("param_grad", "nonfinite"): 0.0,
                    ("weight", "norm"): np.linalg.norm(w),
                    ("update", "ratio"): np.linalg.norm(delta) / np.linalg.norm(w) if w.any() else math.inf,
                }
                for stat, value in zip(group.stat, group.value):
                    check(value, ref[(kind, stat)], abs(ref[(kind, stat)]), rtol, atol)

        total = math.sqrt(sum(float((g.double() ** 2).sum()) for g in snap["grads"].values()))
        glob = rows[rows.kind == "global"].set_index("stat")
        check(glob.value["grad_norm"], total, total, rtol, atol)
        assert glob.value["lr"] == snap["lr"] and glob.param["lr"] == "group0"
        assert glob.module.tolist() == ["", ""] and (glob["index"] == -1).all()

        block = rows[rows.kind == "block"].set_index("stat").value
        b = recorder.outputs[("block.branch", 0)].double().flatten()
        s = recorder.outputs[("block.shortcut", 0)].double().flatten()
        ref = {"branch_norm": b.norm().item(), "shortcut_norm": s.norm().item(),
               "ratio": (b.norm() / s.norm()).item(), "cosine": (b @ s / (b.norm() * s.norm())).item()}
        for stat, expected in ref.items():
            check(block[stat], expected, abs(expected), rtol, atol)

        # index: order in which modules first produced output in the forward pass
        first = activation.groupby("module")["index"].min().sort_values()
        assert list(first.index) == [name for name in recorder.order if name in set(first.index)]


STAT_NAMES = statistics.STATS


def test_nonfinite_counts_and_slow_path(monkeypatch):
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
    x = torch.randn(6, 5)
    x[0, 1], x[2, 3], x[4, 0] = math.inf, math.nan, -math.inf
    out = model[0](x)
    for forced_slow in (False, True):
        if forced_slow:  # the path taken on CUDA, where no host check is made
            monkeypatch.setattr(statistics, "_fast_path", lambda *a: False)
        with Monitor(model, every=1) as monitor:
            model(x).sum().backward()
            monitor.step()
        frame = monitor.frame()
        act = frame[(frame.kind == "activation") & (frame.stat == "nonfinite")].set_index("module").value
        assert act["0"] == float((~torch.isfinite(out)).sum())
        grads = frame[(frame.kind == "param_grad") & (frame.stat == "nonfinite")].set_index("param").value
        assert grads["weight"] == float((~torch.isfinite(model[0].weight.grad)).sum()) > 0
        model.zero_grad()


def test_slow_path_values_equal_fast_path(monkeypatch):
    torch.manual_seed(1)
    x = torch.relu(torch.randn(3, 5, 4, 4))
    fast = statistics.activation(x, 1)
    monkeypatch.setattr(statistics, "_fast_path", lambda *a: False)
    assert torch.equal(statistics.activation(x, 1), fast)


@pytest.mark.parametrize("shape, channel_dim", [((2, 3, 5), 1), ((2, 3, 5), -1), ((7,), 0), ((), 0)])
def test_activation_channel_layouts(shape, channel_dim):
    torch.manual_seed(2)
    x = torch.relu(torch.randn(shape, dtype=torch.float64))
    if x.dim() == 3:
        x.select(channel_dim, 1).zero_()
    raw = statistics.activation(x, channel_dim).numpy()[None]
    channels = x.shape[channel_dim] if x.dim() else 1
    values = statistics.finish_activation(raw, np.array([x.numel()]), np.array([channels]))[0]
    ref = reference_activation(x.reshape(1, -1) if x.dim() < 2 else x, 1 if x.dim() < 2 else channel_dim)
    for name, value in zip(statistics.ACTIVATION, values):
        assert value == pytest.approx(ref[name], rel=1e-12, abs=1e-12)


def test_conv1d_and_sequence_channel_dims():
    conv = nn.Sequential(nn.Conv1d(2, 3, 1), nn.ReLU())
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with torch.no_grad():
        conv[0].weight.zero_()
        conv[0].bias.copy_(torch.tensor([0.0, 1.0, 1.0]))  # channel 0 dead
        seq[0].weight.zero_()
        seq[0].bias.copy_(torch.tensor([0.0, 1.0, 1.0, 1.0]))  # feature 0 dead
    x = torch.randn(2, 2, 5)
    with Monitor(conv, every=1) as mc, Monitor(seq, every=1) as ms:
        conv(x)
        seq(torch.randn(2, 5, 3))
        mc.step()
        ms.step()
    for monitor, expected in ((mc, 1 / 3), (ms, 1 / 4)):
        f = monitor.frame()
        dead = f[f.stat == "dead_fraction"].set_index("module").value
        assert dead.tolist() == [expected, expected]


@CUDA
def test_cuda_hooks_do_not_synchronise():
    torch.manual_seed(0)
    model = Net().cuda()
    x = torch.randn(4, 3, 8, 8, device="cuda")
    with Monitor(model, every=1) as monitor:
        for _ in range(2):
            model.zero_grad()
            torch.cuda.set_sync_debug_mode("error")
            try:
                model(x).square().mean().backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            monitor.step()
    frame = monitor.frame()
    assert sorted(frame.step.unique()) == [0, 1]
    assert {"activation", "activation_grad", "block"} <= set(frame.kind)
