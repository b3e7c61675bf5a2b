"""Which ``.data`` shard holds each tensor of a V2 checkpoint, read from its ``.index`` file.

TensorFlow exposes no Python API for this, so the index is parsed here. It is an immutable table in LevelDB's
format (``tensorflow/core/lib/io/format.h``, ``block.cc``): a 48-byte footer (two block handles -- metaindex
and index, each a pair of varint64 offset and size -- padded to 40 bytes, then the magic number) points to an
index block whose values are the handles of the data blocks. A block is a run of entries (varint32 shared
key bytes, varint32 unshared key bytes, varint32 value size, the unshared key bytes, the value), then an
array of uint32 restart offsets and their uint32 count, then a 5-byte trailer (compression type, CRC). Each
value of a data block is a ``BundleEntryProto`` with the tensor's ``shard_id``; the empty key holds the
``BundleHeaderProto``. Slices of a partitioned variable are entries of their own (binary keys), each with
its shard; the variable's own entry lists them.

Only what the writer needs: the shard of every tensor key. Anything unexpected (a compressed block, a bad
magic, nothing found) returns ``None``; block checksums are not verified, so the caller also checks that the
keys found are exactly the checkpoint's, and otherwise does not keep the shards.
"""

from __future__ import annotations

import struct
from pathlib import Path

_FOOTER_BYTES = 48
_MAGIC = 0xDB4775248B80FB57
_TRAILER_BYTES = 5
_NO_COMPRESSION = 0


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _block(data: bytes, handle: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) entries of the block ``handle`` (varint64 offset, varint64 size) points to."""
    offset, position = _varint(handle, 0)
    size, _ = _varint(handle, position)
    if data[offset + size] != _NO_COMPRESSION:
        raise ValueError("compressed block")
    block = data[offset: offset + size]
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 * (restarts + 1)
    entries, key, position = [], b"", 0
    while position < end:
        shared, position = _varint(block, position)
        unshared, position = _varint(block, position)
        value_size, position = _varint(block, position)
        key = key[:shared] + block[position: position + unshared]
        position += unshared
        entries.append((key, block[position: position + value_size]))
        position += value_size
    return entries


def _sliced_name(key: bytes) -> str:
    """The variable name in a slice key: OrderedCode's number 0 (one 0x00 byte), then the name with 0x00
    written as 00 FF and 0xFF as FF 00, ended by 00 01 (the slice extents follow)."""
    name, position = bytearray(), 1
    while key[position: position + 2] != b"\x00\x01":
        name.append(key[position])
        position += 2 if key[position] in (0x00, 0xFF) else 1
    return name.decode()


def _entries(index_path: Path):
    """Every (key, ``BundleEntryProto``) of the index, the header's empty key left out; raises on a bad index."""
    from tensorflow.core.protobuf import tensor_bundle_pb2

    data = Path(index_path).read_bytes()
    footer = data[-_FOOTER_BYTES:]
    if struct.unpack("<Q", footer[-8:])[0] != _MAGIC:
        raise ValueError("bad magic")
    _, position = _varint(footer, _varint(footer, 0)[1])  # skip the metaindex handle
    for _, handle in _block(data, footer[position:]):
        for key, value in _block(data, handle):
            if key:  # the empty key is the BundleHeaderProto
                yield key, tensor_bundle_pb2.BundleEntryProto.FromString(value)


def _parse(read):
    """``read()``, or None when the index cannot be parsed."""
    from google.protobuf.message import DecodeError

    try:
        return read()
    except (IndexError, ValueError, struct.error, OSError, DecodeError, UnicodeDecodeError):
        return None


def shard_of_each_tensor(index_path: Path) -> dict[str, int] | None:
    """Tensor key -> the shard id its bytes live in; ``None`` if the index cannot be parsed (or a partitioned
    variable's slices are spread over several shards)."""
    shards: dict[str, int] = {}
    slice_shards: dict[str, set[int]] = {}

    def read() -> bool:
        for key, entry in _entries(index_path):
            if key[0] == 0:  # a slice of a partitioned variable (EncodeTensorNameSlice keys start with 0)
                slice_shards.setdefault(_sliced_name(key), set()).add(entry.shard_id)
            elif not entry.slices:
                shards[key.decode()] = entry.shard_id
        return True

    if _parse(read) is None:
        return None
    for name, own in slice_shards.items():
        if len(own) != 1:
            return None
        shards[name] = own.pop()
    return shards or None


def shard_lengths(index_path: Path) -> dict[int, int] | None:
    """Shard id -> the bytes its ``.data`` file must hold at least (the end of its last tensor, ``offset +
    size``); ``None`` if the index cannot be parsed."""
    def read() -> dict[int, int]:
        lengths: dict[int, int] = {}
        for _, entry in _entries(index_path):
            lengths[entry.shard_id] = max(lengths.get(entry.shard_id, 0), entry.offset + entry.size)
        return lengths

    return _parse(read)
