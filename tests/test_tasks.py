"""The task generators: perfect mazes with their unique path, running parity, specs, splits."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from soft_share_cli.data.loaders import load_data
from soft_share_cli.data.spec import parse_data_spec
from soft_share_cli.data.tasks import (
    Task,
    TaskSpec,
    carve_maze,
    generate_mazes,
    generate_prefix_sums,
    parse_task_spec,
    task_arrays,
)
from soft_share_cli.errors import DataError


def cell_graph(open_pixels: np.ndarray, n: int) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Cells and the passages between them, read off the pixels (independently of the carver)."""
    graph: dict[tuple[int, int], list[tuple[int, int]]] = {
        (r, c): [] for r in range(n) for c in range(n)
    }
    for r in range(n):
        for c in range(n):
            if c + 1 < n and open_pixels[2 * r + 1, 2 * c + 2]:
                graph[(r, c)].append((r, c + 1))
                graph[(r, c + 1)].append((r, c))
            if r + 1 < n and open_pixels[2 * r + 2, 2 * c + 1]:
                graph[(r, c)].append((r + 1, c))
                graph[(r + 1, c)].append((r, c))
    return graph


def shortest_paths(graph: dict, start: tuple[int, int]) -> tuple[dict, dict]:
    """BFS distances and the number of shortest paths from ``start`` to every cell."""
    dist, count = {start: 0}, {start: 1}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        for nxt in graph[here]:
            if nxt not in dist:
                dist[nxt], count[nxt] = dist[here] + 1, 0
                queue.append(nxt)
            if dist[nxt] == dist[here] + 1:
                count[nxt] += count[here]
    return dist, count


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_every_maze_is_perfect(n: int) -> None:
    x, _ = generate_mazes(n, 25, np.random.default_rng(n))
    for open_pixels in x[:, 0].astype(bool):
        # every cell open, every lattice corner and the border walled
        assert open_pixels[1::2, 1::2].all()
        assert not open_pixels[::2, ::2].any()
        assert not (open_pixels[0].any() or open_pixels[-1].any())
        assert not (open_pixels[:, 0].any() or open_pixels[:, -1].any())
        graph = cell_graph(open_pixels, n)
        passages = sum(len(v) for v in graph.values()) // 2
        assert passages == n * n - 1  # a tree: n^2 cells, n^2 - 1 passages ...
        assert open_pixels.sum() == n * n + passages  # ... and no other open pixel
        dist, _ = shortest_paths(graph, (0, 0))
        assert len(dist) == n * n  # ... connected, hence acyclic


@pytest.mark.parametrize("n", [2, 4, 7])
def test_target_is_the_unique_shortest_path(n: int) -> None:
    x, y = generate_mazes(n, 30, np.random.default_rng(100 + n))
    for image, target in zip(x, y, strict=True):
        starts, goals = np.argwhere(image[1] == 1), np.argwhere(image[2] == 1)
        assert len(starts) == 1 and len(goals) == 1
        (sr, sc), (gr, gc) = starts[0], goals[0]
        assert sr % 2 == sc % 2 == gr % 2 == gc % 2 == 1  # both on cells
        assert (sr, sc) != (gr, gc)
        assert image[1].sum() == image[2].sum() == 1
        graph = cell_graph(image[0].astype(bool), n)
        start, goal = ((sr - 1) // 2, (sc - 1) // 2), ((gr - 1) // 2, (gc - 1) // 2)
        from_start, paths = shortest_paths(graph, start)
        from_goal, _ = shortest_paths(graph, goal)
        assert paths[goal] == 1  # exactly one shortest path (in a tree, exactly one path)
        length = from_start[goal]
        on_path = {c for c in graph if from_start[c] + from_goal[c] == length}
        expected = np.zeros_like(target)
        for r, c in on_path:
            expected[2 * r + 1, 2 * c + 1] = 1
            for nr, nc in graph[(r, c)]:
                if (nr, nc) in on_path:
                    expected[r + nr + 1, c + nc + 1] = 1  # the passage between them
        np.testing.assert_array_equal(target, expected)
        assert target.sum() == 2 * length + 1
        assert target[sr, sc] == target[gr, gc] == 1


def test_carver_is_seeded_and_varied() -> None:
    a = carve_maze(6, np.random.default_rng(1))
    b = carve_maze(6, np.random.default_rng(1))
    c = carve_maze(6, np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_prefix_sum_targets_are_the_running_parity() -> None:
    x, y = generate_prefix_sums(13, 50, np.random.default_rng(0))
    assert x.shape == (50, 1, 13) and y.shape == (50, 13)  # 1-d sequences, one channel
    assert set(np.unique(x)) <= {0.0, 1.0}
    for bits, target in zip(x[:, 0], y, strict=True):
        parity = 0
        for i, bit in enumerate(bits):
            parity ^= int(bit)
            assert target[i] == parity
    assert 0.3 < x.mean() < 0.7  # not a constant string


def test_splits_are_seeded_and_independent() -> None:
    spec = TaskSpec(Task.MAZE, 4, 20, seed=3)
    train_x, _ = task_arrays(spec, "train")
    test_x, _ = task_arrays(spec, "test")
    again, _ = task_arrays(spec, "train")
    assert np.array_equal(train_x, again)
    assert not np.array_equal(train_x, test_x)
    other, _ = task_arrays(TaskSpec(Task.MAZE, 4, 20, seed=4), "train")
    assert not np.array_equal(train_x, other)


def test_data_specs_load_tasks() -> None:
    maze = load_data("maze:size=3,count=6,seed=1", "train")
    assert tuple(maze.x.shape) == (6, 3, 7, 7) and tuple(maze.y.shape) == (6, 7, 7)
    assert maze.num_classes == 2 and maze.in_channels == 3
    assert maze.preprocessing["task"] == "maze" and maze.preprocessing["size"] == 3
    bits = load_data("prefix-sums:length=9,count=5?limit=2")
    assert tuple(bits.x.shape) == (2, 1, 9) and tuple(bits.y.shape) == (2, 9)
    assert parse_data_spec("maze:size=5").options == {"size": 5, "count": 1000, "seed": 0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("maze", "needs size=N"),
        ("maze:count=5", "needs size=N"),
        ("maze:size=1", "must lie in"),
        ("maze:size=4,length=3", "bad option"),
        ("maze:size=x", "must be an integer"),
        ("maze:size=4,size=5", "given twice"),
        ("maze:size=4,count=0", "count must lie"),
        ("prefix-sums:size=4", "bad option"),
        ("prefix-sums:length=8,seed=-1", "seed must be"),
    ],
)
def test_bad_task_specs_are_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_data_spec(spec)


def test_parse_task_spec_round_trip() -> None:
    spec = parse_task_spec("prefix-sums", "length=32, count=10, seed=2")
    assert spec == TaskSpec(Task.PREFIX_SUMS, 32, 10, 2)
    assert spec.to_dict() == {"task": "prefix-sums", "length": 32, "count": 10, "seed": 2}
