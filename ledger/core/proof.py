"""RFC 9162 inclusion and consistency proofs: which nodes they need, how to build and verify them.

Building is split in two so storage stays out of the core: `*_nodes` names the perfect subtrees a
proof needs (O(log n) of them), the caller fetches exactly those, and `*_proof` hashes them into
the proof. Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2 to the letter.
"""

import hmac
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence

from ledger.core.errors import ProofError
from ledger.core.rfc6962 import HASH_SIZE, node_hash
from ledger.core.tree import NodeId, fold, range_hash, range_nodes, split_point

__all__ = [
    "InclusionVerifier",
    "ManyProofs",
    "Range",
    "consistency_nodes",
    "consistency_proof",
    "consistency_ranges",
    "inclusion_nodes",
    "inclusion_proof",
    "inclusion_ranges",
    "leaves_nodes",
    "nodes_for",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
    "verify_leaves",
]

Range = tuple[int, int]


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The leaf ranges whose hashes form PATH(index, D[size]), leaf side first."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    ranges: list[Range] = []
    begin, end = 0, size
    while end - begin > 1:
        middle = begin + (1 << ((end - begin - 1).bit_length() - 1))  # split_point, inlined: hot
        if index < middle:
            ranges.append((middle, end))
            end = middle
        else:
            ranges.append((begin, middle))
            begin = middle
    ranges.reverse()
    return ranges


def consistency_ranges(size1: int, size2: int) -> list[Range]:
    """The leaf ranges whose hashes form PROOF(size1, D[size2]), in RFC 9162 order."""
    if not 0 <= size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    if size1 in (0, size2):
        return []
    ranges: list[Range] = []
    begin, end, whole = 0, size2, True
    # SUBPROOF(m, D[begin:end], whole) unrolled; size1 stays an absolute leaf count.
    while size1 != end:
        middle = begin + split_point(end - begin)
        if size1 <= middle:
            ranges.append((middle, end))
            end = middle
        else:
            ranges.append((begin, middle))
            begin, whole = middle, False
    if not whole:
        ranges.append((begin, end))
    ranges.reverse()
    return ranges


def nodes_for(ranges: Sequence[Range]) -> list[NodeId]:
    """The stored perfect nodes needed to hash `ranges`."""
    return [node for begin, end in ranges for node in range_nodes(begin, end)]


def inclusion_nodes(index: int, size: int) -> list[NodeId]:
    return nodes_for(inclusion_ranges(index, size))


def consistency_nodes(size1: int, size2: int) -> list[NodeId]:
    return nodes_for(consistency_ranges(size1, size2))


def inclusion_proof(index: int, size: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    return [range_hash(begin, end, nodes) for begin, end in inclusion_ranges(index, size)]


class ManyProofs:
    """Inclusion proofs for many leaves of one tree: which nodes they need, then the proofs.

    Neighbours share most of their path, so each range is worked out and hashed once however
    many proofs it appears in."""

    def __init__(self, indexes: Sequence[int], size: int) -> None:
        self.indexes = indexes
        self.size = size
        self.ranges = [inclusion_ranges(i, size) for i in indexes]

    def nodes(self) -> list[NodeId]:
        distinct = {r for ranges in self.ranges for r in ranges}
        return list(dict.fromkeys(nodes_for(sorted(distinct))))

    def proofs(self, nodes: Mapping[NodeId, bytes]) -> list[list[bytes]]:
        hashed: dict[Range, bytes] = {}
        proofs = []
        for ranges in self.ranges:
            proof = []
            for r in ranges:
                found = hashed.get(r)
                if found is None:
                    found = hashed[r] = range_hash(r[0], r[1], nodes)
                proof.append(found)
            proofs.append(proof)
        return proofs


class InclusionVerifier:
    """Checks many inclusion proofs into one tree, sharing the work between neighbours.

    The inner part of a proof climbs through perfect subtrees: before step `level` the running
    hash claims to be node (level, index >> level), whose hash, and the proof elements above
    it, are the same for every leaf beneath it. Each node shown to lead to the root is
    remembered with that hash and those elements; a later proof is settled as soon as it
    reaches a remembered node with the same hash *and* the same remaining elements, which is
    exactly what finishing the walk would have checked, so tampering anywhere still fails.
    """

    def __init__(self, size: int, root: bytes) -> None:
        self.size = size
        self.root = root
        self._proven: dict[tuple[int, int], tuple[bytes, tuple[bytes | str, ...]]] = {}

    def verify(self, index: int, leaf_hash: bytes, proof: Sequence[bytes | str]) -> None:
        """Raise ProofError unless `proof` (hashes, or their hex) shows the leaf at `index`.

        Hex elements are decoded only when the walk uses them: most proofs meet a remembered
        node after a step or two, and the rest is compared as given."""
        inner, border = _decompose(index, self.size)
        _check_length(len(proof), inner + border, "inclusion")
        _check_hashes(leaf_hash)
        seed = leaf_hash
        climbed: list[tuple[tuple[int, int], bytes, int]] = []
        for level in range(inner):
            node = (level, index >> level)
            known = self._proven.get(node)
            if known is not None:
                if known[0] != seed or known[1] != tuple(proof[level:]):
                    raise ProofError("inclusion proof does not lead to the root")
                break
            climbed.append((node, seed, level))
            seed = _step(seed, _raw(proof[level]), (index >> level) & 1)
        else:
            seed = _chain_border_right(seed, [_raw(p) for p in proof[inner:]])
            if not hmac.compare_digest(seed, self.root):
                raise ProofError("inclusion proof does not lead to the root")
        for node, value, level in climbed:
            self._proven[node] = (value, tuple(proof[level:]))


def _raw(element: bytes | str) -> bytes:
    try:
        raw = bytes.fromhex(element) if isinstance(element, str) else element
    except ValueError:
        raise ProofError("a proof element is not hex") from None
    _check_hashes(raw)
    return raw


def consistency_proof(size1: int, size2: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    return [range_hash(begin, end, nodes) for begin, end in consistency_ranges(size1, size2)]


def _check_hashes(*hashes: bytes) -> None:
    if any(len(h) != HASH_SIZE for h in hashes):
        raise ProofError("a hash is not 32 bytes long")


def _check_length(got: int, want: int, kind: str) -> None:
    if got != want:
        raise ProofError(f"{kind} proof has {got} hashes, the tree needs {want}")


# The walk, in transparency-dev/merkle's shape. A proof for leaf `index` of a tree of `size`
# leaves has an inner part, the siblings below the level where the paths to `index` and to the
# last leaf part (bits.Len(index ^ (size - 1)) of them), and a border part, one hash for each
# set bit of index above that level: the left siblings along the right border of the tree.


def _decompose(index: int, size: int) -> tuple[int, int]:
    """(inner, border) proof lengths for leaf `index` of a tree of `size`. Requires index < size."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    inner = (index ^ (size - 1)).bit_length()
    return inner, (index >> inner).bit_count()


def _step(seed: bytes, sibling: bytes, seed_is_right: int) -> bytes:
    return node_hash(sibling, seed) if seed_is_right else node_hash(seed, sibling)


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    """Climb the inner part: bit `level` of index says on which side the seed is."""
    for level, sibling in enumerate(proof):
        seed = _step(seed, sibling, (index >> level) & 1)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    """The same climb, hashing only the left siblings: the old tree of a consistency proof
    has nothing on the right."""
    for level, sibling in enumerate(proof):
        if (index >> level) & 1:
            seed = node_hash(sibling, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for sibling in proof:
        seed = node_hash(sibling, seed)
    return seed


def root_from_inclusion_proof(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` implies for `leaf_hash` at `index` (RFC 9162 2.1.3.2)."""
    inner, border = _decompose(index, size)
    _check_length(len(proof), inner + border, "inclusion")
    _check_hashes(leaf_hash, *proof)
    return _chain_border_right(_chain_inner(leaf_hash, proof[:inner], index), proof[inner:])


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless `proof` shows `leaf_hash` at `index` in the tree with `root`."""
    _check_hashes(root)
    if not hmac.compare_digest(root_from_inclusion_proof(index, size, leaf_hash, proof), root):
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> None:
    """Raise ProofError unless `proof` shows the tree (size1, root1) is a prefix of (size2, root2)."""
    if not 0 <= size1 <= size2:
        raise ProofError(f"size {size1} cannot be a prefix of size {size2}")
    _check_hashes(root1, root2, *proof)
    if size1 == size2 or size1 == 0:
        if proof:
            raise ProofError("a trivial consistency proof must be empty")
        if size1 == size2 and not hmac.compare_digest(root1, root2):
            raise ProofError("equal sizes with different roots")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    # The proof is the inclusion proof of the old tree's last leaf, from the level of the largest
    # perfect subtree the old tree ends with: that subtree's hash is the seed.
    inner, border = _decompose(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    if size1 == 1 << shift:
        # The old tree is itself a perfect subtree of the new one: its root is the seed.
        seed, path = root1, list(proof)
    else:
        seed, path = proof[0], list(proof[1:])
    _check_length(len(path), inner + border, "consistency")
    mask = (size1 - 1) >> shift
    hash1 = _chain_border_right(_chain_inner_right(seed, path[:inner], mask), path[inner:])
    hash2 = _chain_border_right(_chain_inner(seed, path[:inner], mask), path[inner:])
    if not (hmac.compare_digest(hash1, root1) and hmac.compare_digest(hash2, root2)):
        raise ProofError("consistency proof does not lead to both roots")


# Many leaves of one tree at once. Every leaf lies in exactly one perfect subtree of the tree's
# compact range (range_nodes(0, size)), and the root is the fold of those subtrees. So: climb
# from the leaves to the top of their subtree, taking a stored node for each sibling that is not
# itself computed, and require that top to equal the stored one; then require the stored tops to
# fold into the signed root. Each node on the way is hashed once, whatever the number of leaves
# that share it: far less work than one proof per leaf.


def _climb(top: NodeId, indexes: Sequence[int]) -> Iterator[tuple[int, list[int], list[int]]]:
    """For each level below `top`: the level, the computed node indexes, and the siblings to fetch."""
    current = sorted(set(indexes))
    for level in range(top.level):
        have = set(current)
        needed = [i ^ 1 for i in current if i ^ 1 not in have]
        yield level, current, needed
        current = sorted({i >> 1 for i in current})


def leaves_nodes(indexes: Sequence[int], size: int) -> list[NodeId]:
    """The stored nodes `verify_leaves` needs for the leaves at `indexes` of a tree of `size`."""
    tops = range_nodes(0, size)
    wanted: dict[NodeId, None] = dict.fromkeys(tops)
    for top, members in _by_top(indexes, size, tops).items():
        for level, _, needed in _climb(top, members):
            wanted.update(dict.fromkeys(NodeId(level, i) for i in needed))
    return list(wanted)


def verify_leaves(size: int, root: bytes, leaves: Mapping[int, bytes], nodes: Mapping[NodeId, bytes]) -> None:
    """Raise ProofError unless every leaf hash in `leaves` (index -> hash) is part of the tree of
    `size` with `root`, given the stored nodes `leaves_nodes` named."""
    tops = range_nodes(0, size)
    _check_hashes(root, *leaves.values())
    for top, members in _by_top(list(leaves), size, tops).items():
        computed = {i: leaves[i] for i in members}
        for level, current, _ in _climb(top, members):
            parents: dict[int, bytes] = {}
            for i in current:
                left, right = i & ~1, i | 1
                if i >> 1 not in parents:
                    parents[i >> 1] = node_hash(
                        computed.get(left) or nodes[NodeId(level, left)],
                        computed.get(right) or nodes[NodeId(level, right)],
                    )
            computed = parents
        if not hmac.compare_digest(computed[top.index], nodes[top]):
            raise ProofError(f"the leaves under node {tuple(top)} do not hash to it")
    if not hmac.compare_digest(fold(nodes[t] for t in tops), root):
        raise ProofError("the stored tree does not lead to the root")


def _by_top(indexes: Sequence[int], size: int, tops: Sequence[NodeId]) -> dict[NodeId, list[int]]:
    begins = [t.begin for t in tops]
    grouped: dict[NodeId, list[int]] = {}
    for index in indexes:
        if not 0 <= index < size:
            raise ProofError(f"leaf index {index} is not in a tree of size {size}")
        grouped.setdefault(tops[bisect_right(begins, index) - 1], []).append(index)
    return grouped
