"""A Merkle tree built like OpenZeppelin's StandardMerkleTree, checkable with OpenZeppelin's MerkleProof.

Leaves are already hashed (the caller double-hashes its encoded values). Leaves are sorted
ascending, laid out in a complete binary tree stored as an array (leaf `i` of the sorted list
at index `len(tree) - 1 - i`), and every inner node is `keccak256` of its two children sorted
ascending (commutative), so a proof is just the list of sibling hashes from leaf to root.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_utils import keccak


def hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


def process_proof(proof: Sequence[bytes], leaf: bytes) -> bytes:
    """The root that `proof` leads to from `leaf` (MerkleProof.processProof)."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node


def verify_proof(proof: Sequence[bytes], root: bytes, leaf: bytes) -> bool:
    return process_proof(proof, leaf) == root


class MerkleTree:
    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        if any(len(leaf) != 32 for leaf in leaves):
            raise ValueError("leaves must be 32-byte hashes")
        if len(set(leaves)) != len(leaves):
            raise ValueError("leaves must be distinct")
        self.leaves = sorted(leaves)
        size = 2 * len(self.leaves) - 1
        tree: list[bytes] = [b""] * size
        for i, leaf in enumerate(self.leaves):
            tree[size - 1 - i] = leaf
        for i in range(size - 1 - len(self.leaves), -1, -1):
            tree[i] = hash_pair(tree[2 * i + 1], tree[2 * i + 2])
        self.tree = tree
        self._index = {leaf: size - 1 - i for i, leaf in enumerate(self.leaves)}

    @property
    def root(self) -> bytes:
        return self.tree[0]

    def proof(self, leaf: bytes) -> list[bytes]:
        """Sibling hashes from `leaf` up to the root."""
        try:
            index = self._index[leaf]
        except KeyError:
            raise ValueError("leaf is not in the tree") from None
        proof = []
        while index > 0:
            sibling = index - 1 if index % 2 == 0 else index + 1
            proof.append(self.tree[sibling])
            index = (index - 1) // 2
        return proof
