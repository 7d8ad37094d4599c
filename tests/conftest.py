import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        params = [pytest.param("cpu")]
        params.append(pytest.param("cuda", marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="needs a CUDA GPU")))
        metafunc.parametrize("device", params)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
