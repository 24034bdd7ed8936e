"""RFC 9162 inclusion and consistency proofs: which nodes they need, how to build and verify them.

Building is split in two so storage stays out of the core: `*_nodes` names the perfect subtrees a
proof needs (O(log n) of them), the caller fetches exactly those, and `*_proof` hashes them into
the proof. Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2 to the letter.
"""

import hmac
from collections.abc import Mapping, Sequence

from ledger.core.errors import ProofError
from ledger.core.rfc6962 import HASH_SIZE, node_hash
from ledger.core.tree import NodeId, range_hash, range_nodes, split_point

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

    It runs RFC 9162's algorithm, whose state (fn, sn) before each step names one node of the
    tree (sn = (size - 1) >> level strictly decreases as the walk climbs). Every state shown to
    lead to the root is remembered with the hash reached there and the proof elements still to
    come. A later proof is settled as soon as it reaches a remembered state with the same hash
    *and* the same remaining elements, which is exactly what finishing the walk would have
    checked; tampering anywhere still fails.
    """

    def __init__(self, size: int, root: bytes) -> None:
        self.size = size
        self.root = root
        self._proven: dict[tuple[int, int], tuple[bytes, tuple[bytes | str, ...]]] = {}

    def verify(self, index: int, leaf_hash: bytes, proof: Sequence[bytes | str]) -> None:
        """Raise ProofError unless `proof` (hashes, or their hex) shows the leaf at `index`.

        Hex elements are decoded only when the walk uses them: most proofs meet a remembered
        state after a step or two, and the rest is compared as given."""
        if not 0 <= index < self.size:
            raise ProofError(f"leaf index {index} is not in a tree of size {self.size}")
        fn, sn, r = index, self.size - 1, leaf_hash
        if len(r) != HASH_SIZE:
            raise ProofError("a hash is not 32 bytes long")
        path: list[tuple[tuple[int, int], bytes, int]] = []
        for k, p in enumerate(proof):
            known = self._proven.get((fn, sn))
            if known is not None:
                if known[0] != r or known[1] != tuple(proof[k:]):
                    raise ProofError("inclusion proof does not lead to the root")
                break
            if sn == 0:
                raise ProofError("inclusion proof is longer than the tree is deep")
            h = _raw(p)
            path.append(((fn, sn), r, k))
            if fn & 1 or fn == sn:
                r = node_hash(h, r)
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
            else:
                r = node_hash(r, h)
            fn, sn = fn >> 1, sn >> 1
        else:
            if sn != 0:
                raise ProofError("inclusion proof is shorter than the tree is deep")
            if not hmac.compare_digest(r, self.root):
                raise ProofError("inclusion proof does not lead to the root")
        for state, value, k in path:
            self._proven[state] = (value, tuple(proof[k:]))


def _raw(element: bytes | str) -> bytes:
    try:
        raw = bytes.fromhex(element) if isinstance(element, str) else element
    except ValueError:
        raise ProofError("a proof element is not hex") from None
    if len(raw) != HASH_SIZE:
        raise ProofError("a hash is not 32 bytes long")
    return raw


def consistency_proof(size1: int, size2: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    return [range_hash(begin, end, nodes) for begin, end in consistency_ranges(size1, size2)]


def _check_hashes(*hashes: bytes) -> None:
    if any(len(h) != HASH_SIZE for h in hashes):
        raise ProofError("a hash is not 32 bytes long")


def root_from_inclusion_proof(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` implies for `leaf_hash` at `index` (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    _check_hashes(leaf_hash, *proof)
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    return r


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
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        # size1 is a power of two: the old root is itself a node of the new tree.
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the tree is deep")
    if not (hmac.compare_digest(fr, root1) and hmac.compare_digest(sr, root2)):
        raise ProofError("consistency proof does not lead to both roots")
