#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/: valid files the project's writers never
produce (big-endian, Fortran order, version 2.0, odd spacing) and near-misses that must
be rejected (bad magic, truncation, gaps, wrong types). Run after make_seeds.cpp:
    python3 fuzz/make_invalid_seeds.py fuzz/corpus
"""
import json
import os
import struct
import sys

root = sys.argv[1]


def put(rel, data):
    path = os.path.join(root, rel)
    with open(path, "wb") as f:
        f.write(data)
    print(f"{path} ({len(data)} bytes)")


def npy(header, data, version=1):
    head = header.encode("latin-1")
    fixed = 10 if version == 1 else 12
    pad = (64 - (fixed + len(head) + 1) % 64) % 64
    head += b" " * pad + b"\n"
    length = struct.pack("<H", len(head)) if version == 1 else struct.pack("<I", len(head))
    return b"\x93NUMPY" + bytes([version, 0]) + length + head + data


# .npy
put("npy/be_f8_fortran_2x2.npy", npy("{'descr': '>f8', 'fortran_order': True, 'shape': (2, 2), }",
                                     struct.pack(">4d", 1, 2, 3, 4)))
put("npy/v2_i8_3.npy", npy('{"shape":(3,),"descr":"<i8","fortran_order":False}', struct.pack("<3q", 1, -2, 3), 2))
put("npy/bad_magic.npy", b"\x93NUMPZ" + npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
                                            struct.pack("<f", 1))[6:])
put("npy/truncated_data.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }",
                                  struct.pack("<3f", 1, 2, 3)))
put("npy/structured_dtype.npy", npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                                    struct.pack("<f", 1)))
put("npy/huge_shape.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", b""))


def safetensors(header_obj, data, header_text=None):
    text = (header_text if header_text is not None else json.dumps(header_obj, separators=(",", ":"))).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


# safetensors
put("safetensors/spaced_keys_reordered.safetensors", safetensors(None, struct.pack("<2f", 1, 2), header_text=(
    '{ "w" : { "data_offsets" : [0, 8], "shape" : [2], "dtype" : "F32" },\n "__metadata__" : { "k" : "v" } }')))
put("safetensors/gap.safetensors", safetensors(
    {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
     "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, bytes(12)))
put("safetensors/overlap.safetensors", safetensors(
    {"a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
     "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)))
put("safetensors/duplicate_key.safetensors", safetensors(None, bytes(4), header_text=(
    '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')))
put("safetensors/bf16.safetensors", safetensors({"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}},
                                                bytes(4)))
put("safetensors/header_too_long.safetensors", struct.pack("<Q", 1 << 40) + b"{}")

# config
put("config/wrong_type.json", b'{"n_layer": "two"}')
put("config/unknown_key.json", b'{"n_layers": 2}')
put("config/float_for_int.json", b'{"n_embd": 64.5, "steps": 1e3}')
put("config/not_an_object.json", b'[1, 2, 3]')

# checkpoint: config.json and model.safetensors joined as fuzz/checkpoint_input.h does
sep = b"\n--runway-next-file--\n"
tiny = open(os.path.join(root, "checkpoint/tiny_rope.bin"), "rb").read()
config, weights = tiny.split(sep, 1)
put("checkpoint/shape_mismatch.bin", b'{"n_layer": 1, "n_head": 2, "n_embd": 4, "seq_len": 4}' + sep + weights)
put("checkpoint/no_weights.bin", config)
put("checkpoint/learned_positions.bin", b'{"n_layer": 1, "n_head": 1, "n_embd": 2, "seq_len": 4, "pos": "learned"}' +
    sep + weights)
put("checkpoint/truncated_weights.bin", config + sep + weights[:-5])

# safetensors in the harness's second form (fuzz_safetensors.cpp): the header ends at a NUL
# byte, so mutations that change its length keep a consistent file.
for name in ["three_dtypes", "zero_size", "spaced_keys_reordered", "gap"]:
    raw = open(os.path.join(root, f"safetensors/{name}.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    put(f"safetensors/nul_{name}.safetensors", raw[:8] + raw[8:8 + n].rstrip(b" ") + b"\0" + raw[8 + n:])
