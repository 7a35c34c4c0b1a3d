"""Saving a detector's learned state as bytes, without pickle.

A state (see :meth:`detectors.base.Detector.state_dict`) is a nested mapping whose leaves are numpy
arrays or JSON values. :func:`dump_state` writes it as one ``np.savez`` archive:

* every numpy array becomes an archive entry named by its key path, each key percent-encoded as in a
  URL, e.g. ``/weights/encoder.0.weight``, so the archive can be inspected with plain ``np.load``;
* everything else becomes one JSON document, stored as a ``uint8`` entry named ``json`` (no leading
  slash, so it cannot collide with an array's path). In that document the arrays' places hold
  ``null`` and a separate list names the path of every array: a user value can therefore never be
  mistaken for an array marker.

Percent-encoding makes the names unique and safe in a zip file (which would cut a name at a NUL
character). The archive is read back with :mod:`zipfile` and :func:`numpy.lib.format.read_array` rather
than ``np.load``, whose name lookup would confuse ``"a.npy"`` with ``"a"``.

Pickle is never used, on either side (``allow_pickle=False``): loading a state from the database must not
be able to run code.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import numpy as np

__all__ = ["FORMAT", "dump_state", "load_state"]

FORMAT = "sentinel-state/1"
"""Format tag written into every archive; :func:`load_state` refuses anything else."""

_JSON_ENTRY = "json"

# A path is the list of keys (str) and list indices (int) from the root to a value.
_Path = tuple[str | int, ...]


def _entry_name(path: _Path) -> str:
    """The archive entry name of the array at ``path``: ``/``-joined percent-encoded keys (injective)."""
    return "".join("/" + quote(str(part), safe="") for part in path)


def _describe(path: _Path) -> str:
    """A path for error messages, in Python subscript notation: ``state['weights'][0]``."""
    return "state" + "".join(f"[{part!r}]" for part in path)


def _split(value: Any, path: _Path, arrays: list[tuple[_Path, np.ndarray]]) -> Any:
    """The JSON part of ``value``; arrays are appended to ``arrays`` and replaced by ``None``.

    Raises
    ------
    TypeError
        If a value cannot be stored exactly (object arrays, non-string keys, arbitrary objects).
    """
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"{_describe(path)} is a numpy array of dtype object, which needs pickle")
        arrays.append((path, value))
        return None
    # bool before int: bool is a subclass of int, and both are JSON-native anyway.
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        # float subclasses such as np.float64 become plain floats; the value is unchanged.
        return float(value)
    if isinstance(value, np.generic) and isinstance(value, np.bool_ | np.integer | np.floating):
        # A numpy scalar (np.float32(0.5), np.int64(3)): stored as the equal Python number. Its dtype is
        # not kept; use a 0-d array when the dtype matters.
        return value.item()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{_describe(path)} has a key {key!r} of type {type(key).__name__}; "
                    "state keys must be str (JSON would turn them into strings)"
                )
            out[key] = _split(item, (*path, key), arrays)
        return out
    if isinstance(value, list | tuple):
        # Tuples come back as lists: JSON has one sequence type.
        return [_split(item, (*path, index), arrays) for index, item in enumerate(value)]
    raise TypeError(
        f"{_describe(path)} has a value of type {type(value).__name__}, which cannot be saved: "
        "use numpy arrays, None, bool, int, float, str, lists and str-keyed dicts"
    )


def dump_state(state: Mapping[str, Any]) -> bytes:
    """Serialise a detector state to bytes (an ``np.savez`` archive, no pickle).

    Parameters
    ----------
    state
        A str-keyed mapping, nested as deep as needed, whose leaves are numpy arrays (any shape, any
        non-object dtype) or JSON values: None, bool, int, float (NaN and infinities included), str,
        lists. Tuples are saved as lists and numpy scalars as Python numbers.

    Returns
    -------
    bytes
        The archive; :func:`load_state` turns it back into an equal dict, with arrays bit-identical
        (same dtype, shape and bytes).

    Raises
    ------
    TypeError
        If ``state`` is not a mapping or holds a value that cannot be stored; the message names the key
        path of the offending value.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping, got {type(state).__name__}")
    arrays: list[tuple[_Path, np.ndarray]] = []
    tree = _split(state, (), arrays)
    document = {"format": FORMAT, "tree": tree, "arrays": [list(path) for path, _ in arrays]}
    # allow_nan keeps NaN/inf scalars (Python's json writes and reads them back); sort_keys is not used,
    # so the key order of every dict survives the round trip.
    text = json.dumps(document, allow_nan=True, ensure_ascii=False, separators=(",", ":"))
    entries: dict[str, np.ndarray] = {_JSON_ENTRY: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}
    for path, array in arrays:
        entries[_entry_name(path)] = array
    buffer = io.BytesIO()
    np.savez(buffer, **entries)
    return buffer.getvalue()


def _insert(tree: Any, path: list[Any], array: np.ndarray) -> None:
    """Put ``array`` at ``path`` inside ``tree`` (where ``dump_state`` left a ``None``)."""
    node = tree
    for part in path[:-1]:
        node = node[part]
    last = path[-1]
    if node[last] is not None:
        raise ValueError(f"corrupt state archive: array slot {_describe(tuple(path))} is not empty")
    node[last] = array


def load_state(data: bytes) -> dict[str, Any]:
    """Read a state written by :func:`dump_state`.

    Parameters
    ----------
    data
        The archive bytes.

    Returns
    -------
    dict
        The state, equal to the one that was dumped (tuples come back as lists).

    Raises
    ------
    ValueError
        If ``data`` is not a state archive of this format (or would need pickle to read).
    """
    entries: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                if name == info.filename or name in entries:
                    raise ValueError(f"unexpected archive entry {info.filename!r}")
                with archive.open(info) as member:
                    # allow_pickle=False: an object array in a tampered archive raises, runs no code.
                    entries[name] = np.lib.format.read_array(member, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"not a saved detector state: {error}") from error
    raw = entries.pop(_JSON_ENTRY, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError("not a saved detector state: the JSON entry is missing")
    try:
        document = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not a saved detector state: unreadable JSON entry ({error})") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise ValueError(f"unsupported state format {found!r}, expected {FORMAT!r}")
    tree = document["tree"]
    for path in document["arrays"]:
        name = _entry_name(tuple(path))
        if name not in entries:
            raise ValueError(f"corrupt state archive: array {name!r} is missing")
        try:
            _insert(tree, path, entries.pop(name))
        except (KeyError, IndexError, TypeError) as error:
            raise ValueError(f"corrupt state archive: no slot for array {name!r}") from error
    if entries:
        raise ValueError(f"corrupt state archive: unexpected entries {sorted(entries)}")
    if not isinstance(tree, dict):
        raise ValueError("corrupt state archive: the root is not a mapping")
    return tree
