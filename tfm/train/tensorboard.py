"""A minimal TensorBoard event-file writer for scalars (no TensorFlow needed).

The file is a TFRecord stream of `Event` protocol buffers: each record is
[uint64 length][uint32 masked crc32c of length][data][uint32 masked crc32c of data]. The few
protobuf fields we need are encoded by hand (field numbers from tensorboard's event.proto and
summary.proto: Event.wall_time=1 (double), step=2 (int64), file_version=3 (string), summary=5;
Summary.value=1; Value.tag=1 (string), simple_value=2 (float)).
"""

from __future__ import annotations

import os
import socket
import struct
import time

_CRC_TABLE = []
for _i in range(256):
  _c = _i
  for _ in range(8):
    _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1  # CRC-32C (Castagnoli), reflected polynomial
  _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
  """Returns the CRC-32C of `data`."""
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
  """Returns the TFRecord masked CRC-32C of `data`."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
  return _varint((num << 3) | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, *, file_version: str = "", scalars: dict | None = None) -> bytes:
  """Returns the serialized Event proto with a wall time, step, and optional version or scalars."""
  out = _varint((1 << 3) | 1) + struct.pack("<d", wall_time)
  if step:
    out += _varint(2 << 3) + _varint(int(step))
  if file_version:
    out += _field_bytes(3, file_version.encode())
  if scalars:
    values = b"".join(_field_bytes(1, _field_bytes(1, tag.encode()) + _varint((2 << 3) | 5) + struct.pack("<f", v))
                      for tag, v in scalars.items())
    out += _field_bytes(5, values)
  return out


def frame(record: bytes) -> bytes:
  """Returns one TFRecord-framed record."""
  header = struct.pack("<Q", len(record))
  return header + struct.pack("<I", masked_crc(header)) + record + struct.pack("<I", masked_crc(record))


class SummaryWriter:
  """Appends scalar summaries to `logdir/events.out.tfevents.<time>.<host>`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
    self._f = open(self.path, "ab")
    self._f.write(frame(encode_event(time.time(), file_version="brain.Event:2")))
    self._f.flush()

  def scalars(self, step: int, values: dict) -> None:
    """Writes {tag: float} at `step`."""
    self._f.write(frame(encode_event(time.time(), step, scalars={k: float(v) for k, v in values.items()})))
    self._f.flush()

  def close(self) -> None:
    """Closes the file."""
    self._f.close()
