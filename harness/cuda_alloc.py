"""A replay of PyTorch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp, default settings: no
expandable segments, no max_split_size, no power-of-two rounding), so that a trace of tensor allocations and frees
made without a GPU gives the figures torch.cuda.memory_allocated / max_memory_allocated / memory_reserved would show.

The rules replayed:
- a request is rounded up to a multiple of 512 bytes (512 at least);
- requests of at most 1 MiB come from the small pool, larger ones from the large pool;
- a request takes the smallest cached free block of its pool that is large enough (ties: the lowest address);
  with none, a new segment is reserved: 2 MiB for a small request, 20 MiB for one under 10 MiB, else the request
  rounded up to 2 MiB;
- the block is split when what remains is at least 512 bytes (small pool) or more than 1 MiB (large pool); an
  unsplit block is handed out, and counted as allocated, whole: this is why allocated bytes exceed the tensors'
  bytes by up to 1 MiB per large tensor, depending on what the cache holds;
- a freed block merges with free neighbours of its segment; segments are never given back (no empty_cache).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
LARGE_BUFFER = 20 << 20
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20


def round_size(size: int) -> int:
    return MIN_BLOCK if size < MIN_BLOCK else MIN_BLOCK * -(-size // MIN_BLOCK)


def segment_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * -(-size // ROUND_LARGE)


@dataclass(eq=False)
class _Block:
    addr: int
    size: int
    small: bool
    prev: _Block | None = None
    next: _Block | None = None
    allocated: bool = False


@dataclass
class CachingAllocator:
    """allocated / reserved bytes as the caching allocator counts them; `peak` is the allocated high-water mark
    since the last reset_peak()."""

    allocated: int = 0
    reserved: int = 0
    peak: int = 0
    peak_reserved: int = 0
    _pools: dict = field(default_factory=lambda: {True: [], False: []})  # small? -> sorted [(size, addr)]
    _free: dict = field(default_factory=dict)  # addr -> free block
    _live: dict = field(default_factory=dict)  # key -> allocated block
    _next_addr: int = 1 << 30

    def reset_peak(self) -> None:
        self.peak = self.allocated

    def malloc(self, key, nbytes: int) -> int:
        """Allocate for `key`; returns the bytes counted as allocated (the block's size)."""
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self._pools[small]
        at = bisect.bisect_left(pool, (size, 0))
        if at < len(pool):
            _, addr = pool.pop(at)
            block = self._free.pop(addr)
        else:
            block = _Block(self._next_addr, segment_size(size), small)
            self._next_addr += block.size + ROUND_LARGE  # segments are never adjacent
            self.reserved += block.size
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        remaining = block.size - size
        if remaining >= MIN_BLOCK if small else remaining > SMALL_SIZE:
            rest = _Block(block.addr + size, remaining, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, size
            self._insert(rest)
        block.allocated = True
        self._live[key] = block
        self.allocated += block.size
        self.peak = max(self.peak, self.allocated)
        return block.size

    def free(self, key) -> None:
        block = self._live.pop(key, None)
        if block is None:
            return
        self.allocated -= block.size
        block.allocated = False
        for neighbour in (block.prev, block.next):
            if neighbour is not None and not neighbour.allocated:
                self._remove(neighbour)
                if neighbour is block.prev:
                    neighbour.size += block.size
                    neighbour.next = block.next
                    if block.next is not None:
                        block.next.prev = neighbour
                    block = neighbour
                else:
                    block.size += neighbour.size
                    block.next = neighbour.next
                    if neighbour.next is not None:
                        neighbour.next.prev = block
        self._insert(block)

    def _insert(self, block: _Block) -> None:
        bisect.insort(self._pools[block.small], (block.size, block.addr))
        self._free[block.addr] = block

    def _remove(self, block: _Block) -> None:
        pool = self._pools[block.small]
        del pool[bisect.bisect_left(pool, (block.size, block.addr))]
        del self._free[block.addr]
