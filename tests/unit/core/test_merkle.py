"""The Merkle tree and its proofs: RFC 6962 vectors, a naive model, pymerkle, and corrupted proofs."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree
from pymerkle.core import _inclusion_path_layout
from pymerkle.proof import InclusionProof, InvalidProof

from ledger.core.errors import ProofError
from ledger.core.proof import (
    consistency_nodes,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from ledger.core.rfc6962 import EMPTY_ROOT, leaf_hash
from ledger.core.tree import CompactRange, NodeId, range_nodes

from .reference import NaiveTree

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "rfc6962.json").read_text())
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def build(leaves: list[bytes]) -> tuple[dict[NodeId, bytes], list[bytes]]:
    """Append leaves one by one; return every stored node and the root after each append."""
    tree = CompactRange()
    stored: dict[NodeId, bytes] = {}
    roots = []
    for leaf in leaves:
        for node, h in tree.append(leaf_hash(leaf)):
            assert node not in stored, "a perfect node is written exactly once"
            stored[node] = h
        roots.append(tree.root())
    return stored, roots


def h(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


VECTOR_LEAVES = h(VECTORS["leaves"])
VECTOR_NODES, VECTOR_ROOTS = build(VECTOR_LEAVES)


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert CompactRange().root() == EMPTY_ROOT == bytes.fromhex(VECTORS["empty_root"])


def test_roots_match_rfc6962_vectors() -> None:
    assert h(VECTORS["roots"]) == VECTOR_ROOTS


@pytest.mark.parametrize("vector", VECTORS["inclusion"], ids=lambda v: f"{v['index']}-of-{v['size']}")
def test_inclusion_vectors(vector: dict) -> None:
    index, size, expected = vector["index"], vector["size"], h(vector["proof"])
    assert inclusion_proof(index, size, VECTOR_NODES) == expected
    verify_inclusion(index, size, leaf_hash(VECTOR_LEAVES[index]), expected, VECTOR_ROOTS[size - 1])


@pytest.mark.parametrize("vector", VECTORS["consistency"], ids=lambda v: f"{v['size1']}-to-{v['size2']}")
def test_consistency_vectors(vector: dict) -> None:
    size1, size2, expected = vector["size1"], vector["size2"], h(vector["proof"])
    assert consistency_proof(size1, size2, VECTOR_NODES) == expected
    verify_consistency(size1, size2, VECTOR_ROOTS[size1 - 1], VECTOR_ROOTS[size2 - 1], expected)


MODEL_LEAVES = [i.to_bytes(4, "big") * (i % 5) for i in range(300)]
MODEL = NaiveTree(MODEL_LEAVES)
MODEL_NODES, MODEL_ROOTS = build(MODEL_LEAVES)


def test_every_size_up_to_300_against_the_naive_model() -> None:
    for size in range(1, 301):
        root = MODEL_ROOTS[size - 1]
        assert root == MODEL.root(size)
        assert CompactRange.from_nodes(size, MODEL_NODES).root() == root
        for index in range(size):
            proof = inclusion_proof(index, size, MODEL_NODES)
            assert proof == MODEL.inclusion(index, size)
            verify_inclusion(index, size, leaf_hash(MODEL_LEAVES[index]), proof, root)
        for size1 in range(size + 1):
            proof = consistency_proof(size1, size, MODEL_NODES)
            assert proof == MODEL.consistency(size1, size)
            old_root = MODEL_ROOTS[size1 - 1] if size1 else EMPTY_ROOT
            verify_consistency(size1, size, old_root, root, proof)


def test_proofs_need_only_logarithmically_many_nodes() -> None:
    size = 1_000_003
    assert len(inclusion_nodes(123_457, size)) <= 2 * size.bit_length()
    assert len(consistency_nodes(500_001, size)) <= 2 * size.bit_length()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_larger_trees_against_the_naive_model(data: st.DataObject) -> None:
    size = data.draw(st.integers(301, 3000), label="size")
    leaves = [i.to_bytes(3, "big") for i in range(size)]
    model = NaiveTree(leaves)
    nodes, roots = build(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    size1 = data.draw(st.integers(0, size), label="size1")
    proof = inclusion_proof(index, size, nodes)
    assert proof == model.inclusion(index, size)
    verify_inclusion(index, size, leaf_hash(leaves[index]), proof, roots[-1])
    assert consistency_proof(size1, size, nodes) == model.consistency(size1, size)


def test_range_nodes_cover_exactly_and_are_aligned() -> None:
    for begin in range(0, 70):
        for end in range(begin, 140):
            nodes = range_nodes(begin, end)
            covered = [leaf for n in nodes for leaf in range(n.begin, n.end)]
            assert covered == list(range(begin, end))
            assert all(n.begin % (1 << n.level) == 0 for n in nodes)


def test_inclusion_proofs_verify_with_pymerkle() -> None:
    """An independent verifier: pymerkle's path is the leaf hash followed by the RFC 9162 proof."""
    tree = InmemoryTree(algorithm="sha256")
    leaves = MODEL_LEAVES[:130]
    for leaf in leaves:
        tree.append_entry(leaf)
    for size in range(1, len(leaves) + 1):
        assert tree.get_root(size) == MODEL_ROOTS[size - 1]
        for index in range(size):
            proof = inclusion_proof(index, size, MODEL_NODES)
            rule, _ = _inclusion_path_layout(index + 1, size)
            theirs = InclusionProof("sha256", True, size, index + 1, rule, [leaf_hash(leaves[index]), *proof])
            theirs.verify(leaf_hash(leaves[index]), MODEL_ROOTS[size - 1], index=index + 1, size=size)
            assert tree.prove_inclusion(index + 1, size).path[1:] == proof
    bad = InclusionProof("sha256", True, 7, 3, _inclusion_path_layout(3, 7)[0], [SOME_HASH] * 4)
    with pytest.raises(InvalidProof):
        bad.verify(SOME_HASH, MODEL_ROOTS[6])


def test_consistency_roots_agree_with_pymerkle() -> None:
    tree = InmemoryTree(algorithm="sha256")
    for leaf in MODEL_LEAVES[:64]:
        tree.append_entry(leaf)
    for size1 in range(1, 64):
        for size2 in range(size1, 65):
            proof = consistency_proof(size1, size2, MODEL_NODES)
            verify_consistency(size1, size2, tree.get_root(size1), tree.get_root(size2), proof)


def assert_refused(verify, probe, desc: str) -> None:  # type: ignore[no-untyped-def]
    try:
        verify(*probe)
    except ProofError:
        return
    pytest.fail(f"verified a corrupted proof: {desc}")


def _flip(value: bytes, bit: int = 3) -> bytes:
    return bytes([value[0] ^ (1 << bit)]) + value[1:]


def corrupted_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes):  # type: ignore[no-untyped-def]
    """The probes transparency-dev/merkle uses: each must fail to verify."""
    yield "index - 1", index - 1, size, leaf, proof, root
    yield "index + 1", index + 1, size, leaf, proof, root
    yield "index ^ 2", index ^ 2, size, leaf, proof, root
    yield "size * 2", index, size * 2, leaf, proof, root
    yield "size // 2", index, size // 2, leaf, proof, root
    yield "wrong leaf", index, size, SOME_HASH, proof, root
    yield "empty root", index, size, leaf, proof, EMPTY_ROOT
    yield "random root", index, size, leaf, proof, SOME_HASH
    yield "trailing garbage", index, size, leaf, [*proof, b""], root
    yield "trailing root", index, size, leaf, [*proof, root], root
    yield "preceding garbage", index, size, leaf, [b"", *proof], root
    yield "preceding root", index, size, leaf, [root, *proof], root
    for i in range(len(proof)):
        yield f"modified proof[{i}]", index, size, leaf, [*proof[:i], _flip(proof[i]), *proof[i + 1 :]], root
    if proof:
        yield "removed component", index, size, leaf, proof[:-1], root
    if len(proof) > 1:
        yield "inserted component", index, size, leaf, [proof[0], SOME_HASH, *proof[1:]], root


@pytest.mark.parametrize(("index", "size"), [(0, 1), (0, 8), (5, 8), (2, 3), (1, 5), (13, 300), (299, 300)])
def test_corrupted_inclusion_proofs_fail(index: int, size: int) -> None:
    leaves = MODEL_LEAVES if size > 8 else VECTOR_LEAVES
    nodes, roots = (MODEL_NODES, MODEL_ROOTS) if size > 8 else (VECTOR_NODES, VECTOR_ROOTS)
    leaf, root = leaf_hash(leaves[index]), roots[size - 1]
    proof = inclusion_proof(index, size, nodes)
    verify_inclusion(index, size, leaf, proof, root)
    for desc, *probe in corrupted_inclusion(index, size, leaf, proof, root):
        assert_refused(verify_inclusion, probe, desc)


@pytest.mark.parametrize(("size1", "size2"), [(1, 8), (6, 8), (2, 5), (6, 7), (3, 300), (128, 300), (299, 300)])
def test_corrupted_consistency_proofs_fail(size1: int, size2: int) -> None:
    roots = MODEL_ROOTS if size2 > 8 else VECTOR_ROOTS
    nodes = MODEL_NODES if size2 > 8 else VECTOR_NODES
    root1, root2 = roots[size1 - 1], roots[size2 - 1]
    proof = consistency_proof(size1, size2, nodes)
    verify_consistency(size1, size2, root1, root2, proof)
    probes = [
        ("size1 - 1", size1 - 1, size2, root1, root2, proof),
        ("size1 + 1", size1 + 1, size2, root1, root2, proof),
        ("size1 ^ 2", size1 ^ 2, size2, root1, root2, proof),
        ("size2 * 2", size1, size2 * 2, root1, root2, proof),
        ("size2 // 2", size1, size2 // 2, root1, root2, proof),
        ("wrong root1", size1, size2, SOME_HASH, root2, proof),
        ("wrong root2", size1, size2, root1, SOME_HASH, proof),
        ("swapped roots", size1, size2, root2, root1, proof),
        ("empty proof", size1, size2, root1, root2, []),
        ("trailing garbage", size1, size2, root1, root2, [*proof, b""]),
        ("trailing root1", size1, size2, root1, root2, [*proof, root1]),
        ("trailing root2", size1, size2, root1, root2, [*proof, root2]),
        ("preceding garbage", size1, size2, root1, root2, [b"", *proof]),
        ("preceding root1", size1, size2, root1, root2, [root1, *proof]),
        ("preceding root2", size1, size2, root1, root2, [root2, *proof]),
        ("preceding proof[0]", size1, size2, root1, root2, [proof[0], *proof]),
        ("truncated proof", size1, size2, root1, root2, proof[:-1]),
    ]
    probes += [
        (
            f"modified proof[{i}]",
            size1,
            size2,
            root1,
            root2,
            [*proof[:i], _flip(proof[i], 4), *proof[i + 1 :]],
        )
        for i in range(len(proof))
    ]
    for desc, *probe in probes:
        assert_refused(verify_consistency, probe, desc)


def test_trivial_consistency() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, SOME_HASH, VECTOR_ROOTS[4], [])
    verify_consistency(3, 3, VECTOR_ROOTS[2], VECTOR_ROOTS[2], [])
    with pytest.raises(ProofError):
        verify_consistency(3, 3, VECTOR_ROOTS[2], VECTOR_ROOTS[3], [])
    with pytest.raises(ProofError):
        verify_consistency(2, 1, VECTOR_ROOTS[1], VECTOR_ROOTS[0], [])
    with pytest.raises(ProofError):
        verify_consistency(0, 1, EMPTY_ROOT, VECTOR_ROOTS[0], [EMPTY_ROOT])


def test_out_of_range_requests_are_refused() -> None:
    for index, size in [(0, 0), (1, 1), (-1, 5), (5, 5)]:
        with pytest.raises(ProofError):
            inclusion_nodes(index, size)
        with pytest.raises(ProofError):
            root_from_inclusion_proof(index, size, SOME_HASH, [])
    with pytest.raises(ProofError):
        consistency_nodes(6, 5)


def test_batch_proofs_equal_single_proofs() -> None:
    from ledger.core.proof import ManyProofs

    for size in (1, 2, 7, 64, 300):
        for indexes in (list(range(size)), list(range(size // 3, size))):
            many = ManyProofs(indexes, size)
            needed = {n: MODEL_NODES[n] for n in many.nodes()}
            assert many.proofs(needed) == [inclusion_proof(i, size, MODEL_NODES) for i in indexes]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 150), st.randoms())
def test_the_shared_work_verifier_accepts_exactly_what_verify_inclusion_accepts(size: int, rnd) -> None:  # type: ignore[no-untyped-def]
    from ledger.core.proof import InclusionVerifier

    root = MODEL_ROOTS[size - 1]
    order = list(range(size))
    rnd.shuffle(order)
    verifier = InclusionVerifier(size, root)
    for index in order:
        verifier.verify(index, leaf_hash(MODEL_LEAVES[index]), inclusion_proof(index, size, MODEL_NODES))
    # After every honest proof is known, each corruption must still fail.
    index = rnd.randrange(size)
    proof = inclusion_proof(index, size, MODEL_NODES)
    leaf = leaf_hash(MODEL_LEAVES[index])
    for k in range(len(proof)):
        bad = [*proof[:k], _flip(proof[k]), *proof[k + 1 :]]
        with pytest.raises(ProofError):
            verifier.verify(index, leaf, bad)
    with pytest.raises(ProofError):
        verifier.verify(index, SOME_HASH, proof)
    with pytest.raises(ProofError):
        verifier.verify(index, leaf, [*proof, SOME_HASH])


@pytest.mark.parametrize(("index", "size"), [(0, 8), (5, 8), (2, 3), (13, 300), (299, 300)])
def test_the_shared_work_verifier_refuses_the_corrupted_probes(index: int, size: int) -> None:
    from ledger.core.proof import InclusionVerifier

    leaf, root = leaf_hash(MODEL_LEAVES[index]), MODEL_ROOTS[size - 1]
    proof = inclusion_proof(index, size, MODEL_NODES)
    for desc, probe_index, probe_size, probe_leaf, probe_proof, probe_root in corrupted_inclusion(
        index, size, leaf, proof, root
    ):
        if probe_size != size or probe_root != root or not 0 <= probe_index < size:
            continue  # the verifier is for one tree; other sizes and roots are other verifiers
        fresh, warm = InclusionVerifier(size, root), InclusionVerifier(size, root)
        for other in range(size):
            if other != probe_index:
                warm.verify(other, leaf_hash(MODEL_LEAVES[other]), inclusion_proof(other, size, MODEL_NODES))
        for verifier in (fresh, warm):
            assert_refused(verifier.verify, (probe_index, probe_leaf, probe_proof), desc)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_many_leaves_verify_together_and_any_alteration_is_refused(data: st.DataObject) -> None:
    from ledger.core.proof import leaves_nodes, verify_leaves

    size = data.draw(st.integers(1, 300))
    indexes = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=40, unique=True))
    nodes, roots = MODEL_NODES, MODEL_ROOTS
    leaves = {i: leaf_hash(MODEL_LEAVES[i]) for i in indexes}
    needed = {n: nodes[n] for n in leaves_nodes(indexes, size)}
    verify_leaves(size, roots[size - 1], leaves, needed)
    # Only logarithmically many nodes per leaf, and never a leaf we were given.
    assert len(needed) <= len(indexes) * size.bit_length() + size.bit_length()
    # An altered leaf, an altered stored node, or the wrong root: refused.
    victim = data.draw(st.sampled_from(indexes))
    with pytest.raises(ProofError):
        verify_leaves(size, roots[size - 1], {**leaves, victim: _flip(leaves[victim])}, needed)
    node = data.draw(st.sampled_from(sorted(needed)))
    with pytest.raises(ProofError):
        verify_leaves(size, roots[size - 1], leaves, {**needed, node: _flip(needed[node])})
    with pytest.raises(ProofError):
        verify_leaves(size, _flip(roots[size - 1]), leaves, needed)
