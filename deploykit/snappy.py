"""A snappy block decoder (the raw format, no framing), small and pure: a ``bundle_url``
may serve snappy-compressed JSON, and this avoids a dependency for it."""

from __future__ import annotations

MAX_BUNDLE_BYTES = 64 * 1024 * 1024


def snappy_block(data: bytes) -> bytes:
    """Decode one snappy block (the raw format, no framing); ValueError when it is not."""
    try:
        return _snappy_block(data)
    except IndexError:
        raise ValueError("snappy: truncated") from None


def _snappy_block(data: bytes) -> bytes:
    length, position = _varint(data, 0)
    if length > MAX_BUNDLE_BYTES:
        raise ValueError("snappy: too large")
    out = bytearray()
    while position < len(data):
        tag, kind = data[position], data[position] & 3
        position += 1
        if kind == 0:  # a literal
            size = tag >> 2
            if size >= 60:
                extra = size - 59
                size = int.from_bytes(data[position:position + extra], "little")
                position += extra
            size += 1
            if position + size > len(data):
                raise ValueError("snappy: literal past the end")
            out += data[position:position + size]
            position += size
            continue
        if kind == 1:
            size, offset = 4 + ((tag >> 2) & 7), ((tag >> 5) << 8) | data[position]
            position += 1
        else:
            width = 2 if kind == 2 else 4
            size = 1 + (tag >> 2)
            offset = int.from_bytes(data[position:position + width], "little")
            position += width
        if offset == 0 or offset > len(out) or len(out) + size > length:
            raise ValueError("snappy: bad copy")
        for _ in range(size):  # byte by byte: a copy may overlap what it writes
            out.append(out[-offset])
    if len(out) != length:
        raise ValueError("snappy: wrong length")
    return bytes(out)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    for index in range(position, min(position + 5, len(data))):
        value |= (data[index] & 0x7F) << shift
        if not data[index] & 0x80:
            return value, index + 1
        shift += 7
    raise ValueError("snappy: bad length")
