"""Command-line options shared by the benchmarks: each checked, with an error naming the option
and the values it takes."""

from __future__ import annotations

import argparse

import torch

from analysis.bench.models import MODELS

DEVICES = ("cpu", "cuda", "auto")


class OptionError(argparse.ArgumentTypeError, ValueError):
    """An invalid option value; the message names the option and the values it takes."""


def keys(option: str, value: str | list[str], allowed: list[str]) -> list[str]:
    """Comma-separated keys (or a list of them), each from `allowed`, without repeats."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [item.strip() for item in items]
    if not items or any(not item or item not in allowed for item in items):
        raise OptionError(f"{option} must be comma-separated keys from {', '.join(allowed)}; "
                          f"got {','.join(items) if isinstance(value, list) else value!r}")
    return list(dict.fromkeys(items))


def models_option(value: str | list[str]) -> list[str]:
    return keys("--models", value, list(MODELS))


def positive(option: str, value: str | int, least: int = 1) -> int:
    """An integer >= `least`."""
    try:
        number = int(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else least - 1
    except ValueError:
        number = least - 1
    if number < least:
        raise OptionError(f"{option} must be an integer >= {least}; got {value!r}")
    return number


def steps_option(value: str | int) -> int:
    return positive("--steps", value)


def image_option(value: str | int) -> int:
    return positive("--image", value, least=32)


def device_option(value: str) -> str:
    if value not in DEVICES:
        raise OptionError(f"--device must be one of {', '.join(DEVICES)}; got {value!r}")
    return value


def devices_for(name: str) -> list[torch.device]:
    """'auto': the CPU, and CUDA too when it is available."""
    device_option(name)
    if name == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if name == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda: CUDA is not available here; use cpu or auto")
    return [torch.device(name)]
