"""How alike two images look: a perceptual (difference) hash and a fast search for close pairs.

Used by ``pipetrace check`` to find near-duplicates and train/validation leakage: a copy
that was re-encoded, resized or lightly edited keeps almost the same hash, while unrelated
photos differ in about half of the bits. On CIFAR-10 a distance of 6 of 128 bits finds the
known train/test near-copies without flagging look-alike but different photos.
"""

from __future__ import annotations

from collections import defaultdict

import cv2
import numpy as np

HASH_BITS = 128  # difference hash: 64 horizontal + 64 vertical gradient signs


def difference_hash(bgr: np.ndarray) -> int:
    """128-bit dHash of an (H, W, 3) uint8 image: signs of horizontal and vertical gradients
    on a 9 x 8 and an 8 x 9 grey thumbnail. Re-encoding or resizing changes a few bits."""
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    wide = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)  # (8, 9)
    tall = cv2.resize(grey, (8, 9), interpolation=cv2.INTER_AREA).astype(np.int16)  # (9, 8)
    bits = np.concatenate([(wide[:, 1:] > wide[:, :-1]).ravel(),
                           (tall[1:, :] > tall[:-1, :]).ravel()])  # (128,) bool
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def colour_count(bgr: np.ndarray) -> int:
    """Distinct colours in a 32 x 32 nearest-neighbour thumbnail (photos: hundreds)."""
    thumb = cv2.resize(bgr, (32, 32), interpolation=cv2.INTER_NEAREST).astype(np.uint32)
    packed = (thumb[..., 0] << 16) | (thumb[..., 1] << 8) | thumb[..., 2]  # (32, 32)
    return int(np.unique(packed).size)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per element of a uint64 array."""
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def near_pairs(hashes: list[int], max_distance: int) -> set[tuple[int, int]]:
    """Index pairs (i < j) whose hashes differ in at most ``max_distance`` bits.

    Pigeonhole banding: split the bits into ``max_distance + 1`` bands; two hashes that
    close agree exactly on at least one band, so only pairs sharing a band are compared.
    """
    bands = max_distance + 1
    width = -(-HASH_BITS // bands)
    buckets = defaultdict(list)
    for i, h in enumerate(hashes):
        for b in range(bands):
            buckets[b, (h >> (b * width)) & ((1 << width) - 1)].append(i)
    hi = np.array([h >> 64 for h in hashes], dtype=np.uint64)
    lo = np.array([h & ((1 << 64) - 1) for h in hashes], dtype=np.uint64)
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        idx = np.array(members)
        for start in range(0, len(idx), 512):  # bounded memory for large buckets
            rows = idx[start:start + 512]
            d = _popcount(hi[rows, None] ^ hi[None, idx]) + _popcount(lo[rows, None] ^ lo[None, idx])
            for r, c in zip(*np.nonzero(d <= max_distance), strict=True):
                i, j = int(rows[r]), int(idx[c])
                if i < j:
                    pairs.add((i, j))
    return pairs
