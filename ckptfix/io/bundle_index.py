"""A V2 checkpoint's ``.index`` file: which ``.data`` shard and bytes hold each tensor; checksums patched in place.

TensorFlow exposes no Python API for this, so the index is parsed here. It is an immutable table in LevelDB's
format (``tensorflow/core/lib/io/format.h``, ``block.cc``): a 48-byte footer (two block handles -- metaindex
and index, each a pair of varint64 offset and size -- padded to 40 bytes, then the magic number) points to an
index block whose values are the handles of the data blocks. A block is a run of entries (varint32 shared
key bytes, varint32 unshared key bytes, varint32 value size, the unshared key bytes, the value), then an
array of uint32 restart offsets and their uint32 count, then a 5-byte trailer (compression type, CRC). Each
value of a data block is a ``BundleEntryProto`` with the tensor's ``shard_id``; the empty key holds the
``BundleHeaderProto``. Slices of a partitioned variable are entries of their own (binary keys), each with
its shard; the variable's own entry lists them.

Only what the writer needs: the shard of every tensor key, each tensor's entry (shard, offset, size, checksum),
and an index whose checksums of some tensors are replaced in place (:func:`with_checksums`: same entry sizes,
so the layout is unchanged; the trailers of the blocks touched are recomputed, masked CRC-32C as LevelDB
stores them). Anything unexpected (a compressed block, a bad magic, nothing found) returns ``None``; block
checksums are not verified on reading, so the caller also checks that the keys found are exactly the
checkpoint's, and TensorFlow reads what was written back.
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


def _handle(handle: bytes) -> tuple[int, int]:
    """A block handle's (offset, size): two varint64s."""
    offset, position = _varint(handle, 0)
    return offset, _varint(handle, position)[0]


def _block_entries(data: bytes, offset: int, size: int) -> list[tuple[bytes, int, int]]:
    """The entries of the block at ``offset`` (``size`` bytes before its trailer): (key, start, end of the value
    in ``data``)."""
    if data[offset + size] != _NO_COMPRESSION:
        raise ValueError("compressed block")
    (restarts,) = struct.unpack_from("<I", data, offset + size - 4)
    end = offset + size - 4 * (restarts + 1)
    entries, key, position = [], b"", offset
    while position < end:
        shared, position = _varint(data, position)
        unshared, position = _varint(data, position)
        value_size, position = _varint(data, position)
        key = key[:shared] + data[position: position + unshared]
        position += unshared
        entries.append((key, position, position + value_size))
        position += value_size
    return entries


def _block(data: bytes, handle: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) entries of the block ``handle`` (varint64 offset, varint64 size) points to."""
    return [(key, data[start:end]) for key, start, end in _block_entries(data, *_handle(handle))]


def _sliced_name(key: bytes) -> str:
    """The variable name in a slice key: OrderedCode's number 0 (one 0x00 byte), then the name with 0x00
    written as 00 FF and 0xFF as FF 00, ended by 00 01 (the slice extents follow)."""
    name, position = bytearray(), 1
    while key[position: position + 2] != b"\x00\x01":
        name.append(key[position])
        position += 2 if key[position] in (0x00, 0xFF) else 1
    return name.decode()


def _data_blocks(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every data block, from the footer's index block; raises on a bad index."""
    footer = data[-_FOOTER_BYTES:]
    if struct.unpack("<Q", footer[-8:])[0] != _MAGIC:
        raise ValueError("bad magic")
    _, position = _varint(footer, _varint(footer, 0)[1])  # skip the metaindex handle
    return [_handle(handle) for _, handle in _block(data, footer[position:])]


def _entries(index_path: Path):
    """Every (key, ``BundleEntryProto``) of the index, the header's empty key left out; raises on a bad index."""
    from tensorflow.core.protobuf import tensor_bundle_pb2

    data = Path(index_path).read_bytes()
    for offset, size in _data_blocks(data):
        for key, start, end in _block_entries(data, offset, size):
            if key:  # the empty key is the BundleHeaderProto
                yield key, tensor_bundle_pb2.BundleEntryProto.FromString(data[start:end])


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


def tensor_entries(index_path: Path) -> dict[str, object] | None:
    """Tensor key -> its ``BundleEntryProto`` (shard, offset, size, crc32c), for tensors stored whole (not the
    slices of a partitioned variable); ``None`` if the index cannot be parsed."""
    return _parse(lambda: {key.decode(): entry for key, entry in _entries(index_path)
                           if key[0] != 0 and not entry.slices})


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TensorFlow's ``crc32c::Value``: what the index records per tensor and per block."""
    crc, table = 0xFFFFFFFF, _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """LevelDB's masked CRC of ``data`` (``crc32c::Mask``), the form stored in block trailers and entries."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def with_checksums(index_path: Path, checksums: dict[str, int]) -> bytes | None:
    """The index's bytes with the ``crc32c`` field of the tensors ``checksums`` names (key -> new value) replaced,
    in place: the entries keep their size, so the layout is unchanged and only the checksum fields and the
    trailers of the blocks holding them change. ``None`` if that cannot be done (an entry whose encoding would
    change size, a key not found, an index that cannot be parsed)."""
    from tensorflow.core.protobuf import tensor_bundle_pb2

    def patch() -> bytes | None:
        data = bytearray(Path(index_path).read_bytes())
        found = set()
        for offset, size in _data_blocks(bytes(data)):
            changed = False
            for key, start, end in _block_entries(data, offset, size):
                name = key.decode(errors="replace") if key and key[0] != 0 else None
                if name not in checksums:
                    continue
                entry = tensor_bundle_pb2.BundleEntryProto.FromString(bytes(data[start:end]))
                entry.crc32c = checksums[name]
                value = entry.SerializeToString(deterministic=True)
                if len(value) != end - start:
                    return None
                data[start:end] = value
                found.add(name)
                changed = True
            if changed:  # trailer: compression type, then the masked CRC of the block and that type byte
                struct.pack_into("<I", data, offset + size + 1, masked_crc32c(bytes(data[offset: offset + size + 1])))
        return bytes(data) if found == set(checksums) else None

    return _parse(patch)
