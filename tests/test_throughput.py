"""Sample counting used by the throughput callback."""
import torch

from callbacks.throughput import count_samples, peak_memory_mb


def test_count_samples_shapes() -> None:
    assert count_samples({"image": torch.zeros(5, 3, 8, 8), "identity": torch.zeros(5)}) == 5
    combined = {"ms1m": {"image": torch.zeros(4, 3, 8, 8)}, "celeba": {"image": torch.zeros(3, 3, 8, 8)},
                "fairface": None}
    assert count_samples(combined) == 7
    assert count_samples([torch.zeros(6, 2), torch.zeros(6)]) == 6
    assert peak_memory_mb(torch.device("cpu")) > 10
