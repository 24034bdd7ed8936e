"""Node addressing and the compact range of an RFC 6962 tree.

Only *perfect* subtrees are ever stored: node (level, index) covers the leaves
[index * 2**level, (index + 1) * 2**level). Every other hash the log needs (the root of a
tree whose size is not a power of two, the right-edge siblings in a proof) is the fold of the
few perfect subtrees that cover its range, so it is computed from stored nodes rather than
from leaves.
"""

from collections.abc import Iterable, Mapping
from hashlib import sha256 as _sha256
from typing import NamedTuple

from ledger.core.rfc6962 import EMPTY_ROOT, NODE_PREFIX, node_hash

__all__ = ["CompactRange", "NodeId", "RootAccumulator", "fold", "range_hash", "range_nodes", "split_point"]


class NodeId(NamedTuple):
    level: int
    # Shadows tuple.index on purpose: (level, index) is the name every Merkle log uses.
    index: int  # type: ignore[assignment]

    @property
    def begin(self) -> int:
        return self.index << self.level

    @property
    def end(self) -> int:
        return (self.index + 1) << self.level


def split_point(size: int) -> int:
    """The largest power of two strictly below size (RFC 6962's k). Requires size >= 2."""
    return 1 << ((size - 1).bit_length() - 1)


def range_nodes(begin: int, end: int) -> list[NodeId]:
    """The maximal perfect subtrees covering leaves [begin, end), left to right."""
    nodes: list[NodeId] = []
    while begin < end:
        # The node starting at begin can be no larger than begin's alignment allows
        # (its lowest set bit) nor than what is left of the range.
        level = (end - begin).bit_length() - 1
        if begin:
            level = min(level, (begin & -begin).bit_length() - 1)
        nodes.append(NodeId(level, begin >> level))
        begin += 1 << level
    return nodes


def fold(hashes: Iterable[bytes]) -> bytes:
    """Hash a left-to-right run of perfect subtrees of decreasing size into their range's MTH."""
    folded: bytes | None = None
    for h in reversed(list(hashes)):
        folded = h if folded is None else node_hash(h, folded)
    return EMPTY_ROOT if folded is None else folded


def range_hash(begin: int, end: int, nodes: Mapping[NodeId, bytes]) -> bytes:
    """MTH of leaves [begin, end) from stored perfect nodes.

    Requires begin to be aligned to the largest power of two not above end - begin, which holds
    for every range RFC 6962 hashes (the whole tree and each proof sibling).
    """
    return fold(nodes[node] for node in range_nodes(begin, end))


class CompactRange:
    """The right edge of a tree of `size` leaves: enough to append and to compute the root.

    Appending costs O(log n) hashes amortised O(1); it returns each perfect node it completes so
    the caller can store them.
    """

    __slots__ = ("nodes", "size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        self.size = size
        self.nodes: list[tuple[NodeId, bytes]] = list(zip(range_nodes(0, size), hashes, strict=True))

    @classmethod
    def from_nodes(cls, size: int, nodes: Mapping[NodeId, bytes]) -> "CompactRange":
        return cls(size, [nodes[node] for node in range_nodes(0, size)])

    def append(self, leaf: bytes) -> list[tuple[NodeId, bytes]]:
        """Add one leaf hash; return the perfect nodes this completes, the leaf first."""
        node, h = NodeId(0, self.size), leaf
        created = [(node, h)]
        # A completed node merges with its left neighbour while both are the same size,
        # exactly as a binary counter carries.
        while self.nodes and self.nodes[-1][0].level == node.level:
            left, left_hash = self.nodes.pop()
            node, h = NodeId(node.level + 1, left.index >> 1), node_hash(left_hash, h)
            created.append((node, h))
        self.nodes.append((node, h))
        self.size += 1
        return created

    def root(self) -> bytes:
        return fold(h for _, h in self.nodes)

    def copy(self) -> "CompactRange":
        clone = CompactRange()
        clone.size, clone.nodes = self.size, list(self.nodes)
        return clone


class RootAccumulator:
    """The root of a tree grown leaf by leaf, when none of its nodes need keeping.

    The same binary-counter carry as CompactRange.append, on bare hashes: checking a whole log
    against its checkpoint hashes every leaf, and this is that loop's inner step."""

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self._stack: list[bytes] = []
        self.size = 0

    def append(self, leaf: bytes) -> None:
        h, n, stack = leaf, self.size, self._stack
        while n & 1:
            h = _sha256(NODE_PREFIX + stack.pop() + h).digest()  # node_hash, inlined: the hot loop
            n >>= 1
        stack.append(h)
        self.size += 1

    def root(self) -> bytes:
        return fold(self._stack)
