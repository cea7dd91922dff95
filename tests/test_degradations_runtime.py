"""The engine's CPU runtime helpers: the per-sample thread pool and the malloc policy."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading

import pytest
import torch

from degradations.parallel import for_each_sample


def test_for_each_sample_calls_every_index_once_and_uses_threads() -> None:
    seen: list[int] = []
    names: set[str] = set()
    lock = threading.Lock()

    def work(i: int) -> None:
        with lock:
            seen.append(i)
            names.add(threading.current_thread().name)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for_each_sample(work, range(20))
    finally:
        torch.set_num_threads(threads)
    assert sorted(seen) == list(range(20))
    assert all(n.startswith("pairforge-sample") for n in names)


def test_for_each_sample_runs_inline_with_one_thread_and_reraises() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        names: set[str] = set()
        for_each_sample(lambda i: names.add(threading.current_thread().name), range(3))
        assert names == {threading.current_thread().name}
    finally:
        torch.set_num_threads(threads)

    def fail(i: int) -> None:
        if i == 2:
            raise ValueError("sample 2 is broken")

    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="sample 2"):
            for_each_sample(fail, range(4))
    finally:
        torch.set_num_threads(threads)


def _policy_in_subprocess(env_extra: dict[str, str]) -> str:
    code = "from degradations.memory import retain_freed_memory as r; print(r(), r())"
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_malloc_policy_applies_once_and_can_be_declined() -> None:
    assert _policy_in_subprocess({}) == "True True"
    assert _policy_in_subprocess({"PAIRFORGE_KEEP_MALLOC": "1"}) == "False False"


def test_strip_split_depthwise_equals_one_plain_grouped_conv() -> None:
    import torch.nn.functional as F

    from degradations import filters

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 300, 170, generator=g)  # 280 output rows: 5 strips, the last partial
    kernels = torch.rand(2, 21, 21, generator=g)
    kernels /= kernels.sum(dim=(1, 2), keepdim=True)
    got = filters._depthwise(x, kernels)
    weight = kernels.repeat_interleave(3, dim=0).view(6, 1, 21, 21)
    want = F.conv2d(x.reshape(1, 6, 300, 170), weight, groups=6).view(2, 3, 280, 150)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
