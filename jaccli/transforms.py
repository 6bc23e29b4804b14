"""The public name of :mod:`jaccli.autodiff.transforms`, kept for the documented Python API
(``jaccli.transforms.compute``); new code imports from :mod:`jaccli.autodiff.transforms`."""

from jaccli.autodiff.transforms import *  # noqa: F403
from jaccli.autodiff.transforms import compute  # noqa: F401
