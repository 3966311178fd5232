from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.proposal_files import load_proposal_file, save_proposal_file


def _superpixel_map() -> np.ndarray:
    """uint32[6, 8] map of 4 superpixels (1-based): the four quadrants."""
    superpixels = np.ones((6, 8), dtype=np.uint32)
    superpixels[:, 4:] = 2
    superpixels[3:, :4] = 3
    superpixels[3:, 4:] = 4
    return superpixels


def _write_mcg(path: Path, labels: object, superpixels: np.ndarray | None = None) -> None:
    superpixels = _superpixel_map() if superpixels is None else superpixels
    scipy.io.savemat(path, {"superpixels": superpixels, "labels": labels})


def _cell(rows: list[list[int]], column: bool = True) -> np.ndarray:
    cell = np.empty((len(rows), 1) if column else (1, len(rows)), dtype=object)
    for i, ids in enumerate(rows):
        cell.flat[i] = np.array(ids, dtype=np.float64).reshape(1, -1)
    return cell


@pytest.mark.parametrize("column", [True, False])
def test_mcg_mat_round_trip(tmp_path: Path, column: bool) -> None:
    path = tmp_path / "2008_000001.mat"
    _write_mcg(path, _cell([[1], [2, 4], [1, 2, 3, 4]], column=column))
    masks = load_proposal_file(path, (6, 8))
    superpixels = _superpixel_map()
    expected = np.stack(
        [superpixels == 1, np.isin(superpixels, [2, 4]), np.ones((6, 8), dtype=bool)]
    )
    assert masks.dtype == torch.bool
    assert masks.shape == (3, 6, 8)
    assert np.array_equal(masks.numpy(), expected)


def test_mcg_mat_nested_cells(tmp_path: Path) -> None:
    """A cell whose entries are wrapped in further cells, with column-vector ids."""
    cell = np.empty((2, 1), dtype=object)
    for i, ids in enumerate([[3], [1, 3]]):
        inner = np.empty((1, 1), dtype=object)
        inner[0, 0] = np.array(ids, dtype=np.uint16).reshape(-1, 1)
        cell[i, 0] = inner
    path = tmp_path / "nested.mat"
    _write_mcg(path, cell)
    masks = load_proposal_file(path, (6, 8)).numpy()
    superpixels = _superpixel_map()
    assert np.array_equal(masks[0], superpixels == 3)
    assert np.array_equal(masks[1], np.isin(superpixels, [1, 3]))


def test_mcg_mat_bad_ids_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.mat"
    _write_mcg(path, _cell([[1], [0, 2]]))
    with pytest.raises(ValueError, match="proposal 1"):
        load_proposal_file(path, (6, 8))
    _write_mcg(path, _cell([[5]]))
    with pytest.raises(ValueError, match="proposal 0"):
        load_proposal_file(path, (6, 8))
    scipy.io.savemat(path, {"superpixels": _superpixel_map()})
    with pytest.raises(ValueError, match="labels"):
        load_proposal_file(path, (6, 8))


def test_mcg_mat_size_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "a.mat"
    _write_mcg(path, _cell([[1]]))
    with pytest.raises(ValueError, match="size"):
        load_proposal_file(path, (8, 6))


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((5, 17, 23)) < 0.3)
    path = tmp_path / "p.npz"
    save_proposal_file(path, masks)
    loaded = load_proposal_file(path, (17, 23))
    assert loaded.dtype == torch.bool
    assert torch.equal(loaded, masks)
    with np.load(path, allow_pickle=False) as data:
        assert data["counts"].dtype.kind == "U"
        assert data["size"].tolist() == [17, 23]


@settings(max_examples=25, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(0, 4), st.integers(1, 9), st.integers(1, 9))))
def test_npz_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, masks: np.ndarray
) -> None:
    path = tmp_path_factory.mktemp("npz") / "p.npz"
    save_proposal_file(path, masks)
    loaded = load_proposal_file(path, masks.shape[1:])
    assert loaded.shape == masks.shape
    assert np.array_equal(loaded.numpy(), masks)


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    save_proposal_file(path, np.ones((2, 4, 4), dtype=bool))
    with pytest.raises(ValueError, match="size"):
        load_proposal_file(path, (4, 5))
    np.savez(path, counts=np.array(["1"]))
    with pytest.raises(ValueError, match="size"):
        load_proposal_file(path, (4, 4))
    np.savez(path, size=np.array([4, 4]))
    with pytest.raises(ValueError, match="counts"):
        load_proposal_file(path, (4, 4))
    np.savez(path, counts=np.array([b"16"], dtype=object), size=np.array([4, 4]))
    with pytest.raises(ValueError, match="object array"):
        load_proposal_file(path, (4, 4))
    with pytest.raises(ValueError, match=r"\.npz"):
        save_proposal_file(tmp_path / "p.png", np.ones((1, 4, 4), dtype=bool))


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_proposal_file(tmp_path / "absent.npz", (4, 4))
    with pytest.raises(FileNotFoundError):
        load_proposal_file(tmp_path / "absent.mat", (4, 4))
    other = tmp_path / "p.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="suffix"):
        load_proposal_file(other, (4, 4))
