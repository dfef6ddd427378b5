"""``multiprocessing.Pool`` on Nebula: ``from nebula.util.multiprocessing import Pool``."""
from multiprocessing import TimeoutError

from .pool import AsyncResult, Pool

__all__ = ["Pool", "AsyncResult", "TimeoutError"]
