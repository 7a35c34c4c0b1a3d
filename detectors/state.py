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

Every detector describes its state as a typed dataclass, a subclass of :class:`DetectorState` with a
class-level ``version`` (as alibi-detect declares its saved ``state_keys``). :meth:`DetectorState.to_mapping`
and :meth:`DetectorState.from_mapping` turn it into the mapping stored here and back, once for all
detectors: the mapping is ``{"version": ..., <field>: <value>, ...}`` in field order, nested dataclasses
become nested mappings, and loading checks the version, every field's presence and type, and converts
arrays to the declared dtype. A field annotated ``Annotated[T, HYPERPARAMETER]`` repeats the constructor
argument of the same name the state was fitted with, so that a detector refuses a state fitted with other
settings.
"""

from __future__ import annotations

import dataclasses
import io
import json
import types
import zipfile
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self, Union, get_args, get_origin, get_type_hints
from urllib.parse import quote

import numpy as np

__all__ = [
    "FORMAT",
    "HYPERPARAMETER",
    "DetectorState",
    "Float32Array",
    "Float64Array",
    "Int64Array",
    "MalformedState",
    "concatenate_ragged",
    "dump_state",
    "load_state",
    "split_ragged",
]

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


# ---------------------------------------------------------------------------------------------- typed states

Float64Array = Annotated[np.ndarray, np.float64]
"""A state field holding a float64 array (loaded with that dtype)."""
Float32Array = Annotated[np.ndarray, np.float32]
"""A state field holding a float32 array (network weights, encoded queries)."""
Int64Array = Annotated[np.ndarray, np.int64]
"""A state field holding an int64 array (counts, offsets, codes)."""


class _Hyperparameter:
    def __repr__(self) -> str:
        return "HYPERPARAMETER"


HYPERPARAMETER = _Hyperparameter()
"""Marks a state field (``Annotated[int, HYPERPARAMETER]``) that repeats the constructor argument of the
same name the state was fitted with: :meth:`detectors.base.Detector.load_state_dict` refuses a state whose
value differs from the detector's."""


class MalformedState(ValueError):
    """A stored mapping does not fit the declared state dataclass (the message names the field)."""


@dataclasses.dataclass
class DetectorState:
    """Base of every detector's saved state: subclasses are dataclasses whose fields are the state.

    Field types: ``Float64Array``/``Float32Array``/``Int64Array``, ``int``, ``float``, ``str``, ``bool``,
    ``list[...]``, ``tuple[..., ...]``, ``dict[str, ...]``, ``X | None``, nested dataclasses, and ``Any``
    (a JSON value or mapping passed through unchecked, e.g. a :class:`~detectors.encoding.FeatureSchema`
    state that its own loader checks).
    """

    version: ClassVar[int] = 1
    """Layout version, stored under ``"version"``: a subclass sets it above 1 when its fields change (and
    converts the states stored before)."""

    def to_mapping(self) -> dict[str, Any]:
        """The mapping :func:`dump_state` stores: the version, then every field in order (arrays copied)."""
        return {"version": self.version, **_encode(self)}

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Self:
        """The state saved by :meth:`to_mapping`.

        Raises
        ------
        ValueError
            If the version differs from ``cls.version``, or a field is missing, unexpected or of the wrong
            type (:class:`MalformedState`, naming the field).
        """
        if not isinstance(mapping, Mapping):
            raise MalformedState(f"malformed state: a mapping is needed, got {type(mapping).__name__}")
        version = mapping.get("version")
        if version != cls.version:
            raise ValueError(f"state version {version!r} is not supported (expected {cls.version})")
        fields = {key: value for key, value in mapping.items() if key != "version"}
        return _decode_dataclass(cls, fields, ())

    def hyperparameters(self) -> dict[str, Any]:
        """The fields marked :data:`HYPERPARAMETER`, by name."""
        return {
            name: getattr(self, name)
            for name, hint in _field_types(type(self)).items()
            if get_origin(hint) is Annotated and HYPERPARAMETER in get_args(hint)[1:]
        }


def _encode(value: Any) -> Any:
    """A state value as stored: dataclasses become dicts, tuples lists, arrays copies."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _encode(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    return value


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    """The resolved field annotations of a state dataclass (``Annotated`` kept), computed once per class."""
    types_ = _FIELD_TYPES.get(cls)
    if types_ is None:
        hints = get_type_hints(cls, include_extras=True)
        types_ = _FIELD_TYPES[cls] = {field.name: hints[field.name] for field in dataclasses.fields(cls)}
    return types_


def _decode_dataclass(cls: type[Any], mapping: Mapping[str, Any], path: _Path) -> Any:
    types_ = _field_types(cls)
    unexpected = sorted(set(mapping) - set(types_))
    if unexpected:
        raise MalformedState(f"malformed state: unexpected field(s) {unexpected} in {_describe(path)}")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in mapping:
            values[field.name] = _decode(mapping[field.name], types_[field.name], (*path, field.name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise MalformedState(f"malformed state: {_describe((*path, field.name))} is missing")
    return cls(**values)


def _decode(value: Any, hint: Any, path: _Path) -> Any:
    """``value`` converted to the declared type ``hint``; a :class:`MalformedState` naming ``path`` if it
    cannot be."""
    origin, args = get_origin(hint), get_args(hint)
    try:
        if hint is Any:
            return value
        if origin is Annotated and HYPERPARAMETER in args[1:]:
            return _decode(value, args[0], path)
        if origin is Annotated:  # an array of the dtype in the annotation
            if not isinstance(value, np.ndarray | list | tuple):
                raise TypeError(f"an array is needed, got {type(value).__name__}")
            return np.array(value, dtype=args[1])
        if origin in (Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            (inner,) = (arg for arg in args if arg is not type(None))
            return _decode(value, inner, path)
        if origin in (list, tuple):
            if not isinstance(value, list | tuple | np.ndarray):
                raise TypeError(f"a list is needed, got {type(value).__name__}")
            items = [_decode(item, args[0], (*path, i)) for i, item in enumerate(value)]
            return items if origin is list else tuple(items)
        if origin is dict:
            if not isinstance(value, Mapping):
                raise TypeError(f"a mapping is needed, got {type(value).__name__}")
            return {str(key): _decode(item, args[1], (*path, str(key))) for key, item in value.items()}
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise TypeError(f"a mapping is needed, got {type(value).__name__}")
            return _decode_dataclass(hint, value, path)  # type: ignore[arg-type]
        if hint is bool:
            if not isinstance(value, bool | np.bool_):
                raise TypeError(f"a bool is needed, got {type(value).__name__}")
            return bool(value)
        if hint in (int, float, str):
            return hint(value)
    except MalformedState:
        raise
    except (TypeError, ValueError) as error:
        raise MalformedState(f"malformed state: {_describe(path)}: {error}") from error
    raise TypeError(f"{_describe(path)} is declared as {hint!r}, which a state cannot hold")


def concatenate_ragged(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """1-D float64 arrays of different lengths as one concatenation and int64 offsets: array ``i`` is
    ``values[offsets[i]:offsets[i + 1]]``. Saves a state one array each instead of one per item."""
    values = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.float64)
    offsets = np.concatenate([[0], np.cumsum([array.size for array in arrays])]).astype(np.int64)
    return values, offsets


def split_ragged(values: np.ndarray, offsets: np.ndarray, count: int) -> list[np.ndarray]:
    """The ``count`` arrays :func:`concatenate_ragged` joined (copies).

    Raises
    ------
    MalformedState
        If the offsets do not cut ``values`` into ``count`` arrays.
    """
    if (
        offsets.shape != (count + 1,)
        or offsets[0] != 0
        or offsets[-1] != values.size
        or np.any(np.diff(offsets) < 0)
    ):
        raise MalformedState(
            f"malformed state: offsets {offsets.shape} do not cut {values.size} values in {count}"
        )
    return [values[offsets[i] : offsets[i + 1]].copy() for i in range(count)]
