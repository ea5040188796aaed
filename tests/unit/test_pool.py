"""The pool of open domains (pool.py): which domains a pop takes, and that appends and pops, however interleaved,
lose, duplicate or garble no domain (against a plain list)."""
from __future__ import annotations

import numpy as np
import torch

from verifier.pool import Pool


def pool_of(*tensors: torch.Tensor) -> Pool:
    pool = Pool()
    pool.append(*tensors)
    return pool


def test_fair_popping_takes_every_disjunct_in_turn():
    """pop(fair): the lowest domain of each disjunct before any disjunct's second, lowest keys first within a rank;
    without fair, the lowest keys whatever their disjunct. The pool keeps every other domain."""
    key = torch.tensor([-5.0, -4.0, -3.0, -0.1, -0.2, -9.0])
    disjunct = torch.tensor([0, 0, 0, 1, 2, 0])
    pool = pool_of(key, torch.arange(6), disjunct)
    taken_ids, _ = pool.pop(4, fair=True)
    assert taken_ids.tolist() == [5, 4, 3, 0] and sorted(pool.tensors[1].tolist()) == [1, 2]
    pool = pool_of(key, torch.arange(6), disjunct)
    taken_ids, _ = pool.pop(4)
    assert taken_ids.tolist() == [5, 0, 1, 2] and sorted(pool.tensors[1].tolist()) == [3, 4]


def test_depth_first_popping_takes_the_deepest_domains():
    """pop(depth=...): the deepest domains first, the lowest key first among equally deep ones; fair is ignored
    then (memory first)."""
    key = torch.tensor([-5.0, -4.0, -3.0, -0.1, -0.2, -9.0])
    depth = torch.tensor([1, 3, 3, 2, 3, 0])
    pool = pool_of(key, torch.arange(6), torch.zeros(6, dtype=torch.long))
    taken_ids, _ = pool.pop(4, fair=True, depth=depth)
    assert taken_ids.tolist() == [1, 2, 4, 3] and sorted(pool.tensors[1].tolist()) == [0, 5]


def test_appends_and_pops_keep_every_domain_whole():
    """300 random appends, pops (best-first, fair, depth-first) and filters on a pool with a small row limit: the
    pool holds exactly the domains a plain list says it should, each with its own rows (every tensor of a domain
    carries its id), every pop takes the domains its order asks for, and the lowest key is the list's."""
    rng = np.random.default_rng(0)
    pool, reference, next_id = Pool(limit=40), {}, 0  # id -> (key, disjunct)
    for _ in range(300):
        action = rng.integers(4)
        if action <= 1 or not reference:
            n = int(rng.integers(0, 25))
            ids = torch.arange(next_id, next_id + n)
            key = torch.as_tensor(rng.normal(size=n)).double()
            group = torch.as_tensor(rng.integers(0, 3, n))
            pool.append(key, ids, group, ids.double().reshape(-1, 1, 1).expand(n, 2, 3) * 0.5)
            reference.update({int(i): (float(k), int(g)) for i, k, g in zip(ids, key, group)})
            next_id += n
        elif action == 2:
            batch = int(rng.integers(1, 12))
            fair, deep = bool(rng.integers(2)), bool(rng.integers(2))
            ids_now = pool.tensors[1]
            depth = (ids_now % 3) if deep else None
            ids, group, payload = pool.pop(batch, fair=fair, depth=depth)
            assert len(ids) == min(batch, len(reference))
            assert torch.equal(payload, ids.double().reshape(-1, 1, 1).expand(len(ids), 2, 3) * 0.5)
            keys = [reference[int(i)][0] for i in ids]
            rest = [k for i, (k, _) in reference.items() if i not in set(ids.tolist())]
            if not fair and not deep:  # best-first: nothing left below what was taken
                assert not rest or max(keys) <= min(rest)
            for i, g in zip(ids.tolist(), group.tolist()):
                assert reference.pop(i)[1] == g
        else:
            dropped = int(rng.integers(3))
            pool.keep(pool.tensors[2] != dropped)
            reference = {i: v for i, v in reference.items() if v[1] != dropped}
        key, ids, group, payload = pool.tensors
        assert len(pool) == len(reference) and sorted(ids.tolist()) == sorted(reference)
        assert all(reference[int(i)] == (float(k), int(g)) for i, k, g in zip(ids, key, group))
        assert torch.equal(payload, ids.double().reshape(-1, 1, 1).expand(len(ids), 2, 3) * 0.5)
        assert pool.lowest() == (min(k for k, _ in reference.values()) if reference else None)
