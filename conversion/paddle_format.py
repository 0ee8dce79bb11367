"""Read and write PaddlePaddle (Fluid 1.x) parameter files with numpy only — no Paddle needed.

`fluid.io.save_params / save_persistables / load_vars(dirname)` without a `filename` store one file per variable,
named exactly like the variable (e.g. `encoder_layer_0_ffn_fc_0.w_0`), each holding one LoDTensor serialized by
`SerializeToStream` (paddle/fluid/framework/lod_tensor.cc) and `TensorToStream` (tensor_util.cc). Byte layout, all
integers little-endian:

    offset  size       field
    0       4          uint32   LoDTensor version, 0
    4       8          uint64   lod_level: number of LoD levels (0 for parameters)
    ...     per level  uint64   byte size n of the level, then n bytes of uint64 offsets (size_t)
    ...     4          uint32   Tensor version, 0
    ...     4          int32    byte size d of the TensorDesc protobuf message
    ...     d          TensorDesc (framework.proto, proto2):
                         field 1 `data_type` (varint, VarType.Type enum: BOOL=0, INT16=1, INT32=2, INT64=3, FP16=4,
                                  FP32=5, FP64=6, UINT8=20, INT8=21, BF16=22)
                         field 2 `dims` (repeated int64; one varint per dimension, or one packed length-delimited
                                  run — both are accepted when reading, the unpacked form is written)
    ...     rest       raw tensor data, C order, numel * itemsize bytes; nothing after it

A file that deviates (other version, truncated data, trailing bytes, unknown dtype) raises a `ValueError` naming the
file.

Combined parameter files (`save_params / save_persistables / save_inference_model(params_filename=...)`, the
`save_combine` op; usually `__params__`) hold the same serialized tensors back to back, in the sorted order of the
variable names, and no names. `read_paddle_combined(path, names)` reads one given the names: a list, or the program
description `__model__` saved next to it (a `ProgramDesc` protobuf: blocks -> vars with `name`, `type` and
`persistable`; the persistable LoDTensor variables are the saved ones). A count that does not match is an error
rather than a silent misassignment of tensors to names.
"""

import struct
from pathlib import Path

import numpy as np

# VarType.Type -> numpy dtype ("bfloat16" is read as uint16 bits and widened to float32)
PADDLE_DTYPES = {
    0: np.dtype(np.bool_),
    1: np.dtype("<i2"),
    2: np.dtype("<i4"),
    3: np.dtype("<i8"),
    4: np.dtype("<f2"),
    5: np.dtype("<f4"),
    6: np.dtype("<f8"),
    20: np.dtype(np.uint8),
    21: np.dtype(np.int8),
    22: "bfloat16",
}
NUMPY_TO_PADDLE = {dtype: code for code, dtype in PADDLE_DTYPES.items() if dtype != "bfloat16"}

# files a parameter folder may hold besides tensors
NON_TENSOR_FILES = {"__model__", "__params__"}


def _read_varint(buffer, position):
    result = shift = 0
    while True:
        if position >= len(buffer):
            raise ValueError("truncated varint in TensorDesc")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits in TensorDesc")


def _to_int64(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def _varint(value):
    value &= (1 << 64) - 1  # negative int64 -> ten-byte two's complement, as protobuf writes it
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def parse_tensor_desc(message: bytes):
    """TensorDesc bytes -> (data_type code, dims)."""
    position, data_type, dims = 0, None, []
    while position < len(message):
        key, position = _read_varint(message, position)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 0:
            data_type, position = _read_varint(message, position)
        elif field == 2 and wire == 0:
            value, position = _read_varint(message, position)
            dims.append(_to_int64(value))
        elif field == 2 and wire == 2:  # packed
            length, position = _read_varint(message, position)
            end = position + length
            while position < end:
                value, position = _read_varint(message, position)
                dims.append(_to_int64(value))
        elif wire == 0:  # unknown varint field: skip
            _, position = _read_varint(message, position)
        elif wire == 2:  # unknown length-delimited field: skip
            length, position = _read_varint(message, position)
            position += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire} (field {field}) in TensorDesc")
    if data_type is None:
        raise ValueError("TensorDesc has no data_type")
    return data_type, dims


def tensor_desc(data_type: int, dims) -> bytes:
    """(data_type code, dims) -> TensorDesc bytes (proto2, unpacked dims, as Paddle writes them)."""
    message = bytes([0x08]) + _varint(data_type)
    for dim in dims:
        message += bytes([0x10]) + _varint(int(dim))
    return message


def read_lod_tensor(data: bytes, name="tensor"):
    """One serialized LoDTensor -> (numpy array, lod as a list of lists of offsets)."""
    array, lod, end = _read_lod_tensor_at(data, 0, name)
    if end != len(data):
        raise ValueError(f"{name}: {len(data) - end} trailing bytes after the tensor data")
    return array, lod


def _read_lod_tensor_at(data: bytes, position: int, name: str):
    """The LoDTensor that starts at `position` of `data` -> (array, lod, position after it)."""

    def take(count):
        nonlocal position
        if position + count > len(data):
            raise ValueError(f"{name}: truncated file ({len(data)} bytes, needed {position + count})")
        chunk = data[position : position + count]
        position += count
        return chunk

    (version,) = struct.unpack("<I", take(4))
    if version != 0:
        raise ValueError(f"{name}: unsupported LoDTensor version {version} (expected 0)")
    (levels,) = struct.unpack("<Q", take(8))
    if levels > 64:
        raise ValueError(f"{name}: implausible LoD level count {levels}; not a Paddle tensor file?")
    lod = []
    for _ in range(levels):
        (size,) = struct.unpack("<Q", take(8))
        if size % 8:
            raise ValueError(f"{name}: LoD level of {size} bytes is not a whole number of uint64 offsets")
        lod.append(list(np.frombuffer(take(size), dtype="<u8")))
    (tensor_version,) = struct.unpack("<I", take(4))
    if tensor_version != 0:
        raise ValueError(f"{name}: unsupported Tensor version {tensor_version} (expected 0)")
    (desc_size,) = struct.unpack("<i", take(4))
    if desc_size < 0 or desc_size > 1 << 20:
        raise ValueError(f"{name}: implausible TensorDesc size {desc_size}")
    data_type, dims = parse_tensor_desc(take(desc_size))
    if data_type not in PADDLE_DTYPES:
        raise ValueError(f"{name}: unsupported Paddle data type {data_type}")
    if any(d < 0 for d in dims):
        raise ValueError(f"{name}: negative dimension in {dims}")
    dtype = PADDLE_DTYPES[data_type]
    storage = np.dtype("<u2") if dtype == "bfloat16" else dtype
    numel = int(np.prod(dims, dtype=np.int64)) if dims else 1
    payload = take(numel * storage.itemsize)
    array = np.frombuffer(payload, dtype=storage).reshape(dims).copy()
    if dtype == "bfloat16":  # bf16 bits are the top half of an fp32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array, lod, position


def write_lod_tensor(array, lod=()) -> bytes:
    """numpy array (+ optional LoD) -> the bytes `SerializeToStream` writes."""
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    code = NUMPY_TO_PADDLE.get(np.dtype(dtype))
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no Paddle counterpart")
    out = struct.pack("<I", 0) + struct.pack("<Q", len(lod))
    for level in lod:
        offsets = np.asarray(level, dtype="<u8").tobytes()
        out += struct.pack("<Q", len(offsets)) + offsets
    desc = tensor_desc(code, array.shape)
    out += struct.pack("<I", 0) + struct.pack("<i", len(desc)) + desc
    return out + array.astype(dtype.newbyteorder("<"), copy=False).tobytes()


def _protobuf_fields(message: bytes, what: str):
    """(field number, value) of a protobuf message: varints as ints, length-delimited fields as bytes."""
    position = 0
    while position < len(message):
        key, position = _read_varint(message, position)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _read_varint(message, position)
        elif wire == 2:
            length, position = _read_varint(message, position)
            if position + length > len(message):
                raise ValueError(f"{what}: truncated protobuf field {field}")
            value, position = message[position : position + length], position + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, position = message[position : position + size], position + size
        else:
            raise ValueError(f"{what}: unexpected protobuf wire type {wire} (field {field})")
        yield field, value


# framework.proto VarType.Type: the variables `save_combine` writes are LoDTensors
LOD_TENSOR = 7


def saved_variable_names(program_desc: bytes, what="__model__") -> list[str]:
    """The persistable LoDTensor variables of a `ProgramDesc` (ProgramDesc.blocks = 1; BlockDesc.vars = 3;
    VarDesc: name = 1, type = 2 (VarType.type = 1), persistable = 3), sorted as `save_combine` writes them."""
    names = set()
    for field, block in _protobuf_fields(program_desc, what):
        if field != 1:
            continue
        for block_field, var in _protobuf_fields(block, what):
            if block_field != 3:
                continue
            name, var_type, persistable = None, None, False
            for var_field, value in _protobuf_fields(var, what):
                if var_field == 1:
                    name = value.decode("utf-8")
                elif var_field == 2:
                    var_type = next((v for f, v in _protobuf_fields(value, what) if f == 1), None)
                elif var_field == 3:
                    persistable = bool(value)
            if name and persistable and var_type == LOD_TENSOR:
                names.add(name)
    if not names:
        raise ValueError(f"{what} declares no persistable LoDTensor variables: is it a Paddle program description?")
    return sorted(names)


def read_paddle_combined(path, names=None) -> dict:
    """A combined parameter file (every tensor back to back, sorted by name, no names inside) -> {name: array}.
    `names`: the variable names (any order: they are sorted as `save_combine` wrote them), or None to read them from
    the `__model__` program description next to the file."""
    path = Path(path)
    data = path.read_bytes()
    if names is None:
        program = path.parent / "__model__"
        if not program.is_file():
            raise ValueError(
                f"{path} is a combined Paddle parameter file: the tensors carry no names. Put the program "
                "description `__model__` saved with it next to it, or pass the variable names"
            )
        names = saved_variable_names(program.read_bytes(), str(program))
    names = sorted(names)
    tensors, position = [], 0
    while position < len(data):
        array, _, position = _read_lod_tensor_at(data, position, f"{path} (tensor {len(tensors)})")
        tensors.append(array)
    if len(tensors) != len(names):
        raise ValueError(
            f"{path} holds {len(tensors)} tensors but {len(names)} variable names were given: names and file do not "
            "belong together (a save_persistables file also holds optimizer state; pass the exact saved names)"
        )
    return dict(zip(names, tensors))


def read_paddle_params(directory) -> dict:
    """A Paddle parameter folder (one file per variable) -> {variable name: numpy array}. A folder whose tensors
    are combined in `__params__` (with the program description `__model__`) is read with `read_paddle_combined`.

    Sub-folders and the program files `__model__` / `__params__` are skipped; every other file must be a tensor.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Paddle parameter folder {str(directory)!r} does not exist")
    tensor_files = [
        path
        for path in directory.iterdir()
        if not path.is_dir() and path.name not in NON_TENSOR_FILES and not path.name.startswith(".")
    ]
    if not tensor_files and (directory / "__params__").is_file():
        return read_paddle_combined(directory / "__params__")
    params = {}
    for path in sorted(directory.iterdir()):
        if path.is_dir() or path.name in NON_TENSOR_FILES or path.name.startswith("."):
            continue
        params[path.name], _ = read_lod_tensor(path.read_bytes(), name=str(path))
    if not params:
        raise ValueError(f"{directory} holds no Paddle tensor files")
    return params


def write_paddle_params(directory, params: dict):
    """{variable name: numpy array} -> one Paddle tensor file per variable in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in params.items():
        if "/" in name or name in NON_TENSOR_FILES:
            raise ValueError(f"invalid Paddle variable file name {name!r}")
        (directory / name).write_bytes(write_lod_tensor(np.asarray(array)))


__all__ = [
    "read_lod_tensor",
    "read_paddle_combined",
    "read_paddle_params",
    "saved_variable_names",
    "write_lod_tensor",
    "write_paddle_params",
]
