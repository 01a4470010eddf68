import numpy as np

from common.aggregate import model_averaging


def test_model_averaging_is_the_mean_and_pure():
    a, b = np.array([0.0, 2.0, -4.0]), np.array([2.0, 2.0, 4.0])
    np.testing.assert_array_equal(model_averaging(a, b), [1.0, 2.0, 0.0])
    np.testing.assert_array_equal(a, [0.0, 2.0, -4.0])
