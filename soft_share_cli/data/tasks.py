"""Algorithmic tasks, generated and seeded (numpy only, no downloads): mazes and prefix sums.

Both are per-pixel two-class problems on inputs of any size, the benchmark of "Can You Learn an
Algorithm?" (Schwarzschild et al., NeurIPS 2021): train on small instances, test on larger ones.

* **maze** ``size=n``: a perfect maze of ``n x n`` cells (random depth-first generation, so every
  two cells are joined by exactly one path) drawn on a ``(2n+1) x (2n+1)`` pixel grid: cell
  ``(r, c)`` is pixel ``(2r+1, 2c+1)``, the passage between two neighbouring cells is the pixel
  between them, everything else is wall. Three input channels: ``open`` (1 on cells and passages,
  0 on walls — so a convolution's zero padding reads as wall), ``start`` and ``goal`` (one cell
  each, distinct, drawn uniformly). The target is 1 on every pixel of the unique start-goal path
  (both ends included), 0 elsewhere.
* **prefix-sums** ``length=L``: uniformly random bit strings as 1-d sequences ``(1, L)`` (one
  channel; the networks use 1-d convolutions); the target at position ``i`` is the parity of
  bits ``0..i`` (the running sum modulo 2), so the answer at the end depends on every bit.

Splits are independent draws: the train split of seed ``s`` uses the random stream ``(s, 0)``,
the test split ``(s, 1)``, so ``ssc eval --data maze:size=9`` never sees training mazes' stream.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from soft_share_cli import limits
from soft_share_cli.errors import DataError

MAZE_CHANNELS = ("open", "start", "goal")
DEFAULT_COUNT = 1000  # instances per split unless count= says otherwise
MAX_COUNT = limits.MAX_SAMPLES  # a guard against specs that would exhaust memory
#: Bytes per pixel of a generated split: maze inputs (3 x float32) and targets (int64); prefix
#: sums' int64 draws, float32 inputs and int64 targets. Checked against limits.MAX_DATA_BYTES.
BYTES_PER_PIXEL = 20
MAX_MAZE_SIZE = 256
MAX_LENGTH = 65_536
_STREAM = {"train": 0, "test": 1}
_MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))


class Task(str, enum.Enum):
    """The algorithmic tasks a ``--data`` spec can name."""

    MAZE = "maze"
    PREFIX_SUMS = "prefix-sums"

    @property
    def size_option(self) -> str:
        """The option naming the instance size: ``size`` (maze cells) or ``length`` (bits)."""
        return "size" if self is Task.MAZE else "length"


@dataclass(frozen=True)
class TaskSpec:
    """A parsed task spec such as ``maze:size=5,count=2000,seed=3``."""

    task: Task
    size: int  # maze cells per side, or bits per string
    count: int = DEFAULT_COUNT  # instances per split
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-python form, stored in checkpoints as the data's preprocessing."""
        return {
            "task": self.task.value,
            self.task.size_option: self.size,
            "count": self.count,
            "seed": self.seed,
        }


def parse_task_spec(task: str, text: str) -> TaskSpec:
    """Parse the options after ``maze:`` or ``prefix-sums:`` (``key=value`` pairs, commas).

    Raises:
        DataError: an unknown task or option, a missing size, or a value out of range.
    """
    try:
        kind = Task(task)
    except ValueError:
        raise DataError(f"unknown task {task!r}; use maze or prefix-sums") from None
    allowed = (kind.size_option, "count", "seed")
    example = f"{kind.value}:{kind.size_option}={'5' if kind is Task.MAZE else '16'}"
    values: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise DataError(
                f"{kind.value}: bad option {item!r}; options are {', '.join(allowed)} "
                f"(e.g. {example},count=2000,seed=0)"
            )
        if key in values:
            raise DataError(f"{kind.value}: option {key!r} given twice")
        try:
            values[key] = int(value.strip())
        except ValueError:
            shown = value.strip() if len(value.strip()) <= 24 else value.strip()[:24] + "..."
            raise DataError(f"{kind.value}: {key} must be an integer, got {shown!r}") from None
    if kind.size_option not in values:
        raise DataError(f"{kind.value} needs {kind.size_option}=N, e.g. {example}")
    size = values[kind.size_option]
    low, high = (2, MAX_MAZE_SIZE) if kind is Task.MAZE else (1, MAX_LENGTH)
    if not low <= size <= high:
        raise DataError(f"{kind.value}: {kind.size_option} must lie in [{low}, {high}], got {size}")
    count = values.get("count", DEFAULT_COUNT)
    if not 1 <= count <= MAX_COUNT:
        raise DataError(f"{kind.value}: count must lie in [1, {MAX_COUNT}], got {count}")
    seed = values.get("seed", 0)
    if seed < 0:
        raise DataError(f"{kind.value}: seed must be >= 0, got {seed}")
    pixels = (2 * size + 1) ** 2 if kind is Task.MAZE else size
    needed = count * pixels * BYTES_PER_PIXEL
    if needed > limits.MAX_DATA_BYTES:
        raise DataError(
            f"{kind.value}: {kind.size_option}={size}, count={count} would take {needed} bytes "
            f"per split; ssc generates at most {limits.MAX_DATA_BYTES} "
            "(limits.MAX_DATA_BYTES): lower count or the size"
        )
    return TaskSpec(kind, size, count, seed)


def task_arrays(spec: TaskSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``x`` float32 ``(N, C, H, W)`` and ``y`` int64 ``(N, H, W)`` of one split of ``spec``
    (prefix sums: ``(N, 1, L)`` and ``(N, L)``)."""
    if split not in _STREAM:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng([spec.seed, _STREAM[split]])
    if spec.task is Task.MAZE:
        return generate_mazes(spec.size, spec.count, rng)
    return generate_prefix_sums(spec.size, spec.count, rng)


# --- mazes ---------------------------------------------------------------------------------------


def carve_maze(size: int, rng: np.random.Generator) -> np.ndarray:
    """A perfect maze of ``size x size`` cells by randomised depth-first search (backtracker).

    Returns a boolean ``(2 size + 1, 2 size + 1)`` grid, True on open pixels (cells, passages).
    Iterative, so large mazes need no deep recursion.
    """
    side = 2 * size + 1
    grid = np.zeros((side, side), dtype=bool)
    visited = np.zeros((size, size), dtype=bool)
    start = (int(rng.integers(size)), int(rng.integers(size)))
    stack = [start]
    visited[start] = True
    grid[2 * start[0] + 1, 2 * start[1] + 1] = True
    while stack:
        r, c = stack[-1]
        options = [
            (r + dr, c + dc)
            for dr, dc in _MOVES
            if 0 <= r + dr < size and 0 <= c + dc < size and not visited[r + dr, c + dc]
        ]
        if not options:
            stack.pop()
            continue
        nr, nc = options[int(rng.integers(len(options)))]
        visited[nr, nc] = True
        grid[r + nr + 1, c + nc + 1] = True  # the passage pixel between the two cells
        grid[2 * nr + 1, 2 * nc + 1] = True
        stack.append((nr, nc))
    return grid


def shortest_path(open_pixels: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> list:
    """Pixels of a shortest 4-connected path from ``start`` to ``goal`` (breadth-first search).

    Returns the path as a list of ``(row, col)`` from start to goal, or ``[]`` when there is none.
    """
    h, w = open_pixels.shape
    parent: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        if here == goal:
            break
        for dr, dc in _MOVES:
            nxt = (here[0] + dr, here[1] + dc)
            if 0 <= nxt[0] < h and 0 <= nxt[1] < w and open_pixels[nxt] and nxt not in parent:
                parent[nxt] = here
                queue.append(nxt)
    if goal not in parent:
        return []
    path: list[tuple[int, int]] = []
    node: tuple[int, int] | None = goal
    while node is not None:
        path.append(node)
        node = parent[node]
    return path[::-1]


def generate_mazes(
    size: int, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` mazes of ``size x size`` cells: inputs ``(N, 3, H, W)`` and path masks."""
    side = 2 * size + 1
    x = np.zeros((count, len(MAZE_CHANNELS), side, side), dtype=np.float32)
    y = np.zeros((count, side, side), dtype=np.int64)
    for n in range(count):
        grid = carve_maze(size, rng)
        first, second = rng.choice(size * size, size=2, replace=False)
        start = (2 * int(first // size) + 1, 2 * int(first % size) + 1)
        goal = (2 * int(second // size) + 1, 2 * int(second % size) + 1)
        x[n, 0] = grid
        x[n, 1][start] = 1.0
        x[n, 2][goal] = 1.0
        for pixel in shortest_path(grid, start, goal):  # in a perfect maze: the only path
            y[n][pixel] = 1
    return x, y


# --- prefix sums ---------------------------------------------------------------------------------


def generate_prefix_sums(
    length: int, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random bit strings as ``(N, 1, L)`` sequences and their running parity
    ``(N, L)``."""
    bits = rng.integers(0, 2, size=(count, length), dtype=np.int64)
    parity = np.bitwise_xor.accumulate(bits, axis=1)  # = cumsum % 2, without a temporary
    return bits.astype(np.float32).reshape(count, 1, length), parity


def describe_task(spec: TaskSpec) -> str:
    """E.g. ``mazes of 5x5 cells (11x11 pixels)`` or ``bit strings of length 16``."""
    if spec.task is Task.MAZE:
        side = 2 * spec.size + 1
        return f"mazes of {spec.size}x{spec.size} cells ({side}x{side} pixels)"
    return f"bit strings of length {spec.size}"
