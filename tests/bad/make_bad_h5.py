#!/usr/bin/python3
"""Writes an SFT dataset with one specific defect, for the bad-input tests: make_bad_h5.py KIND OUT.

KIND is one of: good, missing_dataset, wrong_dtype, decreasing_offsets, token_out_of_vocab, user_out_of_range,
prompt_len_gt_length, empty, user_without_examples, and (tests/bad/hdf5.sh) these, each otherwise valid so that
only the named defect can make tailor refuse it:
  soft_link          /sft/tokens is a soft link to /data/tokens (which holds the right tokens)
  external_link      /sft/tokens is an external link to OUT.ext.h5:/tokens (written too, valid)
  group_ext_link     /sft is an external link to OUT.ext.h5:/sft, a complete sft group
  external_storage   /sft/tokens keeps its bytes in the raw file OUT.raw (external storage)
  virtual            /sft/tokens is a virtual dataset mapping OUT.ext.h5:/tokens
  compact            /sft/prompt_len uses the compact layout
  huge_chunked       /sft/tokens declares 2^32 int32 in chunks that are never written (a few-KB file)
  huge_contiguous    /users/name declares 2^31 strings, contiguous and never written
  huge_deflate       /sft/offsets declares 2^30 int64, deflated, only its first chunk written
  lzf_filter         /sft/user compressed with h5py's lzf filter (not known to libhdf5)
  vocab_u64_max      attribute vocab_size is the uint64 2^64-1 (libhdf5 would clamp it to 2^63-1 silently)
  huge_chunk         /sft/user (6 values, unlimited) stored in one deflated chunk of 2^24 int32 (64 MiB)
  nothing_trainable  every example is all prompt (prompt_len = length): no token to train on
  user_untrainable   only user ben's examples are all prompt (valid; tests/e2e/empty_user_warning.sh)
  libhdf5_hang       a good file whose global heap object "cid" (a user name) claims 255 bytes instead of 3:
                     libhdf5 1.10 loops forever parsing that heap (found by fuzzing good files)
  libhdf5_crash      a good file with the byte just before the object header of /users set to 0x40 (the end
                     of the root group's symbol-table data): libhdf5 1.10.8 dereferences a wild pointer (SIGSEGV)
                     on open (found by fuzzing good files)
"""
import os
import sys

import h5py
import numpy as np

kind, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
names = ["ann", "ben", "cid"]
lens = [8, 12, 5, 9, 7, 10]
users = [0, 1, 2, 0, 1, 2]
toks = rng.integers(0, 60, sum(lens)).astype(np.int32)
offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
pl = np.array([3, 4, 1, 2, 0, 5], dtype=np.int32)
us = np.array(users, dtype=np.int32)

if kind == "decreasing_offsets":
    offs[3], offs[4] = offs[4], offs[3]
elif kind == "token_out_of_vocab":
    toks[17] = 1000
elif kind == "user_out_of_range":
    us[4] = 7
elif kind == "prompt_len_gt_length":
    pl[2] = 6
elif kind == "empty":
    toks = np.zeros(0, np.int32); offs = np.zeros(1, np.int64); pl = np.zeros(0, np.int32); us = np.zeros(0, np.int32)
elif kind == "user_without_examples":
    names.append("dan")
elif kind == "nothing_trainable":
    pl = np.array(lens, dtype=np.int32)
elif kind == "user_untrainable":
    pl[1], pl[4] = lens[1], lens[4]
elif kind not in ("good", "missing_dataset", "wrong_dtype", "soft_link", "external_link", "group_ext_link",
                  "external_storage", "virtual", "compact", "huge_chunked", "huge_contiguous", "huge_deflate",
                  "lzf_filter", "libhdf5_hang", "libhdf5_crash", "huge_chunk", "vocab_u64_max"):
    sys.exit(f"unknown kind {kind}")

ext = out + ".ext.h5"
if kind in ("external_link", "group_ext_link", "virtual"):
    with h5py.File(ext, "w") as g:
        g.create_dataset("tokens", data=toks)
        g.create_dataset("sft/tokens", data=toks)
        g.create_dataset("sft/offsets", data=offs)
        g.create_dataset("sft/prompt_len", data=pl)
        g.create_dataset("sft/user", data=us)

with h5py.File(out, "w") as f:
    f.attrs["tailor_format"] = 1
    f.attrs["kind"] = "sft"
    if kind == "vocab_u64_max":
        f.attrs["vocab_size"] = np.uint64(2**64 - 1)
    str_t = h5py.string_dtype()
    if kind == "huge_contiguous":
        f.create_dataset("users/name", shape=(2**31,), dtype=str_t)
    else:
        f.create_dataset("users/name", data=np.array(names, dtype=str_t))
    if kind == "group_ext_link":
        f["sft"] = h5py.ExternalLink(os.path.basename(ext), "/sft")
        sys.exit(0)
    if kind == "soft_link":
        f.create_dataset("data/tokens", data=toks)
        f["sft/tokens"] = h5py.SoftLink("/data/tokens")
    elif kind == "external_link":
        f["sft/tokens"] = h5py.ExternalLink(os.path.basename(ext), "/tokens")
    elif kind == "external_storage":
        raw = out + ".raw"
        toks.astype("<i4").tofile(raw)
        f.create_dataset("sft/tokens", shape=toks.shape, dtype="<i4", external=[(os.path.basename(raw), 0, toks.nbytes)])
    elif kind == "virtual":
        layout = h5py.VirtualLayout(shape=toks.shape, dtype=np.int32)
        layout[:] = h5py.VirtualSource(os.path.basename(ext), "tokens", shape=toks.shape)
        f.create_virtual_dataset("sft/tokens", layout)
    elif kind == "huge_chunked":
        f.create_dataset("sft/tokens", shape=(2**32,), dtype=np.int32, chunks=(1024,))
    else:
        f.create_dataset("sft/tokens", data=toks.astype(np.float32) if kind == "wrong_dtype" else toks)
    if kind == "huge_deflate":
        d = f.create_dataset("sft/offsets", shape=(2**30,), dtype=np.int64, chunks=(4096,), compression="gzip")
        d[: len(offs)] = offs
    else:
        f.create_dataset("sft/offsets", data=offs)
    if kind == "compact":
        sid = h5py.h5s.create_simple(pl.shape)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        grp = f["sft"]
        dsid = h5py.h5d.create(grp.id, b"prompt_len", h5py.h5t.STD_I32LE, sid, dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, pl)
    elif kind != "missing_dataset":
        f.create_dataset("sft/prompt_len", data=pl)
    if kind == "lzf_filter":
        f.create_dataset("sft/user", data=us, chunks=(3,), compression="lzf")
    elif kind == "huge_chunk":
        f.create_dataset("sft/user", data=us, maxshape=(None,), chunks=(2**24,), compression="gzip")
    else:
        f.create_dataset("sft/user", data=us)

if kind == "libhdf5_hang":
    # Global heap object (HDF5 file format spec, "Global Heap"): index u16, refcount u16, reserved u32, size u64,
    # then the data padded to 8 bytes. Patch the size of the object holding b"cid".
    b = bytearray(open(out, "rb").read())
    at = b.find(b"cid\0\0\0\0\0")
    if at < 8 or b[at - 8:at] != (3).to_bytes(8, "little"):
        sys.exit("libhdf5_hang: the heap object of 'cid' was not found where expected")
    b[at - 8] = 0xFF
    open(out, "wb").write(b)

if kind == "libhdf5_crash":
    with h5py.File(out, "r") as f:
        addr = h5py.h5o.get_info(f["users"].id).addr
    b = bytearray(open(out, "rb").read())
    if b[addr - 1] != 0:
        sys.exit("libhdf5_crash: unexpected layout (the byte before /users is not 0)")
    b[addr - 1] = 0x40
    open(out, "wb").write(b)
