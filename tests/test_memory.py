"""Memory estimates against direct counts, and the refusals they drive."""
import pytest
import torch
from torch import nn

from analysis import memory, study
from analysis.config import ConfigError, TrainConfig
from analysis.memory import Network
from analysis.models import build_model
from analysis.parameters import ParameterError


def direct_counts(network: Network, image_size: int) -> tuple[int, int]:
    """Parameters and leaf-output elements of a real network built on the CPU, one image."""
    model = build_model(network.depth, residual=network.residual, shortcut=network.shortcut, norm=network.norm,
                        width=network.width, stem=network.stem, init=network.init).eval()
    outputs = []
    for module in model.modules():
        if not any(module.children()) and not isinstance(module, nn.Identity):
            module.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel()))
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    return sum(p.numel() for p in model.parameters()), sum(outputs)


@pytest.mark.parametrize("network", [
    Network(32, width=4), Network(44, width=4, residual=False), Network(26, width=4, shortcut="B"),
    Network(20, width=4, norm="none", init="fixup"), Network(18, width=4),
])
def test_counts_match_a_real_network(network):
    assert memory.counts(network, 16) == direct_counts(network, 16)


def test_training_estimate_adds_gradients_optimizer_state_and_activations():
    network = Network(20, width=4)
    parameters, elements = direct_counts(network, 16)
    sgd = memory.training_estimate(network, batch_size=8, image_size=16, optimizer="sgd")
    assert sgd.parameters == 4 * parameters * 3  # weights, gradients, momentum
    assert sgd.activations == int(memory.ACTIVATION_FACTOR * 4 * elements * 8)
    assert memory.training_estimate(network, batch_size=8, image_size=16, optimizer="adam").parameters == 4 * parameters * 4
    assert memory.training_estimate(network, batch_size=8, image_size=16, momentum=0.0).parameters == 4 * parameters * 2
    assert sgd.total == sgd.parameters + sgd.activations


def test_largest_depth_is_the_last_that_fits():
    network = Network(8, width=4)
    need = {depth: memory.training_estimate(Network(depth, width=4), batch_size=8, image_size=16).total
            for depth in (8, 110, 116)}
    assert memory.largest_cifar_depth(need[110], network, batch_size=8, image_size=16) == 110
    assert memory.largest_cifar_depth(need[116] - 1, network, batch_size=8, image_size=16) == 110
    assert memory.largest_cifar_depth(need[8] - 1, network, batch_size=8, image_size=16) is None


def test_a_config_that_cannot_fit_is_refused_in_one_line():
    config = TrainConfig(depth=9998, width=64, device="cpu")
    with pytest.raises(ConfigError) as error:
        memory.check_training_memory(config, limit=10**9)
    message = str(error.value)
    assert message.startswith("depth: 9998 (width 64, batch 64, 32x32 images, sgd) needs about ")
    assert "more than the 1 GB available on cpu" in message and "\n" not in message
    memory.check_training_memory(TrainConfig(depth=8, width=4, device="cpu"), limit=10**9)


def test_the_study_refuses_before_building(monkeypatch):
    params = study.validate_parameters({"depth": 9998, "width": 64})  # values are valid anywhere
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 10**9)
    with pytest.raises(ParameterError, match=r"^depth: 9998 .* more than the 1 GB available on cpu"):
        study.check_memory(params)


def test_training_refuses_before_building(tmp_path, monkeypatch):
    from analysis.train import train

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 10**9)
    with pytest.raises(ConfigError, match=r"^depth: 9998 .* more than the 1 GB available on cpu"):
        train(TrainConfig(depth=9998, width=64, device="cpu"), root=tmp_path, progress=False)
    assert not list(tmp_path.glob("*/config.json"))  # no run was started
