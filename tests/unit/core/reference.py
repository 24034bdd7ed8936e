"""A deliberately naive RFC 6962 model, written straight from the RFC's recursive definitions."""

import functools

from ledger.core.rfc6962 import EMPTY_ROOT, leaf_hash, node_hash


class NaiveTree:
    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.mth = functools.cache(self._mth)

    def _k(self, n: int) -> int:
        k = 1
        while k * 2 < n:
            k *= 2
        return k

    def _mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return leaf_hash(self.leaves[lo])
        k = self._k(n)
        return node_hash(self.mth(lo, lo + k), self.mth(lo + k, hi))

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = self._k(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = self._k(n)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, b), self.mth(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]

    def root(self, size: int) -> bytes:
        return self.mth(0, size)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return self.path(index, 0, size)

    def consistency(self, size1: int, size2: int) -> list[bytes]:
        if size1 in (0, size2):
            return []
        return self.subproof(size1, 0, size2, True)
