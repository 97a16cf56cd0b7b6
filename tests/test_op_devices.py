"""Every op rejects arguments on different devices with a ValueError naming the argument, before
any kernel launches. A CPU-only machine has one real device, so the odd one out lives on the
``meta`` device (shapes and dtypes, no data): a real second device to torch."""

import pytest
import torch

from electra_fast import ops


def _head():
    return torch.randn(5, 8), torch.randn(11, 8), torch.randn(11), torch.randint(0, 11, (5,))


def _rtd():
    return torch.randn(3, 4, 6), torch.randn(6), torch.zeros(()), torch.rand(3, 4) < 0.3, torch.ones(3, 4, dtype=torch.bool)


def _replace():
    ids = torch.randint(0, 9, (2, 7))
    return ids, torch.tensor([[1, 2], [3, 0]]), torch.randint(0, 9, (2, 2)), torch.tensor([[1.0, 1.0], [1.0, 0.0]])


CASES = [
    (lambda a, b: ops.generator_loss_and_sample(*a, seed=0, backend=b), _head, 1, "weight"),
    (lambda a, b: ops.generator_loss_and_sample(*a, seed=0, backend=b), _head, 2, "bias"),
    (lambda a, b: ops.generator_loss_and_sample(*a, seed=0, backend=b), _head, 3, "targets"),
    (lambda a, b: ops.replace_tokens(*a, backend=b), _replace, 1, "positions"),
    (lambda a, b: ops.replace_tokens(*a, backend=b), _replace, 2, "samples"),
    (lambda a, b: ops.replace_tokens(*a, backend=b), _replace, 3, "weights"),
    (lambda a, b: ops.rtd_loss(*a, backend=b), _rtd, 1, "weight"),
    (lambda a, b: ops.rtd_loss(*a, backend=b), _rtd, 2, "bias"),
    (lambda a, b: ops.rtd_loss(*a, backend=b), _rtd, 3, "labels"),
    (lambda a, b: ops.rtd_loss(*a, backend=b), _rtd, 4, "mask"),
    (lambda a, b: ops.rtd_loss_from_logits(a[0][..., 0], a[3], a[4], backend=b), _rtd, 3, "labels"),
    (lambda a, b: ops.rtd_loss_from_logits(a[0][..., 0], a[3], a[4], backend=b), _rtd, 4, "mask"),
]


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("call,make,index,name", CASES, ids=[f"{i}-{c[3]}" for i, c in enumerate(CASES)])
def test_argument_on_another_device_is_rejected_by_name(backend, call, make, index, name):
    try:
        ops.backend("cpu", backend)
    except ValueError as e:
        pytest.skip(str(e))
    args = list(make())
    args[index] = args[index].to("meta")
    with pytest.raises(ValueError, match=rf"\b{name}\b.*meta"):
        call(args, backend)
