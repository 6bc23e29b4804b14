import numpy as np
from conftest import EXAMPLES, jac


def test_quickstart_forum_case():
    run = jac(
        "jvp",
        f"{EXAMPLES}/quickstart.py:f",
        "-p",
        f"{EXAMPLES}/x.npy",
        "-t",
        f"{EXAMPLES}/v.npy",
        "--format",
        "npz",
        "--no-timings",
    )
    assert run.code == 0, run
    res = run.npz()
    np.testing.assert_array_equal(res["jvp"], [6, 14, 22])
    np.testing.assert_array_equal(res["output"], [4, 4, 4])
