import os

import pytest
import torch
from hypothesis import settings

# Without a GPU, Triton's interpreter runs the fused kernel on the CPU (tests/kernels/
# test_fused.py).  It is read when a kernel is defined, so set it before anything imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The default is derandomized, so CI runs the same examples every time: the kernel is only
# sqrt(eps)-conditioned at nearly collinear inputs, and a rare random draw must not turn a
# run red by chance.  `pytest --hypothesis-profile=thorough` searches 1000 fresh examples
# per property.
settings.register_profile("ntkcheck", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile("ntkcheck")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Decoded datasets go to a folder of this test session, never the user's cache."""
    previous = os.environ.get("NTKCHECK_CACHE")
    os.environ["NTKCHECK_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("NTKCHECK_CACHE")
    else:
        os.environ["NTKCHECK_CACHE"] = previous
